"""File reading helpers shared by the dataset adapters: every failure names the file and what was expected."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from faceparse.errors import FaceParseError
from faceparse.images import open_image, pil_to_rgb
from faceparse.labels import IGNORE_INDEX


def require_dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise FaceParseError(f"{what}: expected a folder at '{p}', but it does not exist")
    return p


def require_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FaceParseError(f"{what}: expected the file '{p}', but it does not exist")
    return p


def _open(path: Path, expected: str, draft: tuple[int, int] | None = None) -> Image.Image:
    return open_image(path, expected, draft=draft)  # the one decoder (faceparse.images)


def read_rgb(path: str | os.PathLike, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """H x W x 3 uint8 RGB; grayscale and palette images are converted.

    ``min_size`` (w, h): a JPEG may be decoded at a reduced scale (1/2, 1/4, 1/8) as long as it
    stays at least that large -- much faster when the caller downsamples anyway.
    """
    img = _open(Path(path), "a complete RGB or grayscale image", draft=min_size)
    if img.mode == "RGB":
        return np.array(img, dtype=np.uint8)
    return pil_to_rgb(img, where=f"'{path}'")  # 16-bit/float scaled by their range, not clipped


def read_gray(path: str | os.PathLike, expected: str = "a single-channel label image") -> np.ndarray:
    """H x W array of a label PNG: 'L'/'P'/'I' modes keep their values, RGB keeps the first channel
    only when the three channels are equal (a grey image saved as RGB)."""
    p = Path(path)
    img = _open(p, expected)
    if img.mode in ("L", "P", "I", "I;16", "1"):
        arr = np.array(img)  # a writable copy (np.asarray of a PIL image is read-only)
        return arr.astype(np.uint8) if img.mode == "1" else arr
    if img.mode in ("RGB", "RGBA", "LA"):
        arr = np.array(img)
        if img.mode == "LA":
            return arr[..., 0]
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])):
            raise FaceParseError(f"'{p}': expected {expected}, found a colour ({img.mode}) image")
        return arr[..., 0]
    raise FaceParseError(f"'{p}': expected {expected}, found PIL mode {img.mode}")


def read_rgb_labels(path: str | os.PathLike) -> np.ndarray:
    """H x W x 3 uint8 of a colour-coded label image (e.g. Part Labels .ppm); a 16-bit file is scaled
    by its range (65535 -> 255), not clipped, so its colours keep their meaning."""
    img = _open(Path(path), "a colour-coded label image")
    if img.mode == "RGB":
        return np.array(img, dtype=np.uint8)
    return pil_to_rgb(img, where=f"'{path}'")


def read_binary_mask(path: str | os.PathLike, expected: str = "a binary mask (0 / 255 or 0 / 1)") -> np.ndarray:
    """H x W uint8 0/1 of a binary mask stored either as 0/255 or as 0/1 (both occur in releases).

    Any other set of values (a soft or JPEG-compressed mask, a label map) is an error naming the file:
    thresholding it would silently move the boundary.
    """
    p = Path(path)
    m = read_gray(p, expected)
    values = np.unique(m)
    if set(values.tolist()) <= {0, 1}:
        return (m > 0).astype(np.uint8)
    if set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 65535}:
        return (m > 0).astype(np.uint8)
    raise FaceParseError(
        f"'{p}': expected {expected}, found the values {values[:8].tolist()}{' ...' if values.size > 8 else ''}"
    )


def check_finite_landmarks(points: np.ndarray, path: str | os.PathLike, what: str = "landmarks") -> np.ndarray:
    """Raise naming the file and the first point index when a landmark is NaN or infinite."""
    pts = np.asarray(points)
    bad = ~np.isfinite(pts)
    if bad.any():
        rows = np.nonzero(bad.reshape(len(pts), -1).any(axis=1))[0]
        raise FaceParseError(
            f"'{path}': {what} hold NaN or infinite values at point index {rows[0]}"
            + (f" (and {len(rows) - 1} more)" if len(rows) > 1 else "")
            + f": {pts[rows[0]].tolist()}"
        )
    return pts


def check_has_labels(mask: np.ndarray, path: str | os.PathLike, background: int = 0, what: str = "label map") -> None:
    """Raise when a label map is empty or labels nothing but background / ignore (an all-zero map is a
    broken file, never a face; training on it would silently teach 'no face')."""
    m = np.asarray(mask)
    if m.size == 0:
        raise FaceParseError(f"'{path}': the {what} is empty (shape {m.shape})")
    if not np.any((m != background) & (m != IGNORE_INDEX)):
        found = "all background (0)" if np.any(m == background) else "all ignore (255)"
        raise FaceParseError(f"'{path}': the {what} labels no face pixel: it is {found}")


def check_same_size(arr: np.ndarray, size: tuple[int, int], path: str | os.PathLike, what: str) -> None:
    if tuple(arr.shape[:2]) != tuple(size):
        raise FaceParseError(
            f"'{path}': {what} has size {arr.shape[1]}x{arr.shape[0]} (w x h), "
            f"expected {size[1]}x{size[0]} to match its image"
        )


def check_label_values(mask: np.ndarray, num_classes: int, path: str | os.PathLike) -> None:
    bad = np.unique(mask[(mask >= num_classes) & (mask != IGNORE_INDEX)])
    if bad.size:
        raise FaceParseError(
            f"'{path}': unknown label values {bad[:10].tolist()} "
            f"(expected 0..{num_classes - 1}, or {IGNORE_INDEX} for ignore)"
        )


def read_split_names(path: str | os.PathLike, what: str) -> list[str]:
    p = require_file(path, what)
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]


def pairs_to_permutation(n: int, pairs) -> np.ndarray:
    """Landmark mirror permutation of ``n`` points from ``(left, right)`` index pairs."""
    perm = np.arange(n, dtype=np.int64)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


def int_size(size) -> int | None:
    """The side of a square ``image_size`` (int or (h, w)), or None."""
    if size is None:
        return None
    return int(size) if isinstance(size, int) else int(size[0])


def summarise_problems(problems: list[str], where: str, limit: int = 10) -> str:
    """One message listing the first ``limit`` problems found while indexing a dataset."""
    head = "\n  ".join(problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return f"{len(problems)} problem(s) in {where}:\n  {head}{more}"


def raise_if_problems(problems: list[str], where: str, strict: bool) -> None:
    """In strict mode, raise one :class:`FaceParseError` listing every problem found."""
    if strict and problems:
        raise FaceParseError(summarise_problems(problems, where))
