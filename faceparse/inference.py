"""Inference: images in, label maps at the original size out.

:class:`Predictor` takes image paths, numpy arrays (``H x W x 3`` uint8 RGB) or PIL images, and for
each image

1. optionally finds faces with a detector of :mod:`faceparse.detection` (boxes, scores and five
   landmarks; ``detector="auto"`` is the offline scikit-image LBP cascade);
2. maps every face into a square crop of the model's input size by one of three geometries
   (``align=``):

   - ``"none"``: the square around the detected box enlarged by ``margin`` (a plain crop);
   - ``"similarity"``: the 5-point similarity of :mod:`faceparse.data.align` (the landmarks land on
     :data:`~faceparse.data.align.TEMPLATE_5`);
   - ``"tanh"``: the RoI tanh-warp of :mod:`faceparse.data.tanh_warp` (Lin et al., CVPR 2019; the
     geometry of FaRL/SegFace LaPa models): the face RoI keeps most of the crop and the whole rest of
     the image is compressed into its border;
   - ``"auto"`` (default): what the model records (``model.preprocess_warp`` or ``"warp"`` in its
     ``config.json``), else ``"similarity"`` for faces whose landmarks the detector *measured*, else
     ``"none"``.

   Aligned modes need landmarks. When the detector measured none (the cascades only estimate
   them), the face is parsed twice ("parse-then-align"): a first pass on the plain crop gives eye,
   nose and mouth landmarks from the class centroids of the label set
   (:func:`landmarks_from_parsing`), and the aligned second pass is the result. If the first pass
   finds no eyes, the detector's estimated landmarks are used ("estimated landmarks"), or the plain
   crop when there are none. ``FaceResult.path`` says which path ran for each face;
3. normalises every crop with ``model.input_mean/std`` and runs the model on batches of
   ``batch_size`` crops under :func:`torch.inference_mode` (``flip_tta`` averages with the mirrored
   crop, left/right classes swapped);
4. pastes the *probabilities* of every face back through the exact inverse of its mapping (every
   image pixel is sent into the crop by the forward mapping and the crop's probabilities are
   sampled there bilinearly, one channel at a time so memory stays ``O(H x W)``), composites the
   faces per pixel by confidence (``1 - p(background)``: the most confident face owns the pixel),
   and takes the argmax. Pixels outside every face's crop are background (probability 1).

Without detection, or when no face is found (``no_face="whole"``), the whole image padded to a
square is one crop. Crop geometry and paste-back are hand-written glue around OpenCV/PyTorch
resampling (no library offers face crop/paste-back as such).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from faceparse.data.align import alignment_matrix, apply_affine, invert_affine
from faceparse.data.tanh_warp import DEFAULT_WARP_FACTOR, crop_to_image, image_to_crop, roi_matrix, warp_image
from faceparse.detection import Face, build_detector
from faceparse.detection import FaceDetector as _DetectorBase
from faceparse.detection.cascade import CascadeDetector, landmarks_from_eyes
from faceparse.errors import FaceParseError
from faceparse.images import read_image as _read_image
from faceparse.images import to_rgb
from faceparse.labels import LabelSet
from faceparse.models.base import FaceParsingModel, load_model
from faceparse.viz import overlay

NO_FACE_POLICIES = ("whole", "background", "error")
ALIGN_MODES = ("auto", "none", "similarity", "tanh")

#: Values of :attr:`FaceResult.path` / :attr:`Prediction.paths`.
PATH_MEASURED = "measured landmarks"
PATH_ESTIMATED = "estimated landmarks"
PATH_PARSE_THEN_ALIGN = "parse-then-align"
PATH_BOX = "box crop"
PATH_WHOLE = "whole image"
PATH_NO_FACE = "no face: whole image"


class NoFaceWarning(UserWarning):
    """Face detection found no face in an image; the whole image was parsed instead."""


Box = tuple[float, float, float, float]
Crop = tuple[int, int, int]  # x0, y0, side of a square crop (may extend past the image)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 with its EXIF orientation applied (:func:`faceparse.images.read_image`)."""
    return _read_image(path, exif=True, expected="an image file (JPEG, PNG, BMP, TIFF...)")


to_rgb_array = to_rgb  # accepts a path, a numpy array or a PIL image


class FaceDetector(CascadeDetector):
    """Compatibility name: the offline cascade of :mod:`faceparse.detection.cascade`, called as before.

    ``FaceDetector()(image)`` returns face boxes ``(x0, y0, x1, y1)`` (the interface of earlier
    versions); :meth:`detect` returns :class:`~faceparse.detection.Face` records with landmarks.
    New code: ``faceparse.detection.build_detector("auto")``.
    """

    def __call__(self, image: np.ndarray) -> list[Box]:  # type: ignore[override]
        return [f.box for f in self.detect(image)]


# ---------------------------------------------------------------------------- crop geometry
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


