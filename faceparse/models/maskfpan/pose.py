"""Head pose from 2D landmarks with ``cv2.solvePnP`` and a generic 3D face (Mask-FPAN's PPM).

Mask-FPAN's pose prediction module (Li et al. 2023, Sec. III-D) describes the head direction with
three Euler angles and uses them to give large poses more weight in the segmentation loss (Eq. 2).
Its learned head lives in :mod:`faceparse.models.maskfpan.landmarks`; this module gives the geometric
estimate (also the training target of that head, as PFLD does for its auxiliary network).

Conventions: OpenCV camera frame (x right, y down, z away from the camera); the generic face looks
at the camera, so a frontal face has yaw = pitch = roll = 0. Angles in degrees: ``yaw`` about the
vertical axis (positive: the face turns towards image-left), ``pitch`` about the horizontal axis
(positive: chin down), ``roll`` in-plane (positive: clockwise in the image). The pinhole camera
has focal length = image width, principal point at the image centre, no distortion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from faceparse.errors import FaceParseError

# Generic 3D positions (millimetres, nose tip at the origin; approximate adult anthropometry chosen
# for faceparse) of the 5-point scheme: image-left eye centre, image-right eye centre, nose tip,
# image-left mouth corner, image-right mouth corner.
GENERIC_FACE_5 = np.array(
    [
        [-31.0, -33.0, 30.0],
        [31.0, -33.0, 30.0],
        [0.0, 0.0, 0.0],
        [-25.0, 30.0, 25.0],
        [25.0, 30.0, 25.0],
    ],
    np.float64,
)

# 68-point (iBUG/300-W) indices averaged into the 5-point scheme.
_FIVE_FROM_68 = (range(36, 42), range(42, 48), (30,), (48,), (54,))


def five_from_68(landmarks: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners (5 x 2) from 68 iBUG landmarks."""
    pts = np.asarray(landmarks, np.float64).reshape(-1, 2)
    if len(pts) != 68:
        raise FaceParseError(f"expected 68 landmarks, got {len(pts)}")
    return np.stack([pts[list(idx)].mean(0) for idx in _FIVE_FROM_68])


def euler_from_rotation(rmat: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from a rotation matrix ``R = Rz(roll) Ry(yaw) Rx(pitch)``."""
    r = np.asarray(rmat, np.float64)
    yaw = np.degrees(np.arcsin(np.clip(-r[2, 0], -1.0, 1.0)))
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return float(yaw), float(pitch), float(roll)


def rotation_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Inverse of :func:`euler_from_rotation` (degrees)."""
    y, p, r = np.radians([yaw, pitch, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def camera_matrix(image_size: Sequence[int]) -> np.ndarray:
    """Pinhole intrinsics for an image of (height, width): focal = width, centre = image centre."""
    h, w = int(image_size[0]), int(image_size[1])
    return np.array([[w, 0, (w - 1) / 2.0], [0, w, (h - 1) / 2.0], [0, 0, 1]], np.float64)


def head_pose_from_landmarks(
    landmarks: np.ndarray,
    image_size: Sequence[int],
    model_points: np.ndarray | None = None,
) -> np.ndarray:
    """(yaw, pitch, roll) in degrees of a face from its 2D landmarks (``cv2.solvePnP``).

    Args:
        landmarks: N x 2 pixel coordinates (5-point scheme by default; 68 iBUG and 29 COFW points are
            reduced to 5).
        image_size: (height, width) of the image the landmarks live in.
        model_points: N x 3 generic 3D face matching ``landmarks`` (default :data:`GENERIC_FACE_5`).
    """
    pts = np.asarray(landmarks, np.float64).reshape(-1, 2)
    if model_points is None:
        if len(pts) == 68:
            pts = five_from_68(pts)
        elif len(pts) == 29:  # COFW: pupils, nose tip and mouth corners
            from faceparse.data.cofw import cofw_five_points

            pts = cofw_five_points(pts).astype(np.float64)
        if len(pts) != 5:
            raise FaceParseError(
                f"head_pose_from_landmarks needs 5 (or 68 iBUG, 29 COFW) landmarks with the generic face; got {len(pts)}: "
                "pass model_points (N x 3) for other schemes"
            )
        model = GENERIC_FACE_5
    else:
        model = np.asarray(model_points, np.float64).reshape(-1, 3)
        if len(model) != len(pts):
            raise FaceParseError(f"model_points has {len(model)} points but landmarks has {len(pts)}")
    if len(pts) < 4:
        raise FaceParseError(f"solvePnP needs at least 4 landmarks, got {len(pts)}")
    k = camera_matrix(image_size)
    dist = np.zeros(4)
    ok, rvec, tvec = cv2.solvePnP(model, pts, k, dist, flags=cv2.SOLVEPNP_EPNP)
    if ok:
        ok, rvec, tvec = cv2.solvePnP(model, pts, k, dist, rvec, tvec, useExtrinsicGuess=True)
    if not ok:
        return np.zeros(3, np.float32)
    rmat, _ = cv2.Rodrigues(rvec)
    return np.asarray(euler_from_rotation(rmat), np.float32)


def project_generic_face(
    yaw: float, pitch: float, roll: float, image_size: Sequence[int] = (128, 128), distance: float = 500.0
) -> np.ndarray:
    """5 x 2 image landmarks of the generic face at a given pose (for tests and synthetic data)."""
    k = camera_matrix(image_size)
    rvec, _ = cv2.Rodrigues(rotation_from_euler(yaw, pitch, roll))
    tvec = np.array([0.0, 0.0, distance])
    pts, _ = cv2.projectPoints(GENERIC_FACE_5, rvec, tvec, k, np.zeros(4))
    return pts.reshape(-1, 2).astype(np.float32)


def add_pose_targets(batch: dict[str, Any]) -> dict[str, Any]:
    """Add ``pose`` (B x 3, degrees) from the batch's 5 (or 68, 29) landmarks with solvePnP (PPM)."""
    if "pose" in batch or "landmarks" not in batch or batch["landmarks"].shape[1] not in (5, 29, 68):
        return batch
    size = tuple(batch["image"].shape[-2:])
    poses = [head_pose_from_landmarks(lm.cpu().numpy(), size) for lm in batch["landmarks"]]
    batch = dict(batch)
    batch["pose"] = torch.as_tensor(np.stack(poses), dtype=torch.float32, device=batch["landmarks"].device)
    return batch
