"""The base of every faceparse LightningModule: optimiser, schedule and per-epoch metric logging.

In the style of torchgeo's ``BaseTask``: a subclass calls ``super().__init__(ignore=...)`` first,
which saves its constructor arguments as ``self.hparams``; :meth:`BaseTask.configure_optimizers`
then reads the shared settings from there:

- ``optimizer``: ``adamw`` (default), ``adam`` or ``sgd`` (momentum 0.9);
- ``lr``, ``weight_decay``;
- ``scheduler``: ``cosine`` (linear warmup over ``warmup_steps`` then cosine to zero over the run,
  :func:`cosine_with_warmup`), ``multistep`` (``milestones`` in epochs x ``gamma``), ``plateau``
  (torch's ``ReduceLROnPlateau`` on the logged metric ``monitor``, ``monitor_mode`` max/min, lr x
  ``gamma`` after ``patience`` epochs without gain, down to ``min_lr``) or ``none``;
  which of them a task accepts is its ``schedulers`` attribute, and whether the cosine steps per
  optimiser step or per epoch is its ``scheduler_interval``.

:meth:`BaseTask.log_results` is the one place that logs a dict of epoch metrics and keeps it in
``last_results[prefix]`` (scalars as Python floats, per-class vectors as CPU tensors).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from faceparse.errors import FaceParseError
from faceparse.labels import LabelSet
from faceparse.registry import LOSSES, MODELS

__all__ = [
    "BaseTask",
    "build_optimizer",
    "build_task_loss",
    "build_task_model",
    "cosine_with_warmup",
    "loss_value",
]

OPTIMIZERS = ("adamw", "adam", "sgd")


def build_task_model(
    model: str | nn.Module, label_set: LabelSet, model_kwargs: dict | None, grad_checkpointing: bool = False
) -> nn.Module:
    """A model from a registry name (the label set passed unless ``model_kwargs`` sets it) or as is.

    ``grad_checkpointing=True`` turns on the model's activation checkpointing
    (:meth:`~faceparse.models.base.FaceParsingModel.set_grad_checkpointing`); a model without it raises
    :class:`FaceParseError`.
    """
    if isinstance(model, nn.Module):
        built = model
    else:
        kwargs = dict(model_kwargs or {})
        kwargs.setdefault("label_set", label_set)
        built = MODELS.build(model, **kwargs)
        built.registry_name = model
    if grad_checkpointing:
        if not hasattr(built, "set_grad_checkpointing"):
            raise FaceParseError(
                f"grad_checkpointing=True needs a faceparse model with set_grad_checkpointing; "
                f"got {type(built).__name__}"
            )
        built.set_grad_checkpointing(True)
    return built


def build_task_loss(loss: str | nn.Module, loss_kwargs: dict | None) -> nn.Module:
    return loss if isinstance(loss, nn.Module) else LOSSES.build(loss, **(loss_kwargs or {}))


def loss_value(out: torch.Tensor | dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Split a loss result into the scalar to optimise and its named parts for logging."""
    if isinstance(out, dict):
        return out["loss"], {k: v for k, v in out.items() if k != "loss"}
    return out, {}


