"""faceparse: a face-parsing model zoo.

>>> import faceparse
>>> model = faceparse.build_model("unet", encoder="resnet18")
>>> ds = faceparse.build_dataset("synthetic", split="val", num_samples=4)
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see faceparse.runtime: no spinning on shared cores

from typing import Any  # noqa: E402

from faceparse.errors import FaceParseError  # noqa: E402
from faceparse.labels import LabelSet, get_label_set, list_label_sets  # noqa: E402
from faceparse.registry import COMMANDS, DATASETS, LOSSES, MODELS  # noqa: E402

__version__ = "0.1.0"

from faceparse import data, losses, models  # noqa: E402,F401  (registrations)
from faceparse.models.base import FaceParsingModel, load_model  # noqa: E402


def build_model(name: str, **kwargs: Any) -> FaceParsingModel:
    """Build a registered model; keyword arguments override the variant's defaults."""
    model = MODELS.build(name, **kwargs)
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


def model_info(name: str, count_parameters: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Registry metadata of a model (paper, default input size, default label set) plus its
    parameter count, computed (never stored) by building the model on the meta device."""
    import torch

    info = MODELS.metadata(name)
    if count_parameters:
        with torch.device("meta"):
            model = MODELS.build(name, **kwargs)
        info["parameters"] = sum(p.numel() for p in model.parameters())
    return info


__all__ = [
    "COMMANDS",
    "DATASETS",
    "LOSSES",
    "MODELS",
    "FaceParseError",
    "FaceParsingModel",
    "LabelSet",
    "build_dataset",
    "build_loss",
    "build_model",
    "get_label_set",
    "list_datasets",
    "list_label_sets",
    "list_losses",
    "list_models",
    "load_model",
    "model_info",
]