class CropGeometry:
    """How one face is mapped into a ``size x size`` model crop, and back.

    ``to_crop`` / ``to_image`` map pixel coordinates (pixel centres at integers) between the image
    and the crop; ``region`` is the part of the image the crop covers; ``inside`` says which crop
    coordinates lie on the crop. Subclasses: :class:`BoxCrop`, :class:`SimilarityCrop`,
    :class:`TanhCrop`.
    """

    kind = ""

    def __init__(self, size: int) -> None:
        self.size = int(size)

    def crop(self, image: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_crop(self, points: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_image(self, points: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)`` of the image covered by the crop (default: the bounding box of its corners)."""
        s = self.size
        corners = self.to_image(np.array([[-0.5, -0.5], [s - 0.5, -0.5], [-0.5, s - 0.5], [s - 0.5, s - 0.5]]))
        x0, y0 = np.floor(corners.min(0)).astype(int)
        x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
        return max(y0, 0), min(y1, height), max(x0, 0), min(x1, width)

    def inside(self, crop_xy: np.ndarray) -> np.ndarray:
        lo, hi = -0.5, self.size - 0.5
        return np.all((crop_xy >= lo) & (crop_xy <= hi), axis=1)


class BoxCrop(CropGeometry):
    """An axis-aligned square ``(x0, y0, side)`` of the image, resized to ``size`` (``INTER_AREA`` when
    shrinking); pixel ``c`` of the crop is image pixel ``x0 + (c + 0.5) * side / size - 0.5``."""

    kind = "none"

    def __init__(self, crop: Crop, size: int) -> None:
        super().__init__(size)
        self.box_crop = tuple(int(v) for v in crop)

    def crop(self, image: np.ndarray) -> np.ndarray:
        x = crop_square(image, self.box_crop)  # type: ignore[arg-type]
        s = self.size
        interp = cv2.INTER_AREA if x.shape[0] > s else cv2.INTER_LINEAR
        return cv2.resize(x, (s, s), interpolation=interp)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        x0, y0, side = self.box_crop
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return (p - np.array([x0, y0]) + 0.5) * (self.size / side) - 0.5

    def to_image(self, points: np.ndarray) -> np.ndarray:
        x0, y0, side = self.box_crop
        c = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return (c + 0.5) * (side / self.size) - 0.5 + np.array([x0, y0])

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        x0, y0, side = self.box_crop
        return max(y0, 0), min(y0 + side, height), max(x0, 0), min(x0 + side, width)


class SimilarityCrop(CropGeometry):
    """5-point similarity alignment (:func:`faceparse.data.align.alignment_matrix`)."""

    kind = "similarity"

    def __init__(self, landmarks: np.ndarray, size: int, scale: float = 1.0) -> None:
        super().__init__(size)
        self.matrix = alignment_matrix(landmarks, self.size, scale)

    def crop(self, image: np.ndarray) -> np.ndarray:
        m = self.matrix
        ratio = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))  # crop pixels per image pixel
        if ratio < 0.5:  # anti-aliasing: shrink with INTER_AREA first, then warp at >= 1/2 scale
            h, w = image.shape[:2]
            small = (max(1, round(w * 2 * ratio)), max(1, round(h * 2 * ratio)))
            image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
            rx, ry = image.shape[1] / w, image.shape[0] / h
            # small pixel q <-> original pixel p = (q + 0.5) / r - 0.5
            to_orig = np.array([[1 / rx, 0, 0.5 / rx - 0.5], [0, 1 / ry, 0.5 / ry - 0.5], [0, 0, 1]])
            m = m @ to_orig
        return cv2.warpAffine(
            image, m, (self.size, self.size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        return apply_affine(points, self.matrix)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        return apply_affine(points, invert_affine(self.matrix))


class TanhCrop(CropGeometry):
    """RoI tanh-warp (:mod:`faceparse.data.tanh_warp`); its crop covers the whole image."""

    kind = "tanh"

    def __init__(self, landmarks: np.ndarray, size: int, factor: float = DEFAULT_WARP_FACTOR, scale: float = 1.0):
        super().__init__(size)
        self.factor = float(factor)
        self.matrix = roi_matrix(landmarks, scale)

    def crop(self, image: np.ndarray) -> np.ndarray:
        return warp_image(image, self.matrix, self.size, self.factor)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        return image_to_crop(points, self.matrix, self.size, self.factor)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        return crop_to_image(points, self.matrix, self.size, self.factor)

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        return 0, height, 0, width

    def inside(self, crop_xy: np.ndarray) -> np.ndarray:
        return np.ones(len(crop_xy), dtype=bool)  # the warp sends every image pixel into the crop


def paste_back(
    probs: np.ndarray | torch.Tensor, geometry: CropGeometry, height: int, width: int
) -> tuple[tuple[int, int, int, int], np.ndarray, Iterable[np.ndarray]]:
    """Exact inverse mapping of a crop's probabilities onto the image.

    Returns ``(region, inside, channels)``: the image region ``(y0, y1, x0, x1)`` the crop covers,
    the mask of region pixels that map onto the crop, and a generator of the ``K`` probability
    channels on the region (one ``rh x rw`` float32 array at a time). Each region pixel ``p`` is sent
    to ``geometry.to_crop(p)`` and the crop's probabilities (``K x h x w``, any resolution) are
    sampled there bilinearly (``grid_sample``, ``align_corners=False``, border extended by half a
    pixel).
    """
    y0, y1, x0, x1 = geometry.region(height, width)
    rh, rw = max(y1 - y0, 0), max(x1 - x0, 0)
    if rh == 0 or rw == 0:
        return (y0, y1, x0, x1), np.zeros((rh, rw), bool), iter(())
    ys, xs = np.meshgrid(np.arange(y0, y1, dtype=np.float64), np.arange(x0, x1, dtype=np.float64), indexing="ij")
    c = geometry.to_crop(np.stack([xs.ravel(), ys.ravel()], 1))
    inside = geometry.inside(c).reshape(rh, rw)
    s = geometry.size
    grid = torch.from_numpy(((c + 0.5) / s * 2.0 - 1.0).reshape(1, rh, rw, 2)).float()
    p = torch.as_tensor(probs).float()

    def channels() -> Iterable[np.ndarray]:
        for k in range(p.shape[0]):
            yield F.grid_sample(p[k][None, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[
                0, 0
            ].numpy()

    return (y0, y1, x0, x1), inside, channels()


# ---------------------------------------------------------------------------- landmarks from parsing
def _class_ids(label_set: LabelSet, test: Callable[[str], bool]) -> list[int]:
    return [i for i, name in enumerate(label_set.classes) if test(name.lower())]


def landmarks_from_parsing(labels: np.ndarray, label_set: LabelSet, min_pixels: int = 4) -> np.ndarray | None:
    """Five landmarks ``(5, 2)`` (left eye, right eye, nose tip, left / right mouth corner; image
    left/right) from a label map, or None when it shows no pair of eyes.

    Eyes: centroids of the two eye classes (names containing ``eye`` but not ``brow``/``glass``),
    or of the two largest blobs of a single eye class, sorted by x. Nose: centroid of the ``nose``
    class. Mouth corners: the pixels of the mouth/lip classes lying furthest along the eye axis
    (mean of the outermost 3 % on each side). Nose or mouth missing: placed from the eyes by the
    alignment template (:func:`faceparse.detection.cascade.landmarks_from_eyes`).
    """
    lab = np.asarray(labels)
    eye_ids = _class_ids(label_set, lambda n: "eye" in n and "brow" not in n and "glass" not in n)
    eyes = []
    for i in eye_ids:
        ys, xs = np.nonzero(lab == i)
        if ys.size >= min_pixels:
            eyes.append((xs.mean(), ys.mean(), ys.size))
    if len(eyes) == 1 and len(eye_ids) == 1:  # one "eyes" class: its two largest blobs
        n, _, stats, cents = cv2.connectedComponentsWithStats((lab == eye_ids[0]).astype(np.uint8))
        blobs = sorted(range(1, n), key=lambda j: -stats[j, cv2.CC_STAT_AREA])[:2]
        eyes = [(cents[j][0], cents[j][1], stats[j, cv2.CC_STAT_AREA]) for j in blobs]
    if len(eyes) < 2:
        return None
    eyes = sorted(sorted(eyes, key=lambda e: -e[2])[:2], key=lambda e: e[0])
    eye_xy = np.array([[e[0], e[1]] for e in eyes], dtype=np.float64)
    axis = eye_xy[1] - eye_xy[0]
    dist = float(np.hypot(*axis))
    if dist < 2.0:
        return None
    out = landmarks_from_eyes(eye_xy.astype(np.float32)).astype(np.float64)
    nose_ids = _class_ids(label_set, lambda n: n == "nose")
    if nose_ids:
        ys, xs = np.nonzero(lab == nose_ids[0])
        if ys.size >= min_pixels:
            out[2] = (xs.mean(), ys.mean())
    mouth_ids = _class_ids(label_set, lambda n: "mouth" in n or "lip" in n)
    if mouth_ids:
        ys, xs = np.nonzero(np.isin(lab, mouth_ids))
        if ys.size >= min_pixels:
            pts = np.stack([xs, ys], 1).astype(np.float64)
            proj = pts @ (axis / dist)
            lo, hi = np.quantile(proj, [0.03, 0.97])
            out[3] = pts[proj <= lo].mean(0)
            out[4] = pts[proj >= hi].mean(0)
    return out.astype(np.float32)


# ---------------------------------------------------------------------------- results
@dataclass
class FaceResult:
    """One parsed face.

    Attributes:
        box: ``(x0, y0, x1, y1)`` from the detector (for a face found by parsing the whole image:
            the box of its non-background pixels).
        score: detector confidence (0.0 when no detector ran).
        landmarks: the five landmarks used for alignment (image pixels), or None (plain crop).
        path: which path ran: ``"measured landmarks"``, ``"estimated landmarks"``,
            ``"parse-then-align"`` or ``"box crop"``.
        align: the geometry used: ``"none"``, ``"similarity"`` or ``"tanh"``.
        crop: the square crop ``(x0, y0, side)`` for ``align="none"``, else None.
        labels: ``H x W`` uint8 label map of this face alone (its probabilities pasted back, argmax;
            background outside its crop).
        detector_landmarks: the detector's landmarks (None when it gave none).
    """

    box: Box
    score: float
    landmarks: np.ndarray | None
    path: str
    align: str
    crop: Crop | None = None
    labels: np.ndarray | None = field(default=None, repr=False)
    detector_landmarks: np.ndarray | None = None


@dataclass
class Prediction:
    """Result for one image.

    Attributes:
        labels: ``H x W`` uint8 class indices at the image's original size (argmax of ``probs``).
        image: the RGB input.
        label_set: the model's label set.
        probs: ``K x H x W`` float32 probabilities (``return_probs=True``): each pixel has the pasted-back
            probabilities of the face most confident there; pixels outside every crop are
            background with probability 1.
        faces: one :class:`FaceResult` per parsed face (empty without detection or when none was found).
        crops: the square crops ``(x0, y0, side)`` parsed with the plain-crop geometry (box crops and
            the whole-image crop).
        face_found: False when face detection ran and found no face (see ``Predictor.no_face``).
        path: ``"whole image"`` (no detection), ``"no face: whole image"``, or the faces' paths
            joined by ``", "``.
    """

    labels: np.ndarray
    image: np.ndarray
    label_set: LabelSet
    probs: np.ndarray | None = None
    faces: list[FaceResult] = field(default_factory=list)
    crops: list[Crop] = field(default_factory=list)
    face_found: bool = True
    path: str = PATH_WHOLE

    @property
    def boxes(self) -> list[Box]:
        """The faces' boxes ``(x0, y0, x1, y1)``."""
        return [f.box for f in self.faces]

    def overlay(self, alpha: float = 0.5, draw_faces: bool = False) -> np.ndarray:
        """The image blended with the coloured label map (optionally with face boxes in green and
        the landmarks used, in yellow)."""
        out = overlay(self.image, self.labels, self.label_set, alpha)
        if draw_faces:
            for face in self.faces:
                x0, y0, x1, y1 = face.box
                cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), (0, 255, 0), 2)
                if face.landmarks is not None:
                    for x, y in face.landmarks:
                        cv2.circle(out, (int(round(x)), int(round(y))), 2, (255, 255, 0), -1)
        return out


