"""Label sets: class names in index order, palettes, left/right pairs, and mappings between sets.

Class names are canonical across datasets (``left_eye`` in CelebAMask-HQ and in LaPa mean the same
thing), so ``a.mapping_to(b)`` can translate label maps by name. Each preset keeps its dataset's own
short names in ``source_names`` (e.g. CelebAMask-HQ part files ``l_eye``, ``eye_g``).

Side convention: faceparse keeps every dataset's own left/right naming. In CelebAMask-HQ, LaPa and
Helen, ``left_*`` is the part on the left side of the *image*. FaRL names the same CelebAMask-HQ
indices with l/r swapped; faceparse follows the part file names (``l_eye`` -> ``left_eye``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

IGNORE_INDEX = 255

# Canonical class -> coarser class used when the target set lacks the fine class
# (e.g. CelebAMask-HQ "nose" -> Part Labels "face").
_COARSE = {
    "skin": "face",
    "nose": "face",
    "left_eye": "face",
    "right_eye": "face",
    "left_brow": "face",
    "right_brow": "face",
    "left_ear": "face",
    "right_ear": "face",
    "mouth": "face",
    "upper_lip": "face",
    "lower_lip": "face",
    "eyeglasses": "face",
}

_PALETTE = [
    (0, 0, 0), (255, 85, 0), (204, 0, 0), (0, 0, 204), (255, 153, 51), (0, 204, 0),
    (0, 204, 204), (51, 51, 255), (204, 0, 204), (255, 255, 0), (76, 153, 0), (102, 51, 0),
    (0, 51, 0), (255, 0, 0), (102, 204, 0), (0, 0, 153), (255, 51, 153), (0, 255, 255),
    (255, 204, 204), (153, 153, 153), (255, 255, 255), (128, 0, 255), (0, 128, 128),
]  # fmt: skip

_LEFT_RIGHT = [("left_ear", "right_ear"), ("left_brow", "right_brow"), ("left_eye", "right_eye")]


@dataclass(frozen=True)
class LabelSet:
    """A dataset's classes in index order.

    Args:
        name: preset name (``celebamask_hq``...).
        classes: canonical class names in index order.
        palette: one RGB triple per class (defaults to faceparse's palette).
        flip_pairs: index pairs swapped by a horizontal flip (defaults: left/right pairs by name).
        background: index of the background class.
        source_names: the dataset's own names of the classes, same order (defaults to ``classes``).
    """

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] = ()
    flip_pairs: tuple[tuple[int, int], ...] | None = None
    background: int = 0
    source_names: tuple[str, ...] = ()
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        classes = tuple(self.classes)
        if len(set(classes)) != len(classes):
            raise ValueError(f"label set '{self.name}' has duplicate class names: {classes}")
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(classes)})
        if not self.palette:
            object.__setattr__(self, "palette", tuple(_PALETTE[i % len(_PALETTE)] for i in range(len(classes))))
        if len(self.palette) != len(classes):
            raise ValueError(f"label set '{self.name}': {len(self.palette)} colours for {len(classes)} classes")
        if self.flip_pairs is None:
            pairs = tuple(
                (self._index[a], self._index[b]) for a, b in _LEFT_RIGHT if a in self._index and b in self._index
            )
            object.__setattr__(self, "flip_pairs", pairs)
        if not self.source_names:
            object.__setattr__(self, "source_names", classes)
        if len(self.source_names) != len(classes):
            raise ValueError(f"label set '{self.name}': source_names and classes differ in length")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, name: str) -> int:
        """Index of a class by canonical or source name."""
        if name in self._index:
            return self._index[name]
        if name in self.source_names:
            return self.source_names.index(name)
        raise KeyError(f"class '{name}' is not in label set '{self.name}' (classes: {', '.join(self.classes)})")

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def flip_lut(self) -> np.ndarray:
        """``lut[c]`` is the class that ``c`` becomes in a mirrored image (identity except left/right)."""
        lut = np.arange(max(self.num_classes, IGNORE_INDEX + 1), dtype=np.int64)
        for a, b in self.flip_pairs:
            lut[a], lut[b] = b, a
        return lut

    @property
    def flip_permutation(self) -> list[int]:
        """Channel permutation that mirrors a ``K``-channel logit map (for flip test-time augmentation)."""
        return self.flip_lut[: self.num_classes].tolist()

    def mapping_to(self, other: LabelSet, unmapped: Literal["background", "ignore"] = "background") -> np.ndarray:
        """Lookup table translating this set's labels into ``other``'s, by class name.

        A class missing from ``other`` falls back to its coarse class (``nose`` -> ``face``), then to
        ``other``'s background or to the ignore index 255, as ``unmapped`` says. The table has 256
        entries so that 255 (ignore) maps to itself: ``lut[mask]`` works on any label map.
        """
        if unmapped not in ("background", "ignore"):
            raise ValueError(f"unmapped must be 'background' or 'ignore', got {unmapped!r}")
        fallback = other.background if unmapped == "background" else IGNORE_INDEX
        lut = np.full(IGNORE_INDEX + 1, IGNORE_INDEX, dtype=np.int64)
        for i, name in enumerate(self.classes):
            if name in other:
                lut[i] = other.index(name)
            elif _COARSE.get(name) in other:
                lut[i] = other.index(_COARSE[name])
            elif i == self.background:
                lut[i] = other.background
            else:
                lut[i] = fallback
        return lut

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """RGB image (uint8 H x W x 3) of a label map; ignore pixels are white."""
        pal = np.zeros((IGNORE_INDEX + 1, 3), dtype=np.uint8)
        pal[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        pal[IGNORE_INDEX] = 255
        return pal[np.asarray(mask, dtype=np.int64).clip(0, IGNORE_INDEX)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "palette": [list(c) for c in self.palette],
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "background": self.background,
            "source_names": list(self.source_names),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSet:
        return cls(
            name=d["name"],
            classes=tuple(d["classes"]),
            palette=tuple(tuple(c) for c in d.get("palette", ())),
            flip_pairs=tuple(tuple(p) for p in d["flip_pairs"]) if "flip_pairs" in d else None,
            background=int(d.get("background", 0)),
            source_names=tuple(d.get("source_names", ())),
        )


def _preset(name: str, pairs: Sequence[tuple[str, str]]) -> LabelSet:
    return LabelSet(name=name, classes=tuple(c for c, _ in pairs), source_names=tuple(s for _, s in pairs))


# CelebAMask-HQ in the SegFace / FaRL order (faceparse's default). Source names are the part file names.
CELEBAMASK_HQ = _preset(
    "celebamask_hq",
    [
        ("background", "background"), ("neck", "neck"), ("skin", "skin"), ("cloth", "cloth"),
        ("left_ear", "l_ear"), ("right_ear", "r_ear"), ("left_brow", "l_brow"), ("right_brow", "r_brow"),
        ("left_eye", "l_eye"), ("right_eye", "r_eye"), ("nose", "nose"), ("mouth", "mouth"),
        ("lower_lip", "l_lip"), ("upper_lip", "u_lip"), ("hair", "hair"), ("eyeglasses", "eye_g"),
        ("hat", "hat"), ("earring", "ear_r"), ("necklace", "neck_l"),
    ],
)  # fmt: skip

# CelebAMask-HQ in the BiSeNet (face-parsing.PyTorch) order used by pre-merged mask/<id>.png folders.
CELEBAMASK_HQ_BISENET = _preset(
    "celebamask_hq_bisenet",
    [
        ("background", "background"), ("skin", "skin"), ("left_brow", "l_brow"), ("right_brow", "r_brow"),
        ("left_eye", "l_eye"), ("right_eye", "r_eye"), ("eyeglasses", "eye_g"), ("left_ear", "l_ear"),
        ("right_ear", "r_ear"), ("earring", "ear_r"), ("nose", "nose"), ("mouth", "mouth"),
        ("upper_lip", "u_lip"), ("lower_lip", "l_lip"), ("neck", "neck"), ("necklace", "neck_l"),
        ("cloth", "cloth"), ("hair", "hair"), ("hat", "hat"),
    ],
)  # fmt: skip

# CelebAMask-HQ in the order of the dataset's own preprocessing script (g_mask.py), used by PSFRGAN /
# facexlib's ParseNet and by the jonathandinu/face-parsing SegFormer on the Hugging Face Hub.
CELEBAMASK_HQ_OFFICIAL = _preset(
    "celebamask_hq_official",
    [
        ("background", "background"), ("skin", "skin"), ("nose", "nose"), ("eyeglasses", "eye_g"),
        ("left_eye", "l_eye"), ("right_eye", "r_eye"), ("left_brow", "l_brow"), ("right_brow", "r_brow"),
        ("left_ear", "l_ear"), ("right_ear", "r_ear"), ("mouth", "mouth"), ("upper_lip", "u_lip"),
        ("lower_lip", "l_lip"), ("hair", "hair"), ("hat", "hat"), ("earring", "ear_r"), ("necklace", "neck_l"),
        ("neck", "neck"), ("cloth", "cloth"),
    ],
)  # fmt: skip

_ELEVEN = [
    ("background", "background"), ("skin", "skin"), ("left_brow", "left eyebrow"),
    ("right_brow", "right eyebrow"), ("left_eye", "left eye"), ("right_eye", "right eye"), ("nose", "nose"),
    ("upper_lip", "upper lip"), ("mouth", "inner mouth"), ("lower_lip", "lower lip"), ("hair", "hair"),
]  # fmt: skip
LAPA = _preset("lapa", _ELEVEN)
HELEN = _preset("helen", _ELEVEN)
PART_LABELS = _preset("part_labels", [("background", "background"), ("face", "face"), ("hair", "hair")])
COFW = _preset("cofw", [("background", "non-face"), ("face", "face")])
COFW_OCCLUSION = _preset("cofw_occlusion", [("background", "background"), ("face", "face"), ("occlusion", "occlusion")])
CELEBAMASK_HQ_OCC = LabelSet(
    name="celebamask_hq_occ",
    classes=CELEBAMASK_HQ.classes + ("occlusion",),
    source_names=CELEBAMASK_HQ.source_names + ("occlusion",),
)

# Binary occlusion masks (S3POT's output).
OCCLUSION = LabelSet(
    name="occlusion",
    classes=("background", "occlusion"),
    palette=((0, 0, 0), (0, 255, 0)),
    flip_pairs=(),
)

# S3POT's facial region set F (paper Sec. 3.3: "lip, eyebrows, eyes, nose, skin, mouth"), canonical names.
S3POT_FACE_CLASSES: tuple[str, ...] = (
    "skin", "nose", "left_eye", "right_eye", "left_brow", "right_brow", "mouth", "upper_lip", "lower_lip",
)  # fmt: skip

LABEL_SETS: dict[str, LabelSet] = {
    ls.name: ls
    for ls in (
        CELEBAMASK_HQ, CELEBAMASK_HQ_BISENET, CELEBAMASK_HQ_OFFICIAL, LAPA, HELEN, PART_LABELS, COFW,
        COFW_OCCLUSION, CELEBAMASK_HQ_OCC, OCCLUSION,
    )
}  # fmt: skip


def generic_label_set(n: int) -> LabelSet:
    """A label set of ``n`` classes with generic names: ``generic_<n>`` = ``background, class_1, ...``.

    What ``build_model(name, num_classes=n)`` uses when no label set is given; no flip pairs (the
    names say nothing about sides). ``get_label_set("generic_<n>")`` returns the same set.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"a generic label set needs a positive integer number of classes, got {n!r}")
    return LabelSet(
        name=f"generic_{n}", classes=("background",) + tuple(f"class_{i}" for i in range(1, n)), flip_pairs=()
    )


def get_label_set(name: str | LabelSet | dict) -> LabelSet:
    """Return a preset by name (or pass a LabelSet / its dict through); ``generic_<n>``: :func:`generic_label_set`."""
    if isinstance(name, LabelSet):
        return name
    if isinstance(name, dict):
        return LabelSet.from_dict(name)
    if isinstance(name, str) and name not in LABEL_SETS and name.startswith("generic_"):
        count = name.removeprefix("generic_")
        if count.isdigit() and int(count) > 0:
            return generic_label_set(int(count))
    try:
        return LABEL_SETS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(str(name), list(LABEL_SETS), n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown label set '{name}'.{hint} Known: {', '.join(LABEL_SETS)}") from None


def list_label_sets() -> list[str]:
    return sorted(LABEL_SETS)
