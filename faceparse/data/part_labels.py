"""Part Labels (Kae et al., "Augmenting CRFs with Boltzmann Machine Shape Priors for Image
Labeling", CVPR 2013): 2,927 LFW funneled faces, 3 classes (background, face, hair).

Layout (as released, all under one root)::

    lfw_funneled/<Name>/<Name>_<NNNN>.jpg                                 250 x 250
    parts_lfw_funneled_gt_images/<Name>_<NNNN>.ppm                        colour-coded labels
    parts_lfw_funneled_superpixels_mat/<Name>/<Name>_<NNNN>.dat           250 x 250 superpixel ids
    parts_train.txt / parts_validation.txt / parts_test.txt                lines "Name_Surname 4"

Label colours: red (255, 0, 0) hair, green (0, 255, 0) face, blue (0, 0, 255) background. A pixel is
decoded to the colour whose channel is the largest (argmax), but only if it lies within
``colour_tolerance`` (max abs channel difference) of that pure colour: anything else is an unknown
colour and raises, naming the file and the pixel. Splits 1,500 / 500 / 927.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceparse.data.base import FaceDataset
from faceparse.data.io import (
    check_has_labels,
    check_same_size,
    raise_if_problems,
    read_rgb,
    read_rgb_labels,
    require_dir,
    require_file,
)
from faceparse.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from faceparse.errors import FaceParseError
from faceparse.labels import get_label_set
from faceparse.registry import DATASETS

SPLIT_FILES = {"train": "parts_train.txt", "val": "parts_validation.txt", "test": "parts_test.txt"}
IMAGE_DIR, LABEL_DIR, SP_DIR = "lfw_funneled", "parts_lfw_funneled_gt_images", "parts_lfw_funneled_superpixels_mat"
# channel argmax -> class: R (0) hair 2, G (1) face 1, B (2) background 0
_CHANNEL_TO_CLASS = np.array([2, 1, 0], dtype=np.uint8)
_PURE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.int16)


def decode_ppm_labels(rgb: np.ndarray, path: Path | str, tolerance: int = 64) -> np.ndarray:
    """Colour-coded Part Labels image (H x W x 3) -> label map 0/1/2; unknown colours raise."""
    rgb = np.asarray(rgb)
    ch = np.argmax(rgb, axis=2)
    diff = np.abs(rgb.astype(np.int16) - _PURE[ch]).max(axis=2)
    bad = diff > tolerance
    if bad.any():
        ys, xs = np.nonzero(bad)
        colours = {tuple(int(v) for v in rgb[y, x]) for y, x in zip(ys[:200], xs[:200])}
        raise FaceParseError(
            f"'{path}': {int(bad.sum())} pixel(s) of unknown colour, e.g. {sorted(colours)[:3]} at (x={xs[0]}, y={ys[0]}); "
            "expected red (255,0,0) hair, green (0,255,0) face or blue (0,0,255) background "
            f"(within {tolerance} per channel)"
        )
    return _CHANNEL_TO_CLASS[ch]


def read_superpixels(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Whitespace-separated integer matrix of superpixel ids (one text row per image row)."""
    require_file(path, "Part Labels superpixel map")
    try:
        values = np.loadtxt(path, dtype=np.int64, ndmin=2)  # C parser, 3x faster than str.split
    except ValueError as exc:
        raise FaceParseError(f"'{path}': expected whitespace-separated integers: {exc}") from None
    if values.size != shape[0] * shape[1]:
        raise FaceParseError(
            f"'{path}': {values.size} superpixel ids, expected {shape[0]} x {shape[1]} = {shape[0] * shape[1]} "
            "to match its image"
        )
    return values.reshape(shape)


