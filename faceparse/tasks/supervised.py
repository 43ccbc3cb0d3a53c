"""Supervised training of any registered model with any registered loss."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from faceparse.labels import LabelSet, get_label_set
from faceparse.metrics import FaceParsingMetrics
from faceparse.registry import LOSSES, MODELS


def build_task_model(model: str | nn.Module, label_set: LabelSet, model_kwargs: dict | None) -> nn.Module:
    """A model from a registry name (the label set passed unless ``model_kwargs`` sets it) or as is."""
    if isinstance(model, nn.Module):
        return model
    kwargs = dict(model_kwargs or {})
    kwargs.setdefault("label_set", label_set)
    built = MODELS.build(model, **kwargs)
    built.registry_name = model
    return built


def build_task_loss(loss: str | nn.Module, loss_kwargs: dict | None) -> nn.Module:
    return loss if isinstance(loss, nn.Module) else LOSSES.build(loss, **(loss_kwargs or {}))


def loss_value(out: torch.Tensor | dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Split a loss result into the scalar to optimise and its named parts for logging."""
    if isinstance(out, dict):
        return out["loss"], {k: v for k, v in out.items() if k != "loss"}
    return out, {}


class SegmentationTask(pl.LightningModule):
    """Supervised face parsing: any zoo model, any zoo loss, AdamW and a step schedule.

    Args:
        model: registered model name or an ``nn.Module`` (notebook use).
        loss: registered loss name or an ``nn.Module`` called as ``loss(outputs, batch)``.
        label_set: label set of the data (sets the number of classes of a named model).
        model_kwargs, loss_kwargs: constructor overrides.
        lr, weight_decay: AdamW settings (SegFace: 1e-4, 1e-5).
        scheduler: ``multistep`` (epochs in ``milestones`` x ``gamma``), ``cosine`` (per step, with
            ``warmup_steps``) or ``none``.
    """

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
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[k for k, v in (("model", model), ("loss", loss)) if isinstance(v, nn.Module)])
        self.label_set = get_label_set(label_set)
        self.model = build_task_model(model, self.label_set, model_kwargs)
        self.loss = build_task_loss(loss, loss_kwargs)
        self.val_metrics = FaceParsingMetrics(self.label_set)
        self.test_metrics = FaceParsingMetrics(self.label_set)
        self.last_results: dict[str, dict[str, float | torch.Tensor]] = {}  # scalars as floats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        outputs = (
            self.model.forward_train(batch["image"])
            if hasattr(self.model, "forward_train")
            else self.model(batch["image"])
        )
        loss, parts = loss_value(self.loss(outputs, batch))
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs)
        for k, v in parts.items():
            self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=bs)
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
        self.last_results[prefix] = {k: float(v) if v.ndim == 0 else v.detach().cpu() for k, v in result.items()}
        for key in ("mean_f1", "miou", "pixel_acc"):
            self.log(f"{prefix}/{key}", result[key], prog_bar=key == "mean_f1")
        for i, name in enumerate(self.label_set.classes):
            value = result["f1"][i]
            if not torch.isnan(value):
                self.log(f"{prefix}/f1/{name}", value)

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

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.AdamW(self.model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "none":
            return opt
        if hp.scheduler == "multistep":
            if not hp.milestones:
                return opt
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.milestones), gamma=hp.gamma)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if hp.scheduler == "cosine":
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warm = hp.warmup_steps

            def factor(step: int) -> float:
                if step < warm:
                    return (step + 1) / warm
                progress = min(1.0, (step - warm) / max(1, total - warm))
                return 0.5 * (1 + math.cos(math.pi * progress))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        raise ValueError(f"scheduler must be 'multistep', 'cosine' or 'none', got {hp.scheduler!r}")
