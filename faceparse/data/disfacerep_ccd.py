"""Co-occurring component disentanglement (CCD), DisFaceRep (ACM MM 2025) Sec. 3.3, Eq. 1-2.

Frequent, co-occurring components (nose, eyes, eyebrows, ears, mouth) are randomly blacked out using
boxes from an open-set detector (the paper uses Grounding DINO offline), and the image-level labels
are updated, which lowers the dataset-level co-occurrence bias the classifier learns.

- Eq. 1 (position filter): a box for a *right* component is accepted only if its horizontal centre
  ``(w1 + w2) / 2 < W / 2``; for a *left* component only if it is ``> W / 2``; other components are
  always accepted. With several candidates the highest-scoring accepted one is used.
  ``convention="paper"`` applies Eq. 1 literally (the subject's right side appears on the image's
  left, CelebAMask-HQ naming); ``convention="mirrored"`` swaps the sides for label sets that name
  classes from the viewer's side.
- Eq. 2: ``x_hat(i, j) = 0`` inside the accepted boxes of the masked components, ``x(i, j)`` elsewhere.

Boxes come from a pluggable source: a JSON file ``{image_key: {component: box | [boxes]}}`` where a
box is ``[x0, y0, x1, y1]`` (0-based pixels, x right, y down, in the raw image) or
``{"box": [...], "score": s}`` (as written by a detector), a dict of the same shape, or a callable
``(raw_sample, index) -> {component: box | [boxes]}``. Image keys are the stem of the sample's file
name (``meta["name"]``, ``meta["file"]``...) or the index as a string.

Choices where the paper is silent: each present component with an accepted box is masked
independently with probability ``prob`` = 0.5; masking "mouth" also removes the lips (the mouth box
of a detector covers them: ``COVERS``); removed classes are dropped from the labels and their
pixels become ignore (255) in the mask, so labels later derived from the mask agree.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceparse.data.base import FaceDataset, build_wrapped_dataset, sample_key
from faceparse.errors import FaceParseError
from faceparse.images import IMAGENET_MEAN, IMAGENET_STD
from faceparse.labels import IGNORE_INDEX, LabelSet
from faceparse.registry import DATASETS

__all__ = [
    "CCD_COMPONENTS",
    "COVERS",
    "box_passes",
    "select_boxes",
    "mask_boxes",
    "apply_ccd",
    "load_boxes",
    "boxes_from_mask",
    "sample_key",
    "build_wrapped_dataset",
    "CCDDataset",
]

CCD_COMPONENTS = ("nose", "left_eye", "right_eye", "left_brow", "right_brow", "left_ear", "right_ear", "mouth")
COVERS: dict[str, tuple[str, ...]] = {"mouth": ("mouth", "upper_lip", "lower_lip")}

BoxSource = str | Path | Mapping[str, Any] | Callable[[dict, int], Mapping[str, Any]]


def _side(name: str) -> str | None:
    if name.startswith("left_"):
        return "left"
    if name.startswith("right_"):
        return "right"
    return None


def box_passes(name: str, box: Sequence[float], width: int, convention: str = "paper") -> bool:
    """Eq. 1: is ``box`` (x0, y0, x1, y1) on the correct side of an image ``width`` wide?"""
    side = _side(name)
    if side is None:
        return True
    if convention not in ("paper", "mirrored"):
        raise FaceParseError(f"CCD convention must be 'paper' or 'mirrored', got '{convention}'")
    if convention == "mirrored":
        side = "left" if side == "right" else "right"
    centre = (float(box[0]) + float(box[2])) / 2
    return centre < width / 2 if side == "right" else centre > width / 2


def _candidates(entry: Any) -> list[tuple[float, list[float]]]:
    """Normalise one component's entry to [(score, box)], best first."""
    if entry is None:
        return []
    if isinstance(entry, Mapping):
        entry = [entry]
    entry = list(entry)
    if entry and isinstance(entry[0], (int, float)):
        entry = [entry]
    out = []
    for c in entry:
        if isinstance(c, Mapping):
            box, score = c.get("box", c.get("bbox")), float(c.get("score", 1.0))
        else:
            box, score = c, 1.0
        if box is None or len(box) != 4:
            raise FaceParseError(f"CCD box must be [x0, y0, x1, y1]; got {c!r}")
        out.append((score, [float(v) for v in box]))
    return sorted(out, key=lambda t: -t[0])


def select_boxes(
    boxes: Mapping[str, Any],
    width: int,
    components: Sequence[str] = CCD_COMPONENTS,
    convention: str = "paper",
    min_score: float = 0.0,
) -> dict[str, list[float]]:
    """Accepted box per component: the highest-scoring candidate with score >= ``min_score`` that
    passes Eq. 1. Components without an accepted box are left out."""
    out = {}
    for name in components:
        for score, box in _candidates(boxes.get(name)):
            if score >= min_score and box_passes(name, box, width, convention):
                out[name] = box
                break
    return out


def mask_boxes(image: np.ndarray, boxes: Sequence[Sequence[float]], value: int = 0) -> np.ndarray:
    """Eq. 2: a copy of ``image`` (H x W [x C]) with every pixel inside the boxes set to ``value``.

    A box covers pixel columns ``floor(x0) .. ceil(x1) - 1`` (rows likewise), clipped to the image."""
    out = np.array(image, copy=True)
    h, w = out.shape[:2]
    for x0, y0, x1, y1 in boxes:
        c0, r0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
        c1, r1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
        if c1 > c0 and r1 > r0:
            out[r0:r1, c0:c1] = value
    return out


