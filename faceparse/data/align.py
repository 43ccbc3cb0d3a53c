"""Face alignment from five landmarks, with the inverse transform kept for evaluation.

The adapters that have landmarks (LaPa, Helen*, COFW, CelebAMask-HQ when a landmark file is given)
accept ``align=True``: the image, the label map and every other per-pixel array are warped by one
similarity transform that sends the five points (left eye, right eye, nose tip, left and right
mouth corner, *image* left/right) onto a fixed template in a square crop. The 2 x 3 matrices of the
transform and of its inverse are stored in ``sample["meta"]`` so that a prediction made on the
aligned crop can be warped back onto the original image (:func:`warp_to_original`), which is how
face-parsing results are scored at original resolution.

Template: the five points sit where a loose, whole-head crop puts them (eyes 25% of the crop width
apart, at 45% of its height; nose tip at the centre, 55% height; mouth corners at 70% height). This
is the same geometry as the 5-point templates used for face parsing (hair and ears stay inside the
crop), expressed in the unit square. ``scale`` > 1 zooms out (more context), < 1 zooms in.

Written by hand (no library offers it as such): the least-squares similarity fit
(Umeyama, "Least-squares estimation of transformation parameters between two point patterns",
TPAMI 1991, Eqs. 34-43); OpenCV's ``estimateAffinePartial2D`` is a robust (RANSAC/LMedS) fit instead.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from faceparse.errors import FaceParseError
from faceparse.labels import IGNORE_INDEX

#: Five-point template in the unit square (x, y): left eye, right eye, nose tip, mouth left, mouth right.
TEMPLATE_5 = np.array([[0.375, 0.45], [0.625, 0.45], [0.5, 0.55], [0.425, 0.70], [0.575, 0.70]], dtype=np.float64)

#: Mirror permutation of the five points (swap eyes and mouth corners).
FLIP_5 = np.array([1, 0, 2, 4, 3], dtype=np.int64)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    Umeyama (TPAMI 1991), Eqs. 34-43 without reflection. ``src`` and ``dst`` are N x 2 (N >= 2).
    Returns the 2 x 3 matrix ``M`` with ``dst ~= src @ M[:, :2].T + M[:, 2]``.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise FaceParseError(f"similarity_transform needs two N x 2 arrays (N >= 2), got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    var_s = (xs**2).sum() / len(src)
    if var_s <= 1e-12:
        raise FaceParseError("similarity_transform: the source points all coincide (degenerate landmarks)")
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        s[1, 1] = -1.0
    rot = u @ s @ vt
    scale = float(np.trace(np.diag(d) @ s) / var_s)
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a 2 x 3 affine matrix."""
    return cv2.invertAffineTransform(np.asarray(m, dtype=np.float64))


def apply_affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply a 2 x 3 affine matrix to N x 2 points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(m, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def alignment_matrix(points5: np.ndarray, size: int, scale: float = 1.0) -> np.ndarray:
    """2 x 3 matrix sending the five points onto :data:`TEMPLATE_5` in a ``size`` x ``size`` crop.

    Pixel centres are at integer coordinates (OpenCV convention); ``scale`` > 1 zooms out.
    """
    pts = np.asarray(points5, dtype=np.float64)
    if pts.shape != (5, 2) or not np.all(np.isfinite(pts)):
        raise FaceParseError(f"face alignment needs 5 finite (x, y) points, got an array of shape {pts.shape}")
    if scale <= 0:
        raise FaceParseError(f"alignment scale must be > 0, got {scale}")
    centre = np.array([0.5, 0.5])
    dst = ((TEMPLATE_5 - centre) / scale + centre) * size - 0.5
    return similarity_transform(pts, dst)


def align_sample(
    raw: dict[str, Any], points5: np.ndarray, size: int, scale: float = 1.0, mask_fill: int = 0
) -> dict[str, Any]:
    """Warp a raw sample (numpy arrays, as ``FaceDataset.load_raw`` returns them) to an aligned crop.

    ``image`` is warped bilinearly (black outside the source), ``mask`` / ``occlusion`` /
    ``superpixels`` with nearest neighbour (``mask`` outside the source becomes ``mask_fill``,
    background by default; pass 255 to ignore those pixels), ``landmarks`` and ``face_box`` by the
    same matrix. ``meta`` gains ``align_matrix`` (original -> crop), ``align_inverse``
    (crop -> original), ``align_size`` and keeps ``orig_size`` (h, w) of the original image.
    """
    m = alignment_matrix(points5, size, scale)
    out = dict(raw)
    image = raw["image"]
    meta = dict(raw.get("meta", {}))
    meta.setdefault("orig_size", (int(image.shape[0]), int(image.shape[1])))
    out["image"] = cv2.warpAffine(
        image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    for key, fill in (("mask", mask_fill), ("occlusion", 0), ("superpixels", -1)):
        if key in raw and raw[key] is not None:
            arr = np.asarray(raw[key])
            dtype = arr.dtype
            work = arr.astype(np.float32) if arr.dtype not in (np.uint8, np.float32) else arr
            warped = cv2.warpAffine(
                work, m, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
            )
            out[key] = warped.astype(dtype)
    if raw.get("landmarks") is not None:
        out["landmarks"] = apply_affine(raw["landmarks"], m).astype(np.float32)
    if raw.get("face_box") is not None:
        x0, y0, x1, y1 = np.asarray(raw["face_box"], dtype=np.float64)
        corners = apply_affine(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]), m)
        out["face_box"] = np.concatenate([corners.min(0), corners.max(0)]).astype(np.float32)
    meta["align_matrix"] = m.tolist()
    meta["align_inverse"] = invert_affine(m).tolist()
    meta["align_size"] = int(size)
    out["meta"] = meta
    return out


