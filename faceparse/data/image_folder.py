"""Unlabelled face photos from any folder, cropped around detected faces (Masi et al., CVPR 2020).

The consensus paper pre-trains on faces of CASIA-WebFace, VGG Faces and MS-Celeb-1M that have no
masks ("transfer data", §3.1), preprocessed as in its §4: "a face detector and the adjusted square
box to crop and resize each face ... to 128 x 128 pixels". Here the detector is any of
:func:`faceparse.detection.build_detector` (``"auto"`` offline, RetinaFace / YuNet with local weights),
and the adjusted square box is the detector box made square around its centre (side = the longer
side x ``crop_scale``). The paper does not give the adjustment; ``crop_scale=1.2`` keeps the whole
face of a tight detector box with some context (a choice).

- :func:`square_crop_box`, :func:`crop_face`: the crop (parts outside the photo are black).
- :func:`detect_folder`: one record per photo (its faces or why it was skipped), the lines of the
  ``faces.jsonl`` index that ``faceparse pseudo-labels teacher`` writes.
- ``image_folder`` dataset: the crops (masks all ignore, the detector's five landmarks in crop
  pixels), from a fresh detection pass or from such an index; photos without a face are skipped and
  counted (``skipped``).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceparse.data.base import FaceDataset
from faceparse.errors import FaceParseError
from faceparse.images import IMAGENET_MEAN, IMAGENET_STD
from faceparse.labels import IGNORE_INDEX, LabelSet, get_label_set
from faceparse.registry import DATASETS

__all__ = [
    "INDEX_NAME",
    "ImageFolderFaces",
    "crop_face",
    "detect_folder",
    "face_key",
    "list_image_files",
    "read_index",
    "square_crop_box",
    "subject_in_split",
]

INDEX_NAME = "faces.jsonl"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_image_files(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursively, sorted), as paths relative to ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FaceParseError(f"image folder '{root}' does not exist or is not a folder")
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def face_key(rel: str | Path, j: int, all_faces: bool) -> str:
    """File-name-safe key of face ``j`` of the photo ``rel``: the relative path without its suffix,
    every character other than letters, digits, ``-`` and ``_`` replaced by ``_`` (``/`` by ``__``)."""
    stem = str(Path(rel).with_suffix("")).replace("\\", "/").replace("/", "__")
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", stem)
    return f"{stem}__face{j}" if all_faces else stem


def square_crop_box(box: Sequence[float], scale: float = 1.2) -> list[float]:
    """The adjusted square box ``[x0, y0, x1, y1]``: centred on ``box``, side = longer side x ``scale``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * scale / 2
    return [cx - half, cy - half, cx + half, cy + half]


def crop_face(
    image: np.ndarray, crop_box: Sequence[float], size: int, interpolation: int = cv2.INTER_LINEAR
) -> tuple[np.ndarray, np.ndarray]:
    """Crop the square ``crop_box`` out of ``image`` resized to ``size`` x ``size`` (outside = 0).

    Returns the crop and the 2 x 3 affine matrix mapping photo pixels to crop pixels."""
    x0, y0, x1, y1 = (float(v) for v in crop_box)
    s = size / max(x1 - x0, 1e-6)
    m = np.array([[s, 0.0, -x0 * s], [0.0, s, -y0 * s]], np.float64)
    crop = cv2.warpAffine(image, m, (size, size), flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return crop, m


def subject_in_split(rel: str | Path, split: str, val_fraction: float) -> bool:
    """Subject-disjoint split (the paper keeps train and validation subjects apart): the subject is the
    photo's top folder (CASIA-WebFace / VGGFace layout: one folder per identity), else its stem;
    a subject is validation when crc32(subject) falls in the first ``val_fraction`` of the range."""
    if split in ("all", None) or val_fraction <= 0:
        return split != "val"
    parts = Path(rel).parts
    subject = parts[0] if len(parts) > 1 else Path(rel).stem
    is_val = zlib.crc32(subject.encode()) % 100_000 < val_fraction * 100_000
    if split in ("val", "test"):  # the held-out subjects serve both
        return is_val
    if split == "train":
        return not is_val
    raise FaceParseError(f"split must be 'all', 'train', 'val' or 'test'; got {split!r}")


def detect_folder(
    root: str | Path,
    detector: Callable[[np.ndarray], list] | str = "auto",
    detector_weights: str | None = None,
    crop_scale: float = 1.2,
    faces: str = "largest",
    min_score: float = 0.0,
    files: Sequence[Path] | None = None,
) -> Iterator[dict[str, Any]]:
    """Detect faces in every photo under ``root``; yield one record per photo.

    A record is ``{"image": rel_path, "faces": [{"key", "box", "crop", "score", "landmarks"}]}`` or
    ``{"image": rel_path, "skipped": "no face" | "unreadable: ..."}``. ``faces="largest"`` keeps the
    largest face of a photo (the transfer sets hold one subject per photo), ``"all"`` every face.
    """
    from faceparse.images import read_image

    if faces not in ("largest", "all"):
        raise FaceParseError(f"faces must be 'largest' or 'all'; got {faces!r}")
    if isinstance(detector, str):
        from faceparse.detection import build_detector

        detector = build_detector(detector, weights=detector_weights)
    root = Path(root)
    for rel in files if files is not None else list_image_files(root):
        try:
            image = read_image(root / rel, exif=True)
        except FaceParseError as exc:
            yield {"image": str(rel), "skipped": f"unreadable: {exc}"}
            continue
        found = [f for f in detector(image) if f.score >= min_score]
        if not found:
            yield {"image": str(rel), "skipped": "no face"}
            continue
        if faces == "largest":
            found = [max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))]
        out = []
        for j, f in enumerate(found):
            lm = None if f.landmarks is None else np.asarray(f.landmarks, np.float64).round(2).tolist()
            out.append(
                {
                    "key": face_key(rel, j, faces == "all"),
                    "box": [round(float(v), 2) for v in f.box],
                    "crop": [round(v, 2) for v in square_crop_box(f.box, crop_scale)],
                    "score": round(float(f.score), 4),
                    "landmarks": lm,
                }
            )
        yield {"image": str(rel), "faces": out}


