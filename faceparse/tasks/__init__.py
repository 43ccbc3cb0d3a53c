"""LightningModules composing models, losses and metrics (imported on first access: ``import
faceparse.tasks`` does not import Lightning)."""

from typing import TYPE_CHECKING

from faceparse._autoimport import lazy_exports

if TYPE_CHECKING:
    from faceparse.tasks.supervised import SegmentationTask

__all__ = ["SegmentationTask"]
__getattr__, __dir__ = lazy_exports(__name__, {"SegmentationTask": "faceparse.tasks.supervised"})
