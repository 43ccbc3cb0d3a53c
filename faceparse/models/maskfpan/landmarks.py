"""Mask-FPAN's landmark-occlusion module (LOM) and learned pose prediction module (PPM).

Mask-FPAN (Li et al. 2023, Sec. III-A, Fig. 3) modifies PFLD (Guo et al. 2019) to predict facial
landmarks together with a per-landmark occlusion flag; its PPM (Sec. III-D) regresses the head's
Euler angles. faceparse builds both as one light PFLD-like network:

* backbone: a timm MobileNetV2 (``features_only``; no downloads, ``pretrained`` = local file);
* landmark branch: PFLD's multi-scale fully connected head (global-average-pooled features of the
  last three stages, concatenated) -> N x 2 landmarks in [0, 1] image coordinates;
* occlusion branch: the same pooled features -> N occlusion logits (Mask-FPAN's addition);
* pose branch (PPM): PFLD's auxiliary network on an intermediate stage -> (yaw, pitch, roll)
  degrees; its targets come from :func:`faceparse.models.maskfpan.pose.head_pose_from_landmarks` (solvePnP),
  as PFLD trains its auxiliary net.

These are not face parsers (no ``B x K x H x W`` logits), so they register in their own registry
``AUX_MODELS`` (``mfpan_lom``), not in ``MODELS``.
:class:`faceparse.losses.maskfpan.LandmarkOcclusionLoss` (registered loss ``landmark_occlusion``)
and the Lightning :class:`faceparse.tasks.maskfpan.LandmarkOcclusionTask` train it on any dataset
with ``landmarks`` and ``landmark_occluded`` (``cofw`` with 29 points, ``occluded`` synthetic faces
with 5); see ``faceparse/configs/maskfpan_lom_cofw.yaml``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from faceparse.images import IMAGENET_MEAN, IMAGENET_STD
from faceparse.models.base import PretrainedModule
from faceparse.registry import AUX_MODELS


class LandmarkOcclusionNet(PretrainedModule):
    """PFLD-like landmark + occlusion + pose network (Mask-FPAN LOM + PPM).

    ``forward(x)`` returns ``{"landmarks": B x N x 2 in [0, 1] (x, y relative to the input),
    "occlusion_logits": B x N, "pose": B x 3 degrees (yaw, pitch, roll)}``. Saves and loads like a
    zoo model: ``save_pretrained(dir)`` writes config.json + model.safetensors, ``faceparse.load_model(dir)``
    rebuilds it (``pretrained`` is not saved: the loaded weights come from the folder).

    Args:
        num_landmarks: N (5 for the 5-point scheme, 29 for COFW).
        backbone: timm model name with ``features_only`` support (MobileNetV2 width 0.5 default).
        hidden: width of the fully connected layers.
        pose: build the pose (PPM) branch.
        input_size: default square input size.
        pretrained: optional local state-dict file for the whole network, loaded strictly (a missing,
            unexpected or wrongly shaped key is an error naming the file).
        pretrained_strict: ``False`` opts in to a partial load (warned; under half the keys fitting
            is still an error).
    """

    input_mean = IMAGENET_MEAN
    input_std = IMAGENET_STD

    def __init__(
        self,
        num_landmarks: int = 5,
        backbone: str = "mobilenetv2_050",
        hidden: int = 128,
        pose: bool = True,
        input_size: int = 112,
        pretrained: str | None = None,
        pretrained_strict: bool = True,
    ) -> None:
        super().__init__()
        import timm

        self.num_landmarks = num_landmarks
        self.input_size = input_size
        self.backbone = timm.create_model(backbone, features_only=True, pretrained=False)
        chans = self.backbone.feature_info.channels()
        fused = sum(chans[-3:])
        self.fc = nn.Sequential(nn.Linear(fused, hidden), nn.ReLU(inplace=True))
        self.landmark_head = nn.Linear(hidden, 2 * num_landmarks)
        self.occlusion_head = nn.Linear(hidden, num_landmarks)
        nn.init.zeros_(self.landmark_head.weight)  # start with every landmark at the image centre
        nn.init.zeros_(self.landmark_head.bias)
        self.pose_head = None
        if pose:
            c = chans[-3]
            self.pose_head = nn.Sequential(
                nn.Conv2d(c, hidden, 3, 2, 1, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(hidden, 32),
                nn.ReLU(inplace=True),
                nn.Linear(32, 3),
            )
        if pretrained is not None:
            from faceparse.models.weights import load_weights_file

            load_weights_file(
                self,
                pretrained,
                what="LOM (Mask-FPAN landmark model) weights file (pretrained=)",
                hint="pass a local state-dict file (nothing is downloaded)",
                strict=pretrained_strict,
            )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        pooled = torch.cat([f.mean(dim=(2, 3)) for f in feats[-3:]], dim=1)
        h = self.fc(pooled)
        out = {
            "landmarks": 0.5 + self.landmark_head(h).view(-1, self.num_landmarks, 2),
            "occlusion_logits": self.occlusion_head(h),
        }
        if self.pose_head is not None:
            out["pose"] = 90.0 * torch.tanh(self.pose_head(feats[-3]) / 90.0)
        return out

    @torch.no_grad()
    def predict(self, x: torch.Tensor, threshold: float = 0.5) -> dict[str, torch.Tensor]:
        """Landmarks in pixels of ``x``, occlusion flags (probability > threshold), pose degrees."""
        out = self(x)
        h, w = x.shape[-2:]
        scale = torch.tensor([w - 1, h - 1], dtype=x.dtype, device=x.device)
        res = {
            "landmarks": out["landmarks"] * scale,
            "landmark_occluded": out["occlusion_logits"].sigmoid() > threshold,
        }
        if "pose" in out:
            res["pose"] = out["pose"]
        return res


@AUX_MODELS.register("mfpan_lom", paper="Mask-FPAN LOM + PPM (PFLD-like)", input_size=112)
def mfpan_lom(**kwargs: Any) -> LandmarkOcclusionNet:
    """Mask-FPAN landmark-occlusion module with the learned pose head (PPM)."""
    return LandmarkOcclusionNet(**kwargs)
