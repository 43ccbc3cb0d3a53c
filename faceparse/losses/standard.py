"""Standard segmentation losses: cross-entropy, softmax Dice, and SegFace's 0.5 CE + 0.5 Dice.

Every loss here computes in float32 whatever the logits' dtype (fp16/bf16 logits of magnitude 1e4
would overflow a half-precision softmax) and is finite on batches without a single valid pixel
(all ``ignore_index``, e.g. COFW's train split): it returns a zero that is still connected to the
logits, so ``backward()`` works and gives zero gradients.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.labels import IGNORE_INDEX
from faceparse.registry import LOSSES


def logits_of(outputs: torch.Tensor | dict[str, Any]) -> torch.Tensor:
    """The class logits inside a model's output (a tensor, or ``forward_train``'s dict)."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def as_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 (reductions of fp16/bf16 inputs overflow or lose precision); float64 stays."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Mean pixel-wise cross-entropy over the valid pixels, as ``nn.CrossEntropyLoss`` computes it
    (with class weights: divided by the summed weights of the valid pixels' classes), in float32,
    and 0 (with a ``grad_fn``) instead of 0/0 = NaN when no pixel is valid."""
    x = as_float32(logits)
    w = None if weight is None else weight.to(x.device, x.dtype)
    total = F.cross_entropy(x, target, weight=w, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index
    if w is None:
        den = valid.sum().to(x.dtype)
    else:
        den = w[target.clamp(0, w.numel() - 1)][valid].sum()
    return total / torch.where(den > 0, den, torch.ones_like(den))


@LOSSES.register("ce")
class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy with ignore index 255 (``torch.nn.CrossEntropyLoss``'s mean), in
    float32 and 0 on an all-ignore batch (see :func:`cross_entropy`)."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, class_weights: list[float] | None = None) -> None:
        super().__init__()
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        # kept as the holder of the weight buffer (state-dict key ``ce.weight`` of older checkpoints)
        self.ce = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)

    def forward(self, outputs: torch.Tensor | dict, batch: dict) -> torch.Tensor:
        return cross_entropy(logits_of(outputs), batch["mask"], self.ce.weight, self.ce.ignore_index)


@LOSSES.register("dice")
class DiceLoss(nn.Module):
    """Multiclass softmax Dice over all classes (segmentation-models-pytorch ``DiceLoss``)."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, smooth: float = 0.0) -> None:
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss as SMPDice

        self.dice = SMPDice(mode="multiclass", from_logits=True, ignore_index=ignore_index, smooth=smooth)

    def forward(self, outputs: torch.Tensor | dict, batch: dict) -> torch.Tensor:
        # float32: smp's log_softmax(...).exp() of fp16 logits of magnitude 1e4 is inf - inf = NaN
        return self.dice(as_float32(logits_of(outputs)), batch["mask"])


@LOSSES.register("ce_dice")
class CEDiceLoss(nn.Module):
    """Weighted sum of cross-entropy and Dice; the defaults are SegFace's (0.5 CE + 0.5 Dice).

    ``class_weights`` weight the cross-entropy term per class (see
    :func:`faceparse.data.stats.balanced_class_weights`).
    If the outputs carry auxiliary logits (``aux_logits`` or any ``aux_*`` tensor), they add
    ``aux_weight`` times the same loss.
    """

    def __init__(
        self,
        ce_weight: float = 0.5,
        dice_weight: float = 0.5,
        aux_weight: float = 0.4,
        ignore_index: int = IGNORE_INDEX,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.ce_weight, self.dice_weight, self.aux_weight = ce_weight, dice_weight, aux_weight
        self.ce = CrossEntropyLoss(ignore_index, class_weights)
        self.dice = DiceLoss(ignore_index)

    def _one(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        size = batch["mask"].shape[-2:]
        if logits.shape[-2:] != size:  # auxiliary heads may run at a lower resolution
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return self.ce(logits, batch), self.dice(logits, batch)

    def forward(self, outputs: torch.Tensor | dict, batch: dict) -> dict[str, torch.Tensor]:
        ce, dice = self._one(logits_of(outputs), batch)
        loss = self.ce_weight * ce + self.dice_weight * dice
        parts = {"ce": ce.detach(), "dice": dice.detach()}
        if isinstance(outputs, dict):
            for key, value in outputs.items():
                if key.startswith("aux") and isinstance(value, torch.Tensor) and value.dim() == 4:
                    a_ce, a_dice = self._one(value, batch)
                    aux = self.ce_weight * a_ce + self.dice_weight * a_dice
                    loss = loss + self.aux_weight * aux
                    parts[key] = aux.detach()
        return {"loss": loss, **parts}
