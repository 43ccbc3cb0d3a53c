"""Inference: images in, label maps at the original size out.

:class:`Predictor` takes image paths, numpy arrays (``H x W x 3`` uint8 RGB) or PIL images, and

1. optionally finds faces with an offline cascade detector (:class:`FaceDetector`: OpenCV's Haar
   cascade from ``cv2.data.haarcascades`` when the installed OpenCV ships it, else scikit-image's
   bundled LBP frontal-face cascade) and crops each face as a square enlarged by ``margin`` of the
   box side on every side (the framing of CelebAMask-HQ-style training faces); without detection,
   or when no face is found, the whole image padded to a square is one crop;
2. resizes every crop to the model's input size, normalises it with ``model.input_mean/std`` and
   runs the model on batches of ``batch_size`` crops under :func:`torch.inference_mode`;
3. with ``flip_tta`` also parses the mirrored crop and averages the class probabilities after
   mapping left/right classes back (``label_set.flip_permutation``);
4. resizes the probabilities back to each crop (bilinear, one channel at a time so memory stays
   ``O(H x W)``) and pastes the labels into a map of the photo's size: pixels outside every crop
   are background; where crops overlap, the crop more confident that the pixel is not
   background wins.

Face detection, crop geometry and paste-back are hand-written (small glue around OpenCV and
scikit-image, which provide the detectors but no crop/paste utilities).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from faceparse.errors import FaceParseError, require
from faceparse.images import read_image as _read_image
from faceparse.images import to_rgb
from faceparse.labels import LabelSet
from faceparse.models.base import FaceParsingModel, load_model
from faceparse.viz import overlay

NO_FACE_POLICIES = ("whole", "background", "error")


class NoFaceWarning(UserWarning):
    """Face detection found no face in an image; the whole image was parsed instead."""


Box = tuple[float, float, float, float]
Crop = tuple[int, int, int]  # x0, y0, side of a square crop (may extend past the image)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 with its EXIF orientation applied (:func:`faceparse.images.read_image`)."""
    return _read_image(path, exif=True, expected="an image file (JPEG, PNG, BMP, TIFF...)")


to_rgb_array = to_rgb  # accepts a path, a numpy array or a PIL image


