"""The face-detector contract: an RGB image in, a list of :class:`Face` (box, score, five landmarks) out.

Every detector in :mod:`faceparse.detection` returns the same :class:`Face` records so that
inference (cropping, 5-point alignment, RoI tanh-warp) never depends on which detector ran.

Five-point landmark order (the order of :data:`faceparse.data.align.TEMPLATE_5`, *image* left/right,
i.e. "left eye" is the eye with the smaller x in an upright frontal photo, the subject's right eye):

    0 left eye centre, 1 right eye centre, 2 nose tip, 3 left mouth corner, 4 right mouth corner

Detectors that do not measure all five points (the cascades: eyes measured when found, nose and
mouth placed from the eyes, or all five from the box with :func:`landmarks_from_box`) set
``landmarks_estimated=True``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faceparse.errors import FaceParseError

Box = tuple[float, float, float, float]

#: Names of the five landmarks, in the order of ``Face.landmarks`` rows.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose_tip", "left_mouth", "right_mouth")

#: Where the five points sit inside a frontal-face detector box, as fractions of its width and
#: height (x, y), used when a detector measures no landmarks (and as the eye search's prior). Eyes:
#: the median eye positions the eye search finds in the LBP-cascade boxes of 90 faces of
#: scikit-image's LFW subset (benchmarks/results/eye_search_lfw.md), made left/right symmetric;
#: nose and mouth: the hand-marked points of scikit-image's astronaut photo in its LBP-cascade box
#: (tests/inference/test_detection.py), made symmetric.
BOX_TEMPLATE_5 = np.array([[0.31, 0.36], [0.69, 0.36], [0.50, 0.60], [0.30, 0.75], [0.70, 0.75]], dtype=np.float32)


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in pixels of the input image.
        score: detector confidence (higher is more certain; 1.0 for detectors without scores).
        landmarks: ``(5, 2)`` float32 ``(x, y)`` pixels in the order of :data:`LANDMARK_NAMES`
            (left eye, right eye, nose tip, left mouth corner, right mouth corner; image left/right),
            or None.
        landmarks_estimated: True when some landmarks were guessed from the box instead of measured.
    """

    box: Box
    score: float = 1.0
    landmarks: np.ndarray | None = None
    landmarks_estimated: bool = False

    def __post_init__(self) -> None:
        self.box = tuple(float(v) for v in self.box)  # type: ignore[assignment]
        if len(self.box) != 4:
            raise FaceParseError(f"Face.box must be (x0, y0, x1, y1), got {self.box}")
        self.score = float(self.score)
        if self.landmarks is not None:
            lm = np.asarray(self.landmarks, dtype=np.float32)
            if lm.shape != (5, 2):
                raise FaceParseError(f"Face.landmarks must be a (5, 2) array, got shape {lm.shape}")
            self.landmarks = lm

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    def scaled(self, factor: float) -> Face:
        """The same face with box and landmarks multiplied by ``factor`` (e.g. back to the full image)."""
        lm = None if self.landmarks is None else self.landmarks * np.float32(factor)
        return Face(tuple(v * factor for v in self.box), self.score, lm, self.landmarks_estimated)  # type: ignore[arg-type]


def landmarks_from_box(box: Sequence[float]) -> np.ndarray:
    """Five landmarks ``(5, 2)`` float32 placed in ``box`` by :data:`BOX_TEMPLATE_5` (an estimate)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return (np.array([x0, y0], np.float32) + BOX_TEMPLATE_5 * np.array([x1 - x0, y1 - y0], np.float32)).astype(
        np.float32
    )


def sort_faces(faces: Sequence[Face]) -> list[Face]:
    """Most confident first; equal scores (cascades) largest first."""
    return sorted(faces, key=lambda f: (-f.score, -f.area))


class FaceDetector:
    """Base class of the detectors: ``detector(image) -> list[Face]``, best first.

    ``image`` is ``H x W x 3`` uint8 RGB. Subclasses implement :meth:`detect`.
    """

    #: name under which :func:`build_detector` knows the detector
    name: str = ""

    def __call__(self, image: np.ndarray) -> list[Face]:
        return self.detect(image)

    def detect(self, image: np.ndarray) -> list[Face]:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def check_image(image: Any) -> np.ndarray:
        """``image`` as a ``H x W x 3`` uint8 array, or a clear error."""
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise FaceParseError(
                f"face detectors take an H x W x 3 uint8 RGB image, got shape {arr.shape} dtype {arr.dtype}"
            )
        return arr


#: name -> "module:factory". "auto" is the offline default (scikit-image's LBP cascade: a core
#: dependency, so the same detector whatever OpenCV build is installed).
DETECTORS: dict[str, str] = {
    "skimage": "faceparse.detection.cascade:CascadeDetector",
    "opencv": "faceparse.detection.cascade:CascadeDetector",
    "retinaface": "faceparse.detection.retinaface:RetinaFaceDetector",
    "yunet": "faceparse.detection.yunet:YuNetDetector",
}


def list_detectors() -> list[str]:
    """Names accepted by :func:`build_detector` (plus ``"auto"``)."""
    return ["auto", *DETECTORS]


def build_detector(name: str = "auto", weights: str | Path | None = None, **kwargs: Any) -> FaceDetector:
    """Build a face detector by name.

    Args:
        name: ``"auto"`` / ``"skimage"`` (scikit-image's bundled LBP frontal-face cascade),
            ``"opencv"`` (OpenCV's Haar cascade, when the OpenCV build ships it),
            ``"retinaface"`` (needs ``weights=``, a local ``mobilenet0.25_Final.pth`` /
            ``Resnet50_Final.pth`` / facexlib ``detection_Resnet50_Final.pth``; ``network=``
            ``"mobilenet0.25"`` or ``"resnet50"``, guessed from the file when omitted),
            ``"yunet"`` (needs ``weights=``, OpenCV zoo's ``face_detection_yunet_2023mar.onnx``).
        weights: local weights file for the learned detectors (nothing is downloaded).
        **kwargs: passed to the detector's constructor (thresholds, sizes...).
    """
    key = "skimage" if name == "auto" else name
    if key not in DETECTORS:
        raise FaceParseError(f"unknown face detector '{name}'; expected one of {', '.join(list_detectors())}")
    module, attr = DETECTORS[key].split(":")
    factory = getattr(importlib.import_module(module), attr)
    if key in ("skimage", "opencv"):
        if weights is not None:
            raise FaceParseError(f"face detector '{name}' takes no weights file (its cascade ships with the library)")
        return factory(backend=key, **kwargs)
    return factory(weights=weights, **kwargs)
