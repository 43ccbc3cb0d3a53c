"""Occlusion- and pose-weighted cross-entropy (Mask-FPAN, Li et al. 2023, Eq. 2).

Mask-FPAN's segmentation loss (Eq. 2) weights each pixel's cross-entropy by a term ``o_i`` that
depends on the distance between the pixel and the occluded landmarks (from its landmark-occlusion
module, LOM) and by the head-pose ratio ``p_i`` (from its pose prediction module, PPM):
``min 1/N ||w_CE||^2 + C sum_i ((x_i - x) o_i p_i)^2``. The paper gives neither the form of
``o_i``/``p_i`` nor any constant; faceparse chooses, documents and exposes them:

* ``o_i = max(o_landmark_i, o_region_i)`` in [0, 1] where
  ``o_landmark_i = max_{l occluded} exp(-||x_i - l||^2 / (2 sigma^2))`` (the "distance threshold"
  of the paper becomes a Gaussian of width ``sigma`` = ``sigma_frac`` x the face box's longer
  side, or x the image side without a box; zero beyond ``cutoff`` x sigma), and
  ``o_region_i = min(1, 2 G_sigma * occlusion)`` (a Gaussian-blurred occlusion mask, 1 inside and
  on the edge of an occluded region, decaying outside);
* ``p = min(1, ||(yaw, pitch, roll)|| / max_angle)`` per image (degrees, ``max_angle`` 90);
* ``w_i = (1 + lambda_occ o_i) (1 + lambda_pose p)`` and
  ``L = sum_i w_i CE_i / N_valid`` (``normalize="valid"``, so ``L = CE + sum_i (w_i - 1) CE_i / N``
  as the additive form of Eq. 2) or ``sum_i w_i CE_i / sum_i w_i`` (``normalize="weight"``).

With all weights 1 (``lambda_occ = lambda_pose = 0``, or no occlusion and frontal pose) the loss
is exactly the plain cross-entropy. Defaults: ``lambda_occ=2``, ``lambda_pose=1``,
``sigma_frac=0.1``, ``cutoff=3``, ``max_angle=90``. Auxiliary logits (``aux_*`` in the outputs)
add ``aux_weight`` (0.4, RTFormer's recipe) times the same weighted loss.

Batch keys used (all optional except ``mask``): ``landmarks`` (B x N x 2, pixels),
``landmark_occluded`` (B x N bool), ``occlusion`` (B x H x W 0/1), ``face_box`` (B x 4),
``pose`` (B x 3 degrees: yaw, pitch, roll).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.errors import FaceParseError
from faceparse.labels import IGNORE_INDEX
from faceparse.losses.standard import as_float32, logits_of
from faceparse.registry import LOSSES


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of B x H x W maps with one sigma (pixels) per image."""
    out = []
    for img, s in zip(x, sigma.tolist()):
        s = max(float(s), 0.5)
        r = max(1, int(math.ceil(3 * s)))
        t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-(t**2) / (2 * s * s))
        k = k / k.sum()
        y = img[None, None]
        y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="constant"), k.view(1, 1, 1, -1))
        y = F.conv2d(F.pad(y, (0, 0, r, r), mode="constant"), k.view(1, 1, -1, 1))
        out.append(y[0, 0])
    return torch.stack(out)


