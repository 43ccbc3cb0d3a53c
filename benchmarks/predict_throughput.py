"""Throughput of ``faceparse predict`` on this CPU: detection + alignment + parsing, folders, video.

Measures, for one zoo model at its default input size with random weights (speed does not depend
on the weights):

- detection alone (the default offline cascade, ``faceparse.detection.build_detector("auto")``);
- ``Predictor`` images/s on scikit-image's astronaut photograph (512 x 512, one face) for each
  geometry: ``align="none"`` (box crop, one pass), ``"similarity"`` and ``"tanh"`` (the cascade's
  landmarks are estimated, so both parse twice: parse-then-align);
- a batch folder (``predict_folder``: read, detect, parse, write label map + overlay PNGs) in images/s;
- a video (``predict_video``: decode, detect, parse, write label PNGs + mp4v overlay video) in frames/s.

Usage::

    nice -n 10 python benchmarks/predict_throughput.py --model segface_mobilenet_v3_large \\
        --out benchmarks/results/predict_throughput.md

The machine's load average is recorded at the start and the end: on a shared CPU the absolute
figures scale with the other jobs' load.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from skimage import data as skdata

import faceparse
from faceparse.detection import build_detector
from faceparse.inference import NoFaceWarning, Predictor
from faceparse.media import predict_folder, predict_video


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Wall seconds and process CPU seconds per call (means over ``repeats`` after the caller's
    warm-up), and the last result."""
    start, cpu = time.perf_counter(), time.process_time()
    out = None
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - start) / repeats, (time.process_time() - cpu) / repeats, out


def rate(count: int, wall: float, cpu: float, unit: str) -> tuple[str, str]:
    return f"{count / wall:.2f} {unit}/s", f"{cpu / count:.2f}"


def variants(image: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` different photos from one: mirrored, shifted and rescaled copies."""
    out = []
    for i in range(n):
        im = image[:, ::-1] if i % 2 else image
        s = 0.8 + 0.1 * (i % 4)
        im = cv2.resize(np.ascontiguousarray(im), None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        out.append(np.ascontiguousarray(np.roll(im, 7 * i, axis=1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="segface_mobilenet_v3_large")
    ap.add_argument("--repeats", type=int, default=3, help="timed predictions per geometry")
    ap.add_argument("--folder-images", type=int, default=6)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--video-size", default="320x240", help="W x H of the test video")
    ap.add_argument("--out", default=None, help="write the Markdown table here")
    args = ap.parse_args()
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    torch.manual_seed(0)
    model = faceparse.build_model(args.model).eval()
    size = model.default_input_size
    astronaut = skdata.astronaut()
    rows: list[tuple[str, str, str, str]] = []

    det = build_detector("auto")
    det(astronaut)
    sec, cpu, faces = timed(lambda: det(astronaut), args.repeats)
    rows.append(("detection only (auto cascade, 512 x 512)", *rate(1, sec, cpu, "images"), f"{len(faces)} face"))

    for align in ("none", "similarity", "tanh"):
        pred = Predictor(model, detect_faces=True, align=align)
        pred.predict(astronaut)  # warm-up
        sec, cpu, res = timed(lambda p=pred: p.predict(astronaut)[0], args.repeats)
        rows.append((f"detect + {align} + parse ({size} px)", *rate(1, sec, cpu, "images"), res.path))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for i, im in enumerate(variants(astronaut, args.folder_images)):
            Image.fromarray(im).save(folder / f"p{i:03d}.jpg", quality=92)
        pred = Predictor(model, detect_faces=True, batch_size=8)
        start, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoFaceWarning)
            report = predict_folder(pred, folder, progress=False)
        sec, cpu = time.perf_counter() - start, time.process_time() - cpu
        rows.append(
            (
                f"folder of {args.folder_images} JPEGs (~410-560 px; read, detect, parse, write 2 PNGs each)",
                *rate(len(report.written), sec, cpu, "images"),
                f"{len(report.no_face)} without a face",
            )
        )
        w, h = (int(v) for v in args.video_size.lower().split("x"))
        clip = Path(tmp) / "clip.mp4"
        writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
        small = cv2.resize(astronaut, (h, h), interpolation=cv2.INTER_AREA)
        for t in range(args.frames):
            frame = np.zeros((h, w, 3), np.uint8)
            x = (t * 3) % max(w - h, 1)
            frame[:, x : x + h] = small
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        cpu = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoFaceWarning)
            rep = predict_video(pred, clip, Path(tmp) / "out", smooth=0.5, progress=False)
        cpu = time.process_time() - cpu
        rows.append(
            (
                f"video {w} x {h}, {rep.frames} frames (decode, detect, parse, smooth 0.5, write PNGs + mp4v)",
                *rate(rep.frames, rep.seconds, cpu, "frames"),
                ", ".join(f"{k}: {v}" for k, v in rep.paths.items()),
            )
        )
    load1 = os.getloadavg()
    total = time.perf_counter() - t_start
    cpu = platform.processor() or platform.machine()
    lines = [
        "# `faceparse predict` throughput on CPU",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {cpu}, {os.cpu_count()} logical cores (2-core shared CPU, no GPU), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), OpenCV {cv2.__version__}",
        f"- command: `python benchmarks/predict_throughput.py --model {args.model} --repeats "
        f"{args.repeats} --folder-images {args.folder_images} --frames {args.frames} --video-size {args.video_size}"
        + (f" --out {args.out}`" if args.out else "`"),
        f"- model: {args.model} at its default input {size} px, random weights, fp32, batch size 8 (folder, video)",
        f"- load average (1/5/15 min) at start: {load0[0]:.2f}, {load0[1]:.2f}, {load0[2]:.2f}; at end: "
        f"{load1[0]:.2f}, {load1[1]:.2f}, {load1[2]:.2f}. The machine is shared with other jobs: figures scale "
        "with their load (a quiet machine is several times faster; compare rows within this run). CPU seconds "
        "(process time summed over threads) depend less on the load than wall-clock rates",
        f"- total time {total:.0f} s",
        "",
        "| measurement | throughput (wall clock) | CPU seconds per image/frame (all threads) | path / faces |",
        "|---|---:|---:|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
