"""Face detectors returning boxes, scores and five landmarks (:class:`Face`).

``build_detector("auto")`` is the offline default (scikit-image's LBP cascade); ``"opencv"``,
``"retinaface"`` (local weights) and ``"yunet"`` (local ONNX file) are the others. The detector
modules are imported only when built.
"""

from __future__ import annotations

from faceparse.detection.base import (
    BOX_TEMPLATE_5,
    DETECTORS,
    LANDMARK_NAMES,
    Face,
    FaceDetector,
    build_detector,
    landmarks_from_box,
    list_detectors,
    sort_faces,
)

__all__ = [
    "BOX_TEMPLATE_5",
    "DETECTORS",
    "LANDMARK_NAMES",
    "Face",
    "FaceDetector",
    "build_detector",
    "landmarks_from_box",
    "list_detectors",
    "sort_faces",
]
