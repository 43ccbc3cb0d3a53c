"""LightningModules composing models, losses and metrics."""

from faceparse._autoimport import import_submodules
from faceparse.tasks.supervised import SegmentationTask

import_submodules(__name__, __path__)

__all__ = ["SegmentationTask"]
