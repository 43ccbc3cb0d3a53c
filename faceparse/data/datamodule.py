"""Lightning data module over any registered dataset."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from faceparse.data.base import collate
from faceparse.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from faceparse.labels import LabelSet
from faceparse.registry import DATASETS
from faceparse.runtime import worker_init


class FaceParsingDataModule(pl.LightningDataModule):
    """Train/val/test loaders for a registered dataset.

    Args:
        dataset: registered dataset name (``synthetic``, ``celebamask_hq``, ``lapa``...).
        dataset_kwargs: keyword arguments for every split (``root``, ``num_samples``...).
        train_kwargs, val_kwargs, test_kwargs: per-split overrides.
        image_size: input size of the model.
        batch_size, num_workers: loader settings (``batch_size`` is per process under DDP). Each
            worker runs one torch thread and seeds numpy/random from torch's per-worker seed
            (:func:`faceparse.runtime.worker_init`).
        train_split, val_split, test_split: split names passed as ``split=``.
        augment: training augmentation on the train split.
        mean, std: input normalisation (match the model's ``input_mean/std``).
    """

    def __init__(
        self,
        dataset: str = "synthetic",
        dataset_kwargs: dict[str, Any] | None = None,
        train_kwargs: dict[str, Any] | None = None,
        val_kwargs: dict[str, Any] | None = None,
        test_kwargs: dict[str, Any] | None = None,
        image_size: int = 128,
        batch_size: int = 16,
        num_workers: int = 0,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        augment: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        DATASETS.get(dataset)  # fail early on unknown names
        self.dataset_name = dataset
        self.dataset_kwargs = dict(dataset_kwargs or {})
        self.split_kwargs = {
            "train": dict(train_kwargs or {}),
            "val": dict(val_kwargs or {}),
            "test": dict(test_kwargs or {}),
        }
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.mean, self.std = tuple(mean), tuple(std)
        self.persistent_workers = persistent_workers and num_workers > 0
        self._datasets: dict[str, Dataset] = {}

    def build(self, stage: str) -> Dataset:
        """Build (once) the dataset of ``stage`` in ``train``, ``val``, ``test``."""
        if stage not in self._datasets:
            factory = DATASETS.get(self.dataset_name)
            kw: dict[str, Any] = {
                "split": self.splits[stage],
                "image_size": self.image_size,
                "augment": self.augment and stage == "train",
            }
            kw.update({"mean": self.mean, "std": self.std})
            kw.update(self.dataset_kwargs)
            kw.update(self.split_kwargs[stage])
            params = inspect.signature(factory).parameters
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
                kw = {
                    k: v
                    for k, v in kw.items()
                    if k in params or k in self.dataset_kwargs or k in self.split_kwargs[stage]
                }
            self._datasets[stage] = factory(**kw)
        return self._datasets[stage]

    @property
    def label_set(self) -> LabelSet:
        return self.build("val").label_set

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.build("train")
            self.build("val")
        if stage == "validate":
            self.build("val")
        if stage in (None, "test"):
            self.build("test")

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.build(stage),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            drop_last=shuffle and len(self.build(stage)) > self.batch_size,
            persistent_workers=self.persistent_workers,
            worker_init_fn=worker_init if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