# ---------------------------------------------------------------------------- face detection
class FaceDetector:
    """Offline frontal-face detector returning boxes ``(x0, y0, x1, y1)`` in pixels.

    ``backend="auto"`` uses OpenCV's Haar cascade (``cv2.data.haarcascades +
    "haarcascade_frontalface_default.xml"``) when this OpenCV build ships ``CascadeClassifier``
    and the file, else scikit-image's bundled LBP frontal-face cascade
    (``skimage.data.lbp_frontal_face_cascade_filename()``). Both run offline. Images are
    downscaled so their longer side is at most ``max_side`` before detection. ``min_neighbors``
    (overlapping raw detections needed to accept a face) defaults to 5 for OpenCV and 8 for the
    LBP cascade, which gives false positives on textures with its own default of 4.
    """

    def __init__(
        self, backend: str = "auto", min_size: int = 40, max_side: int = 640, min_neighbors: int | None = None
    ) -> None:
        self.min_size = min_size
        self.max_side = max_side
        self.backend = self._resolve(backend)
        self.min_neighbors = min_neighbors or (5 if self.backend == "opencv" else 8)
        self._impl: Any = None

    @staticmethod
    def opencv_cascade_path() -> str | None:
        base = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if not base or not hasattr(cv2, "CascadeClassifier"):
            return None
        p = Path(base) / "haarcascade_frontalface_default.xml"
        return str(p) if p.is_file() else None

    def _resolve(self, backend: str) -> str:
        if backend == "auto":
            return "skimage"  # a core dependency: the same detector whatever OpenCV build is installed
        if backend == "opencv" and not self.opencv_cascade_path():
            raise FaceParseError(
                "face detector backend 'opencv' needs cv2.CascadeClassifier and "
                "cv2.data.haarcascades/haarcascade_frontalface_default.xml, which this OpenCV "
                "build does not ship; use backend='skimage' or 'auto'"
            )
        if backend not in ("opencv", "skimage"):
            raise FaceParseError(f"face detector backend '{backend}'; expected auto/opencv/skimage")
        return backend

    def _load(self) -> Any:
        if self._impl is None:
            if self.backend == "opencv":
                self._impl = cv2.CascadeClassifier(self.opencv_cascade_path())
            else:
                skdata = require("skimage.data", None)
                skfeature = require("skimage.feature", None)
                self._impl = skfeature.Cascade(skdata.lbp_frontal_face_cascade_filename())
        return self._impl

    def __call__(self, image: np.ndarray) -> list[Box]:
        return self.detect(image)

    def detect(self, image: np.ndarray) -> list[Box]:
        """Face boxes in ``image`` (``H x W x 3`` uint8 RGB), largest first."""
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = image
        if scale < 1.0:
            small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        det = self._load()
        min_size = max(int(self.min_size * scale), 20)
        boxes: list[Box] = []
        if self.backend == "opencv":
            gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
            found = det.detectMultiScale(
                gray, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(min_size, min_size)
            )
            boxes = [(float(x), float(y), float(x + bw), float(y + bh)) for x, y, bw, bh in found]
        else:
            sh, sw = small.shape[:2]
            found = det.detect_multi_scale(
                img=small,
                scale_factor=1.2,
                step_ratio=1,
                min_size=(min_size, min_size),
                max_size=(sh, sw),
                min_neighbor_number=self.min_neighbors,
            )
            boxes = [
                (float(d["c"]), float(d["r"]), float(d["c"] + d["width"]), float(d["r"] + d["height"])) for d in found
            ]
        boxes = [tuple(v / scale for v in b) for b in boxes]  # type: ignore[misc]
        return _suppress(boxes)


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _suppress(boxes: list[Box], thr: float = 0.3) -> list[Box]:
    """Keep the largest of overlapping boxes (greedy by area), largest first."""
    keep: list[Box] = []
    for b in sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1])):
        if all(_iou(b, k) < thr for k in keep):
            keep.append(b)
    return keep


def expand_box(box: Box, margin: float) -> Crop:
    """Square crop ``(x0, y0, side)`` centred on ``box``, its longer side enlarged by ``margin`` x side
    on every side (``margin=0.6`` gives a crop 2.2 times the box)."""
    x0, y0, x1, y1 = box
    side = max(int(round(max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin))), 2)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side


def whole_image_crop(height: int, width: int) -> Crop:
    """The square crop covering the whole image (centred, padded on the shorter side)."""
    side = max(height, width)
    return (width - side) // 2, (height - side) // 2, side


def crop_square(image: np.ndarray, crop: Crop) -> np.ndarray:
    """``side x side`` crop; the parts outside the image are black (zero)."""
    x0, y0, side = crop
    h, w = image.shape[:2]
    out = np.zeros((side, side, *image.shape[2:]), dtype=image.dtype)
    ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if ax1 > ax0 and ay1 > ay0:
        out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = image[ay0:ay1, ax0:ax1]
    return out


@dataclass
class Prediction:
    """Result for one image.

    Attributes:
        labels: ``H x W`` uint8 class indices at the image's original size.
        image: the RGB input.
        label_set: the model's label set.
        probs: ``K x H x W`` float32 probabilities (``return_probs=True``); pixels outside every
            crop are background with probability 1.
        faces: detected face boxes ``(x0, y0, x1, y1)`` in pixels (empty without detection or
            when none was found).
        crops: the square crops ``(x0, y0, side)`` that were parsed.
        face_found: False when face detection ran and found no face (see ``Predictor.no_face``).
    """

    labels: np.ndarray
    image: np.ndarray
    label_set: LabelSet
    probs: np.ndarray | None = None
    faces: list[Box] = field(default_factory=list)
    crops: list[Crop] = field(default_factory=list)
    face_found: bool = True

    def overlay(self, alpha: float = 0.5, draw_faces: bool = False) -> np.ndarray:
        """The image blended with the coloured label map (optionally with face boxes in green)."""
        out = overlay(self.image, self.labels, self.label_set, alpha)
        if draw_faces:
            for x0, y0, x1, y1 in self.faces:
                cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), (0, 255, 0), 2)
        return out


