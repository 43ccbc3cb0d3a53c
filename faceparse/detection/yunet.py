"""YuNet through OpenCV's ``cv2.FaceDetectorYN``, from a user-supplied ONNX file.

Wu et al., "YuNet: A Tiny Millisecond-level Face Detector", Machine Intelligence Research 2023.
OpenCV runs the network and its decoding (``cv2.FaceDetectorYN``, OpenCV >= 4.5.4; present in the
OpenCV 5 wheels); this module only adapts its rows to :class:`~faceparse.detection.base.Face`.
The model is OpenCV zoo's ``face_detection_yunet_2023mar.onnx`` (or a later YuNet with the same
outputs), which the user downloads; nothing is downloaded here.

``FaceDetectorYN.detect`` returns rows ``x, y, w, h, right eye (x, y), left eye, nose tip, right
mouth corner, left mouth corner, score``, where right/left are the *subject's*: the subject's right
eye is the image-left one, so the rows are already in faceparse's order (image-left eye, image-right
eye, nose tip, image-left mouth corner, image-right mouth corner; :data:`YUNET_TO_FACEPARSE`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from faceparse.detection.base import Face, FaceDetector, sort_faces
from faceparse.errors import FaceParseError, MissingWeightsError

#: faceparse landmark i is YuNet landmark ``YUNET_TO_FACEPARSE[i]`` (identity: see the module docstring)
YUNET_TO_FACEPARSE = np.array([0, 1, 2, 3, 4])


class YuNetDetector(FaceDetector):
    """YuNet face detector (``cv2.FaceDetectorYN``) returning boxes, scores and measured five landmarks.

    Args:
        weights: local ONNX file (OpenCV zoo's ``face_detection_yunet_2023mar.onnx``); required.
        score_threshold: minimum score (OpenCV zoo's demo default 0.9).
        nms_threshold: NMS IoU threshold (OpenCV's default 0.3).
        top_k: boxes kept before NMS.
        max_side: when set, images whose longer side exceeds it are downscaled before detection
            and the results scaled back; None runs at the original size.
    """

    name = "yunet"

    def __init__(
        self,
        weights: str | Path | None = None,
        score_threshold: float = 0.9,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        max_side: int | None = None,
    ) -> None:
        if not hasattr(cv2, "FaceDetectorYN"):
            raise FaceParseError(
                f"the YuNet detector needs cv2.FaceDetectorYN (OpenCV >= 4.5.4); this OpenCV {cv2.__version__} has none"
            )
        hint = "download OpenCV zoo's face_detection_yunet_2023mar.onnx and pass its path (nothing is downloaded)"
        if weights is None:
            raise MissingWeightsError(f"the YuNet detector needs weights=PATH of a local ONNX file; {hint}")
        path = Path(weights)
        if not path.is_file():
            raise MissingWeightsError(f"YuNet ONNX file '{path}' not found; {hint}")
        try:
            self.impl = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, top_k)
        except cv2.error as exc:
            raise FaceParseError(f"OpenCV cannot load YuNet ONNX file '{path}': {exc}") from None
        self.path = path
        self.max_side = max_side

    def detect(self, image: np.ndarray) -> list[Face]:
        image = self.check_image(image)
        h, w = image.shape[:2]
        scale = 1.0
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            image = cv2.resize(image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        self.impl.setInputSize((bgr.shape[1], bgr.shape[0]))
        try:
            _, rows = self.impl.detect(bgr)
        except cv2.error as exc:
            raise FaceParseError(f"YuNet ('{self.path}') failed on a {w} x {h} image: {exc}") from None
        faces = []
        for row in [] if rows is None else np.asarray(rows, np.float32):
            x, y, bw, bh = (float(v) / scale for v in row[:4])
            points = row[4:14].reshape(5, 2)[YUNET_TO_FACEPARSE] / scale
            faces.append(Face((x, y, x + bw, y + bh), float(row[14]), points, False))
        return sort_faces(faces)