def model_warp(model: Any, model_dir: str | Path | None = None) -> tuple[str | None, float]:
    """The input geometry a model was trained with: ``(warp, factor)``.

    Read from ``model.preprocess_warp`` / ``model.preprocess_warp_factor`` (or ``model.warp`` /
    ``model.warp_factor``, as FaRL models set them) when the model has them, else from ``"warp"`` /
    ``"warp_factor"`` in the ``config.json`` of ``model_dir``; ``warp``
    is ``"tanh"``, ``"similarity"``, ``"none"`` or None (not recorded).
    """
    warp = getattr(model, "preprocess_warp", None)
    factor = getattr(model, "preprocess_warp_factor", None)
    if warp is None and isinstance(getattr(model, "warp", None), str):  # e.g. faceparse.models.farl
        warp, factor = model.warp, getattr(model, "warp_factor", factor)
    if warp is None and model_dir is not None:
        config = Path(model_dir) / "config.json"
        try:
            data = json.loads(config.read_text())
        except (OSError, ValueError):
            data = {}
        warp, factor = data.get("warp"), data.get("warp_factor", factor)
    if warp is not None and warp not in ("tanh", "similarity", "none"):
        raise FaceParseError(f"the model records warp={warp!r}; expected 'tanh', 'similarity' or 'none'")
    return warp, float(DEFAULT_WARP_FACTOR if factor is None else factor)