class Predictor:
    """Parse faces in images with a zoo model.

    Args:
        model: a model, or the directory of one saved with ``save_pretrained``.
        input_size: square size fed to the model (default: the model's ``default_input_size``).
        flip_tta: average with the mirrored crop's prediction (left/right channels swapped).
        device: torch device.
        detect_faces: find faces (:class:`FaceDetector`) and parse each one in a crop; without
            it, or when no face is found, the whole image (padded to a square) is parsed.
        margin: crop margin around a detected face box, as a fraction of the box side added on
            every side.
        batch_size: crops per forward pass.
        channels_last: run the model with channels_last memory format (often faster for conv
            nets on CPU; see ``benchmarks/speed.py --variants``).
        detector: a callable ``image -> list of (x0, y0, x1, y1)`` replacing the cascade
            (implies ``detect_faces``).
        no_face: what to do when detection finds no face in an image: ``"whole"`` (default)
            parses the whole image and warns (:class:`NoFaceWarning`), ``"background"`` returns an
            all-background label map, ``"error"`` raises :class:`~faceparse.errors.FaceParseError`.
            Either way ``Prediction.face_found`` is False.
        backend: ``"torch"`` (default) or ``"onnxruntime"``: then ``model`` is an ``.onnx`` file
            written by ``faceparse export`` (or a model directory containing ``model.onnx``), run
            by :class:`faceparse.export.OnnxModel` (needs the ``onnx`` extra).
    """

    def __init__(
        self,
        model: FaceParsingModel | str | Path,
        input_size: int | None = None,
        flip_tta: bool = False,
        device: str = "cpu",
        detect_faces: bool = False,
        margin: float = 0.6,
        batch_size: int = 8,
        channels_last: bool = False,
        detector: Callable[[np.ndarray], Sequence[Box]] | None = None,
        no_face: str = "whole",
        backend: str = "torch",
    ) -> None:
        if no_face not in NO_FACE_POLICIES:
            raise FaceParseError(f"no_face='{no_face}'; expected one of {', '.join(NO_FACE_POLICIES)}")
        self.no_face = no_face
        if backend not in ("torch", "onnxruntime"):
            raise FaceParseError(f"backend='{backend}'; expected 'torch' or 'onnxruntime'")
        if backend == "onnxruntime" and isinstance(model, (str, Path)):
            from faceparse.export import OnnxModel

            model = OnnxModel(model)  # type: ignore[assignment]
        self.backend = backend
        self.model = (load_model(model) if isinstance(model, (str, Path)) else model).to(device).eval()
        self.device = torch.device(device)
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.input_size = int(input_size or self.model.default_input_size)
        self.flip_tta = flip_tta
        self.label_set = self.model.label_set
        self.mean = torch.tensor(self.model.input_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.model.input_std, device=self.device).view(1, 3, 1, 1)
        self.detect_faces = detect_faces or detector is not None
        self.detector = detector if detector is not None else (FaceDetector() if detect_faces else None)
        self.margin = margin
        self.batch_size = max(int(batch_size), 1)

    # ------------------------------------------------------------------ model on normalised batches
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.model(batch)
        return out["logits"] if isinstance(out, dict) else out

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of a normalised batch; with flip TTA the log of the averaged probabilities."""
        if not self.flip_tta:
            return self._forward(batch)
        return self.probabilities(batch).clamp_min(1e-12).log()

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``B x K x S x S`` of a normalised batch (flip TTA applied)."""
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        probs = self._forward(batch).float().softmax(1)
        if self.flip_tta:
            flipped = self._forward(batch.flip(-1)).float().softmax(1).flip(-1)
            probs = 0.5 * (probs + flipped[:, self.label_set.flip_permutation])
        return probs

    def _prepare(self, crop: np.ndarray) -> torch.Tensor:
        s = self.input_size
        interp = cv2.INTER_AREA if crop.shape[0] > s else cv2.INTER_LINEAR
        x = cv2.resize(crop, (s, s), interpolation=interp)
        x = torch.from_numpy(x).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        return (x - self.mean) / self.std

    # ------------------------------------------------------------------ public
    def crops_for(self, image: np.ndarray, name: str = "image") -> tuple[list[Box], list[Crop]]:
        """Detected faces and the square crops to parse for one RGB image (see ``no_face``)."""
        faces = [tuple(map(float, b[:4])) for b in self.detector(image)] if self.detect_faces else []
        crops = [expand_box(b, self.margin) for b in faces]  # type: ignore[arg-type]
        if crops or not self.detect_faces:
            return faces, crops or [whole_image_crop(*image.shape[:2])]  # type: ignore[return-value]
        if self.no_face == "error":
            raise FaceParseError(f"no face found in {name} (pass no_face='whole' to parse the whole image)")
        if self.no_face == "background":
            return [], []
        warnings.warn(
            f"no face found in {name}; parsing the whole image (no_face='background' or 'error' to change)",
            NoFaceWarning,
            stacklevel=3,
        )
        return [], [whole_image_crop(*image.shape[:2])]

    @torch.inference_mode()
    def predict(self, images: Iterable[Any] | Any, return_probs: bool = False) -> list[Prediction]:
        """Parse images (paths, arrays, PIL images, or a list of them); one :class:`Prediction` each."""
        if isinstance(images, (str, Path, np.ndarray)) or hasattr(images, "convert"):
            images = [images]
        images = list(images)
        arrays = [to_rgb_array(im) for im in images]
        names = [f"'{im}'" if isinstance(im, (str, Path)) else f"image {i}" for i, im in enumerate(images)]
        plans = [self.crops_for(arr, name) for arr, name in zip(arrays, names)]
        jobs = [(i, c) for i, (_, crops) in enumerate(plans) for c in crops]
        probs: list[np.ndarray] = []
        for k in range(0, len(jobs), self.batch_size):
            chunk = jobs[k : k + self.batch_size]
            batch = torch.cat([self._prepare(crop_square(arrays[i], c)) for i, c in chunk])
            probs += list(self.probabilities(batch).cpu().numpy())
        results = []
        for i, arr in enumerate(arrays):
            mine = [(c, p) for (j, c), p in zip(jobs, probs) if j == i]
            results.append(self._paste(arr, mine, plans[i][0], return_probs))
            results[-1].face_found = bool(plans[i][0]) or not self.detect_faces
        return results

    __call__ = predict

    def _paste(
        self, image: np.ndarray, parts: list[tuple[Crop, np.ndarray]], faces: list[Box], return_probs: bool
    ) -> Prediction:
        h, w = image.shape[:2]
        bg = self.label_set.background
        k = self.label_set.num_classes
        labels = np.full((h, w), bg, dtype=np.uint8)
        owner_conf = np.full((h, w), -1.0, dtype=np.float32)
        probs = None
        if return_probs:
            probs = np.zeros((k, h, w), dtype=np.float32)
            probs[bg] = 1.0
        for (x0, y0, side), p in parts:
            ax0, ay0, ax1, ay1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
            if ax1 <= ax0 or ay1 <= ay0:
                continue
            rows, cols = slice(ay0 - y0, ay1 - y0), slice(ax0 - x0, ax1 - x0)
            best = lab = conf = None
            channels = []
            for c in range(k):  # one channel at a time: memory O(crop), not O(K x crop)
                pc = p[c] if p.shape[-1] == side else cv2.resize(p[c], (side, side), interpolation=cv2.INTER_LINEAR)
                pc = pc[rows, cols]
                if best is None:
                    best, lab = pc.copy(), np.zeros(pc.shape, dtype=np.uint8)
                else:
                    better = pc > best
                    best[better], lab[better] = pc[better], c
                if c == bg:
                    conf = 1.0 - pc
                if probs is not None:
                    channels.append(pc)
            region = owner_conf[ay0:ay1, ax0:ax1]
            take = conf > region
            region[take] = conf[take]
            labels[ay0:ay1, ax0:ax1][take] = lab[take]
            if probs is not None:
                probs[:, ay0:ay1, ax0:ax1][:, take] = np.stack(channels)[:, take]
        return Prediction(
            labels=labels,
            image=image,
            label_set=self.label_set,
            probs=probs,
            faces=list(faces),
            crops=[c for c, _ in parts],
        )


