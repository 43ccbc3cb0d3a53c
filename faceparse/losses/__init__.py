"""Losses, one module per paper, each registering in ``faceparse.registry.LOSSES`` (the registry imports
them on first use; see ``faceparse.registry.LOSS_MODULES``)."""

from faceparse._autoimport import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {})