def detect_with(detector: Any, image: np.ndarray) -> list[Face]:
    """Faces of one RGB image found by ``detector`` (a :class:`~faceparse.detection.FaceDetector` or a
    callable returning faces or boxes ``(x0, y0, x1, y1[, score])``) as :class:`~faceparse.detection.Face` records."""
    found = detector.detect(image) if isinstance(detector, _DetectorBase) else detector(image)
    faces = []
    for f in found:
        if isinstance(f, Face):
            faces.append(f)
        else:
            vals = [float(v) for v in f]
            faces.append(Face(tuple(vals[:4]), vals[4] if len(vals) > 4 else 1.0))  # type: ignore[arg-type]
    return faces


@dataclass
class _FacePlan:
    image: int
    face: Face | None
    geometry: CropGeometry
    path: str
    align: str
    pending_align: str | None = None  # parse-then-align: the aligned mode of the second pass
    landmarks: np.ndarray | None = None
    probs: np.ndarray | None = None


class Predictor:
    """Parse faces in images with a zoo model.

    Args:
        model: a model, or the directory of one saved with ``save_pretrained``.
        input_size: square size fed to the model (default: the model's ``default_input_size``).
        flip_tta: average with the mirrored crop's prediction (left/right channels swapped).
        device: torch device.
        detect_faces: find faces (``detector``, default ``"auto"``) and parse each one in its own
            crop; without it, or when no face is found, the whole image (padded to a square) is parsed.
        margin: crop margin around a detected face box for ``align="none"`` and for the first pass
            of parse-then-align, as a fraction of the box side added on every side.
        batch_size: crops per forward pass.
        channels_last: run the model with channels_last memory format.
        detector: a detector name for :func:`faceparse.detection.build_detector` (``"auto"``,
            ``"skimage"``, ``"opencv"``, ``"retinaface"``, ``"yunet"``), a
            :class:`~faceparse.detection.FaceDetector`, or any callable ``image -> list of Face`` or
            of boxes ``(x0, y0, x1, y1[, ...])``. Implies ``detect_faces``.
        detector_weights: local weights file for ``"retinaface"`` / ``"yunet"``.
        align: ``"auto"`` (default), ``"none"``, ``"similarity"`` or ``"tanh"`` (module docstring).
        parse_landmarks: when alignment needs landmarks the detector did not measure, take them from
            a first parsing pass (parse-then-align, default); False uses the detector's estimated
            landmarks directly.
        align_scale: > 1 zooms out of aligned crops (both geometries).
        warp_factor: tanh-warp factor (default: what the model records, else 0.8 as facer's LaPa parser).
        no_face: what to do when detection finds no face in an image: ``"whole"`` (default)
            parses the whole image and warns (:class:`NoFaceWarning`), ``"background"`` returns an
            all-background label map, ``"error"`` raises :class:`~faceparse.errors.FaceParseError`.
            Either way ``Prediction.face_found`` is False.
        backend: ``"torch"`` (default) or ``"onnxruntime"``: then ``model`` is an ``.onnx`` file
            written by ``faceparse export`` (or a model directory containing ``model.onnx``), run
            by :class:`faceparse.export.OnnxModel` (needs the ``onnx`` extra).
        precision: ``"fp32"`` (default), ``"bf16"`` (autocast on the CPU's AMX/AVX512-BF16 units;
            fp32 with a :class:`faceparse.precision.PrecisionFallbackWarning` on a CPU without them) or
            ``"int8"`` (onnxruntime static quantisation, calibrated on the first batch); see
            :func:`faceparse.precision.optimize_for_inference`.
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
        detector: str | Callable[[np.ndarray], Sequence[Any]] | None = None,
        no_face: str = "whole",
        backend: str = "torch",
        align: str = "auto",
        parse_landmarks: bool = True,
        align_scale: float = 1.0,
        warp_factor: float | None = None,
        detector_weights: str | Path | None = None,
        precision: str = "fp32",
    ) -> None:
        if no_face not in NO_FACE_POLICIES:
            raise FaceParseError(f"no_face='{no_face}'; expected one of {', '.join(NO_FACE_POLICIES)}")
        if align not in ALIGN_MODES:
            raise FaceParseError(f"align='{align}'; expected one of {', '.join(ALIGN_MODES)}")
        self.no_face = no_face
        if backend not in ("torch", "onnxruntime"):
            raise FaceParseError(f"backend='{backend}'; expected 'torch' or 'onnxruntime'")
        model_dir = Path(model) if isinstance(model, (str, Path)) and Path(model).is_dir() else None
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
        if isinstance(detector, str):
            detector = build_detector(detector, detector_weights)
        elif detector is None and self.detect_faces:
            detector = build_detector("auto", detector_weights)
        self.detector = detector
        self.margin = margin
        self.batch_size = max(int(batch_size), 1)
        self.align = align
        self.parse_landmarks = parse_landmarks
        self.align_scale = float(align_scale)
        self.model_warp, recorded_factor = model_warp(self.model, model_dir)
        self.warp_factor = float(recorded_factor if warp_factor is None else warp_factor)
        from faceparse.precision import predictor_runner

        self.precision = precision
        self._runner = predictor_runner(self.model, precision, backend, self.input_size)  # None for fp32

    # ------------------------------------------------------------------ model on normalised batches
    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        out = (self._runner or self.model)(batch)
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

    def _normalise(self, crop: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(crop)).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        return (x - self.mean) / self.std

    def _prepare(self, crop: np.ndarray) -> torch.Tensor:
        """A square crop of any size, resized to the input size and normalised."""
        return self._normalise(BoxCrop((0, 0, crop.shape[0]), self.input_size).crop(crop))

    def _run(self, arrays: list[np.ndarray], plans: list[_FacePlan]) -> None:
        """Fill ``plan.probs`` (``K x S x S`` numpy) for every plan, ``batch_size`` crops at a time."""
        for k in range(0, len(plans), self.batch_size):
            chunk = plans[k : k + self.batch_size]
            batch = torch.cat([self._normalise(p.geometry.crop(arrays[p.image])) for p in chunk])
            for plan, probs in zip(chunk, self.probabilities(batch).cpu().numpy()):
                plan.probs = probs

    # ------------------------------------------------------------------ planning
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces of one RGB image as :class:`~faceparse.detection.Face` records (any detector type)."""
        if not self.detect_faces or self.detector is None:
            return []
        return detect_with(self.detector, image)

    def _align_mode(self, face: Face | None) -> str:
        if self.align != "auto":
            return self.align
        if self.model_warp is not None:
            return self.model_warp
        measured = face is not None and face.landmarks is not None and not face.landmarks_estimated
        return "similarity" if measured else "none"

    def _aligned(self, mode: str, landmarks: np.ndarray) -> CropGeometry:
        if mode == "tanh":
            return TanhCrop(landmarks, self.input_size, self.warp_factor, self.align_scale)
        return SimilarityCrop(landmarks, self.input_size, self.align_scale)

    def _plan(self, index: int, image: np.ndarray, faces: list[Face]) -> list[_FacePlan]:
        h, w = image.shape[:2]
        if not faces:  # whole image (no detection or no face): parse-then-align when asked to align
            mode = self._align_mode(None)
            plan = _FacePlan(index, None, BoxCrop(whole_image_crop(h, w), self.input_size), PATH_WHOLE, "none")
            if mode != "none" and self.parse_landmarks:
                plan.pending_align = mode
            return [plan]
        plans = []
        for face in faces:
            mode = self._align_mode(face)
            box = BoxCrop(expand_box(face.box, self.margin), self.input_size)
            if mode == "none":
                plans.append(_FacePlan(index, face, box, PATH_BOX, "none"))
            elif face.landmarks is not None and not face.landmarks_estimated:
                plans.append(_FacePlan(index, face, self._aligned(mode, face.landmarks), PATH_MEASURED, mode))
                plans[-1].landmarks = face.landmarks
            elif self.parse_landmarks:
                plans.append(_FacePlan(index, face, box, PATH_BOX, "none", pending_align=mode))
            elif face.landmarks is not None:
                plans.append(_FacePlan(index, face, self._aligned(mode, face.landmarks), PATH_ESTIMATED, mode))
                plans[-1].landmarks = face.landmarks
            else:
                plans.append(_FacePlan(index, face, box, PATH_BOX, "none"))
        return plans

    def _second_pass(self, plan: _FacePlan) -> None:
        """Parse-then-align: landmarks from the first pass's labels, then the aligned geometry."""
        mode = plan.pending_align
        plan.pending_align = None
        assert mode is not None and plan.probs is not None
        lm = landmarks_from_parsing(plan.probs.argmax(0), self.label_set)
        if lm is not None:
            plan.landmarks = plan.geometry.to_image(lm).astype(np.float32)
            plan.path = PATH_PARSE_THEN_ALIGN
        elif plan.face is not None and plan.face.landmarks is not None:
            plan.landmarks = plan.face.landmarks
            plan.path = PATH_ESTIMATED
        else:
            return  # no landmarks at all: keep the plain crop's result
        plan.geometry, plan.align, plan.probs = self._aligned(mode, plan.landmarks), mode, None

    def crops_for(self, image: np.ndarray, name: str = "image") -> tuple[list[Box], list[Crop]]:
        """Detected face boxes and the square crops of the plain-crop geometry for one RGB image
        (see ``no_face``); aligned faces are listed with their box but have no square crop."""
        faces = self.detect(image)
        plans = self._faces_or_policy(0, image, faces, name)
        return [f.box for f in faces], [p.geometry.box_crop for p in plans if isinstance(p.geometry, BoxCrop)]  # type: ignore[misc]

    def _faces_or_policy(self, index: int, image: np.ndarray, faces: list[Face], name: str) -> list[_FacePlan]:
        if faces or not self.detect_faces:
            return self._plan(index, image, faces)
        if self.no_face == "error":
            raise FaceParseError(f"no face found in {name} (pass no_face='whole' to parse the whole image)")
        if self.no_face == "background":
            return []
        warnings.warn(
            f"no face found in {name}; parsing the whole image (no_face='background' or 'error' to change)",
            NoFaceWarning,
            stacklevel=4,
        )
        plans = self._plan(index, image, [])
        for p in plans:
            p.path = PATH_NO_FACE
        return plans

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def predict(
        self, images: Iterable[Any] | Any, return_probs: bool = False, faces: Sequence[list[Face]] | None = None
    ) -> list[Prediction]:
        """Parse images (paths, arrays, PIL images, or a list of them); one :class:`Prediction` each.

        ``faces``: the detected faces of each image (:meth:`detect`'s output), when they were found
        elsewhere (``predict_files`` detects in its DataLoader workers); ``None`` detects here.
        """
        if isinstance(images, (str, Path, np.ndarray)) or hasattr(images, "convert"):
            images = [images]
        images = list(images)
        arrays = [to_rgb_array(im) for im in images]
        names = [f"'{im}'" if isinstance(im, (str, Path)) else f"image {i}" for i, im in enumerate(images)]
        if faces is None:
            faces = [self.detect(arr) for arr in arrays]
        elif len(faces) != len(arrays):
            raise FaceParseError(f"predict got {len(arrays)} images but faces for {len(faces)}")
        per_image = [
            self._faces_or_policy(i, arr, found, name) for i, (arr, found, name) in enumerate(zip(arrays, faces, names))
        ]
        plans = [p for ps in per_image for p in ps]
        self._run(arrays, plans)
        second = [p for p in plans if p.pending_align]
        for p in second:
            self._second_pass(p)
        self._run(arrays, [p for p in second if p.probs is None])
        results = []
        for i, arr in enumerate(arrays):
            pred = self._paste(arr, per_image[i], return_probs)
            pred.face_found = not self.detect_faces or any(p.face is not None for p in per_image[i])
            if not pred.face_found:
                pred.path = PATH_NO_FACE if per_image[i] else "no face: background"
            results.append(pred)
        return results

    __call__ = predict

    def _paste(self, image: np.ndarray, plans: list[_FacePlan], return_probs: bool) -> Prediction:
        h, w = image.shape[:2]
        bg = self.label_set.background
        k = self.label_set.num_classes
        labels = np.full((h, w), bg, dtype=np.uint8)
        owner_conf = np.full((h, w), -1.0, dtype=np.float32)
        probs = None
        if return_probs:
            probs = np.zeros((k, h, w), dtype=np.float32)
            probs[bg] = 1.0
        faces: list[FaceResult] = []
        for plan in plans:
            (y0, y1, x0, x1), inside, chans = paste_back(plan.probs, plan.geometry, h, w)  # type: ignore[arg-type]
            face_labels = np.full((h, w), bg, dtype=np.uint8)
            best = lab = conf = None
            kept = []
            for c, pc in enumerate(chans):  # one channel at a time: memory O(region), not O(K x region)
                if best is None:
                    best, lab = pc.copy(), np.zeros(pc.shape, dtype=np.uint8)
                else:
                    better = pc > best
                    best[better], lab[better] = pc[better], c
                if c == bg:
                    conf = 1.0 - pc
                if probs is not None:
                    kept.append(pc)
            if lab is not None and conf is not None:
                face_labels[y0:y1, x0:x1][inside] = lab[inside]
                region = owner_conf[y0:y1, x0:x1]
                take = inside & (conf > region)
                region[take] = conf[take]
                labels[y0:y1, x0:x1][take] = lab[take]
                if probs is not None:
                    probs[:, y0:y1, x0:x1][:, take] = np.stack(kept)[:, take]
            faces.append(self._face_result(plan, face_labels))
        crops = [p.geometry.box_crop for p in plans if isinstance(p.geometry, BoxCrop)]
        paths = [p.path for p in plans]
        detected = [f for f, p in zip(faces, plans) if p.face is not None or p.path == PATH_PARSE_THEN_ALIGN]
        path = ", ".join(dict.fromkeys(paths)) if paths else PATH_WHOLE
        return Prediction(labels, image, self.label_set, probs, detected, crops, True, path)  # type: ignore[arg-type]

    def _face_result(self, plan: _FacePlan, face_labels: np.ndarray) -> FaceResult:
        crop = plan.geometry.box_crop if isinstance(plan.geometry, BoxCrop) else None
        if plan.face is not None:
            f = plan.face
            return FaceResult(f.box, f.score, plan.landmarks, plan.path, plan.align, crop, face_labels, f.landmarks)
        ys, xs = np.nonzero(face_labels != self.label_set.background)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)) if ys.size else (0.0,) * 4
        return FaceResult(box, 0.0, plan.landmarks, plan.path, plan.align, crop, face_labels, None)  # type: ignore[arg-type]


