"""The dataset base class: raw numpy samples -> transformed tensor sample dicts."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from faceparse.data.transforms import IMAGENET_MEAN, IMAGENET_STD, FaceTransform, build_transforms
from faceparse.labels import LabelSet

_TENSOR_DTYPES = {
    "mask": torch.int64,
    "occlusion": torch.int64,
    "superpixels": torch.int64,
    "blobs": torch.int64,
    "landmarks": torch.float32,
    "landmark_occluded": torch.bool,
    "labels": torch.float32,
    "face_box": torch.float32,
}


class FaceDataset(Dataset):
    """Base class of face-parsing datasets.

    Subclasses set ``self.label_set`` (and ``self.landmark_flip`` when they have landmarks) and
    implement ``__len__`` and ``load_raw(i)``, which returns numpy arrays: ``image`` H x W x 3 uint8
    RGB, ``mask`` H x W integer labels (255 = ignore) and any of ``landmarks`` N x 2, ``occlusion``,
    ``superpixels``, ``face_box``, ``labels``, ``meta``. The base applies the transform and turns the
    result into the sample dict of DESIGN.md.

    Args:
        image_size: output size (square int or (h, w)); None keeps the original size.
        augment: use the training pipeline (flip, affine and colour jitter).
        transform: a callable on the raw dict replacing the default pipeline.
        mean, std: normalisation (ImageNet by default; pass the model's ``input_mean/std``).
    """

    label_set: LabelSet
    landmark_flip: Sequence[int] | None = None

    def __init__(
        self,
        image_size: int | Sequence[int] | None = 512,
        augment: bool = False,
        transform: Callable[[dict], dict] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.image_size = image_size
        self.augment = augment
        self.mean, self.std = tuple(mean), tuple(std)
        self._transform = transform

    @property
    def transform(self) -> Callable[[dict], dict]:
        if self._transform is None:
            self._transform = build_transforms(
                self.image_size,
                train=self.augment,
                label_set=self.label_set,
                landmark_flip=self.landmark_flip,
                mean=self.mean,
                std=self.std,
            )
        return self._transform

    @transform.setter
    def transform(self, value: Callable[[dict], dict] | None) -> None:
        self._transform = value

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_raw(self, index: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        """Sample ``index``; ``(index, seed)`` (from :class:`~faceparse.data.datamodule.SeededSampler`)
        also fixes the random augmentation of this draw."""
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        raw = self.load_raw(index)
        meta = dict(raw.get("meta", {}))
        meta.setdefault("index", index)
        meta.setdefault("orig_size", tuple(int(s) for s in raw["image"].shape[:2]))
        raw["meta"] = meta
        transform = self.transform
        if seed is not None and isinstance(transform, FaceTransform):
            return to_tensor_sample(transform(raw, seed=seed))
        if seed is not None:  # a user transform: seed the global generators it may draw from
            np.random.seed(seed % 2**32)
            random.seed(seed)
        return to_tensor_sample(transform(raw))

    @staticmethod
    def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
        """Image-level multi-hot labels: which classes appear in the label map."""
        present = np.unique(mask)
        present = present[present < num_classes]
        out = np.zeros(num_classes, np.float32)
        out[present] = 1.0
        return out


def to_tensor_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """numpy sample (image H x W x 3 float) -> tensors (image 3 x H x W float32, mask int64...)."""
    out: dict[str, Any] = {}
    for key, value in sample.items():
        if key in ("image", "clean"):  # clean: the occlusion-free face of an occlusion pair
            arr = np.asarray(value, dtype=np.float32)
            out[key] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
        elif key in _TENSOR_DTYPES:
            out[key] = torch.as_tensor(np.ascontiguousarray(value)).to(_TENSOR_DTYPES[key])
        else:
            out[key] = value
    return out


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors; keep ``meta`` (and any non-tensor entry) as a list per sample."""
    keys = batch[0].keys()
    out: dict[str, Any] = {}
    for key in keys:
        values = [b[key] for b in batch]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            out[key] = default_collate(values)
        else:
            out[key] = values
    return out


def sample_key(raw: Mapping[str, Any], index: int) -> str:
    """The key of a sample in files keyed by image (pseudo-labels, CCD boxes): the stem of the first
    of ``meta`` name / id / file / filename / image / image_path / path, else the index."""
    meta = raw.get("meta", {}) or {}
    for k in ("name", "id", "file", "filename", "image", "image_path", "path"):
        if meta.get(k) is not None:
            return Path(str(meta[k])).stem
    return str(index)


def build_wrapped_dataset(name: str, **kwargs: Any) -> FaceDataset:
    """Build the registered dataset that another dataset wraps, passing only the keyword arguments its
    factory accepts (the wrappers take ``dataset=`` and ``dataset_kwargs=``)."""
    import inspect

    from faceparse.registry import DATASETS

    factory = DATASETS.get(name)
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return factory(**kwargs)
