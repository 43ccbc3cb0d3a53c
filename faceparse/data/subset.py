"""Fixed subsets of a dataset: DisFaceRep's uniformly sampled training subset, and any other.

DisFaceRep (ACM MM 2025, Sec. 4.1.1) scores its pseudo masks on "3,820 samples uniformly sampled from
the [CelebAMask-HQ] training set, forming a representative training subset" (Tables 1, 3, 4 and
Fig. 6). The paper gives no list of ids, seed or stratification, so faceparse reads "uniformly
sampled" as evenly spaced over the split's order (the adapters sort by image id): item ``i`` of the
subset is ``floor((i + 0.5) * N / n)`` of the ``N`` images. That needs no seed, gives the same ids on
every machine, and spreads the subset over the whole split; ``mode="random"`` draws ``n`` distinct
items with a seed instead. Neither is the authors' list, which was not released.

The one home of the selection: :func:`subset_indices` (used by the data module's ``subset`` option,
``faceparse pseudo-labels cam|score --subset uniform --n 3820`` and the DisFaceRep benchmark) and
:class:`SubsetDataset`, which wraps any :class:`~faceparse.data.base.FaceDataset`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from faceparse.data.base import FaceDataset
from faceparse.errors import FaceParseError
from faceparse.images import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["DISFACEREP_SUBSET_SIZE", "SUBSET_MODES", "SubsetDataset", "subset_indices"]

SUBSET_MODES = ("uniform", "random")
DISFACEREP_SUBSET_SIZE = 3820  # DisFaceRep Sec. 4.1.1: the CelebAMask-HQ training subset


def subset_indices(total: int, n: int, mode: str = "uniform", seed: int = 0) -> np.ndarray:
    """``n`` distinct, sorted item indices out of ``total`` (see the module docstring).

    Args:
        total: number of items of the full dataset.
        n: subset size (1 <= n <= total).
        mode: ``"uniform"`` (evenly spaced, ``floor((i + 0.5) * total / n)``) or ``"random"``.
        seed: seed of ``mode="random"``.
    """
    if mode not in SUBSET_MODES:
        raise FaceParseError(f"subset mode must be one of {', '.join(SUBSET_MODES)}; got {mode!r}")
    total, n = int(total), int(n)
    if n < 1:
        raise FaceParseError(f"subset size must be >= 1, got {n}")
    if n > total:
        raise FaceParseError(f"subset size {n} is larger than the dataset ({total} items)")
    if mode == "uniform":
        # integer arithmetic: (2i + 1) * total // (2n) = floor((i + 0.5) * total / n) exactly
        return (np.arange(n, dtype=np.int64) * 2 + 1) * total // (2 * n)
    return np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False)).astype(np.int64)


class SubsetDataset(FaceDataset):
    """The items ``indices`` (or a :func:`subset_indices` selection) of another face dataset.

    Samples are the wrapped dataset's own (its transform, its ``meta``, whose ``index`` stays the
    index in the full dataset, so file keys do not change); ``(index, seed)`` draws from the data
    module's seeded sampler are passed through.

    Args:
        base: the wrapped dataset.
        n: subset size (with ``mode``/``seed``), or
        indices: explicit item indices of ``base``.
        mode, seed: see :func:`subset_indices`.
    """

    def __init__(
        self,
        base: FaceDataset,
        n: int | None = None,
        mode: str = "uniform",
        seed: int = 0,
        indices: Any = None,
    ) -> None:
        super().__init__(
            image_size=getattr(base, "image_size", None),
            augment=getattr(base, "augment", False),
            mean=getattr(base, "mean", IMAGENET_MEAN),
            std=getattr(base, "std", IMAGENET_STD),
        )
        if (n is None) == (indices is None):
            raise FaceParseError("SubsetDataset needs either n (with mode) or indices")
        if indices is None:
            indices = subset_indices(len(base), n, mode, seed)
        self.indices = np.asarray(indices, dtype=np.int64)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(base)):
            raise FaceParseError(f"subset indices must lie in [0, {len(base)})")
        self.base, self.mode = base, mode
        self.label_set = base.label_set
        self.landmark_flip = base.landmark_flip

    def __len__(self) -> int:
        return len(self.indices)

    def _base_index(self, index: int) -> int:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a subset of length {len(self)}")
        return int(self.indices[index])

    def load_raw(self, index: int) -> dict[str, Any]:
        return self.base.load_raw(self._base_index(index))

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(index, tuple):
            return self.base[(self._base_index(index[0]), index[1])]
        return self.base[self._base_index(index)]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)