def warp_to_original(
    pred: torch.Tensor | np.ndarray,
    inverse: np.ndarray | list,
    orig_size: tuple[int, int],
    align_size: int | None = None,
) -> torch.Tensor:
    """Warp a prediction on the aligned crop back onto the original image.

    Args:
        pred: ``K x h x w`` float logits/probabilities (bilinear) or ``h x w`` integer labels
            (nearest neighbour). ``h = w`` may differ from ``align_size`` (e.g. the model ran at
            another resolution); coordinates are rescaled.
        inverse: ``meta["align_inverse"]`` (crop -> original 2 x 3 matrix).
        orig_size: ``(H, W)`` of the original image.
        align_size: ``meta["align_size"]``; defaults to the prediction's width.

    Returns a tensor ``K x H x W`` (or ``H x W``); pixels of the original image that fall outside
    the crop get logits 0 (labels: 255, ignore).
    """
    t = torch.as_tensor(pred)
    labels = t.dim() == 2
    x = t[None, None].float() if labels else t[None].float()
    h, w = int(x.shape[-2]), int(x.shape[-1])
    size = float(align_size or w)
    H, W = int(orig_size[0]), int(orig_size[1])
    # original pixel (u, v) -> crop pixel: forward matrix = inverse of ``inverse``.
    fwd = invert_affine(np.asarray(inverse, dtype=np.float64))
    ys, xs = np.meshgrid(np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64), indexing="ij")
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    crop = apply_affine(pts, fwd)
    # crop pixel at resolution ``size`` -> prediction pixel at (w, h): pixel-centre rescale.
    px = (crop[:, 0] + 0.5) * (w / size) - 0.5
    py = (crop[:, 1] + 0.5) * (h / size) - 0.5
    gx = (px + 0.5) / w * 2 - 1
    gy = (py + 0.5) / h * 2 - 1
    grid = torch.from_numpy(np.stack([gx, gy], 1).reshape(1, H, W, 2)).float()
    mode = "nearest" if labels else "bilinear"
    if labels:
        out = F.grid_sample(x + 1, grid, mode=mode, padding_mode="zeros", align_corners=False)
        out = out[0, 0].round().long() - 1
        out[out < 0] = IGNORE_INDEX
        return out
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)[0]


ALIGN_MODES = (False, True, "similarity", "tanh")


def maybe_align(
    raw: dict[str, Any],
    points5: np.ndarray | None,
    align: bool | str,
    size: int | None,
    scale: float = 1.0,
    source: str = "",
) -> dict[str, Any]:
    """Adapter helper: align ``raw`` when ``align`` is set (``size`` defaults to 512).

    ``align=True`` / ``"similarity"``: 5-point similarity (:func:`align_sample`); ``"tanh"``: the RoI
    tanh-warp (:func:`faceparse.data.tanh_warp.tanh_warp_sample`, the SegFace/FaRL LaPa geometry).
    """
    if not align:
        return raw
    if align not in ALIGN_MODES:
        raise FaceParseError(f"align={align!r}; expected False, True/'similarity' or 'tanh'")
    if points5 is None:
        raise FaceParseError(f"align={align!r} needs landmarks, but {source or 'this sample'} has none")
    if align == "tanh":
        from faceparse.data.tanh_warp import tanh_warp_sample

        return tanh_warp_sample(raw, points5, int(size or 512), scale=scale)
    return align_sample(raw, points5, int(size or 512), scale)


def square_box(x0: float, y0: float, x1: float, y1: float, factor: float) -> tuple[int, int, int, int]:
    """Square box ``factor`` times the larger side of (x0, y0, x1, y1) (inclusive pixel box),
    centred on it: returns integer (left, top, right, bottom) with right/bottom exclusive."""
    w, h = x1 - x0 + 1, y1 - y0 + 1
    cx, cy = x0 + w / 2.0, y0 + h / 2.0
    side = max(1, int(max(w, h) * factor))
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    return left, top, left + side, top + side


def crop_sample(raw: dict[str, Any], box: tuple[int, int, int, int], mask_fill: int = IGNORE_INDEX) -> dict[str, Any]:
    """Crop a raw sample to an integer box (may extend past the image: padded, mask with ``mask_fill``).

    ``meta["crop_box"]`` keeps the box in original pixels so a prediction on the crop can be pasted
    back (resize it to the box size, then paste at (left, top)).
    """
    left, top, right, bottom = box
    h, w = raw["image"].shape[:2]
    out = dict(raw)
    pad = (max(0, -top), max(0, bottom - h), max(0, -left), max(0, right - w))

    def cut(arr: np.ndarray, fill: int) -> np.ndarray:
        if any(pad):
            widths = [(pad[0], pad[1]), (pad[2], pad[3])] + [(0, 0)] * (arr.ndim - 2)
            arr = np.pad(arr, widths, mode="constant", constant_values=fill)
        return np.ascontiguousarray(arr[top + pad[0] : bottom + pad[0], left + pad[2] : right + pad[2]])

    out["image"] = cut(raw["image"], 0)
    for key, fill in (("mask", mask_fill), ("occlusion", 0), ("superpixels", -1)):
        if raw.get(key) is not None:
            out[key] = cut(np.asarray(raw[key]), fill)
    if raw.get("landmarks") is not None:
        out["landmarks"] = (np.asarray(raw["landmarks"], np.float32) - np.array([left, top], np.float32)).astype(
            np.float32
        )
    if raw.get("face_box") is not None:
        out["face_box"] = np.asarray(raw["face_box"], np.float32) - np.array([left, top, left, top], np.float32)
    meta = dict(raw.get("meta", {}))
    meta.setdefault("orig_size", (int(h), int(w)))
    meta["crop_box"] = [int(left), int(top), int(right), int(bottom)]
    out["meta"] = meta
    return out
