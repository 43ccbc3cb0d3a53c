"""LaPa (Liu et al., "A New Dataset and Boundary-Attention Semantic Segmentation for Face Parsing",
AAAI 2020): 22,176 faces, 11 classes, 106 landmarks.

Layout (as the dataset ships)::

    LaPa/{train,val,test}/images/<name>.jpg
                         /labels/<name>.png       values 0..10
                         /landmarks/<name>.txt    first line "106", then 106 lines "x y"

Split sizes 18,176 / 2,000 / 2,000. Classes: background, skin, left eyebrow, right eyebrow,
left eye, right eye, nose, upper lip, inner mouth, lower lip, hair ("left" = image left).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceparse.data.align import FLIP_5, maybe_align
from faceparse.data.base import FaceDataset
from faceparse.data.io import (
    check_finite_landmarks,
    check_has_labels,
    check_label_values,
    check_same_size,
    int_size,
    pairs_to_permutation,
    raise_if_problems,
    read_gray,
    read_rgb,
    require_dir,
)
from faceparse.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from faceparse.errors import FaceParseError
from faceparse.labels import get_label_set
from faceparse.registry import DATASETS

# Mirror pairs of the 106-point layout of LaPa (the JD 106-point scheme): contour 0..32 reversed,
# upper brows 33..37 <-> 46..42, lower brows 38..41 <-> 50..47, nose bridge 51..54 on the axis,
# nostrils 55..59 <-> 65..61 (60 on the axis), eyes 66..70 <-> 79..75, 71..73 <-> 82..80,
# eye centres 74 <-> 83, outer lips 84..86 <-> 90..88 (87 on the axis), 91/92 <-> 95/94 (93),
# inner lips 96/97 <-> 100/99 (98), 101 <-> 103 (102), pupils 104 <-> 105.
# Source: the LaPa keypoint metadata of MMPose (configs/_base_/datasets/lapa.py, "swap" fields),
# checked against the 5-point definition below (74/104 and 83/105 are the two eyes, 84/90 the
# mouth corners, 54 the nose tip); the test suite checks that it is an involution and side-correct.
_LAPA_PAIRS = (
    [(i, 32 - i) for i in range(16)]
    + [(33 + i, 46 - i) for i in range(5)]
    + [(38 + i, 50 - i) for i in range(4)]
    + [(55 + i, 65 - i) for i in range(5)]
    + [(66 + i, 79 - i) for i in range(5)]
    + [(71 + i, 82 - i) for i in range(3)]
    + [(74, 83), (84, 90), (85, 89), (86, 88), (91, 95), (92, 94), (96, 100), (97, 99), (101, 103), (104, 105)]
)
LAPA_FLIP_106 = pairs_to_permutation(106, _LAPA_PAIRS)


def lapa_five_points(lmk106: np.ndarray) -> np.ndarray:
    """5 points from the 106 (0-based): eyes mean(74, 104), mean(83, 105), nose 54, mouth 84, 90."""
    p = np.asarray(lmk106, dtype=np.float64)
    return np.stack([(p[74] + p[104]) / 2, (p[83] + p[105]) / 2, p[54], p[84], p[90]]).astype(np.float32)


def read_lapa_landmarks(path: Path, n: int = 106) -> np.ndarray:
    """Parse a LaPa landmark file (first line the count, then ``x y`` per line)."""
    if not path.is_file():
        raise FaceParseError(f"missing landmark file '{path}' (expected '{n}' then {n} lines 'x y')")
    try:
        lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
        count = int(lines[0][0])
        pts = np.array([[float(v) for v in ln[:2]] for ln in lines[1:]], dtype=np.float32)
    except (ValueError, IndexError) as exc:
        raise FaceParseError(f"'{path}': cannot parse landmarks (expected '{n}' then {n} lines 'x y'): {exc}") from None
    if count != n or pts.shape != (n, 2):
        raise FaceParseError(f"'{path}': expected {n} landmarks, found header {count} and {len(pts)} points")
    return check_finite_landmarks(pts, path)


def _resolve_lapa_root(root: str | Path) -> Path:
    r = require_dir(root, "LaPa root")
    if (r / "LaPa").is_dir() and not (r / "train").is_dir():
        r = r / "LaPa"
    return r


@DATASETS.register("lapa")
class LaPaDataset(FaceDataset):
    """LaPa in its released layout.

    Args:
        root: the ``LaPa`` folder (or its parent).
        split: ``train``, ``val`` or ``test``.
        landmarks: ``"106"`` (all points, default) or ``"5"`` (eyes, nose tip, mouth corners).
        align: warp each face to a square crop from its 5 points: ``True`` / ``"similarity"`` (see
            ``faceparse.data.align``; the inverse transform is kept in ``meta["align_inverse"]``) or
            ``"tanh"``, the RoI tanh-warp of the SegFace/FaRL LaPa protocol (see
            ``faceparse.data.tanh_warp``; ``meta["tanh_matrix"]``).
        align_size: crop size for ``align`` (defaults to ``image_size`` or 512).
        align_scale: > 1 zooms out of the crop.
        strict: raise on any problem found while indexing (default); ``False`` records the problems
            in ``self.problems`` and skips the faces concerned (``faceparse datasets check`` uses it).
        image_size, augment, transform, mean, std: see :class:`~faceparse.data.base.FaceDataset`.
    """

    def __init__(
        self,
        root: str,
        split: str = "train",
        image_size: int | None = 512,
        augment: bool = False,
        transform: Any = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        landmarks: str = "106",
        align: bool | str = False,
        align_size: int | None = None,
        align_scale: float = 1.0,
        strict: bool = True,
    ) -> None:
        super().__init__(image_size=image_size, augment=augment, transform=transform, mean=mean, std=std)
        if split not in ("train", "val", "test"):
            raise FaceParseError(f"LaPa split must be 'train', 'val' or 'test', got {split!r}")
        if str(landmarks) not in ("106", "5"):
            raise FaceParseError(f"LaPa landmarks must be '106' or '5', got {landmarks!r}")
        self.root = _resolve_lapa_root(root)
        self.split = split
        self.label_set = get_label_set("lapa")
        self.landmark_mode = str(landmarks)
        self.landmark_flip = LAPA_FLIP_106 if self.landmark_mode == "106" else FLIP_5
        self.align, self.align_size, self.align_scale = align, align_size, align_scale
        self.problems: list[str] = []
        d = require_dir(self.root / split, f"LaPa split '{split}'")
        img_dir = require_dir(d / "images", f"LaPa {split} images")
        lbl_dir = require_dir(d / "labels", f"LaPa {split} labels")
        lmk_dir = require_dir(d / "landmarks", f"LaPa {split} landmarks")
        labels = {p.stem for p in lbl_dir.glob("*.png")}
        lmks = {p.stem for p in lmk_dir.glob("*.txt")}
        self.names: list[str] = []
        for p in sorted(img_dir.glob("*.jpg")):
            ok = True
            if p.stem not in labels:
                self.problems.append(f"missing label '{lbl_dir / (p.stem + '.png')}' for image '{p}'")
                ok = False
            if p.stem not in lmks:
                self.problems.append(f"missing landmarks '{lmk_dir / (p.stem + '.txt')}' for image '{p}'")
                ok = False
            if ok:
                self.names.append(p.stem)
        images = {p.stem for p in img_dir.glob("*.jpg")}
        for stem in sorted(labels - images):
            self.problems.append(f"missing image '{img_dir / (stem + '.jpg')}' for label '{lbl_dir / (stem + '.png')}'")
        if not self.names and not self.problems:
            self.problems.append(f"no images '*.jpg' found in '{img_dir}'")
        raise_if_problems(self.problems, f"LaPa {split} at '{self.root}'", strict)

    def __len__(self) -> int:
        return len(self.names)

    def load_raw(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        d = self.root / self.split
        img_path, lbl_path = d / "images" / f"{name}.jpg", d / "labels" / f"{name}.png"
        image = read_rgb(img_path)
        mask = read_gray(lbl_path, "a single-channel label map with values 0..10")
        check_same_size(mask, image.shape[:2], lbl_path, "label map")
        check_label_values(mask, self.label_set.num_classes, lbl_path)
        check_has_labels(mask, lbl_path)
        lmk = read_lapa_landmarks(d / "landmarks" / f"{name}.txt")
        five = lapa_five_points(lmk)
        raw: dict[str, Any] = {
            "image": image,
            "mask": mask.astype(np.uint8),
            "landmarks": lmk if self.landmark_mode == "106" else five,
            "labels": self.labels_from_mask(mask, self.label_set.num_classes),
            "meta": {"name": name, "image_file": str(img_path), "label_file": str(lbl_path)},
        }
        return maybe_align(
            raw, five, self.align, self.align_size or int_size(self.image_size), self.align_scale, str(img_path)
        )
