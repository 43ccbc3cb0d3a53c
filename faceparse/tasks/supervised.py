"""Supervised training of any registered model with any registered loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from faceparse.labels import LabelSet, get_label_set
from faceparse.metrics import FaceParsingMetrics
from faceparse.tasks.base import BaseTask, build_task_loss, build_task_model, loss_value

__all__ = ["SegmentationTask", "build_task_loss", "build_task_model", "loss_value"]


class SegmentationTask(BaseTask):
    """Supervised face parsing: any zoo model, any zoo loss, AdamW and a step schedule.

    Args:
        model: registered model name or an ``nn.Module`` (notebook use).
        loss: registered loss name or an ``nn.Module`` called as ``loss(outputs, batch)``.
        label_set: label set of the data (sets the number of classes of a named model).
        model_kwargs, loss_kwargs: constructor overrides.
        lr, weight_decay: optimiser settings (SegFace: AdamW, 1e-4, 1e-5).
        optimizer: ``adamw``, ``adam`` or ``sgd`` (see :mod:`faceparse.tasks.base`).
        scheduler: ``multistep`` (epochs in ``milestones`` x ``gamma``), ``cosine`` (per step, with
            ``warmup_steps``), ``plateau`` (lr x ``gamma`` when the logged ``monitor``, e.g.
            ``val/rec_all`` = mean recall as in Masi et al. 2020 §4, stops improving for ``patience``
            epochs, down to ``min_lr``; ``monitor_mode`` ``max`` or ``min``) or ``none``.
        grad_checkpointing: activation checkpointing of the model's heavy blocks (less training
            memory for about one extra forward pass; same outputs and gradients). Models without it
            raise :class:`~faceparse.errors.FaceParseError`; see docs/performance.md.
    """

    schedulers = ("multistep", "cosine", "plateau", "none")

    def __init__(
        self,
        model: str | nn.Module = "unet",
        loss: str | nn.Module = "ce_dice",
        label_set: str | LabelSet = "celebamask_hq",
        model_kwargs: dict[str, Any] | None = None,
        loss_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        scheduler: str = "multistep",
        milestones: list[int] | None = None,
        gamma: float = 0.1,
        warmup_steps: int = 0,
        optimizer: str = "adamw",
        monitor: str = "val/rec_all",
        monitor_mode: str = "max",
        patience: int = 5,
        min_lr: float = 0.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(ignore=[k for k, v in (("model", model), ("loss", loss)) if isinstance(v, nn.Module)])
        self.label_set = get_label_set(label_set)
        self.model = build_task_model(model, self.label_set, model_kwargs, grad_checkpointing)
        self.loss = build_task_loss(loss, loss_kwargs)
        self.val_metrics = FaceParsingMetrics(self.label_set)
        self.test_metrics = FaceParsingMetrics(self.label_set)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = (
            self.model.forward_train(batch["image"])
            if hasattr(self.model, "forward_train")
            else self.model(batch["image"])
        )
        loss, parts = loss_value(self.loss(outputs, batch))
        self.log_losses(loss, parts, batch["image"].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Any], metrics: FaceParsingMetrics, prefix: str) -> None:
        logits = self.model(batch["image"])
        loss, _ = loss_value(self.loss(logits, batch))
        self.log(
            f"{prefix}/loss", loss, prog_bar=True, on_epoch=True, batch_size=batch["image"].shape[0], sync_dist=True
        )
        metrics.update(logits.argmax(1), batch["mask"])

    def _eval_end(self, metrics: FaceParsingMetrics, prefix: str) -> None:
        result = metrics.compute()
        metrics.reset()
        self.log_results(
            prefix, result, log=("mean_f1", "miou", "pixel_acc", "rec_all"), prog_bar="mean_f1", per_class="f1"
        )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end(self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end(self.test_metrics, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self.model(batch["image"]).argmax(1)
