"""Helen face parsing (Smith et al., "Exemplar-Based Face Parsing", CVPR 2013): 2,330 faces, 11 classes.

Two layouts are read:

``smith`` -- the original ``SmithCVPR2013_dataset_resized`` release::

    images/<name>.jpg
    labels/<name>/<name>_lbl00.png .. <name>_lbl10.png   one soft map per class; label = argmax
    exemplars.txt (train, 2,000) / tuning.txt (val, 230) / testing.txt (test, 100), lines "index , name"

``star`` -- the relabeled HELEN* layout (used by SegFace)::

    helen/train/<name>_image.jpg + <name>_label.png   (values 0..10)
    helen/test/...
    helen/landmarks.txt    per line 136 numbers (68 x, y pairs, at twice the image scale) then the name

Classes: background, skin, left brow, right brow, left eye, right eye, nose, upper lip, inner mouth,
lower lip, hair ("left" = image left). ``crop_face=True`` cuts a square at ``crop_scale`` (1.2) times
the landmark box (HELEN*) or, in the ``smith`` layout that has no landmarks, the box of the labelled
face parts (every class except background and hair); the crop box is kept in ``meta["crop_box"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceparse.data.align import FLIP_5, crop_sample, maybe_align, square_box
from faceparse.data.base import FaceDataset
from faceparse.data.io import (
    check_has_labels,
    check_label_values,
    check_same_size,
    int_size,
    pairs_to_permutation,
    raise_if_problems,
    read_gray,
    read_rgb,
    require_dir,
    require_file,
)
from faceparse.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from faceparse.errors import FaceParseError
from faceparse.labels import get_label_set
from faceparse.registry import DATASETS

# Mirror permutation of the 68-point iBUG/300-W layout: jaw 0..16 reversed, brows 17..21 <-> 26..22,
# nose bridge 27..30 on the axis, nostrils 31..35 reversed, eyes 36..41 <-> 45..42/47..46,
# outer mouth 48..54 reversed (51 on the axis), 55..59 reversed, inner mouth 60..64 reversed, 65 <-> 67.
FLIP_68 = pairs_to_permutation(
    68,
    [(i, 16 - i) for i in range(8)]
    + [(17 + i, 26 - i) for i in range(5)]
    + [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)],
)

SMITH_SPLITS = {"train": "exemplars.txt", "val": "tuning.txt", "test": "testing.txt"}


def five_from_68(p: np.ndarray) -> np.ndarray:
    """Eyes = mean of each eye's six points (36..41, 42..47), nose tip 30, mouth corners 48, 54."""
    p = np.asarray(p, dtype=np.float64)
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]]).astype(np.float32)


def read_smith_split(path: Path) -> list[str]:
    require_file(path, "Helen split file")
    names = []
    for n, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 2 or not fields[1]:
            raise FaceParseError(f"'{path}' line {n + 1}: expected 'index , name', found {line!r}")
        names.append(fields[1])
    return names