def write_prediction(
    pred: Prediction, image_path: str | Path, out_dir: str | Path | None = None, stem: str | None = None
) -> tuple[Path, Path]:
    """Write ``<stem>_labels.png`` (class indices) and ``<stem>_overlay.png`` next to the image (or in ``out_dir``)."""
    labels_path, overlay_path = output_paths(image_path, out_dir, stem)
    labels_path.parent.mkdir(parents=True, exist_ok=True)
    _write_png(labels_path, pred.labels)
    _write_png(overlay_path, cv2.cvtColor(pred.overlay(), cv2.COLOR_RGB2BGR))
    return labels_path, overlay_path


def output_paths(
    image_path: str | Path, out_dir: str | Path | None = None, stem: str | None = None
) -> tuple[Path, Path]:
    """Where :func:`write_prediction` writes the label map and the overlay of ``image_path``."""
    image_path = Path(image_path)
    folder = Path(out_dir) if out_dir else image_path.parent
    stem = stem or image_path.stem
    return folder / f"{stem}_labels.png", folder / f"{stem}_overlay.png"


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise FaceParseError(f"could not encode PNG for '{path}'")
    tmp = path.with_name(path.name + ".tmp")
    buf.tofile(str(tmp))
    tmp.replace(path)


@dataclass
class PredictReport:
    """What :func:`predict_files` wrote, which inputs failed (path -> reason), which had no face,
    and which were skipped because their outputs were already there (``skip_existing``)."""

    written: list[tuple[Path, Path]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    no_face: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __iter__(self):  # backwards compatible: iterating gives the (labels, overlay) pairs
        return iter(self.written)

    def __len__(self) -> int:
        return len(self.written)


def output_stems(images: Sequence[str | Path]) -> list[str]:
    """Output stems for a list of images: the file stem, or ``<stem>_<ext>`` where two inputs share a stem."""
    stems = [Path(p).stem for p in images]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
    return [s if seen[s] == 1 else f"{s}_{Path(p).suffix.lstrip('.').lower()}" for s, p in zip(stems, images)]


def predict_files(
    model_dir: str | Path | Predictor,
    images: Sequence[str | Path],
    out_dir: str | Path | None = None,
    flip_tta: bool = False,
    input_size: int | None = None,
    detect_faces: bool = True,
    no_face: str = "whole",
    batch_size: int = 8,
    on_result: Callable[[str, Any], None] | None = None,
    backend: str = "torch",
    detector: str | Callable | None = None,
    align: str = "auto",
    detector_weights: str | Path | None = None,
    skip_existing: bool = False,
    progress: bool = False,
    precision: str = "fp32",
    num_workers: int = 0,
) -> PredictReport:
    """Parse image files and write ``<stem>_labels.png`` and ``<stem>_overlay.png`` for each.

    Faces are detected by default (``detector="auto"``) and each is parsed in its own crop or
    aligned geometry (``align``, see :class:`Predictor`). An image with no face is parsed whole
    (``no_face="whole"``, listed in :attr:`PredictReport.no_face`) or skipped and listed as failed
    (``no_face="skip"``). Images that cannot be read are skipped and listed in
    :attr:`PredictReport.failed`; the good images are still written. With ``skip_existing`` an image
    whose two outputs already exist is not parsed again (listed in :attr:`PredictReport.skipped`), so
    a rerun resumes. ``progress`` shows a tqdm bar. ``on_result(path, prediction_or_error)`` is
    called after each image. ``model_dir`` may also be a ready :class:`Predictor`.

    ``num_workers > 0`` decodes the files, and runs face detection when the predictor detects, in
    that many DataLoader worker processes (one torch thread each, :func:`faceparse.runtime.worker_init`)
    about one batch ahead, so they overlap the model's forward pass in this process; the outputs,
    their order and the report are the same as with ``0`` (default: everything in this process).
    Workers are forked where the platform can (Linux); elsewhere a custom ``detector`` must be picklable.
    """
    if not images:
        raise FaceParseError("no input images given")
    if no_face not in ("whole", "skip"):
        raise FaceParseError(f"no_face='{no_face}'; expected 'whole' or 'skip'")
    if isinstance(model_dir, Predictor):
        predictor = model_dir
    else:
        predictor = Predictor(
            model_dir,
            input_size=input_size,
            flip_tta=flip_tta,
            detect_faces=detect_faces,
            no_face="whole" if no_face == "whole" else "background",
            batch_size=batch_size,
            backend=backend,
            detector=detector if detect_faces else None,
            align=align,
            detector_weights=detector_weights,
            precision=precision,
        )
    report = PredictReport()
    pending: list[tuple[str, np.ndarray, str, list[Face] | None]] = []
    stems = output_stems(images)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(images), unit="image", desc="predict")

    def fail(path: str, reason: Any) -> None:
        report.failed[path] = str(reason)
        if on_result:
            on_result(path, reason if isinstance(reason, Exception) else FaceParseError(str(reason)))

    def flush() -> None:
        found = None if any(f is None for _, _, _, f in pending) else [f for _, _, _, f in pending]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoFaceWarning)  # reported per file through the report
            preds = predictor.predict([arr for _, arr, _, _ in pending], faces=found)
        for (path, _, stem, _), pred in zip(pending, preds):
            if not pred.face_found:
                if no_face == "skip":
                    fail(path, f"no face found in '{path}'")
                    continue
                report.no_face.append(path)
            try:
                report.written.append(write_prediction(pred, path, out_dir, stem))
            except (FaceParseError, OSError) as exc:
                fail(path, FaceParseError(f"cannot write the outputs of '{path}': {exc}"))
                continue
            if on_result:
                on_result(path, pred)
        if bar is not None:
            bar.update(len(pending))
        pending.clear()

    todo: list[tuple[str, str]] = []
    for path, stem in zip(images, stems):
        if skip_existing and all(p.is_file() for p in output_paths(path, out_dir, stem)):
            report.skipped.append(str(path))
            if bar is not None:
                bar.update(1)
        else:
            todo.append((str(path), stem))
    detector = predictor.detector if predictor.detect_faces and num_workers > 0 else None
    try:
        for path, stem, image, faces in _worker_errors(_decoded(todo, detector, num_workers, predictor.batch_size)):
            if isinstance(image, FaceParseError):
                fail(path, image)
                if bar is not None:
                    bar.update(1)
                continue
            pending.append((path, image, stem, faces))
            if len(pending) >= predictor.batch_size:
                flush()
        if pending:
            flush()
    finally:
        if bar is not None:
            bar.close()
    return report