def read_part_split(path: Path) -> list[tuple[str, str]]:
    """``(person, stem)`` pairs from a split file with lines ``Name_Surname 4``."""
    require_file(path, "Part Labels split file")
    out = []
    for n, line in enumerate(path.read_text().splitlines()):
        fields = line.split()
        if not fields:
            continue
        try:
            person, num = fields[0], int(fields[1])
        except (ValueError, IndexError):
            raise FaceParseError(f"'{path}' line {n + 1}: expected 'Name_Surname number', found {line!r}") from None
        out.append((person, f"{person}_{num:04d}"))
    return out


@DATASETS.register("part_labels")
class PartLabelsDataset(FaceDataset):
    """Part Labels (LFW) with superpixels.

    Args:
        root: folder holding ``lfw_funneled``, ``parts_lfw_funneled_gt_images``, the split files...
        split: ``train``, ``val`` or ``test``.
        superpixels: put the superpixel map in the sample (``superpixels``); needs the .dat files.
        colour_tolerance: accepted per-channel distance to the pure label colours.
        strict: raise on indexing problems or record them in ``self.problems``.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        image_size: int | None = 128,
        augment: bool = False,
        transform: Any = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        superpixels: bool = True,
        colour_tolerance: int = 64,
        strict: bool = True,
    ) -> None:
        super().__init__(image_size=image_size, augment=augment, transform=transform, mean=mean, std=std)
        if split not in SPLIT_FILES:
            raise FaceParseError(f"Part Labels split must be one of {list(SPLIT_FILES)}, got {split!r}")
        self.root = require_dir(root, "Part Labels root")
        self.split = split
        self.label_set = get_label_set("part_labels")
        self.landmark_flip = None
        self.superpixels, self.colour_tolerance = superpixels, int(colour_tolerance)
        self.problems: list[str] = []
        require_dir(self.root / IMAGE_DIR, "LFW funneled images")
        require_dir(self.root / LABEL_DIR, "Part Labels ground truth")
        if superpixels:
            require_dir(self.root / SP_DIR, "Part Labels superpixels (pass superpixels=False to skip them)")
        self.items: list[tuple[str, str]] = []
        for person, stem in read_part_split(self.root / SPLIT_FILES[split]):
            ok = True
            for path, what in (
                (self.root / IMAGE_DIR / person / f"{stem}.jpg", "image"),
                (self.root / LABEL_DIR / f"{stem}.ppm", "label"),
                *(((self.root / SP_DIR / person / f"{stem}.dat", "superpixels"),) if superpixels else ()),
            ):
                if not path.is_file():
                    self.problems.append(f"missing {what} '{path}' for face '{stem}' listed in {SPLIT_FILES[split]}")
                    ok = False
            if ok:
                self.items.append((person, stem))
        raise_if_problems(self.problems, f"Part Labels {split} at '{self.root}'", strict)

    def __len__(self) -> int:
        return len(self.items)

    def load_raw(self, index: int) -> dict[str, Any]:
        person, stem = self.items[index]
        img_path = self.root / IMAGE_DIR / person / f"{stem}.jpg"
        lbl_path = self.root / LABEL_DIR / f"{stem}.ppm"
        image = read_rgb(img_path)
        rgb = read_rgb_labels(lbl_path)
        check_same_size(rgb, image.shape[:2], lbl_path, "label image")
        mask = decode_ppm_labels(rgb, lbl_path, self.colour_tolerance)
        check_has_labels(mask, lbl_path, what="label image (all blue = background)")
        raw: dict[str, Any] = {
            "image": image,
            "mask": mask,
            "labels": self.labels_from_mask(mask, 3),
            "meta": {"name": stem, "image_file": str(img_path), "label_file": str(lbl_path)},
        }
        if self.superpixels:
            sp = read_superpixels(self.root / SP_DIR / person / f"{stem}.dat", image.shape[:2])
            # int32 resizes twice as fast in OpenCV; the sample tensor is int64 as usual
            raw["superpixels"] = sp.astype(np.int32) if sp.max(initial=0) < 2**31 else sp
        return raw
