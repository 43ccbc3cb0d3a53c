"""Offline cascade face detectors (scikit-image's LBP cascade, OpenCV's Haar cascade) with five landmarks.

Boxes: scikit-image's bundled LBP frontal-face cascade
(``skimage.data.lbp_frontal_face_cascade_filename()``, the default: a core dependency, so the same
detector whatever OpenCV build is installed) or OpenCV's Haar cascade
(``cv2.data.haarcascades + "haarcascade_frontalface_default.xml"``, only when the OpenCV build
ships ``cv2.CascadeClassifier`` and the file; the OpenCV 5 wheels ship neither).

Landmarks: neither cascade gives any, so the two eye centres are *measured* inside the upper part
of each box -- with OpenCV's bundled eye cascade (``haarcascade_eye.xml``) where the build ships it,
otherwise by a dark-blob search (:func:`find_eyes`: an iris/pupil is a round spot darker than the
skin and sclera around it, found as the maximum of a difference of Gaussians in each half of the
eye band). Nose tip and mouth corners are then placed from the two eyes by the similarity that
sends the alignment template's eyes (:data:`faceparse.data.align.TEMPLATE_5`) onto them, so a
5-point alignment of these landmarks is exactly the alignment defined by the measured eyes. When no
plausible eye pair is found, all five points come from the box (:data:`~faceparse.detection.base.BOX_TEMPLATE_5`).
Either way ``Face.landmarks_estimated`` is True (nose and mouth are never measured);
``CascadeDetector.last_eye_sources`` says per face whether the eyes were measured.

The eye search is hand-written (about 40 lines): neither scikit-image nor OpenCV 5 ships an eye
locator that works without downloaded models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceparse.data.align import TEMPLATE_5, apply_affine, similarity_transform
from faceparse.detection.base import BOX_TEMPLATE_5, Box, Face, FaceDetector, landmarks_from_box
from faceparse.errors import FaceParseError, require

#: Width (pixels) to which a face box is resampled for the eye search; the filter sizes below are
#: in these units (an iris is about 7 % of a frontal box width, radius ~3.4 px, matched by the
#: inner Gaussian's sigma ~ r / sqrt(2)).
EYE_SEARCH_WIDTH = 96
_SIGMA_INNER, _SIGMA_OUTER = 2.0, 5.0
#: Search band inside the box, as fractions: rows (top, bottom); columns of each eye's half.
_EYE_ROWS = (0.15, 0.60)
_EYE_COLS = ((0.10, 0.49), (0.51, 0.90))
#: Minimum dark-blob contrast (grey levels, 0-255) for an eye to count as found.
MIN_EYE_CONTRAST = 8.0
#: Width (fraction of the box width) of the Gaussian prior around the expected eye positions.
EYE_PRIOR_SIGMA = 0.15


def opencv_cascade_path(name: str = "haarcascade_frontalface_default.xml") -> str | None:
    """Path of one of OpenCV's bundled cascades, or None when this OpenCV build ships none."""
    base = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not base or not hasattr(cv2, "CascadeClassifier"):
        return None
    p = Path(base) / name
    return str(p) if p.is_file() else None


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def suppress_boxes(boxes: list[Box], thr: float = 0.3) -> list[Box]:
    """Keep the largest of overlapping boxes (greedy by area, IoU >= ``thr`` suppressed), largest first.

    Cascades give no scores, so this is by area rather than ``torchvision.ops.nms`` by score.
    """
    keep: list[Box] = []
    for b in sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1])):
        if all(_iou(b, k) < thr for k in keep):
            keep.append(b)
    return keep


def _local_maxima(resp: np.ndarray, k: int = 3) -> list[tuple[float, int, int]]:
    """Up to ``k`` strongest 3x3 local maxima ``(value, row, col)`` of ``resp``."""
    dil = cv2.dilate(resp, np.ones((3, 3), np.uint8))
    rows, cols = np.nonzero(resp >= dil)
    peaks = sorted(((float(resp[r, c]), int(r), int(c)) for r, c in zip(rows, cols)), reverse=True)
    return peaks[:k]


def _refine(resp: np.ndarray, r: int, c: int) -> tuple[float, float]:
    """Sub-pixel peak: centroid of the positive response in the 3x3 window around (r, c)."""
    r0, c0 = max(r - 1, 0), max(c - 1, 0)
    win = np.clip(resp[r0 : r + 2, c0 : c + 2], 0, None)
    if win.sum() <= 0:
        return float(r), float(c)
    ys, xs = np.mgrid[r0 : r0 + win.shape[0], c0 : c0 + win.shape[1]]
    return float((ys * win).sum() / win.sum()), float((xs * win).sum() / win.sum())


