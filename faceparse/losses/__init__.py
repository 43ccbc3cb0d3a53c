"""Losses. Every module here registers its losses in ``faceparse.registry.LOSSES``."""

from faceparse._autoimport import import_submodules

import_submodules(__name__, __path__)
