"""Datasets, transforms and the Lightning data module. Dataset modules register in ``DATASETS`` (the
registry imports them on first use; see ``faceparse.registry.DATASET_MODULES``).

Everything here is imported on first access, so ``import faceparse.data`` pulls in neither
albumentations nor Lightning.
"""

from typing import TYPE_CHECKING

from faceparse._autoimport import lazy_exports

if TYPE_CHECKING:
    from faceparse.data.base import FaceDataset, collate, to_tensor_sample
    from faceparse.data.datamodule import FaceParsingDataModule
    from faceparse.data.transforms import FaceFlip, build_transforms, flip_sample

_EXPORTS = {
    "FaceDataset": "faceparse.data.base",
    "collate": "faceparse.data.base",
    "to_tensor_sample": "faceparse.data.base",
    "FaceFlip": "faceparse.data.transforms",
    "build_transforms": "faceparse.data.transforms",
    "flip_sample": "faceparse.data.transforms",
    "FaceParsingDataModule": "faceparse.data.datamodule",
}
__all__ = [
    "FaceDataset",
    "FaceFlip",
    "FaceParsingDataModule",
    "build_transforms",
    "collate",
    "flip_sample",
    "to_tensor_sample",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
