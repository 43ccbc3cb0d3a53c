"""LightningModules composing models, losses and metrics."""

from .._autoimport import import_submodules
from .supervised import SegmentationTask

import_submodules(__name__, __path__)

__all__ = ["SegmentationTask"]
