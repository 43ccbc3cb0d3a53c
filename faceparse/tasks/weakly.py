"""Weakly supervised face parsing, stage 1: the DisFaceRep / MCTformer classification stage.

The model (an MCT-ViT) learns from image-level labels only: which of the K foreground components
are present. Losses: multi-label soft margin on the class-token scores and on the pooled patch
scores (MCTformer+), plus the TCD objective (DisFaceRep Eq. 16, :class:`faceparse.losses.disfacerep.TCDLoss`)
when ``tcd`` is given. Validation reports the mean F1 of single-scale FCAM pseudo masks against the
dataset's masks (when it has them), i.e. the quality of the pseudo labels stage 2 will train on.

Image-level labels come from any registered dataset: by default they are derived from the
(transformed) ``mask`` of each sample, so flips and CCD (removed classes are ignore pixels) are
accounted for; ``label_source="labels"`` uses the dataset's own ``labels`` (multi-hot over the label
set, or over its K foreground classes) for datasets without masks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.errors import FaceParseError
from faceparse.labels import LabelSet, get_label_set
from faceparse.metrics import FaceParsingMetrics
from faceparse.tasks.base import BaseTask, build_task_model

__all__ = ["WeaklySupervisedTask", "foreground_labels"]


def foreground_labels(batch: dict[str, Any], label_set: LabelSet, source: str = "auto") -> torch.Tensor:
    """Image-level multi-hot labels ``B x K`` over the non-background classes of ``label_set``."""
    bg = label_set.background
    fg = [i for i in range(label_set.num_classes) if i != bg]
    if source not in ("auto", "mask", "labels"):
        raise FaceParseError(f"label_source must be auto|mask|labels, got '{source}'")
    if source in ("auto", "mask") and "mask" in batch:
        mask = batch["mask"]
        present = torch.stack([(mask == c).flatten(1).any(1) for c in fg], dim=1)
        return present.float()
    if "labels" not in batch:
        raise FaceParseError("weakly supervised training needs image-level 'labels' or a 'mask' in each sample")
    labels = batch["labels"].float()
    if labels.shape[1] == label_set.num_classes:
        return labels[:, fg]
    if labels.shape[1] == len(fg):
        return labels
    raise FaceParseError(
        f"image-level labels have {labels.shape[1]} entries; expected {label_set.num_classes} "
        f"(label set '{label_set.name}') or {len(fg)} (its foreground classes)"
    )


class WeaklySupervisedTask(BaseTask):
    """Stage 1 of weakly supervised face parsing (DisFaceRep / MCTformer+).

    Args:
        model: registered MCT-ViT name (``mct_vit_small``) or a module with ``classify`` /
            ``forward_features`` like :class:`faceparse.models.mct_vit.model.MCTViT`.
        label_set: label set of the data; its non-background classes are the K class tokens.
        model_kwargs: constructor overrides (``img_size``, ``pretrained`` DeiT file...).
        tcd: None (baseline / +CCD) or keyword arguments of :class:`~faceparse.losses.disfacerep.TCDLoss`
            (``{"encoder": {"model_name": "ViT-B-16", "checkpoint": "flip.pt"}}``).
        tcd_weight: weight of the TCD total (Eq. 16 already carries the paper's weights).
        cls_weight, patch_weight: weights of the class-token and patch-score classification losses.
        lr, weight_decay: AdamW (DisFaceRep: lr 5e-6, batch 36 from ImageNet DeiT-S weights).
        optimizer: ``adamw``, ``adam`` or ``sgd`` (see :mod:`faceparse.tasks.base`).
        scheduler: ``cosine`` (per step with ``warmup_steps``) or ``none``.
        theta: pseudo-mask threshold used for the validation F1 (0.5).
        refine: patch-to-patch affinity refinement of the validation FCAMs (MCTformer+ uses it with
            a pretrained ViT; a from-scratch ViT's attention smears the maps, so turn it off there).
        label_source: ``auto`` | ``mask`` | ``labels`` (see module docstring).
        grad_checkpointing: activation checkpointing of the ViT's blocks (less training memory for
            about one extra forward pass; see :class:`~faceparse.tasks.SegmentationTask`).
    """

    def __init__(
        self,
        model: str | nn.Module = "mct_vit_small",
        label_set: str | LabelSet = "celebamask_hq",
        model_kwargs: dict[str, Any] | None = None,
        tcd: dict[str, Any] | None = None,
        tcd_weight: float = 1.0,
        cls_weight: float = 1.0,
        patch_weight: float = 1.0,
        lr: float = 5e-6,
        weight_decay: float = 0.05,
        scheduler: str = "cosine",
        warmup_steps: int = 0,
        theta: float = 0.5,
        refine: bool = True,
        label_source: str = "auto",
        optimizer: str = "adamw",
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(ignore=["model"] if isinstance(model, nn.Module) else None)
        self.label_set = get_label_set(label_set)
        self.model = build_task_model(model, self.label_set, model_kwargs, grad_checkpointing)
        if not hasattr(self.model, "classify"):
            raise FaceParseError("WeaklySupervisedTask needs an MCT-ViT style model (with classify / forward_features)")
        self.tcd = None
        if tcd is not None:
            from faceparse.losses.disfacerep import TCDLoss

            kw = {"label_set": self.label_set, "image_mean": self.model.input_mean, "image_std": self.model.input_std}
            kw.update(tcd)
            self.tcd = TCDLoss(**kw)
        self.val_metrics = FaceParsingMetrics(self.label_set)
        self._val_seen = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hp = self.hparams
        y = foreground_labels(batch, self.label_set, hp.label_source)
        batch = {**batch, "fg_labels": y}
        out = self.model.classify(batch["image"])
        parts = {
            "cls": F.multilabel_soft_margin_loss(out["cls_logits"], y),
            "patch": F.multilabel_soft_margin_loss(out["patch_logits"], y),
        }
        total = hp.cls_weight * parts["cls"] + hp.patch_weight * parts["patch"]
        if self.tcd is not None:
            tcd = self.tcd(out, batch)
            total = total + hp.tcd_weight * tcd["loss"]
            parts["tcd"] = tcd["loss"]
            parts.update({f"tcd_{k}": v for k, v in tcd.items() if k != "loss"})
        return total, parts

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, parts = self._losses(batch)
        self.log_losses(loss, parts, batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        from faceparse.models.mct_vit.cam import fcam, pseudo_masks

        loss, _ = self._losses(batch)
        bs = batch["image"].shape[0]
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, batch_size=bs, sync_dist=True)
        if "mask" in batch:
            y = foreground_labels(batch, self.label_set, self.hparams.label_source)
            cams = fcam(self.model, batch["image"], labels=y, scales=(1.0,), flip=False, refine=self.hparams.refine)
            pred = pseudo_masks(cams, y, self.hparams.theta, self.model.fg_index, self.label_set.background)
            self.val_metrics.update(pred, batch["mask"])
            self._val_seen = True

    def on_validation_epoch_end(self) -> None:
        if not self._val_seen:
            return
        self._val_seen = False
        result = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_results("val", result, log={"mean_f1": "pseudo_mean_f1"}, prog_bar="pseudo_mean_f1")
