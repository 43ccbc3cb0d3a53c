"""Colour label maps and overlay them on images."""

from __future__ import annotations

import numpy as np

from faceparse.labels import LabelSet, get_label_set


def colorize(mask: np.ndarray, label_set: LabelSet | str = "celebamask_hq") -> np.ndarray:
    """RGB uint8 image of a label map using the label set's palette."""
    return get_label_set(label_set).colorize(mask)


def overlay(
    image: np.ndarray, mask: np.ndarray, label_set: LabelSet | str = "celebamask_hq", alpha: float = 0.5
) -> np.ndarray:
    """Blend the colourised label map over an RGB uint8 image; background stays untouched."""
    ls = get_label_set(label_set)
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[:2] != mask.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
    color = ls.colorize(mask).astype(np.float32)
    out = image.astype(np.float32)
    fg = (mask != ls.background)[..., None]
    out = np.where(fg, (1 - alpha) * out + alpha * color, out)
    return np.clip(out, 0, 255).astype(np.uint8)