def find_eyes(gray: np.ndarray, box: Box, min_contrast: float = MIN_EYE_CONTRAST) -> np.ndarray | None:
    """Eye centres ``[[x, y] (image-left eye), [x, y] (image-right eye)]`` in pixels, or None.

    The box is resampled to :data:`EYE_SEARCH_WIDTH` pixels wide; the response
    ``G_outer * I - G_inner * I`` (difference of Gaussians; positive where a round spot is darker
    than its surround) is searched for its five strongest local maxima in each half of the eye band,
    and the pair with the largest summed response, each weighted by a Gaussian prior around the
    eye positions of :data:`~faceparse.detection.base.BOX_TEMPLATE_5` (sigma
    :data:`EYE_PRIOR_SIGMA` x width), whose geometry is that of two eyes (horizontal distance
    25-75 % of the box width, slope below 0.35) is kept. None when no pair reaches
    ``min_contrast`` grey levels in both eyes.
    """
    x0, y0, x1, y1 = box
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    s = EYE_SEARCH_WIDTH / (x1 - x0)
    h = max(int(round((y1 - y0) * s)), 8)
    m = np.array([[s, 0.0, -x0 * s + 0.5 * s - 0.5], [0.0, s, -y0 * s + 0.5 * s - 0.5]])
    crop = cv2.warpAffine(
        gray.astype(np.float32),
        m,
        (EYE_SEARCH_WIDTH, h),
        flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    resp = cv2.GaussianBlur(crop, (0, 0), _SIGMA_OUTER) - cv2.GaussianBlur(crop, (0, 0), _SIGMA_INNER)
    r0, r1 = int(_EYE_ROWS[0] * h), int(_EYE_ROWS[1] * h)
    sides = []
    for c_lo, c_hi in _EYE_COLS:
        c0, c1 = int(c_lo * EYE_SEARCH_WIDTH), int(c_hi * EYE_SEARCH_WIDTH)
        sides.append([(v, r + r0, c + c0) for v, r, c in _local_maxima(resp[r0:r1, c0:c1], 5)])
    # prior: each response is weighted by a Gaussian (sigma EYE_PRIOR_SIGMA x width) around the
    # eye positions of BOX_TEMPLATE_5, so dark hair or background at the box border loses to an eye
    expected = BOX_TEMPLATE_5[:2] * np.array([EYE_SEARCH_WIDTH, h], np.float32)
    sigma2 = 2.0 * (EYE_PRIOR_SIGMA * EYE_SEARCH_WIDTH) ** 2

    def weight(side: int, r: int, c: int) -> float:
        return float(np.exp(-((c - expected[side, 0]) ** 2 + (r - expected[side, 1]) ** 2) / sigma2))

    best, best_score = None, -np.inf
    for vl, rl, cl in sides[0]:
        for vr, rr, cr in sides[1]:
            dx, dy = cr - cl, rr - rl
            if min(vl, vr) < min_contrast or not 0.25 * EYE_SEARCH_WIDTH <= dx <= 0.75 * EYE_SEARCH_WIDTH:
                continue
            score = vl * weight(0, rl, cl) + vr * weight(1, rr, cr)
            if abs(dy) > 0.35 * dx or score <= best_score:
                continue
            best, best_score = ((rl, cl), (rr, cr)), score
    if best is None:
        return None
    pts = []
    for r, c in best:
        rr, cc = _refine(resp, r, c)
        pts.append([(cc + 0.5) / s + x0 - 0.5, (rr + 0.5) / s + y0 - 0.5])
    return np.array(pts, dtype=np.float32)


def landmarks_from_eyes(eyes: np.ndarray) -> np.ndarray:
    """Five landmarks with the two measured eyes and nose/mouth placed by the alignment template.

    The similarity sending :data:`~faceparse.data.align.TEMPLATE_5`'s eyes onto ``eyes`` maps its
    nose tip and mouth corners into the image.
    """
    m = similarity_transform(TEMPLATE_5[:2], np.asarray(eyes, np.float64))
    out = apply_affine(TEMPLATE_5, m).astype(np.float32)
    out[:2] = eyes
    return out


class CascadeDetector(FaceDetector):
    """Offline frontal-face cascade returning :class:`~faceparse.detection.base.Face` records.

    Args:
        backend: ``"auto"`` / ``"skimage"`` (scikit-image's LBP cascade) or ``"opencv"`` (Haar,
            when this OpenCV build ships it; otherwise an error).
        min_size: smallest face side in pixels of the input image.
        max_side: images are downscaled so their longer side is at most this before detection
            (the eye search runs on the full-resolution image).
        min_neighbors: overlapping raw detections needed to accept a face; default 5 for OpenCV and
            8 for the LBP cascade (which gives false positives on textures with its own default of 4).
        landmarks: measure/estimate the five landmarks (False: ``Face.landmarks`` is None).

    Cascades give no scores: every face has ``score=1.0`` and faces come largest first.
    """

    name = "skimage"

    def __init__(
        self,
        backend: str = "auto",
        min_size: int = 40,
        max_side: int = 640,
        min_neighbors: int | None = None,
        landmarks: bool = True,
    ) -> None:
        self.min_size = min_size
        self.max_side = max_side
        self.backend = self._resolve(backend)
        self.name = self.backend
        self.min_neighbors = min_neighbors or (5 if self.backend == "opencv" else 8)
        self.landmarks = landmarks
        self._impl: Any = None
        self._eye_impl: Any = None
        #: per face of the last call: "eye-cascade", "dark-blob" or "box" (where the eyes came from)
        self.last_eye_sources: list[str] = []

    @staticmethod
    def _resolve(backend: str) -> str:
        if backend == "auto":
            return "skimage"
        if backend not in ("opencv", "skimage"):
            raise FaceParseError(f"face detector backend '{backend}'; expected auto/opencv/skimage")
        if backend == "opencv" and not opencv_cascade_path():
            raise FaceParseError(
                "face detector backend 'opencv' needs cv2.CascadeClassifier and "
                "cv2.data.haarcascades/haarcascade_frontalface_default.xml, which this OpenCV "
                "build does not ship; use backend='skimage' or 'auto'"
            )
        return backend

    def _load(self) -> Any:
        if self._impl is None:
            if self.backend == "opencv":
                self._impl = cv2.CascadeClassifier(opencv_cascade_path())
                eye_path = opencv_cascade_path("haarcascade_eye.xml")
                self._eye_impl = cv2.CascadeClassifier(eye_path) if eye_path else None
            else:
                skdata = require("skimage.data", None)
                skfeature = require("skimage.feature", None)
                self._impl = skfeature.Cascade(skdata.lbp_frontal_face_cascade_filename())
        return self._impl

    def detect_boxes(self, image: np.ndarray) -> list[Box]:
        """Face boxes ``(x0, y0, x1, y1)`` in ``image`` (``H x W x 3`` uint8 RGB), largest first."""
        image = self.check_image(image)
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = image
        if scale < 1.0:
            small = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        det = self._load()
        min_size = max(int(self.min_size * scale), 20)
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
        return suppress_boxes(boxes)

    def _eyes_by_cascade(self, gray: np.ndarray, box: Box) -> np.ndarray | None:
        """Eye centres from OpenCV's eye cascade in the upper 60 % of the box (two hits, one per half)."""
        if self._eye_impl is None:
            return None
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, y0 = max(x0, 0), max(y0, 0)
        roi = gray[y0 : y0 + int(0.6 * (y1 - y0)), x0:x1]
        if roi.size == 0:
            return None
        side = max(int(0.12 * (x1 - x0)), 5)
        hits = self._eye_impl.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=3, minSize=(side, side))
        mid = (x1 - x0) / 2.0
        left = [(ex + ew / 2.0, ey + eh / 2.0, ew * eh) for ex, ey, ew, eh in hits if ex + ew / 2.0 < mid]
        right = [(ex + ew / 2.0, ey + eh / 2.0, ew * eh) for ex, ey, ew, eh in hits if ex + ew / 2.0 >= mid]
        if not left or not right:
            return None
        lx, ly, _ = max(left, key=lambda t: t[2])
        rx, ry, _ = max(right, key=lambda t: t[2])
        return np.array([[lx + x0, ly + y0], [rx + x0, ry + y0]], dtype=np.float32)

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in ``image`` (``H x W x 3`` uint8 RGB), largest first, with five landmarks."""
        boxes = self.detect_boxes(image)
        self.last_eye_sources = []
        if not self.landmarks:
            return [Face(b, 1.0, None, False) for b in boxes]
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        faces = []
        for b in boxes:
            eyes, source = self._eyes_by_cascade(gray, b), "eye-cascade"
            if eyes is None:
                eyes, source = find_eyes(gray, b), "dark-blob"
            if eyes is None:
                lm, source = landmarks_from_box(b), "box"
            else:
                lm = landmarks_from_eyes(eyes)
            self.last_eye_sources.append(source)
            faces.append(Face(b, 1.0, lm, True))
        return faces