def occlusion_term(
    shape: tuple[int, int, int],
    landmarks: torch.Tensor | None = None,
    landmark_occluded: torch.Tensor | None = None,
    occlusion: torch.Tensor | None = None,
    face_box: torch.Tensor | None = None,
    sigma_frac: float = 0.1,
    cutoff: float = 3.0,
    use_landmarks: bool = True,
    use_region: bool = True,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``o_i`` of Mask-FPAN Eq. 2 as a B x H x W map in [0, 1] (see the module docstring)."""
    b, h, w = shape
    dev = device or torch.device("cpu")
    if face_box is not None:
        fb = face_box.to(dev, torch.float32).reshape(b, 4)
        side = torch.maximum(fb[:, 2] - fb[:, 0], fb[:, 3] - fb[:, 1]).clamp_min(1.0)
    else:
        side = torch.full((b,), float(min(h, w)), device=dev)
    sigma = sigma_frac * side  # B
    o = torch.zeros(b, h, w, device=dev)
    if use_landmarks and landmarks is not None and landmark_occluded is not None:
        pts = landmarks.to(dev, torch.float32).reshape(b, -1, 2)
        occ = landmark_occluded.to(dev).reshape(b, -1).bool()
        ys = torch.arange(h, device=dev, dtype=torch.float32)
        xs = torch.arange(w, device=dev, dtype=torch.float32)
        dx2 = (xs[None, None, None, :] - pts[:, :, 0, None, None]) ** 2  # B N 1 W
        dy2 = (ys[None, None, :, None] - pts[:, :, 1, None, None]) ** 2  # B N H 1
        d2 = dx2 + dy2  # B N H W
        s2 = (sigma**2)[:, None, None, None]
        g = torch.exp(-d2 / (2 * s2)) * (d2 <= (cutoff**2) * s2)
        g = g * occ[:, :, None, None]
        o = torch.maximum(o, g.amax(dim=1) if g.shape[1] else o)
    if use_region and occlusion is not None:
        occ_map = (occlusion.to(dev) > 0).float().reshape(b, h, w)
        if occ_map.any():
            o = torch.maximum(o, (2.0 * _gaussian_blur(occ_map, sigma)).clamp(max=1.0))
            o = torch.maximum(o, occ_map)
    return o


def pose_ratio(pose: torch.Tensor | None, batch_size: int, max_angle: float = 90.0, device=None) -> torch.Tensor:
    """``p`` of Mask-FPAN Eq. 2: ``min(1, ||(yaw, pitch, roll)|| / max_angle)`` per image (B)."""
    if pose is None:
        return torch.zeros(batch_size, device=device)
    p = pose.to(device, torch.float32).reshape(batch_size, -1)
    return (p.norm(dim=1) / max_angle).clamp(0.0, 1.0)


@LOSSES.register("occlusion_weighted_ce")
class OcclusionWeightedCE(nn.Module):
    """Occlusion- and pose-weighted cross-entropy of Mask-FPAN (Eq. 2); see the module docstring.

    Args:
        lambda_occ: weight gain at occluded landmarks / occlusion regions (``o_i = 1``).
        lambda_pose: weight gain at the largest pose (``p = 1``).
        sigma_frac: Gaussian width relative to the face box's longer side.
        cutoff: ``o_landmark`` is 0 beyond ``cutoff`` sigmas (the paper's distance threshold).
        max_angle: pose norm (degrees) at which ``p`` saturates.
        use_landmarks, use_region: which evidence builds ``o_i``.
        normalize: ``"valid"`` (divide by the valid pixel count) or ``"weight"`` (by the weight sum).
        aux_weight: weight of auxiliary logits (``aux_*`` keys of the outputs).
        ignore_index: label ignored by the loss (255).
    """

    def __init__(
        self,
        lambda_occ: float = 2.0,
        lambda_pose: float = 1.0,
        sigma_frac: float = 0.1,
        cutoff: float = 3.0,
        max_angle: float = 90.0,
        use_landmarks: bool = True,
        use_region: bool = True,
        normalize: str = "valid",
        aux_weight: float = 0.4,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if normalize not in ("valid", "weight"):
            raise ValueError(f"normalize must be 'valid' or 'weight', got {normalize!r}")
        self.lambda_occ, self.lambda_pose = lambda_occ, lambda_pose
        self.sigma_frac, self.cutoff, self.max_angle = sigma_frac, cutoff, max_angle
        self.use_landmarks, self.use_region = use_landmarks, use_region
        self.normalize, self.aux_weight, self.ignore_index = normalize, aux_weight, ignore_index

    @staticmethod
    def check_finite(batch: dict[str, Any]) -> None:
        """Reject NaN/inf in the geometry that builds ``o_i`` and ``p`` (Eq. 2): one bad landmark
        would otherwise turn every weight, and so the loss and every gradient, into NaN."""
        for key in ("landmarks", "pose", "face_box"):
            value = batch.get(key)
            if value is None or not torch.is_tensor(value) or not value.is_floating_point():
                continue
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                rows = sorted({int(i) for i in bad.reshape(value.shape[0], -1).any(1).nonzero().flatten()})
                raise FaceParseError(
                    f"occlusion_weighted_ce: batch['{key}'] holds NaN/inf values (images {rows[:8]} of the batch); "
                    f"expected finite {'pixel coordinates' if key != 'pose' else 'angles in degrees'}. "
                    "Drop those samples, or remove the key so that the loss does not use it"
                )

    def weights(self, batch: dict[str, Any], shape: tuple[int, int, int], device=None) -> torch.Tensor:
        """Per-pixel weights ``w_i`` (B x H x W); NaN/inf landmarks, pose or face box raise
        :class:`~faceparse.errors.FaceParseError`."""
        self.check_finite(batch)
        b = shape[0]
        w = torch.ones(shape, device=device)
        if self.lambda_occ:
            o = occlusion_term(
                shape,
                batch.get("landmarks"),
                batch.get("landmark_occluded"),
                batch.get("occlusion"),
                batch.get("face_box"),
                sigma_frac=self.sigma_frac,
                cutoff=self.cutoff,
                use_landmarks=self.use_landmarks,
                use_region=self.use_region,
                device=device,
            )
            w = w * (1.0 + self.lambda_occ * o)
        if self.lambda_pose and batch.get("pose") is not None:
            p = pose_ratio(batch["pose"], b, self.max_angle, device)
            w = w * (1.0 + self.lambda_pose * p)[:, None, None]
        return w

    def _weighted(self, logits: torch.Tensor, target: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        logits = as_float32(logits)  # a half-precision softmax of logits ~1e4 overflows
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        valid = (target != self.ignore_index).to(ce.dtype)
        w = w.to(ce.dtype)
        num = (w * ce * valid).sum()
        den = valid.sum() if self.normalize == "valid" else (w * valid).sum()
        return num / den.clamp_min(1.0)

    def forward(self, outputs: torch.Tensor | dict, batch: dict) -> dict[str, torch.Tensor]:
        target = batch["mask"]
        w = self.weights(batch, tuple(target.shape), device=target.device)
        loss = self._weighted(logits_of(outputs), target, w)
        parts = {"weighted_ce": loss.detach(), "mean_weight": w.mean().detach()}
        if isinstance(outputs, dict):
            for key, value in outputs.items():
                if key.startswith("aux") and isinstance(value, torch.Tensor) and value.dim() == 4:
                    aux = self._weighted(value, target, w)
                    loss = loss + self.aux_weight * aux
                    parts[key] = aux.detach()
        return {"loss": loss, **parts}


@LOSSES.register("landmark_occlusion")
class LandmarkOcclusionLoss(nn.Module):
    """LOM training loss: PFLD-style pose-weighted landmark L2 + occlusion BCE + pose L1.

    ``L = mean_n (1 + sum_k (1 - cos theta_k)) ||l_n - l*_n||^2 + w_occ BCE(o_n, o*_n)
    + w_pose |pose - pose*| / 90`` with landmarks in [0, 1] image units; ``theta`` are the target
    Euler angles (PFLD Eq. 2 without its per-class attribute weights). Missing targets (no
    ``landmark_occluded``, no ``pose`` in the batch) drop their terms.

    Batch keys: ``image`` (for the size), ``landmarks`` (B x N x 2 pixels), ``landmark_occluded``,
    ``pose`` (B x 3 degrees).
    """

    def __init__(self, occlusion_weight: float = 1.0, pose_weight: float = 0.1, pose_weighting: bool = True) -> None:
        super().__init__()
        self.occlusion_weight, self.pose_weight, self.pose_weighting = occlusion_weight, pose_weight, pose_weighting

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        h, w = batch["image"].shape[-2:]
        pred = as_float32(outputs["landmarks"])  # the reductions run in float32 (fp16/bf16 outputs)
        scale = torch.tensor([max(w - 1, 1), max(h - 1, 1)], dtype=pred.dtype, device=pred.device)
        target = batch["landmarks"].to(pred.dtype) / scale
        err = ((pred - target) ** 2).sum(-1).mean(-1)  # B
        pose = batch.get("pose")
        if self.pose_weighting and pose is not None:
            err = err * (1.0 + (1.0 - torch.cos(torch.deg2rad(pose.to(err.dtype)))).sum(-1))
        lmk = err.mean()
        loss, parts = lmk, {"landmark": lmk.detach()}
        if batch.get("landmark_occluded") is not None:
            occ_logits = as_float32(outputs["occlusion_logits"])
            occ = F.binary_cross_entropy_with_logits(occ_logits, batch["landmark_occluded"].to(occ_logits.dtype))
            loss = loss + self.occlusion_weight * occ
            parts["occlusion"] = occ.detach()
        if pose is not None and "pose" in outputs:
            pred_pose = as_float32(outputs["pose"])
            pl_ = F.l1_loss(pred_pose, pose.to(pred_pose.dtype)) / 90.0
            loss = loss + self.pose_weight * pl_
            parts["pose"] = pl_.detach()
        return {"loss": loss, **parts}


@LOSSES.register("deocclusion")
class DeOcclusionLoss(nn.Module):
    """DOM loss: Mask-FPAN Eq. 1 (squared error between the de-occluded output and the clean face)
    + ``rec_weight`` x the same for the raw reconstruction + ``occ_weight`` x BCE of the occlusion
    branch against the synthetic occlusion mask.

    ``pos_weight`` up-weights occluded pixels in the BCE (occluders cover a minority of the face,
    and an unweighted BCE first settles on "nothing is occluded").

    Batch keys: ``clean`` (B x 3 x S x S in [0, 1]) and ``occlusion`` (B x S x S, 0/1; resized).
    """

    def __init__(self, rec_weight: float = 0.5, occ_weight: float = 1.0, pos_weight: float = 1.0) -> None:
        super().__init__()
        self.rec_weight, self.occ_weight, self.pos_weight = rec_weight, occ_weight, pos_weight

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        # the reductions run in float32 whatever the outputs' dtype (fp16/bf16 under autocast)
        output, recon = as_float32(outputs["output"]), as_float32(outputs["reconstruction"])
        occ_logits = as_float32(outputs["occlusion_logits"])
        size = output.shape[-2:]
        clean = batch["clean"].to(output.dtype)
        if clean.shape[-2:] != size:
            clean = F.interpolate(clean, size=size, mode="bilinear", align_corners=False)
        eq1 = F.mse_loss(output, clean)
        rec = F.mse_loss(recon.to(output.dtype), clean)
        occ_t = batch["occlusion"].to(occ_logits.dtype)[:, None]
        if occ_t.shape[-2:] != size:
            occ_t = F.interpolate(occ_t, size=size, mode="nearest")
        pos_weight = torch.tensor(self.pos_weight, device=occ_t.device, dtype=occ_t.dtype)
        occ = F.binary_cross_entropy_with_logits(occ_logits, occ_t, pos_weight=pos_weight)
        loss = eq1 + self.rec_weight * rec + self.occ_weight * occ
        return {"loss": loss, "eq1": eq1.detach(), "reconstruction": rec.detach(), "occlusion": occ.detach()}
