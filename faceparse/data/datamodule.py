"""Lightning data module over any registered dataset, seeded and resumable mid-epoch.

One seed controls the training data of a run: :class:`SeededSampler` shuffles with
``seed + epoch`` and hands each sample index together with a seed of its own,
``sample_seed(seed, epoch, index)``, from which :class:`~faceparse.data.base.FaceDataset` draws
that sample's flip and albumentations augmentation. A sample's pixels therefore depend on neither
the worker that loads it nor the number of workers. The train loader is torchdata's
``StatefulDataLoader``: Lightning stores its ``state_dict`` (sampler epoch, seed and position) in
every checkpoint and restores it on ``fit(ckpt_path=...)``, so a run resumed from a mid-epoch
checkpoint sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from faceparse.data.base import FaceDataset, collate
from faceparse.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from faceparse.labels import LabelSet
from faceparse.registry import DATASETS
from faceparse.runtime import worker_init


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed % 2**64, epoch, index]).generate_state(1, np.uint64)[0])


class SeededSampler(StatefulDistributedSampler):
    """Shuffled indices from ``seed + epoch``, each paired with its augmentation seed.

    A ``DistributedSampler`` (this rank's share of the data; Lightning leaves it in place under
    DDP and calls ``set_epoch``) whose state (position in the epoch, from torchdata's
    ``StatefulDistributedSampler``, plus epoch and seed) is saved in checkpoints. Yields
    ``(index, sample_seed(seed, epoch, index))`` when ``with_seeds`` (for a ``FaceDataset``), plain
    indices otherwise.
    """

    def __init__(
        self,
        dataset: Dataset,
        seed: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        with_seeds: bool = True,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.with_seeds = with_seeds

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        seed, epoch = self.seed, self.epoch
        for index in super().__iter__():
            yield (index, sample_seed(seed, epoch, index)) if self.with_seeds else index

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.epoch = int(state_dict.get("epoch", self.epoch))
        self.seed = int(state_dict.get("seed", self.seed))
        if self.next_yielded is not None and self.next_yielded >= self.num_samples:
            # Saved after the last batch of an epoch: Lightning resumes with the next epoch, and
            # creates the loader's iterator before it calls set_epoch, so start that epoch here.
            self.epoch += 1
            self.next_yielded = 0


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
        seed: seed of the training order and augmentation (default: the ``seed_everything`` seed,
            ``PL_GLOBAL_SEED``, else 0, as Lightning's own distributed sampler does).
        subset, subset_size, subset_seed: train on a fixed subset of the train split only
            (:func:`faceparse.data.subset.subset_indices`): ``subset: uniform`` with ``subset_size: 3820``
            is DisFaceRep's uniformly sampled CelebAMask-HQ training subset; ``random`` uses ``subset_seed``.
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
        seed: int | None = None,
        subset: str | None = None,
        subset_size: int | None = None,
        subset_seed: int = 0,
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
        self.seed = seed
        if (subset is None) != (subset_size is None):
            from faceparse.errors import FaceParseError

            raise FaceParseError("subset and subset_size go together (e.g. subset: uniform, subset_size: 3820)")
        self.subset = (subset, subset_size, subset_seed) if subset is not None else None
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
            dataset = factory(**kw)
            if stage == "train" and self.subset is not None:
                from faceparse.data.subset import SubsetDataset

                mode, n, seed = self.subset
                dataset = SubsetDataset(dataset, n=n, mode=mode, seed=seed)
            self._datasets[stage] = dataset
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

    def _loader(self, stage: str) -> DataLoader:
        dataset = self.build(stage)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.persistent_workers,
            worker_init_fn=worker_init if self.num_workers > 0 else None,
        )

    def run_seed(self) -> int:
        """The seed of the training data: ``seed``, else ``PL_GLOBAL_SEED`` (``seed_everything``), else 0."""
        if self.seed is not None:
            return int(self.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def train_dataloader(self) -> StatefulDataLoader:
        dataset = self.build("train")
        trainer = self.trainer
        sampler = SeededSampler(
            dataset,
            seed=self.run_seed(),
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            with_seeds=isinstance(dataset, FaceDataset),
        )
        with warnings.catch_warnings():  # torchdata 0.11 calls torch.set_vital, deprecated in torch 2.x
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            return StatefulDataLoader(
                dataset,
                batch_size=self.batch_size,
                sampler=sampler,
                num_workers=self.num_workers,
                collate_fn=collate,
                drop_last=len(sampler) > self.batch_size,
                persistent_workers=self.persistent_workers,
                worker_init_fn=worker_init if self.num_workers > 0 else None,
            )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