def _worker_errors(items: Iterable[tuple]) -> Iterable[tuple]:
    """``items``, with a DataLoader worker's death or time-out raised as a FaceParseError that says what to do."""
    try:
        yield from items
    except RuntimeError as exc:
        if "DataLoader" not in str(exc):
            raise
        raise FaceParseError(
            f"the image-reading worker processes failed ({exc}); pass num_workers=0 (--num-workers 0)"
        ) from exc


class _ImageFiles(torch.utils.data.Dataset):
    """``(path, stem)`` items -> ``(path, stem, RGB array or the read error, faces or None)``.

    The read error is returned, not raised, so one unreadable file does not stop a DataLoader.
    With a ``detector`` the faces are found here too (in the workers); detection errors are raised.
    """

    def __init__(self, items: Sequence[tuple[str, str]], detector: Any = None) -> None:
        self.items = items
        self.detector = detector

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[str, str, np.ndarray | FaceParseError, list[Face] | None]:
        path, stem = self.items[index]
        try:
            image = read_image(path)
        except FaceParseError as exc:
            return path, stem, exc, None
        return path, stem, image, None if self.detector is None else detect_with(self.detector, image)


def _as_is(item: Any) -> Any:  # DataLoader collate_fn: keep numpy arrays (the default converts them)
    return item