def read_star_landmarks(path: Path, problems: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Landmarks per image name. A line with NaN/infinite values raises, or -- when a ``problems`` dict
    is given -- is recorded there (name -> message naming the file, line and point) and left out."""
    require_file(path, "HELEN* landmark file")
    out = {}
    for n, line in enumerate(path.read_text().splitlines()):
        fields = line.split()
        if not fields:
            continue
        try:
            pts = np.asarray([float(v) for v in fields[:136]], dtype=np.float32).reshape(68, 2)
        except ValueError:
            pts = None
        if pts is None or len(fields) != 137:
            raise FaceParseError(f"'{path}' line {n + 1}: expected 136 numbers (68 x, y) then the image name")
        bad = np.nonzero(~np.isfinite(pts).all(axis=1))[0]
        if bad.size:
            msg = (
                f"'{path}' line {n + 1} (face '{fields[-1]}'): landmarks hold NaN or infinite values at point "
                f"index {bad[0]}" + (f" (and {bad.size - 1} more)" if bad.size > 1 else "")
            )
            if problems is None:
                raise FaceParseError(msg)
            problems[fields[-1]] = msg
            continue
        out[fields[-1]] = pts
    return out


def detect_layout(root: Path) -> tuple[str, Path]:
    for cand in (root, root / "SmithCVPR2013_dataset_resized"):
        if (cand / "images").is_dir() and (cand / "labels").is_dir():
            return "smith", cand
    for cand in (root, root / "helen"):
        if (cand / "train").is_dir() or (cand / "test").is_dir():
            return "star", cand
    raise FaceParseError(
        f"Helen root '{root}': expected either the SmithCVPR2013_dataset_resized layout "
        "(images/, labels/, exemplars.txt ...) or the HELEN* layout (train/, test/, landmarks.txt)"
    )


@DATASETS.register("helen")
class HelenDataset(FaceDataset):
    """Helen in the original (``smith``) or relabeled HELEN* (``star``) layout.

    Args:
        root: the dataset folder (or its parent).
        split: ``train``, ``val`` (``smith`` only) or ``test``.
        layout: ``auto``, ``smith`` or ``star``.
        crop_face: crop a square ``crop_scale`` x the landmark (or part) box.
        landmark_scale: factor applied to HELEN* ``landmarks.txt`` coordinates (0.5: the file holds
            them at twice the image scale).
        landmarks: ``"68"`` or ``"5"`` (HELEN* only).
        align, align_size, align_scale: 5-point alignment (HELEN* only), see ``faceparse.data.align``.
        strict: raise on indexing problems (default) or record them in ``self.problems``.
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
        layout: str = "auto",
        crop_face: bool = False,
        crop_scale: float = 1.2,
        landmark_scale: float = 0.5,
        landmarks: str = "68",
        align: bool = False,
        align_size: int | None = None,
        align_scale: float = 1.0,
        strict: bool = True,
    ) -> None:
        super().__init__(image_size=image_size, augment=augment, transform=transform, mean=mean, std=std)
        root_p = require_dir(root, "Helen root")
        found, base = detect_layout(root_p)
        if layout == "auto":
            layout = found
        elif layout not in ("smith", "star"):
            raise FaceParseError(f"Helen layout must be 'auto', 'smith' or 'star', got {layout!r}")
        elif layout != found:
            raise FaceParseError(
                f"Helen root '{root_p}': layout={layout!r} requested but the folder has the {found!r} layout"
            )
        if str(landmarks) not in ("68", "5"):
            raise FaceParseError(f"Helen landmarks must be '68' or '5', got {landmarks!r}")
        self.layout, self.base, self.split = layout, base, split
        self.label_set = get_label_set("helen")
        self.crop_face, self.crop_scale, self.landmark_scale = crop_face, float(crop_scale), float(landmark_scale)
        self.landmark_mode = str(landmarks)
        self.align, self.align_size, self.align_scale = align, align_size, align_scale
        self.problems: list[str] = []
        self.names: list[str] = []
        self.landmarks: dict[str, np.ndarray] = {}
        if layout == "smith":
            self.landmark_flip = None
            if align:
                raise FaceParseError("Helen: align=True needs landmarks, which the SmithCVPR2013 layout does not ship")
            if split not in SMITH_SPLITS:
                raise FaceParseError(f"Helen (smith layout) split must be one of {list(SMITH_SPLITS)}, got {split!r}")
            for name in read_smith_split(base / SMITH_SPLITS[split]):
                img = base / "images" / f"{name}.jpg"
                lbl = base / "labels" / name
                ok = True
                if not img.is_file():
                    self.problems.append(f"missing image '{img}' for face '{name}' listed in {SMITH_SPLITS[split]}")
                    ok = False
                missing = [c for c in range(11) if not (lbl / f"{name}_lbl{c:02d}.png").is_file()]
                if missing:
                    self.problems.append(
                        f"missing label maps {[f'{name}_lbl{c:02d}.png' for c in missing]} in '{lbl}' for face '{name}'"
                    )
                    ok = False
                if ok:
                    self.names.append(name)
        else:
            self.landmark_flip = FLIP_68 if self.landmark_mode == "68" else FLIP_5
            if split not in ("train", "test"):
                raise FaceParseError(f"Helen (HELEN* layout) split must be 'train' or 'test', got {split!r}")
            d = require_dir(base / split, f"HELEN* split '{split}'")
            bad_lmk: dict[str, str] = {}
            self.landmarks = read_star_landmarks(base / "landmarks.txt", bad_lmk)
            images = sorted(p.name[: -len("_image.jpg")] for p in d.glob("*_image.jpg"))
            labels = {p.name[: -len("_label.png")] for p in d.glob("*_label.png")}
            for name in images:
                ok = True
                if name not in labels:
                    self.problems.append(
                        f"missing label '{d / (name + '_label.png')}' for image '{d / (name + '_image.jpg')}'"
                    )
                    ok = False
                if name in bad_lmk:
                    self.problems.append(bad_lmk[name])
                    ok = False
                elif name not in self.landmarks:
                    self.problems.append(f"no landmarks for '{name}' in '{base / 'landmarks.txt'}'")
                    ok = False
                if ok:
                    self.names.append(name)
            for name in sorted(labels - set(images)):
                self.problems.append(
                    f"missing image '{d / (name + '_image.jpg')}' for label '{d / (name + '_label.png')}'"
                )
        if not self.names and not self.problems:
            where = base / split if layout == "star" else base / SMITH_SPLITS[split]
            expected = "<name>_image.jpg + <name>_label.png" if layout == "star" else "lines 'index , name'"
            self.problems.append(f"no faces found for split '{split}' in '{where}' (expected {expected})")
        raise_if_problems(self.problems, f"Helen {split} at '{base}'", strict)

    def __len__(self) -> int:
        return len(self.names)

    def load_raw(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        lmk = None
        if self.layout == "smith":
            img_path = self.base / "images" / f"{name}.jpg"
            image = read_rgb(img_path)
            maps = []
            for c in range(11):
                p = self.base / "labels" / name / f"{name}_lbl{c:02d}.png"
                m = read_gray(p, "a single-channel class map")
                check_same_size(m, image.shape[:2], p, "class map")
                maps.append(m)
            stack = np.stack(maps, 0)
            label_file = str(self.base / "labels" / name)
            if not stack[1:].any():
                # argmax of all-zero maps would be background everywhere: a silently empty face
                raise FaceParseError(
                    f"'{label_file}': the class maps {name}_lbl01..{name}_lbl10.png are all zero "
                    "(no face part labelled), expected soft maps whose argmax is the class"
                )
            mask = np.argmax(stack, axis=0).astype(np.uint8)
        else:
            d = self.base / self.split
            img_path, lbl_path = d / f"{name}_image.jpg", d / f"{name}_label.png"
            image = read_rgb(img_path)
            mask = read_gray(lbl_path, "a single-channel label map with values 0..10")
            check_same_size(mask, image.shape[:2], lbl_path, "label map")
            check_label_values(mask, 11, lbl_path)
            check_has_labels(mask, lbl_path)
            lmk = self.landmarks[name] * self.landmark_scale
            label_file = str(lbl_path)
        raw: dict[str, Any] = {
            "image": image,
            "mask": mask,
            "labels": self.labels_from_mask(mask, 11),
            "meta": {"name": name, "image_file": str(img_path), "label_file": label_file},
        }
        five = None
        if lmk is not None:
            five = five_from_68(lmk)
            raw["landmarks"] = lmk.astype(np.float32) if self.landmark_mode == "68" else five
        if self.crop_face:
            if lmk is not None:
                x0, y0 = lmk.min(0)
                x1, y1 = lmk.max(0)
            else:
                ys, xs = np.nonzero((mask != 0) & (mask != 10))
                if not len(xs):
                    raise FaceParseError(f"'{label_file}': crop_face needs face parts, but the label map has none")
                x0, y0, x1, y1 = xs.min(), ys.min(), xs.max(), ys.max()
            raw = crop_sample(raw, square_box(float(x0), float(y0), float(x1), float(y1), self.crop_scale))
            if five is not None:
                left, top = raw["meta"]["crop_box"][:2]
                five = five - np.array([left, top], np.float32)
        return maybe_align(
            raw, five, self.align, self.align_size or int_size(self.image_size), self.align_scale, str(img_path)
        )
