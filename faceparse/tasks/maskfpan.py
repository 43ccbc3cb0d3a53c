"""Lightning module of Mask-FPAN's landmark-occlusion module (LOM) with its pose head (PPM)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics import MeanMetric

from faceparse.losses.maskfpan import LandmarkOcclusionLoss
from faceparse.models.maskfpan.landmarks import LandmarkOcclusionNet
from faceparse.models.maskfpan.pose import add_pose_targets
from faceparse.tasks.base import BaseTask


class LandmarkOcclusionTask(BaseTask):
    """Lightning module training the LOM (+ PPM) on a dataset with landmarks and occlusion flags.

    Pose targets come from the 5-point landmarks by solvePnP when the batch has no ``pose``
    (other schemes train without the pose term). Logs landmark NME (normalised by the image
    diagonal) and occlusion-flag accuracy on validation, averaged over the epoch's samples.

    Optimiser: ``optimizer`` (AdamW), ``lr``, ``weight_decay``; no schedule (``scheduler="none"``).
    """

    schedulers = ("none",)

    def __init__(
        self,
        num_landmarks: int = 29,
        model_kwargs: dict | None = None,
        loss_kwargs: dict | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
    ) -> None:
        super().__init__()
        self.model = LandmarkOcclusionNet(num_landmarks=num_landmarks, **(model_kwargs or {}))
        self.loss = LandmarkOcclusionLoss(**(loss_kwargs or {}))
        self.val_nme = MeanMetric()
        self.val_occ_acc = MeanMetric()
        self._occ_seen = False

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch = add_pose_targets(batch)
        out = self.loss(self.model(batch["image"]), batch)
        self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=True, batch_size=len(batch["image"]))
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self.model.predict(batch["image"])
        h, w = batch["image"].shape[-2:]
        bs = len(batch["image"])
        self.val_nme.update((pred["landmarks"] - batch["landmarks"]).norm(dim=-1).mean() / float(np.hypot(h, w)), bs)
        if batch.get("landmark_occluded") is not None:
            self.val_occ_acc.update((pred["landmark_occluded"] == batch["landmark_occluded"]).float().mean(), bs)
            self._occ_seen = True

    def on_validation_epoch_end(self) -> None:
        result = {"nme": self.val_nme.compute()}
        if self._occ_seen:
            result["occ_acc"] = self.val_occ_acc.compute()
        self.log_results("val", result, prog_bar="nme")
        self.val_nme.reset()
        self.val_occ_acc.reset()
        self._occ_seen = False

    def optimizer_parameters(self) -> Iterable[nn.Parameter]:
        return self.parameters()  # the model and any learnable loss weights
