"""Lightning module of Mask-FPAN's landmark-occlusion module (LOM) with its pose head (PPM)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from faceparse.losses.maskfpan import LandmarkOcclusionLoss
from faceparse.models.maskfpan.landmarks import LandmarkOcclusionNet
from faceparse.models.maskfpan.pose import add_pose_targets


class LandmarkOcclusionTask(pl.LightningModule):
    """Lightning module training the LOM (+ PPM) on a dataset with landmarks and occlusion flags.

    Pose targets come from the 5-point landmarks by solvePnP when the batch has no ``pose``
    (other schemes train without the pose term). Logs landmark NME (normalised by the image
    diagonal) and occlusion-flag accuracy on validation.
    """

    def __init__(
        self,
        num_landmarks: int = 29,
        model_kwargs: dict | None = None,
        loss_kwargs: dict | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = LandmarkOcclusionNet(num_landmarks=num_landmarks, **(model_kwargs or {}))
        self.loss = LandmarkOcclusionLoss(**(loss_kwargs or {}))

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
        nme = (pred["landmarks"] - batch["landmarks"]).norm(dim=-1).mean() / float(np.hypot(h, w))
        metrics = {"val/nme": nme}
        if batch.get("landmark_occluded") is not None:
            metrics["val/occ_acc"] = (pred["landmark_occluded"] == batch["landmark_occluded"]).float().mean()
        self.log_dict(metrics, prog_bar=True, batch_size=len(batch["image"]))

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
