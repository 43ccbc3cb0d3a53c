"""Model zoo: one module per architecture, each registering its variants in ``faceparse.registry.MODELS``
(the registry imports them on first use; see ``faceparse.registry.MODEL_MODULES``)."""

from typing import TYPE_CHECKING

from faceparse._autoimport import lazy_exports

if TYPE_CHECKING:
    from faceparse.models.base import FaceParsingModel, load_model

__all__ = ["FaceParsingModel", "load_model"]
__getattr__, __dir__ = lazy_exports(__name__, {n: "faceparse.models.base" for n in __all__})
