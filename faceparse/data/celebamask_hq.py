"""CelebAMask-HQ (Lee et al., "MaskGAN", CVPR 2020): 30,000 faces, 18 part masks per face, 19 classes.

Layout (as the dataset ships)::

    CelebAMask-HQ/CelebA-HQ-img/<id>.jpg                                  1024 x 1024, id not padded
                 /CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<part>.png  512 x 512, 0 or 255
                 /CelebA-HQ-to-CelebA-mapping.txt                          "idx orig_idx orig_file"

A part file exists only when the part is present. The label map is built at the part resolution by
writing each part (mask > 0) in the order of the label set: in the default SegFace/FaRL order
(``celebamask_hq``) a later class overwrites an earlier one (so skin overwrites neck, nose and
eyes overwrite skin, hair overwrites them, then eyeglasses, hat, earring, necklace); in the BiSeNet
order (``celebamask_hq_bisenet``) likewise by BiSeNet index (hat wins). The image is downsampled to
the label resolution (INTER_AREA).

Splits follow CelebA's partition through ``orig_idx``: train < 162,771, val < 182,638, test the rest
(24,183 / 2,993 / 2,824 faces).

Pre-merged BiSeNet-style folders (``mask/<id>.png``, BiSeNet label order) are read with
``layout="merged"`` (or detected automatically when the part folder is absent).

Merging 18 PNGs per face is slow, so by default the merged label maps are cached once, one PNG per
face in ``<root>/.faceparse_cache/<label order>/`` (or ``cache_dir``), with ``manifest.json``
recording the size and modification time of every source part file; a face whose parts changed
(or gained/lost a part) is merged again on the next construction.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceparse.data.base import FaceDataset
from faceparse.data.io import (
    check_has_labels,
    check_label_values,
    raise_if_problems,
    read_gray,
    read_rgb,
    require_dir,
    require_file,
)
from faceparse.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from faceparse.errors import FaceParseError
from faceparse.labels import LabelSet, get_label_set
from faceparse.registry import DATASETS

#: The 18 part names used in the part file names.
PARTS = (
    "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip

SPLIT_BOUNDS = {"train": (0, 162771), "val": (162771, 182638), "test": (182638, 10**9)}
IMAGE_DIR, ANNO_DIR, MAPPING_FILE = "CelebA-HQ-img", "CelebAMask-HQ-mask-anno", "CelebA-HQ-to-CelebA-mapping.txt"
CACHE_FORMAT = 1


def read_split_ids(mapping_file: Path, split: str) -> list[int]:
    """CelebA-HQ ids of a split from ``CelebA-HQ-to-CelebA-mapping.txt`` (``all`` = every line)."""
    require_file(mapping_file, "CelebAMask-HQ split file")
    ids: list[int] = []
    lo, hi = SPLIT_BOUNDS.get(split, (0, 10**9))
    for n, line in enumerate(mapping_file.read_text().splitlines()):
        parts = line.split()
        if not parts or (n == 0 and not parts[0].isdigit()):
            continue
        try:
            idx, orig = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise FaceParseError(
                f"'{mapping_file}' line {n + 1}: expected 'idx orig_idx orig_file', found {line!r}"
            ) from None
        if lo <= orig < hi:
            ids.append(idx)
    return ids


def merge_parts(part_files: dict[str, Path], label_set: LabelSet, face: str = "") -> np.ndarray:
    """Merge binary part PNGs into one label map, writing classes in index order (later overwrites).

    All parts of a face must have the same size; a part of another size raises.
    """
    order = sorted((label_set.index(part), part) for part in part_files if part in label_set.source_names)
    mask: np.ndarray | None = None
    first: Path | None = None
    for cls, part in order:
        path = part_files[part]
        arr = read_gray(path, "a binary part mask (0 or 255)")
        if mask is None:
            mask, first = np.zeros(arr.shape[:2], np.uint8), path
        elif arr.shape[:2] != mask.shape:
            raise FaceParseError(
                f"'{path}': part mask has size {arr.shape[1]}x{arr.shape[0]}, expected "
                f"{mask.shape[1]}x{mask.shape[0]} like '{first}' (the other parts of face {face})"
            )
        mask[arr > 0] = cls
    if mask is None:
        raise FaceParseError(f"face {face}: no part masks to merge")
    return mask


def _atomic_write_png(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    if not cv2.imwrite(str(tmp), arr):
        raise FaceParseError(f"cannot write the label cache file '{path}'")
    os.replace(tmp, path)


@DATASETS.register("celebamask_hq")
class CelebAMaskHQ(FaceDataset):
    """CelebAMask-HQ from its released part masks (or a pre-merged ``mask/<id>.png`` folder).

    Args:
        root: the ``CelebAMask-HQ`` folder (holding ``CelebA-HQ-img`` ...).
        split: ``train``, ``val``, ``test`` or ``all``.
        label_order: ``celebamask_hq`` (SegFace/FaRL order, default) or ``celebamask_hq_bisenet``.
        layout: ``auto``, ``parts`` (``CelebAMask-HQ-mask-anno``) or ``merged`` (``mask_dir``).
        mask_dir: folder of pre-merged BiSeNet-order label maps ``<id>.png`` (``merged`` layout).
        cache: cache merged label maps (``parts`` layout); ``False`` merges on every read.
        cache_dir: cache folder (default ``<root>/.faceparse_cache/<label_order>``).
        progress: show a progress bar while building the cache.
        strict: raise on problems found while indexing; ``False`` records them in ``self.problems``
            and skips the faces concerned.
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
        label_order: str = "celebamask_hq",
        layout: str = "auto",
        mask_dir: str = "mask",
        cache: bool = True,
        cache_dir: str | None = None,
        progress: bool = True,
        strict: bool = True,
    ) -> None:
        super().__init__(image_size=image_size, augment=augment, transform=transform, mean=mean, std=std)
        if split not in (*SPLIT_BOUNDS, "all"):
            raise FaceParseError(f"CelebAMask-HQ split must be train, val, test or all, got {split!r}")
        if label_order not in ("celebamask_hq", "celebamask_hq_bisenet"):
            raise FaceParseError(f"label_order must be 'celebamask_hq' or 'celebamask_hq_bisenet', got {label_order!r}")
        root_p = require_dir(root, "CelebAMask-HQ root")
        if not (root_p / IMAGE_DIR).is_dir() and (root_p / "CelebAMask-HQ" / IMAGE_DIR).is_dir():
            root_p = root_p / "CelebAMask-HQ"
        self.root, self.split = root_p, split
        self.label_set = get_label_set(label_order)
        self.landmark_flip = None
        self.problems: list[str] = []
        if layout == "auto":
            layout = "parts" if (root_p / ANNO_DIR).is_dir() or not (root_p / mask_dir).is_dir() else "merged"
        if layout not in ("parts", "merged"):
            raise FaceParseError(f"layout must be 'auto', 'parts' or 'merged', got {layout!r}")
        self.layout = layout
        img_dir = require_dir(root_p / IMAGE_DIR, "CelebAMask-HQ images")
        ids = read_split_ids(root_p / MAPPING_FILE, split)
        images = {p.name for p in os.scandir(img_dir)}
        self.part_files: dict[int, dict[str, Path]] = {}
        self.mask_dir = root_p / mask_dir
        if layout == "parts":
            anno = require_dir(root_p / ANNO_DIR, "CelebAMask-HQ part masks")
            listing: dict[int, set[str]] = {}
            for i in ids:
                folder = i // 2000
                if folder not in listing:
                    sub = anno / str(folder)
                    listing[folder] = {e.name for e in os.scandir(sub)} if sub.is_dir() else set()
        else:
            merged = {p.name for p in os.scandir(require_dir(self.mask_dir, "pre-merged CelebAMask-HQ masks"))}
        self.ids: list[int] = []
        for i in ids:
            ok = True
            if f"{i}.jpg" not in images:
                self.problems.append(f"missing image '{img_dir / f'{i}.jpg'}' for face {i} listed in {MAPPING_FILE}")
                ok = False
            if layout == "parts":
                names = listing[i // 2000]
                parts = {p: anno / str(i // 2000) / f"{i:05d}_{p}.png" for p in PARTS if f"{i:05d}_{p}.png" in names}
                if not parts:
                    self.problems.append(
                        f"no part masks for face {i}: expected files '{anno / str(i // 2000) / f'{i:05d}_<part>.png'}'"
                    )
                    ok = False
                self.part_files[i] = parts
            elif f"{i}.png" not in merged:
                self.problems.append(f"missing label map '{self.mask_dir / f'{i}.png'}' for face {i}")
                ok = False
            if ok:
                self.ids.append(i)
        raise_if_problems(self.problems, f"CelebAMask-HQ {split} at '{root_p}'", strict)
        self.cache = bool(cache) and layout == "parts"
        self.cache_dir = Path(cache_dir) if cache_dir else root_p / ".faceparse_cache" / self.label_set.name
        self._bisenet_lut: np.ndarray | None = None
        if layout == "merged" and self.label_set.name != "celebamask_hq_bisenet":
            self._bisenet_lut = get_label_set("celebamask_hq_bisenet").mapping_to(self.label_set).astype(np.uint8)
        self.cache_stats = {"merged": 0, "reused": 0}
        if self.cache:
            self.build_cache(progress=progress, strict=strict)

    # -- cache -----------------------------------------------------------------------------------
    def _signature(self, i: int) -> dict[str, list[int]]:
        sig = {}
        for part, path in self.part_files[i].items():
            st = path.stat()
            sig[part] = [int(st.st_size), int(st.st_mtime_ns)]
        return sig

    def cache_file(self, i: int) -> Path:
        return self.cache_dir / f"{i}.png"

    def build_cache(self, progress: bool = True, strict: bool = True) -> dict[str, int]:
        """Merge and write the label maps whose sources changed since the manifest was written."""
        from tqdm.auto import tqdm

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = self.cache_dir / "manifest.json"
        entries: dict[str, Any] = {}
        if manifest_path.is_file():
            try:
                data = json.loads(manifest_path.read_text())
                if data.get("format") == CACHE_FORMAT and data.get("label_set") == self.label_set.name:
                    entries = data.get("entries", {})
            except (OSError, ValueError):
                entries = {}  # unreadable manifest: rebuild everything
        stale = []
        sigs = {}
        for i in self.ids:
            sig = self._signature(i)
            sigs[i] = sig
            if entries.get(str(i)) != sig or not self.cache_file(i).is_file():
                stale.append(i)
        bad: list[int] = []
        try:
            for i in tqdm(
                stale, desc=f"caching CelebAMask-HQ labels ({self.label_set.name})", disable=not progress or not stale
            ):
                try:
                    mask = merge_parts(self.part_files[i], self.label_set, str(i))
                except FaceParseError as exc:
                    if strict:
                        raise
                    self.problems.append(str(exc))
                    bad.append(i)
                    entries.pop(str(i), None)
                    continue
                _atomic_write_png(self.cache_file(i), mask)
                entries[str(i)] = sigs[i]
        finally:
            tmp = manifest_path.with_name(f".manifest.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"format": CACHE_FORMAT, "label_set": self.label_set.name, "entries": entries}))
            os.replace(tmp, manifest_path)
        if bad:
            self.ids = [i for i in self.ids if i not in set(bad)]
        self.cache_stats = {"merged": len(stale) - len(bad), "reused": len(sigs) - len(stale)}
        return self.cache_stats

    # -- reading ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def load_mask(self, index: int) -> tuple[np.ndarray, Path]:
        i = self.ids[index]
        if self.layout == "merged":
            path = self.mask_dir / f"{i}.png"
            mask = read_gray(path, "a label map in the BiSeNet order (0..18)")
            check_label_values(mask, 19, path)
            if self._bisenet_lut is not None:
                mask = self._bisenet_lut[mask]
            return mask, path
        if self.cache:
            path = self.cache_file(i)
            return read_gray(path, "a cached label map (delete the cache folder to rebuild it)"), path
        return merge_parts(self.part_files[i], self.label_set, str(i)), next(iter(self.part_files[i].values()))

    def _label_source(self, i: int) -> str:
        """The part files of face ``i`` (what an error about its label map should name)."""
        files = self.part_files.get(i, {})
        folder = next(iter(files.values())).parent if files else self.root / ANNO_DIR
        return f"{folder}/{i:05d}_{{{','.join(files)}}}.png"

    def load_raw(self, index: int) -> dict[str, Any]:
        i = self.ids[index]
        img_path = self.root / IMAGE_DIR / f"{i}.jpg"
        mask, mask_path = self.load_mask(index)
        h, w = mask.shape
        image = read_rgb(img_path, min_size=(w, h))  # 1024 px JPEG decoded at 1/2 scale when possible
        ih, iw = image.shape[:2]
        if ih * w != iw * h:
            raise FaceParseError(
                f"'{mask_path}': label map of face {i} is {w}x{h}, expected the aspect ratio of its image "
                f"'{img_path}' ({iw}x{ih})"
            )
        check_has_labels(mask, mask_path if self.layout == "merged" else self._label_source(i))
        if (ih, iw) != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        return {
            "image": image,
            "mask": mask,
            "labels": self.labels_from_mask(mask, self.label_set.num_classes),
            "meta": {"name": str(i), "image_file": str(img_path), "id": i},
        }