#: Seconds ``predict_files`` waits for one image from its DataLoader workers before giving up.
WORKER_TIMEOUT_S = 600.0


def _decoded(items: Sequence[tuple[str, str]], detector: Any, num_workers: int, batch_size: int) -> Iterable[tuple]:
    """The items of :class:`_ImageFiles` in order: read here (``num_workers=0``) or by a torch
    DataLoader's worker processes, ``batch_size`` images ahead in all."""
    data = _ImageFiles(items, detector)
    if num_workers <= 0 or not items:
        return (data[i] for i in range(len(data)))
    import multiprocessing

    from faceparse.runtime import worker_init

    num_workers = min(int(num_workers), len(items))
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None  # fork: no re-import, ~ms
    return torch.utils.data.DataLoader(
        data,
        batch_size=None,  # one image per item: the batch of the next forward fills as workers finish
        num_workers=num_workers,
        collate_fn=_as_is,
        # one torch thread per worker; not cv2.setNumThreads(1): in a child forked after the parent ran
        # OpenCV's thread pool (paste-back's cv2.remap) it waited forever (unet at 512, OpenCV 5.1)
        worker_init_fn=worker_init,
        prefetch_factor=max(2, -(-batch_size // num_workers)),
        multiprocessing_context=context,
        timeout=WORKER_TIMEOUT_S,  # a stuck worker becomes an error instead of a silent hang
    )
