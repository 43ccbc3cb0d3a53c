"""Standard segmentation losses: cross-entropy, softmax Dice, and SegFace's 0.5 CE + 0.5 Dice."""

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


@LOSSES.register("ce")
class CrossEntropyLoss(nn.Module):
    """Pixel-wise cross-entropy with ignore index 255 (``torch.nn.CrossEntropyLoss``)."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, class_weights: list[float] | None = None) -> None:
        super().__init__()
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.ce = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index)

    def forward(self, outputs: torch.Tensor | dict, batch: dict) -> torch.Tensor:
        return self.ce(logits_of(outputs), batch["mask"])


@LOSSES.register("dice")
class DiceLoss(nn.Module):
    """Multiclass softmax Dice over all classes (segmentation-models-pytorch ``DiceLoss``)."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, smooth: float = 0.0) -> None:
        super().__init__()
        from segmentation_models_pytorch.losses import DiceLoss as SMPDice

        self.dice = SMPDice(mode="multiclass", from_logits=True, ignore_index=ignore_index, smooth=smooth)

    def forward(self, outputs: torch.Tensor | dict, batch: dict) -> torch.Tensor:
        return self.dice(logits_of(outputs), batch["mask"])


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
