"""faceparse's Dice loss (no full-resolution one-hot tensors) against the computation it replaced:
segmentation-models-pytorch's ``DiceLoss(mode="multiclass", from_logits=True)``, and a one-hot
formula written here. Values and gradients, with ignore pixels, absent classes and smoothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import faceparse
from faceparse.losses.standard import dice_loss
from faceparse.profiling import PeakMemory


def _one_hot_dice(logits, target, ignore=255, smooth=0.0, eps=1e-7):
    p = logits.float().softmax(1)
    k = p.shape[1]
    valid = (target != ignore).unsqueeze(1).float()
    g = F.one_hot(torch.where(target == ignore, 0, target), k).permute(0, 3, 1, 2).float() * valid
    p = p * valid
    inter, ps, gs = (p * g).sum((0, 2, 3)), p.sum((0, 2, 3)), g.sum((0, 2, 3))
    score = (inter + smooth) / (0.5 * (ps + gs) + smooth).clamp_min(eps)
    return ((1 - score) * (gs > 0)).mean()


def _case(k, seed, ignore=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, k, 11, 9, generator=g) * 4
    t = torch.randint(0, k, (3, 11, 9), generator=g)
    t[t == 1] = 2  # class 1 absent: counts 0 in the mean
    if ignore:
        t[0, :4] = 255
        t[2] = 255
    return x, t


@pytest.mark.parametrize("k,ignore,smooth", [(3, True, 0.0), (19, True, 0.0), (19, False, 0.0), (5, True, 1.0)])
def test_dice_matches_smp_and_one_hot_formula(k, ignore, smooth):
    from segmentation_models_pytorch.losses import DiceLoss as SMPDice

    x, t = _case(k, k, ignore)
    smp_loss = SMPDice("multiclass", from_logits=True, ignore_index=255, smooth=smooth)
    values, grads = [], []
    for fn in (
        lambda a: dice_loss(a, t, smooth=smooth),
        lambda a: smp_loss(a, t),
        lambda a: _one_hot_dice(a, t, smooth=smooth),
    ):
        a = x.clone().requires_grad_()
        v = fn(a)
        v.backward()
        values.append(v.detach())
        grads.append(a.grad)
    for v, gr in zip(values[1:], grads[1:]):
        torch.testing.assert_close(values[0], v, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grads[0], gr, rtol=1e-5, atol=1e-9)
    built = faceparse.build_loss("dice", smooth=smooth)(x, {"mask": t})
    torch.testing.assert_close(built, values[0])


def test_dice_all_ignored_is_zero_with_a_gradient():
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    loss = dice_loss(x, torch.full((2, 5, 5), 255))
    loss.backward()
    assert float(loss) == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_dice_half_precision_logits_computed_in_float32():
    x, t = _case(19, 3)
    torch.testing.assert_close(dice_loss(x.bfloat16(), t), _one_hot_dice(x.bfloat16().float(), t))


def test_dice_keeps_less_memory_than_smp():
    from segmentation_models_pytorch.losses import DiceLoss as SMPDice

    x = torch.randn(2, 19, 64, 64, requires_grad=True)
    t = torch.randint(0, 19, (2, 64, 64))
    peaks = []
    for fn in (lambda: dice_loss(x, t), lambda: SMPDice("multiclass", from_logits=True, ignore_index=255)(x, t)):
        with PeakMemory() as mem:
            fn().backward()
        peaks.append(mem.peak)
    # measured: 4.1 and 7.1 logit-sized tensors (the gradient of x included)
    assert peaks[0] < 0.7 * peaks[1], (peaks, x.numel() * 4)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_fused_ce_dice_matches_the_two_losses_apart(weighted, smooth):
    """ce_dice's one-pass CE + Dice (one saved softmax) against torch's cross-entropy (class
    weights, ignore index) and the one-hot Dice formula above: values and gradients."""
    from faceparse.losses.standard import ce_dice_parts

    x, t = _case(7, 11)
    w = torch.linspace(0.3, 2.0, 7) if weighted else None
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ce_ref = F.cross_entropy(a, t, weight=w, ignore_index=255)
    dice_ref = _one_hot_dice(a, t, smooth=smooth)
    (0.3 * ce_ref + 0.7 * dice_ref).backward()
    ce, dice = ce_dice_parts(b, t, w, smooth=smooth)
    (0.3 * ce + 0.7 * dice).backward()
    torch.testing.assert_close(ce, ce_ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dice, dice_ref.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-9)
    kw = {"class_weights": w.tolist()} if weighted else {}
    out = faceparse.build_loss("ce_dice", **kw)(x, {"mask": t})
    torch.testing.assert_close(out["loss"], 0.5 * ce_ref.detach() + 0.5 * _one_hot_dice(x, t), rtol=1e-6, atol=1e-6)


def test_fused_ce_dice_all_ignored_and_bf16():
    from faceparse.losses.standard import ce_dice_parts

    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    ce, dice = ce_dice_parts(x, torch.full((2, 5, 5), 255))
    (ce + dice).backward()
    assert float(ce) == 0.0 and float(dice) == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    x, t = _case(5, 4)
    xb = x.bfloat16().requires_grad_()
    ce, dice = ce_dice_parts(xb, t)
    (ce + dice).backward()
    assert ce.dtype == torch.float32 and xb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(ce, F.cross_entropy(xb.detach().float(), t, ignore_index=255))


def test_fused_ce_dice_keeps_less_memory():
    from faceparse.losses.standard import ce_dice_parts, cross_entropy

    x = torch.randn(2, 19, 64, 64, requires_grad=True)
    t = torch.randint(0, 19, (2, 64, 64))
    peaks = []
    for fn in (lambda: sum(ce_dice_parts(x, t)), lambda: cross_entropy(x, t) + dice_loss(x, t)):
        with PeakMemory() as mem:
            fn().backward()
        peaks.append(mem.peak)
    assert peaks[0] < 0.8 * peaks[1], peaks  # measured: 3.5 and 5.1 logit-sized tensors
