"""Folders and videos for ``faceparse predict``: resumable batch folders, per-frame video parsing.

- :func:`predict_folder`: every image file directly inside a folder (not its subfolders), outputs in
  ``out_dir`` (default ``<folder>/faceparse_out``); a tqdm progress bar; unreadable files are skipped
  and listed; images whose two outputs already exist are skipped, so a rerun resumes where the last
  run stopped.
- :func:`predict_video`: frames read with ``cv2.VideoCapture``, parsed in batches, written as
  ``<out_dir>/<stem>_labels/frame_000000.png`` (class indices) plus an overlay video
  ``<out_dir>/<stem>_overlay.mp4`` (``cv2.VideoWriter``, ``mp4v`` codec: OpenCV's FFmpeg writer has
  it in the pip wheels), optionally with temporal smoothing of the class probabilities.

Temporal smoothing (``smooth=a``, ``0 <= a < 1``): an exponential moving average of the pasted-back
probabilities, ``P_t = a * P_{t-1} + (1 - a) * p_t`` (``P_0 = p_0``), and the label map of frame
``t`` is ``argmax P_t``. ``a = 0`` (default) is off; ``a = 0.5`` halves the weight of each older
frame, which removes single-frame flicker at the cost of about one frame of lag on fast motion.
It keeps one ``K x H x W`` float32 array (e.g. 19 x 1080 x 1920: 158 MB).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceparse.errors import FaceParseError
from faceparse.inference import Predictor, PredictReport, _write_png, predict_files
from faceparse.viz import overlay

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
FOLDER_OUT = "faceparse_out"


def is_video(path: str | Path) -> bool:
    """Whether ``path`` is a video file by its extension."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (by extension), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FaceParseError(f"'{folder}' is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def predict_folder(
    predictor: Predictor,
    folder: str | Path,
    out_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    no_face: str = "whole",
    on_result: Callable[[str, Any], None] | None = None,
    num_workers: int = 0,
) -> PredictReport:
    """Parse every image of ``folder``; outputs in ``out_dir`` (default ``<folder>/faceparse_out``).

    With ``resume`` (default) images whose ``<stem>_labels.png`` and ``<stem>_overlay.png`` already
    exist are skipped (:attr:`PredictReport.skipped`). Unreadable files are listed in
    :attr:`PredictReport.failed` and the rest is written. ``num_workers > 0`` decodes (and detects
    faces) in that many DataLoader worker processes while the model runs (:func:`predict_files`).
    """
    images = list_images(folder)
    if not images:
        raise FaceParseError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in '{folder}'")
    out = Path(out_dir) if out_dir else Path(folder) / FOLDER_OUT
    out.mkdir(parents=True, exist_ok=True)
    return predict_files(
        predictor,
        images,
        out,
        no_face=no_face,
        on_result=on_result,
        skip_existing=resume,
        progress=progress,
        num_workers=num_workers,
    )


@dataclass
class VideoReport:
    """What :func:`predict_video` wrote."""

    frames: int = 0
    labels_dir: Path | None = None
    overlay: Path | None = None
    fps: float = 0.0
    seconds: float = 0.0
    label_files: list[Path] = field(default_factory=list)
    paths: dict[str, int] = field(default_factory=dict)  # Prediction.path -> number of frames

    @property
    def frames_per_second(self) -> float:
        """Processing speed (frames parsed per wall-clock second)."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def predict_video(
    predictor: Predictor,
    path: str | Path,
    out_dir: str | Path | None = None,
    smooth: float = 0.0,
    write_labels: bool = True,
    write_overlay: bool = True,
    progress: bool = True,
    alpha: float = 0.5,
    max_frames: int | None = None,
) -> VideoReport:
    """Parse every frame of a video; write per-frame label maps and an overlay video.

    Args:
        predictor: the :class:`Predictor` (detector, alignment, flip TTA...) applied to each frame;
            frames are parsed ``predictor.batch_size`` at a time.
        path: a video file OpenCV can read.
        out_dir: output folder (default: the video's folder).
        smooth: exponential moving average weight of the previous frames' probabilities (module
            docstring); 0 (default) is off.
        write_labels / write_overlay: write ``<stem>_labels/frame_NNNNNN.png`` / ``<stem>_overlay.mp4``.
        alpha: overlay opacity of the colour map.
        max_frames: stop after this many frames.
    """
    path = Path(path)
    if not path.is_file():
        raise FaceParseError(f"video '{path}' does not exist")
    if not 0.0 <= smooth < 1.0:
        raise FaceParseError(f"smooth={smooth}; expected 0 <= smooth < 1 (0: off, 0.5: half weight to the past)")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FaceParseError(f"OpenCV cannot open the video '{path}' (codec or container not supported by this build)")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    out = Path(out_dir) if out_dir else path.parent
    report = VideoReport(fps=fps)
    if write_labels:
        report.labels_dir = out / f"{path.stem}_labels"
        report.labels_dir.mkdir(parents=True, exist_ok=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
    writer = None
    state: np.ndarray | None = None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=min(total, max_frames) if total and max_frames else total or max_frames, unit="frame")
    start = time.perf_counter()

    def handle(frames: list[np.ndarray]) -> None:
        nonlocal writer, state
        preds = predictor.predict(frames, return_probs=smooth > 0)
        for rgb, pred in zip(frames, preds):
            labels = pred.labels
            if smooth > 0:
                assert pred.probs is not None
                state = pred.probs if state is None else smooth * state + (1.0 - smooth) * pred.probs
                labels = state.argmax(0).astype(np.uint8)
            if report.labels_dir is not None:
                target = report.labels_dir / f"frame_{report.frames:06d}.png"
                _write_png(target, labels)
                report.label_files.append(target)
            if write_overlay:
                bgr = cv2.cvtColor(overlay(rgb, labels, predictor.label_set, alpha), cv2.COLOR_RGB2BGR)
                if writer is None:
                    report.overlay = out / f"{path.stem}_overlay.mp4"
                    h, w = bgr.shape[:2]
                    writer = cv2.VideoWriter(str(report.overlay), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                    if not writer.isOpened():
                        raise FaceParseError(f"OpenCV cannot write '{report.overlay}' with the mp4v codec")
                writer.write(bgr)
            report.paths[pred.path] = report.paths.get(pred.path, 0) + 1
            report.frames += 1
        if bar is not None:
            bar.update(len(frames))

    try:
        batch: list[np.ndarray] = []
        while max_frames is None or report.frames + len(batch) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            if len(batch) >= predictor.batch_size:
                handle(batch)
                batch = []
        if batch:
            handle(batch)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - start
    if report.frames == 0:
        raise FaceParseError(f"no frame could be read from '{path}'")
    return report