def write_prediction(pred: Prediction, image_path: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``<stem>_labels.png`` (class indices) and ``<stem>_overlay.png`` next to the image."""
    image_path = Path(image_path)
    folder = Path(out_dir) if out_dir else image_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    labels_path = folder / f"{image_path.stem}_labels.png"
    overlay_path = folder / f"{image_path.stem}_overlay.png"
    _write_png(labels_path, pred.labels)
    _write_png(overlay_path, cv2.cvtColor(pred.overlay(), cv2.COLOR_RGB2BGR))
    return labels_path, overlay_path


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise FaceParseError(f"could not encode PNG for '{path}'")
    tmp = path.with_name(path.name + ".tmp")
    buf.tofile(str(tmp))
    tmp.replace(path)


@dataclass
class PredictReport:
    """What :func:`predict_files` wrote, and which inputs failed (path -> reason)."""

    written: list[tuple[Path, Path]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    no_face: list[str] = field(default_factory=list)

    def __iter__(self):  # backwards compatible: iterating gives the (labels, overlay) pairs
        return iter(self.written)

    def __len__(self) -> int:
        return len(self.written)


def predict_files(
    model_dir: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path | None = None,
    flip_tta: bool = False,
    input_size: int | None = None,
    detect_faces: bool = True,
    no_face: str = "whole",
    batch_size: int = 8,
    on_result: Callable[[str, Any], None] | None = None,
    backend: str = "torch",
) -> PredictReport:
    """Parse image files and write ``<stem>_labels.png`` and ``<stem>_overlay.png`` for each.

    Faces are detected by default (:class:`FaceDetector`) and each is parsed in its own crop. An
    image with no face is parsed whole (``no_face="whole"``, listed in
    :attr:`PredictReport.no_face`) or skipped and listed as failed (``no_face="skip"``). Images that
    cannot be read are skipped and listed in :attr:`PredictReport.failed`; the good images are still
    written. ``on_result(path, prediction_or_error)`` is called after each image. ``backend``:
    ``"torch"`` or ``"onnxruntime"`` (``model_dir`` may then be an ``.onnx`` file, see :class:`Predictor`).
    """
    if not images:
        raise FaceParseError("no input images given")
    if no_face not in ("whole", "skip"):
        raise FaceParseError(f"no_face='{no_face}'; expected 'whole' or 'skip'")
    predictor = Predictor(
        model_dir,
        input_size=input_size,
        flip_tta=flip_tta,
        detect_faces=detect_faces,
        no_face="whole" if no_face == "whole" else "background",
        batch_size=batch_size,
        backend=backend,
    )
    report = PredictReport()
    pending: list[tuple[str, np.ndarray]] = []

    def fail(path: str, reason: Any) -> None:
        report.failed[path] = str(reason)
        if on_result:
            on_result(path, reason if isinstance(reason, Exception) else FaceParseError(str(reason)))

    def flush() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoFaceWarning)  # reported per file through the report
            preds = predictor.predict([arr for _, arr in pending])
        for (path, _), pred in zip(pending, preds):
            if not pred.face_found:
                if no_face == "skip":
                    fail(path, f"no face found in '{path}'")
                    continue
                report.no_face.append(path)
            try:
                report.written.append(write_prediction(pred, path, out_dir))
            except (FaceParseError, OSError) as exc:
                fail(path, FaceParseError(f"cannot write the outputs of '{path}': {exc}"))
                continue
            if on_result:
                on_result(path, pred)
        pending.clear()

    for path in images:
        try:
            pending.append((str(path), read_image(path)))
        except FaceParseError as exc:
            fail(str(path), exc)
            continue
        if len(pending) >= predictor.batch_size:
            flush()
    if pending:
        flush()
    return report
