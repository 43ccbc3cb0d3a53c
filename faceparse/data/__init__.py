"""Datasets, transforms and the Lightning data module. Modules here register in ``DATASETS``."""

from faceparse._autoimport import import_submodules
from faceparse.data.base import FaceDataset, collate, to_tensor_sample
from faceparse.data.transforms import FaceFlip, build_transforms, flip_sample

import_submodules(__name__, __path__)

from faceparse.data.datamodule import FaceParsingDataModule  # noqa: E402

__all__ = [
    "FaceDataset",
    "FaceFlip",
    "FaceParsingDataModule",
    "build_transforms",
    "collate",
    "flip_sample",
    "to_tensor_sample",
]