def apply_ccd(
    raw: dict[str, Any],
    boxes: Mapping[str, Any],
    label_set: LabelSet,
    rng: np.random.Generator | None = None,
    prob: float = 0.5,
    components: Sequence[str] = CCD_COMPONENTS,
    convention: str = "paper",
    min_score: float = 0.0,
) -> tuple[dict[str, Any], list[str]]:
    """Apply CCD to a raw numpy sample; returns the new sample and the masked component names.

    ``raw["labels"]`` (multi-hot over ``label_set``; derived from ``raw["mask"]`` when absent) loses
    the masked components and the classes they cover; their mask pixels become ignore (255).
    """
    rng = rng or np.random.default_rng()
    out = dict(raw)
    width = raw["image"].shape[1]
    k = label_set.num_classes
    if "labels" in raw:
        labels = np.asarray(raw["labels"], np.float32).copy()
    elif "mask" in raw:
        labels = FaceDataset.labels_from_mask(raw["mask"], k)
    else:
        labels = np.ones(k, np.float32)
    accepted = select_boxes(boxes, width, components, convention, min_score)
    chosen = []
    for name in components:
        if name not in accepted or name not in label_set.classes or labels[label_set.index(name)] == 0:
            continue
        if rng.random() < prob:
            chosen.append(name)
    out["image"] = mask_boxes(raw["image"], [accepted[n] for n in chosen])
    removed = {c for n in chosen for c in COVERS.get(n, (n,)) if c in label_set.classes}
    idx = [label_set.index(c) for c in removed]
    labels[idx] = 0.0
    out["labels"] = labels
    if "mask" in raw and idx:
        mask = np.array(raw["mask"], copy=True)
        mask[np.isin(mask, idx)] = IGNORE_INDEX
        out["mask"] = mask
    return out, chosen


def load_boxes(source: str | Path) -> dict[str, dict[str, Any]]:
    """Read a JSON box file (see module docstring)."""
    path = Path(source)
    if not path.is_file():
        raise FaceParseError(f"CCD box file '{path}' not found (expected JSON {{image_key: {{component: box}}}})")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FaceParseError(f"CCD box file '{path}' is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise FaceParseError(f"CCD box file '{path}' must hold an object keyed by image, found {type(data).__name__}")
    return data


def boxes_from_mask(
    mask: np.ndarray, label_set: LabelSet, components: Sequence[str] = CCD_COMPONENTS, pad: int = 0
) -> dict[str, list[float]]:
    """Tight boxes of the components in a label map (``mouth`` spans mouth + lips, see ``COVERS``).

    A stand-in for an open-set detector when ground-truth masks exist (benchmarks, tests)."""
    h, w = mask.shape
    out = {}
    for name in components:
        idx = [label_set.index(c) for c in COVERS.get(name, (name,)) if c in label_set.classes]
        ys, xs = np.nonzero(np.isin(mask, idx))
        if len(xs):
            out[name] = [
                float(max(0, xs.min() - pad)),
                float(max(0, ys.min() - pad)),
                float(min(w, xs.max() + 1 + pad)),
                float(min(h, ys.max() + 1 + pad)),
            ]
    return out


@DATASETS.register("ccd")
class CCDDataset(FaceDataset):
    """Any registered dataset with CCD applied on the fly (Eq. 1-2), labels updated.

    Args:
        dataset: registered dataset name (or a FaceDataset instance) to wrap.
        dataset_kwargs: its constructor arguments.
        boxes: JSON file path, dict or callable (see module docstring).
        split: split passed to the wrapped dataset.
        prob: probability of masking each eligible component (0.5).
        components: candidate components (paper: nose, eyes, eyebrows, ears, mouth).
        convention: ``paper`` or ``mirrored`` side convention for Eq. 1.
        min_score: minimum detector score of a usable candidate box.
        seed: seed of the masking RNG.
        image_size, augment, mean, std: as in FaceDataset (override the wrapped dataset's).
    """

    def __init__(
        self,
        dataset: str | FaceDataset = "synthetic",
        dataset_kwargs: dict | None = None,
        boxes: BoxSource | None = None,
        split: str | None = None,
        prob: float = 0.5,
        components: Sequence[str] = CCD_COMPONENTS,
        convention: str = "paper",
        min_score: float = 0.0,
        seed: int | None = 0,
        image_size: int | Sequence[int] | None = 448,
        augment: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(image_size=image_size, augment=augment, mean=mean, std=std)
        if isinstance(dataset, str):
            kw = {"image_size": image_size, **({"split": split} if split is not None else {}), **(dataset_kwargs or {})}
            dataset = build_wrapped_dataset(dataset, **kw)
        self.base = dataset
        self.label_set = dataset.label_set
        self.landmark_flip = dataset.landmark_flip
        if boxes is None:
            raise FaceParseError("CCDDataset needs boxes: a JSON file path, a dict or a callable")
        if isinstance(boxes, (str, Path)):
            boxes = load_boxes(boxes)
        self.boxes = boxes
        self.prob, self.components, self.convention, self.min_score = prob, tuple(components), convention, min_score
        unknown = [c for c in self.components if c not in self.label_set.classes]
        if unknown:
            raise FaceParseError(f"CCD components {unknown} are not in label set '{self.label_set.name}'")
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.base)

    def boxes_for(self, raw: dict, index: int) -> Mapping[str, Any]:
        if callable(self.boxes):
            return self.boxes(raw, index) or {}
        return self.boxes.get(sample_key(raw, index), {})

    def load_raw(self, index: int) -> dict[str, Any]:
        raw = self.base.load_raw(index)
        out, chosen = apply_ccd(
            raw,
            self.boxes_for(raw, index),
            self.label_set,
            self.rng,
            self.prob,
            self.components,
            self.convention,
            self.min_score,
        )
        meta = dict(out.get("meta", {}) or {})
        meta["ccd_masked"] = ",".join(chosen)
        out["meta"] = meta
        return out
