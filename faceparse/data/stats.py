"""Dataset statistics: class pixel frequencies and balanced class weights."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from faceparse.labels import IGNORE_INDEX


def class_pixel_frequencies(
    dataset: Dataset, num_classes: int | None = None, limit: int | None = None, progress: bool = False
) -> np.ndarray:
    """Fraction of labelled pixels per class over (the first ``limit`` samples of) a dataset.

    Reads raw label maps through ``load_raw`` when the dataset has it (no transform), else items.
    """
    k = num_classes or dataset.label_set.num_classes
    counts = np.zeros(k, np.int64)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in tqdm(range(n), desc="class frequencies", disable=not progress):
        mask = dataset.load_raw(i)["mask"] if hasattr(dataset, "load_raw") else dataset[i]["mask"].numpy()
        mask = np.asarray(mask).ravel()
        counts += np.bincount(mask[mask != IGNORE_INDEX].astype(np.int64), minlength=k)[:k]
    return counts / max(1, counts.sum())


def balanced_class_weights(freq: np.ndarray, power: float = 0.5, max_weight: float = 10.0) -> list[float]:
    """Median-frequency balancing (Eigen & Fergus, ICCV 2015), softened by ``power``.

    ``w_c = (median(f) / f_c) ** power``, clipped to ``[1 / max_weight, max_weight]``; classes that
    never occur get ``max_weight``.
    """
    freq = np.asarray(freq, np.float64)
    median = np.median(freq[freq > 0]) if (freq > 0).any() else 1.0
    with np.errstate(divide="ignore"):
        w = np.where(freq > 0, (median / np.maximum(freq, 1e-12)) ** power, max_weight)
    return np.clip(w, 1.0 / max_weight, max_weight).round(4).tolist()
