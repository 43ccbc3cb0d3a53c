"""Model zoo. Every module here registers its architectures in ``faceparse.registry.MODELS``."""

from faceparse._autoimport import import_submodules
from faceparse.models.base import FaceParsingModel, load_model

import_submodules(__name__, __path__)

__all__ = ["FaceParsingModel", "load_model"]
