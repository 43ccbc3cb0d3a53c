"""RoI tanh-warp of a face and its exact inverse, for datasets (training/evaluation) and inference.

Lin et al., "Face Parsing with RoI Tanh-Warping" (CVPR 2019), Sec. 3.1: image coordinates are first
normalised to the face region of interest -- a rectangle, rotated and scaled from five facial
landmarks, that becomes ``[-1, 1]^2`` -- and then every normalised coordinate is passed through
``tanh``. The RoI (central vision) keeps most of the output resolution, and the *whole* rest of the
image (peripheral vision: hair, shoulders, other faces) is compressed into the border of the
``S x S`` output instead of being cut off.

Here, for a normalised coordinate ``u = A @ (x, y, 1)`` (``A``: :func:`roi_matrix`, the least-squares
similarity sending the five landmarks onto :data:`TANH_TEMPLATE_5`), each axis is warped by::

    w_f(u) = u                                                  if |u| <= 1 - f
    w_f(u) = sign(u) * ((1 - f) + f * tanh((|u| - (1 - f)) / f))  otherwise

and the crop pixel is ``c = (w_f(u) + 1) * S / 2 - 0.5`` (pixel centres at integers, as in
:mod:`faceparse.data.align`). ``f = 1`` is Lin et al.'s pure ``tanh(u)``; ``f = 0`` is a plain
similarity crop of the RoI; facer's FaRL LaPa parser uses ``f = 0.8`` with the template below
(facts read from FacePerceiver/facer ``facer/transform.py`` and ``facer/face_parsing/farl.py``;
the code here is written independently). The inverse is ``u = w_f^{-1}(v)`` with ``atanh`` on the
warped part (its argument clamped to ``1 - 1e-9`` at the border, which maps to infinity), then
``p = A^{-1} u``. Because ``w_f`` maps the whole plane into ``(-1, 1)``, every image pixel has a
place in the crop: pasting a prediction back (:func:`unwarp`) covers the whole image.

Written by hand (no library provides the tanh warp); resampling is OpenCV's ``remap`` (images) and
PyTorch's ``grid_sample`` (probabilities/logits, exact bilinear).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from faceparse.data.align import invert_affine, similarity_transform
from faceparse.errors import FaceParseError

#: Five landmarks (left eye, right eye, nose tip, left / right mouth corner; image left/right) in
#: normalised RoI coordinates ``[-1, 1]^2``: facer's 512-pixel "standard face" points
#: ``(196, 226), (316, 226), (256, 286), (220, 360.4), (292, 360.4)`` divided by 256, minus 1.
TANH_TEMPLATE_5 = (
    np.array([[196.0, 226.0], [316.0, 226.0], [256.0, 286.0], [220.0, 360.4], [292.0, 360.4]]) / 256.0 - 1.0
)

#: facer's warp factor for its FaRL LaPa parser (``f`` above).
DEFAULT_WARP_FACTOR = 0.8

_EPS = 1e-9


def _check_factor(factor: float) -> float:
    factor = float(factor)
    if not 0.0 <= factor <= 1.0:
        raise FaceParseError(f"tanh warp factor must be in [0, 1] (0: plain crop, 1: pure tanh), got {factor}")
    return factor


def tanh_warp_coords(u: np.ndarray, factor: float = DEFAULT_WARP_FACTOR) -> np.ndarray:
    """``w_f(u)`` of the module docstring, element-wise (Lin et al. CVPR 2019, Sec. 3.1, with facer's factor)."""
    u = np.asarray(u, dtype=np.float64)
    f = _check_factor(factor)
    if f == 0.0:
        return u.copy()
    a = np.abs(u)
    lin = 1.0 - f
    out = np.where(a <= lin, a, lin + f * np.tanh((a - lin) / f))
    return np.sign(u) * out


def inverse_tanh_warp_coords(v: np.ndarray, factor: float = DEFAULT_WARP_FACTOR) -> np.ndarray:
    """``w_f^{-1}(v)``: the exact inverse of :func:`tanh_warp_coords` for ``|v| < 1`` (clamped at the border)."""
    v = np.asarray(v, dtype=np.float64)
    f = _check_factor(factor)
    if f == 0.0:
        return v.copy()
    a = np.abs(v)
    lin = 1.0 - f
    t = np.clip((a - lin) / f, 0.0, 1.0 - _EPS)
    out = np.where(a <= lin, a, lin + f * np.arctanh(t))
    return np.sign(v) * out


def roi_matrix(points5: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """2 x 3 similarity from image pixels to normalised RoI coordinates (the RoI is ``[-1, 1]^2``).

    Least-squares fit (:func:`faceparse.data.align.similarity_transform`) of the five landmarks onto
    :data:`TANH_TEMPLATE_5` divided by ``scale`` (> 1 zooms out: more context in the linear part).
    """
    pts = np.asarray(points5, dtype=np.float64)
    if pts.shape != (5, 2) or not np.all(np.isfinite(pts)):
        raise FaceParseError(f"the RoI tanh-warp needs 5 finite (x, y) landmarks, got an array of shape {pts.shape}")
    if scale <= 0:
        raise FaceParseError(f"tanh-warp scale must be > 0, got {scale}")
    return similarity_transform(pts, TANH_TEMPLATE_5 / float(scale))


def image_to_crop(points: np.ndarray, matrix: np.ndarray, size: int, factor: float = DEFAULT_WARP_FACTOR) -> np.ndarray:
    """Image pixel coordinates (N x 2) -> crop pixel coordinates in the ``size x size`` warped crop."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(matrix, dtype=np.float64)
    u = pts @ m[:, :2].T + m[:, 2]
    return (tanh_warp_coords(u, factor) + 1.0) * (size / 2.0) - 0.5


def crop_to_image(points: np.ndarray, matrix: np.ndarray, size: int, factor: float = DEFAULT_WARP_FACTOR) -> np.ndarray:
    """Crop pixel coordinates (N x 2) -> image pixel coordinates (inverse of :func:`image_to_crop`)."""
    c = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    u = inverse_tanh_warp_coords((c + 0.5) * (2.0 / size) - 1.0, factor)
    inv = invert_affine(matrix)
    return u @ inv[:, :2].T + inv[:, 2]


def _grid(h: int, w: int) -> np.ndarray:
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], 1)


def warp_image(
    image: np.ndarray,
    matrix: np.ndarray,
    size: int,
    factor: float = DEFAULT_WARP_FACTOR,
    nearest: bool = False,
    fill: float = 0,
) -> np.ndarray:
    """Warp ``image`` (``H x W [x C]``) into the ``size x size`` tanh-warped crop.

    Bilinear (``nearest=False``, images, probabilities) or nearest neighbour (label maps); crop
    pixels whose source lies outside the image get ``fill``. When the RoI's scale shrinks the image
    by more than 2x, the image is first reduced with ``INTER_AREA`` (anti-aliasing).
    """
    src = crop_to_image(_grid(size, size), matrix, size, factor)
    arr = np.asarray(image)
    if not nearest:
        # local scale of the linear part: crop pixels per image pixel
        m = np.asarray(matrix, dtype=np.float64)
        ratio = float(np.sqrt(abs(np.linalg.det(m[:, :2])))) * size / 2.0
        if ratio < 0.5:
            r = 2.0 * ratio
            h, w = arr.shape[:2]
            arr = cv2.resize(arr, (max(1, round(w * r)), max(1, round(h * r))), interpolation=cv2.INTER_AREA)
            rx, ry = arr.shape[1] / w, arr.shape[0] / h
            src = (src + 0.5) * np.array([rx, ry]) - 0.5
    map_x = src[:, 0].reshape(size, size).astype(np.float32)
    map_y = src[:, 1].reshape(size, size).astype(np.float32)
    dtype = arr.dtype
    work = arr if dtype in (np.uint8, np.uint16, np.int16, np.float32) else arr.astype(np.float32)
    out = cv2.remap(
        work,
        map_x,
        map_y,
        interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=fill,
    )
    return out.astype(dtype, copy=False)


def unwarp_grid(
    matrix: np.ndarray,
    size: int,
    orig_size: tuple[int, int],
    factor: float = DEFAULT_WARP_FACTOR,
) -> torch.Tensor:
    """``grid_sample`` grid (``1 x H x W x 2``, ``align_corners=False``) sampling a crop prediction at
    every original pixel; valid for a prediction of any resolution (normalised coordinates)."""
    H, W = (int(v) for v in orig_size)
    c = image_to_crop(_grid(H, W), matrix, size, factor)
    gx = (c[:, 0] + 0.5) / size * 2.0 - 1.0
    gy = (c[:, 1] + 0.5) / size * 2.0 - 1.0
    return torch.from_numpy(np.stack([gx, gy], 1).reshape(1, H, W, 2)).float()


def unwarp(
    pred: torch.Tensor | np.ndarray,
    matrix: np.ndarray | list,
    orig_size: tuple[int, int],
    size: int | None = None,
    factor: float = DEFAULT_WARP_FACTOR,
) -> torch.Tensor:
    """Paste a prediction on the warped crop back onto the original image (the exact inverse mapping).

    Args:
        pred: ``K x h x w`` float logits/probabilities (bilinear) or ``h x w`` integer labels
            (nearest neighbour); ``h = w`` may differ from ``size`` (coordinates are rescaled).
        matrix: the RoI matrix (:func:`roi_matrix`, ``meta["tanh_matrix"]``).
        orig_size: ``(H, W)`` of the original image.
        size: crop size the matrix was used with (``meta["tanh_size"]``); defaults to ``w``.
        factor: the warp factor used for the crop.

    Every original pixel lands inside the crop (the warp maps the whole plane into it), so the
    output has no hole; the crop border is extended (``padding_mode="border"``) for the half pixel
    at its edge.
    """
    t = torch.as_tensor(pred)
    labels = t.dim() == 2
    x = t[None, None].float() if labels else t[None].float()
    size = int(size or x.shape[-1])
    grid = unwarp_grid(np.asarray(matrix, dtype=np.float64), size, orig_size, factor)
    if labels:
        out = F.grid_sample(x, grid, mode="nearest", padding_mode="border", align_corners=False)
        return out[0, 0].round().long()
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]


def tanh_warp_sample(
    raw: dict[str, Any],
    points5: np.ndarray,
    size: int,
    factor: float = DEFAULT_WARP_FACTOR,
    scale: float = 1.0,
    mask_fill: int = 0,
) -> dict[str, Any]:
    """Tanh-warp a raw sample (numpy arrays, as ``FaceDataset.load_raw`` returns them) to ``size x size``.

    The counterpart of :func:`faceparse.data.align.align_sample`: ``image`` bilinearly, ``mask`` /
    ``occlusion`` / ``superpixels`` by nearest neighbour (``mask`` outside the image: ``mask_fill``),
    ``landmarks`` and ``face_box`` (bounding box of the warped corners) by the same mapping.
    ``meta`` gains ``warp="tanh"``, ``tanh_matrix``, ``tanh_size``, ``tanh_factor`` and keeps
    ``orig_size`` so that :func:`unwarp` (and ``faceparse.evaluate``) can paste predictions back.
    """
    m = roi_matrix(points5, scale)
    out = dict(raw)
    image = raw["image"]
    meta = dict(raw.get("meta", {}))
    meta.setdefault("orig_size", (int(image.shape[0]), int(image.shape[1])))
    out["image"] = warp_image(image, m, size, factor)
    for key, fill in (("mask", mask_fill), ("occlusion", 0), ("superpixels", -1)):
        if raw.get(key) is not None:
            arr = np.asarray(raw[key])
            work = arr.astype(np.float32) if arr.dtype not in (np.uint8, np.float32) else arr
            out[key] = warp_image(work, m, size, factor, nearest=True, fill=fill).astype(arr.dtype)
    if raw.get("landmarks") is not None:
        out["landmarks"] = image_to_crop(raw["landmarks"], m, size, factor).astype(np.float32)
    if raw.get("face_box") is not None:
        x0, y0, x1, y1 = np.asarray(raw["face_box"], dtype=np.float64)
        corners = image_to_crop(np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]), m, size, factor)
        out["face_box"] = np.concatenate([corners.min(0), corners.max(0)]).astype(np.float32)
    meta.update(warp="tanh", tanh_matrix=m.tolist(), tanh_size=int(size), tanh_factor=float(factor))
    out["meta"] = meta
    return out


def tanh_to_original(pred: torch.Tensor | np.ndarray, meta: dict[str, Any]) -> torch.Tensor:
    """:func:`unwarp` driven by a sample's ``meta`` (``tanh_matrix``, ``tanh_size``, ``tanh_factor``, ``orig_size``).

    Every original pixel has a place in the crop, so no pixel comes back unknown.
    """
    H, W = (int(v) for v in meta["orig_size"])
    return unwarp(
        pred, meta["tanh_matrix"], (H, W), meta.get("tanh_size"), meta.get("tanh_factor", DEFAULT_WARP_FACTOR)
    )


__all__ = [
    "DEFAULT_WARP_FACTOR",
    "TANH_TEMPLATE_5",
    "crop_to_image",
    "image_to_crop",
    "inverse_tanh_warp_coords",
    "roi_matrix",
    "tanh_to_original",
    "tanh_warp_coords",
    "tanh_warp_sample",
    "unwarp",
    "unwarp_grid",
    "warp_image",
]
