"""The one image reader of faceparse: any file or array in, ``H x W x 3`` uint8 RGB out.

Pillow decodes the file (so decoder failures become Python exceptions, never ``libpng error:``
lines on stderr); the pixel values are then scaled by what they are, not clipped:

- 8-bit images are kept; 16-bit images (``I;16`` PNG/TIFF, uint16 arrays) are scaled by 255/65535;
  float images are taken as ``[0, 1]`` when their maximum is <= 1, else as ``0..255`` (clipped);
  NaN or infinite pixels are an error;
- grayscale, grayscale+alpha, RGBA (alpha dropped), palette and CMYK images are converted to RGB;
- with ``exif=True`` (photos given to ``predict``) the EXIF orientation is applied, so a portrait
  photo taken with a rotated phone is parsed upright. Dataset adapters read with ``exif=False``
  because their label maps are stored in the file's pixel order.

Hand-written: Pillow's ``convert("RGB")`` clips 16-bit values instead of scaling them, and
neither Pillow nor OpenCV applies one policy for every mode, so this small module does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from faceparse.errors import FaceParseError

# ImageNet statistics: the input normalisation of every ImageNet-initialised backbone.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


def open_image(path: str | os.PathLike, expected: str, draft: tuple[int, int] | None = None) -> Any:
    """Open and fully decode an image file with Pillow; any failure is a FaceParseError naming the file.

    ``draft`` (w, h): a JPEG may be decoded at a reduced scale (1/2, 1/4, 1/8) as long as it stays at
    least that large. Used for photos and label maps alike (label maps keep their mode).
    """
    from PIL import Image, ImageFile

    path = Path(path)
    if not path.is_file():
        raise FaceParseError(f"missing file: '{path}' does not exist (expected {expected})")
    # Some libraries switch PIL's LOAD_TRUNCATED_IMAGES on globally; a truncated file must still fail.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        img = Image.open(path)
        if draft is not None and img.format == "JPEG":
            img.draft("RGB", draft)  # DCT-domain downscale to at least ``draft``
        img.load()  # decodes fully: a truncated file raises here instead of giving a grey bottom half
    except Exception as exc:
        raise FaceParseError(f"cannot read '{path}' (expected {expected}): {type(exc).__name__}: {exc}") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return img


_open = open_image  # the name used before open_image was public


def array_to_rgb(arr: Any, where: str = "image") -> np.ndarray:
    """Scale and convert an array (``H x W``, ``H x W x 1/2/3/4``; uint8, uint16, int, float) to RGB uint8."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 2:  # grey + alpha
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise FaceParseError(
            f"{where}: expected an H x W x 3 (RGB), H x W x 4 or H x W image, got an array of shape {arr.shape}"
        )
    arr = arr[..., :3]
    if arr.size == 0:
        raise FaceParseError(f"{where}: the image is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_:
        return np.ascontiguousarray(arr.astype(np.uint8) * 255)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise FaceParseError(f"{where}: the image has NaN or infinite values")
        scale = 255.0 if float(arr.max()) <= 1.0 else 1.0
        return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.dtype.itemsize == 1:  # int8
            return np.clip(arr, 0, 255).astype(np.uint8)
        peak = int(arr.max()) if arr.size else 0
        # 16-bit content (uint16 dtype, or 16-bit values stored in a wider integer) scales by 65535
        top = 65535 if (arr.dtype == np.uint16 or arr.dtype == np.int16 or peak > 255) else 255
        if peak > 65535:
            top = int(np.iinfo(arr.dtype).max)
        return np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    raise FaceParseError(f"{where}: unsupported image dtype {arr.dtype}")


def read_image(path: str | os.PathLike, exif: bool = False, expected: str = "an image file") -> np.ndarray:
    """Read an image file as ``H x W x 3`` uint8 RGB, scaled by its real range (see the module doc).

    Raises :class:`~faceparse.errors.FaceParseError` naming the file when it is missing, truncated
    or not an image.
    """
    from PIL import ImageOps

    path = Path(path)
    img = _open(path, expected)
    if exif:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:
            pass
    return pil_to_rgb(img, where=f"'{path}'")


def pil_to_rgb(img: Any, where: str = "image") -> np.ndarray:
    """A decoded PIL image as RGB uint8, 16-bit and float modes scaled (not clipped)."""
    mode = img.mode
    if mode in ("RGB", "L"):
        arr = np.asarray(img)
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img).astype(np.uint16)
    elif mode == "I":
        arr = np.asarray(img)
    elif mode == "F":
        arr = np.asarray(img)
    elif mode in ("RGBA", "LA", "RGBa", "La"):
        arr = np.asarray(img)[..., :-1] if mode.startswith("RGB") else np.asarray(img)[..., 0]
    elif mode == "1":
        arr = np.asarray(img).astype(np.uint8) * 255
    else:  # P, PA, CMYK, YCbCr, LAB, HSV: Pillow's conversion is exact for 8-bit modes
        arr = np.asarray(img.convert("RGB"))
    return array_to_rgb(arr, where=where)


def to_rgb(image: Any) -> np.ndarray:
    """A path, a numpy array or a PIL image as RGB uint8 (paths are read with EXIF orientation)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, exif=True)
    if hasattr(image, "convert") and hasattr(image, "size") and hasattr(image, "mode"):  # PIL
        return pil_to_rgb(image)
    return array_to_rgb(image)
