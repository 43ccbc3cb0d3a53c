"""faceparse: a face-parsing model zoo.

>>> import faceparse
>>> model = faceparse.build_model("unet", encoder="resnet18")
>>> ds = faceparse.build_dataset("synthetic", split="val", num_samples=4)

``import faceparse`` is light: it imports neither torch nor Lightning, albumentations, timm or
segmentation-models-pytorch. The registries import the modules that fill them on first use, and
names such as ``FaceParsingModel``, ``load_model`` or ``LabelSet`` are imported on first access
(PEP 562 module ``__getattr__``).
"""

from __future__ import annotations

import os

# Before anything imports torch or albumentations.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
if "OMP_WAIT_POLICY" not in os.environ:  # see faceparse.runtime: short spins, no busy cores when shared
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import importlib
from typing import TYPE_CHECKING, Any

from faceparse.errors import FaceParseError
from faceparse.registry import AUX_MODELS, DATASETS, LOSSES, MODELS, ModelCfg

if TYPE_CHECKING:
    from faceparse.labels import LabelSet, generic_label_set, get_label_set, list_label_sets
    from faceparse.models.base import FaceParsingModel, load_model

__version__ = "0.1.0"

# Public names imported on first access: name -> defining module.
_LAZY = {
    "LabelSet": "faceparse.labels",
    "generic_label_set": "faceparse.labels",
    "get_label_set": "faceparse.labels",
    "list_label_sets": "faceparse.labels",
    "FaceParsingModel": "faceparse.models.base",
    "load_model": "faceparse.models.base",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):  # submodules: ``faceparse.data``, ``faceparse.export``...
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'faceparse' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def model_kwargs(name: str, num_classes: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """Constructor keyword arguments of ``build_model(name, num_classes=..., **kwargs)``.

    ``num_classes`` without ``label_set`` gives the model a generic label set
    (:func:`faceparse.labels.generic_label_set`: ``background, class_1, ...``); with ``label_set`` the
    two must agree. Models with a fixed class count (``ModelCfg.num_classes``, e.g. binary S3POT)
    accept only that count.
    """
    if num_classes is None:
        return kwargs
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise FaceParseError(f"num_classes must be a positive integer, got {num_classes!r} (model '{name}')")
    cfg = MODELS.cfg(name)
    from faceparse.labels import generic_label_set, get_label_set

    if cfg.num_classes is not None and num_classes != cfg.num_classes:
        raise FaceParseError(
            f"model '{name}' predicts {cfg.num_classes} classes by design (label set '{cfg.label_set}'); "
            f"num_classes={num_classes} is not possible"
        )
    given = kwargs.get("label_set")
    if given is not None:
        ls = get_label_set(given)
        if ls.num_classes != num_classes:
            raise FaceParseError(
                f"build_model('{name}'): num_classes={num_classes} contradicts label_set '{ls.name}', which has "
                f"{ls.num_classes} classes; pass one of them, or a label set with {num_classes} classes"
            )
    elif cfg.num_classes is None:
        kwargs["label_set"] = generic_label_set(num_classes)
    return kwargs


def build_model(name: str, num_classes: int | None = None, **kwargs: Any) -> FaceParsingModel:
    """Build a registered model; keyword arguments override the variant's defaults.

    ``num_classes=N`` alone gives ``N`` output channels with generic class names (``generic_N``);
    ``label_set=`` names the classes (both may be given when they agree).
    """
    model = MODELS.build(name, **model_kwargs(name, num_classes, **kwargs))
    model.registry_name = name
    return model


def build_loss(name: str, **kwargs: Any):
    """Build a registered loss, called as ``loss(outputs, batch)``."""
    return LOSSES.build(name, **kwargs)


def build_dataset(name: str, **kwargs: Any):
    """Build a registered dataset (``synthetic``, ``celebamask_hq``, ``lapa``...)."""
    return DATASETS.build(name, **kwargs)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell wildcard (``list_models("segface_*")``)."""
    return MODELS.list(pattern)


def list_losses(pattern: str = "*") -> list[str]:
    return LOSSES.list(pattern)


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)


def model_cfg(name: str) -> ModelCfg:
    """The typed config of a registered model variant (:class:`faceparse.registry.ModelCfg`)."""
    return MODELS.cfg(name)


def model_info(name: str, count_parameters: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Registry metadata of a model (paper, default input size, default label set) plus its
    parameter count, computed (never stored) by building the model on the meta device."""
    info = MODELS.metadata(name)
    if count_parameters:
        import torch

        with torch.device("meta"):
            model = build_model(name, **kwargs)
        info["parameters"] = sum(p.numel() for p in model.parameters())
    return info


__all__ = [
    "AUX_MODELS",
    "DATASETS",
    "LOSSES",
    "MODELS",
    "FaceParseError",
    "FaceParsingModel",
    "LabelSet",
    "ModelCfg",
    "build_dataset",
    "build_loss",
    "build_model",
    "generic_label_set",
    "get_label_set",
    "list_datasets",
    "list_label_sets",
    "list_losses",
    "list_models",
    "load_model",
    "model_cfg",
    "model_info",
    "model_kwargs",
]