def read_index(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``faces.jsonl`` index (a folder holding one, or the file); a torn last line
    (an interrupted run) is ignored."""
    p = Path(path)
    if p.is_dir():
        p = p / INDEX_NAME
    if not p.is_file():
        raise FaceParseError(f"face index '{p}' not found (written by `faceparse pseudo-labels teacher`)")
    records = []
    for line in p.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


@DATASETS.register("image_folder")
class ImageFolderFaces(FaceDataset):
    """Any folder of photos as face crops (no masks: every mask pixel is ignore, 255).

    Args:
        root: the photo folder (searched recursively).
        index: a ``faces.jsonl`` index (or the folder holding it, e.g. the output of
            ``faceparse pseudo-labels teacher``) instead of running the detector now.
        detector, detector_weights: the face detector (:func:`faceparse.detection.build_detector`).
        crop_scale: the adjusted square box's side over the detection's longer side.
        crop_size: side of the crops (128 in the paper).
        faces: ``largest`` (one per photo) or ``all``; min_score: drop weaker detections.
        split, val_fraction: ``all``, or a subject-disjoint ``train`` / ``val`` split (``test`` =
            ``val``; :func:`subject_in_split`).
        label_set: the label set the crops are declared in (their masks are all ignore).
        image_size, augment, mean, std: as in FaceDataset.

    ``skipped`` lists ``(photo, reason)`` for photos without a (kept) face or unreadable.
    """

    landmark_flip = (1, 0, 2, 4, 3)  # the detectors' five points: eyes and mouth corners swap

    def __init__(
        self,
        root: str,
        index: str | None = None,
        detector: str = "auto",
        detector_weights: str | None = None,
        crop_scale: float = 1.2,
        crop_size: int = 128,
        faces: str = "largest",
        min_score: float = 0.0,
        split: str = "all",
        val_fraction: float = 0.0,
        label_set: str | LabelSet = "cofw_occlusion",
        image_size: int | Sequence[int] | None = 128,
        augment: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(image_size=image_size, augment=augment, mean=mean, std=std)
        self.root = Path(root)
        self.crop_size = int(crop_size)
        self.label_set = get_label_set(label_set)
        if index is not None:
            records = read_index(index)
        else:
            records = list(detect_folder(root, detector, detector_weights, crop_scale, faces, min_score))
        self.entries: list[dict[str, Any]] = []
        self.skipped: list[tuple[str, str]] = []
        for rec in records:
            if not subject_in_split(rec["image"], split, val_fraction):
                continue
            if "skipped" in rec:
                self.skipped.append((rec["image"], rec["skipped"]))
                continue
            for face in rec["faces"]:
                self.entries.append({"image": rec["image"], **face})

    def __len__(self) -> int:
        return len(self.entries)

    def load_raw(self, index: int) -> dict[str, Any]:
        from faceparse.images import read_image

        e = self.entries[index]
        image, m = crop_face(read_image(self.root / e["image"], exif=True), e["crop"], self.crop_size)
        out: dict[str, Any] = {
            "image": image,
            "mask": np.full(image.shape[:2], IGNORE_INDEX, np.uint8),
            "meta": {"name": f"{e['key']}.png", "source": e["image"], "crop": e["crop"]},
        }
        if e.get("landmarks") is not None:
            pts = np.asarray(e["landmarks"], np.float64).reshape(-1, 2)
            out["landmarks"] = (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)
        return out
