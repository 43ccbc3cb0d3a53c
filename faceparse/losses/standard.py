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


def dice_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX, smooth: float = 0.0, eps: float = 1e-7
) -> torch.Tensor:
    """Multiclass softmax Dice loss, the value of segmentation-models-pytorch's
    ``DiceLoss(mode="multiclass", from_logits=True, ignore_index=..., smooth=...)``, in float32.

    With ``p`` the softmax over classes and ``g`` the one-hot target, both summed over the batch
    and the valid pixels, per class ``k``: ``dice_k = (I_k + smooth) / max(0.5 (P_k + G_k) + smooth,
    eps)`` with ``I_k = sum p_k g_k``, ``P_k = sum p_k``, ``G_k = sum g_k``; the loss is the mean
    over all K classes of ``1 - dice_k``, where classes absent from the target count 0 (as smp).

    Written by hand for memory: smp materialises the one-hot target as int64 ``B x N x K`` (twice
    the logits' bytes, twice: before and after masking), a float copy of it, the masked
    probabilities and ``|p - g|`` beside the softmax, about nine logit-sized tensors at full
    resolution. Here only the softmax is ``B x K x H x W``: ``P`` is one batched matrix product
    with the valid mask, ``I`` gathers each pixel's true-class probability and sums it per class.
    """
    x = as_float32(logits)
    b, k = x.shape[:2]
    prob = x.softmax(1).reshape(b, k, -1)
    tc, vf = _valid_targets(target, b, ignore_index, prob.dtype)
    inter, target_sum, prob_sum = _dice_sums(prob, tc, vf, prob.gather(1, tc) * vf)
    score = (inter + smooth) / (0.5 * (prob_sum + target_sum) + smooth).clamp_min(eps)
    return ((1.0 - score) * (target_sum > 0).to(score.dtype)).mean()


def _valid_targets(
    target: torch.Tensor, b: int, ignore_index: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tc, vf)``, both ``B x 1 x N``: the class of each pixel (0 where ignored, weighted 0) and
    the mask of valid pixels in ``dtype``."""
    t = target.reshape(b, 1, -1)
    valid = t != ignore_index
    return torch.where(valid, t, torch.zeros_like(t)), valid.to(dtype)


def _dice_sums(
    prob: torch.Tensor, tc: torch.Tensor, vf: torch.Tensor, p_true: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per class ``(I_k, G_k, P_k)`` of :func:`dice_loss` over the valid pixels, from the softmax
    ``prob`` (``B x K x N``), :func:`_valid_targets` and ``p_true`` (each valid pixel's true-class
    probability, ``B x 1 x N``, 0 where ignored)."""
    b, k = prob.shape[:2]
    flat = tc.reshape(-1)
    zeros = torch.zeros(k, dtype=prob.dtype, device=prob.device)
    inter = zeros.index_add(0, flat, p_true.reshape(-1))
    target_sum = zeros.index_add(0, flat, vf.reshape(-1))
    return inter, target_sum, torch.einsum("bkn,bn->k", prob, vf.reshape(b, -1))


@LOSSES.register("dice")
class DiceLoss(nn.Module):
    """Multiclass softmax Dice over all classes (segmentation-models-pytorch ``DiceLoss``'s value,
    computed without its full-resolution one-hot tensors: :func:`dice_loss`)."""

    def __init__(self, ignore_index: int = IGNORE_INDEX, smooth: float = 0.0) -> None:
        super().__init__()
        self.ignore_index, self.smooth = ignore_index, smooth

    def forward(self, outputs: torch.Tensor | dict, batch: dict) -> torch.Tensor:
        return dice_loss(logits_of(outputs), batch["mask"], self.ignore_index, self.smooth)


class _CEDice(torch.autograd.Function):
    """Cross-entropy (:func:`cross_entropy`) and Dice (:func:`dice_loss`) of the same logits in one
    pass that keeps a single full-resolution tensor, the softmax, for backward.

    Written by hand for memory (no library fuses the two): computed apart, the cross-entropy keeps
    its log-softmax and the Dice its softmax, and their backward passes add several more
    ``B x K x N`` temporaries. With ``p`` the softmax, ``w_n`` the class weight of pixel ``n`` (0 if
    ignored) and ``W = sum_n w_n``: ``dCE/dx = w_n (p - g) / W``; the Dice gradient with respect to
    ``p`` is ``valid_n (a_k g_kn + b_k)`` with per-class ``a_k = -m_k / (K D_k)``,
    ``b_k = m_k (I_k + smooth) / (2 K D_k^2)`` (``D_k`` its denominator, ``m_k`` = class present;
    ``b_k = 0`` where the ``eps`` clamp is active), taken through the softmax Jacobian
    ``p * (dp - sum_j p_j dp_j)``.
    """

    @staticmethod
    def forward(ctx, x, target, weight, ignore_index, smooth, eps):
        b, k = x.shape[:2]
        tc, vf = _valid_targets(target, b, ignore_index, x.dtype)
        p = torch.log_softmax(x, 1).reshape(b, k, -1)
        logp_t = p.gather(1, tc)  # B x 1 x N
        cw = vf if weight is None else weight.to(x.dtype)[tc] * vf  # per-pixel CE weight, 0 if ignored
        den = cw.sum()
        den = torch.where(den > 0, den, torch.ones_like(den))
        ce = -(logp_t * cw).sum() / den
        p = p.exp_()  # the softmax, in the log-softmax's buffer
        inter, gsum, psum = _dice_sums(p, tc, vf, logp_t.exp_() * vf)
        raw = 0.5 * (psum + gsum) + smooth
        d = raw.clamp_min(eps)
        present = (gsum > 0).to(x.dtype)
        dice = ((1.0 - (inter + smooth) / d) * present).mean()
        a = -present / (k * d)
        bk = torch.where(raw > eps, present * (inter + smooth) / (2 * k * d * d), torch.zeros_like(d))
        ctx.save_for_backward(p, tc, vf, cw / den, a, bk)
        ctx.shape = x.shape
        return ce, dice

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_ce, g_dice):
        p, tc, vf, cwn, a, bk = ctx.saved_tensors
        p_t = p.gather(1, tc)
        s = a[tc] * p_t + torch.einsum("bkn,k->bn", p, bk).unsqueeze(1)  # sum_j p_j dp_j / valid
        grad = (bk.view(1, -1, 1) - s) * (g_dice * vf) + g_ce * cwn
        grad.mul_(p)
        grad.scatter_add_(1, tc, g_dice * vf * a[tc] * p_t - g_ce * cwn)
        return grad.reshape(ctx.shape), None, None, None, None, None


def ce_dice_parts(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    smooth: float = 0.0,
    eps: float = 1e-7,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cross_entropy(logits, target, weight), dice_loss(logits, target))`` with the memory of one
    softmax (see :class:`_CEDice`); values and gradients equal those of the two functions."""
    return _CEDice.apply(as_float32(logits), target, weight, ignore_index, smooth, eps)


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
        return ce_dice_parts(logits, batch["mask"], self.ce.ce.weight, self.ce.ce.ignore_index, self.dice.smooth)

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