def build_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``adamw`` | ``adam`` | ``sgd`` (momentum 0.9) from ``torch.optim``."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise FaceParseError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, total: int, warmup: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup then cosine decay to zero, from torch's schedulers.

    The multiplier of the base lr at scheduler step ``t`` (0-based) is ``(t + 1) / warmup`` for
    ``t < warmup`` (``LinearLR``), then ``0.5 * (1 + cos(pi * (t - warmup) / (total - warmup)))``
    (``CosineAnnealingLR``), joined by ``SequentialLR``. ``total`` is the number of scheduler steps
    of the run (optimiser steps or epochs).
    """
    warmup = max(0, int(warmup))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, int(total) - warmup))
    if warmup == 0:
        return cosine
    # LinearLR's factor at step t <= total_iters: start + (1 - start) * t / total_iters = (t + 1) / warmup.
    # Built first: SequentialLR expects the schedulers in order and resets the lr to the first one's start.
    linear = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=max(1, warmup - 1)
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


class BaseTask(pl.LightningModule):
    """Shared optimiser / scheduler configuration and epoch-metric logging of the faceparse tasks.

    Subclasses call ``super().__init__(ignore=...)`` first (their constructor arguments become
    ``self.hparams``), set ``self.model`` and may override :meth:`optimizer_parameters`,
    ``schedulers`` (accepted ``scheduler`` values) and ``scheduler_interval``.

    Args:
        ignore: constructor arguments not to save as hyper-parameters (modules passed directly).
    """

    schedulers: tuple[str, ...] = ("cosine", "none")
    scheduler_interval: str = "step"  # "step": the cosine runs over optimiser steps; "epoch": over epochs

    def __init__(self, ignore: Sequence[str] | str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=ignore)
        self.last_results: dict[str, dict[str, float | torch.Tensor]] = {}  # scalars as floats
        hp = self.hparams
        optimizer = hp.get("optimizer", "adamw")
        if optimizer not in OPTIMIZERS:
            raise FaceParseError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
        scheduler = hp.get("scheduler", "none")
        if scheduler not in self.schedulers:
            raise FaceParseError(
                f"scheduler must be {' or '.join(repr(s) for s in self.schedulers)} for {type(self).__name__}; "
                f"got {scheduler!r}"
            )

    # ------------------------------------------------------------------ optimisation
    def optimizer_parameters(self) -> Iterable[nn.Parameter]:
        """The parameters the optimiser updates (default: those of ``self.model``)."""
        return self.model.parameters()

    def scheduler_total(self) -> int:
        """Number of scheduler steps of the run: optimiser steps or epochs (``scheduler_interval``)."""
        if self.scheduler_interval == "step":
            return max(1, int(self.trainer.estimated_stepping_batches))
        return max(1, int(getattr(self.trainer, "max_epochs", None) or 1))

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = build_optimizer(hp.get("optimizer", "adamw"), self.optimizer_parameters(), hp.lr, hp.weight_decay)
        scheduler = hp.get("scheduler", "none")
        if scheduler == "none":
            return opt
        if scheduler == "multistep":
            if not hp.get("milestones"):
                return opt
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.milestones), gamma=hp.gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if scheduler == "plateau":  # Lightning steps it after validation, on the logged `monitor`
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt,
                mode=hp.get("monitor_mode", "max"),
                factor=hp.get("gamma", 0.1),
                patience=hp.get("patience", 5),
                min_lr=hp.get("min_lr", 0.0),
            )
            monitor = hp.get("monitor", "val/rec_all")
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch", "monitor": monitor}}
        sched = cosine_with_warmup(opt, self.scheduler_total(), hp.get("warmup_steps", 0))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.scheduler_interval}}

    # ------------------------------------------------------------------ logging
    def log_losses(self, loss: torch.Tensor, parts: Mapping[str, torch.Tensor], batch_size: int) -> None:
        """Training loss per step and epoch (``train/loss``, progress bar) and its parts per epoch."""
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size)
        for k, v in parts.items():
            self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=batch_size)

    def log_results(
        self,
        prefix: str,
        result: Mapping[str, torch.Tensor | float],
        log: Sequence[str] | Mapping[str, str] | None = None,
        prog_bar: str | None = None,
        per_class: str | None = None,
        class_names: Sequence[str] | None = None,
    ) -> dict[str, float | torch.Tensor]:
        """Log an epoch's metrics and keep them in ``last_results[prefix]``.

        Args:
            prefix: ``val``, ``test``...; metrics are logged as ``{prefix}/{name}``.
            result: metric name -> scalar or per-class vector (a torchmetrics ``compute()``).
            log: the scalars to log (default: every scalar), or a mapping key -> logged name.
            prog_bar: logged name shown in the progress bar.
            per_class: key of a per-class vector logged as ``{prefix}/{per_class}/{class}`` (NaN skipped).
            class_names: names for ``per_class`` (default: the task's label set).
        """
        stored: dict[str, float | torch.Tensor] = {}
        for k, v in result.items():
            t = torch.as_tensor(v)
            stored[k] = float(t) if t.ndim == 0 else t.detach().cpu()
        self.last_results[prefix] = stored
        if log is None:
            log = [k for k, v in stored.items() if isinstance(v, float)]
        names = dict(log) if isinstance(log, Mapping) else {k: k for k in log}
        for key, name in names.items():
            self.log(f"{prefix}/{name}", result[key], prog_bar=name == prog_bar)
        if per_class is not None:
            classes = class_names if class_names is not None else self.label_set.classes
            for name, value in zip(classes, torch.as_tensor(result[per_class])):
                if not torch.isnan(value):
                    self.log(f"{prefix}/{per_class}/{name}", value)
        return stored
