"""SegFace's fast forward and activation checkpointing.

- The fusion (one composed linear per level, upsampled and summed) equals the official formulation
  written here: per-level linear, bilinear upsampling, concatenation deepest level first, bias-free
  1x1 conv; the decoder's single bmm equals the einsum over class vectors and pixel features.
- With ``set_grad_checkpointing(True)`` the loss, every parameter gradient and the BatchNorm
  statistics equal those without, checkpoints are really taken, and the forward keeps fewer bytes.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint

import faceparse
from faceparse.errors import FaceParseError
from faceparse.export import tiny_kwargs
from faceparse.models.segface import BACKBONES, SegFace
from faceparse.profiling import PeakMemory


def _tiny(backbone: str = "mobilenet_v3_large") -> SegFace:
    torch.manual_seed(0)
    return SegFace(backbone=backbone, **tiny_kwargs("segface_mobilenet_v3_large"))


def _reference_fusion(model: SegFace, feats: list[torch.Tensor]) -> torch.Tensor:
    """Official formulation: Linear_i on each level, upsample to stride 4, cat deepest first, 1x1 conv."""
    size = feats[0].shape[-2:]
    levels = []
    for f, proj in zip(feats, model.level_proj):
        y = (f.flatten(2).transpose(1, 2) @ proj.weight.T + proj.bias).transpose(1, 2)
        y = y.reshape(f.shape[0], -1, *f.shape[-2:])
        levels.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
    return F.conv2d(torch.cat(levels[::-1], dim=1), model.fuse.weight)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fusion_equals_concat_and_1x1_conv(channels_last):
    model = _tiny()
    with torch.no_grad():  # random, non-zero biases (torchvision initialises them uniformly anyway)
        for proj in model.level_proj:
            proj.bias.normal_()
    g = torch.Generator().manual_seed(1)
    sizes = [(18, 14), (9, 7), (5, 4), (3, 2)]  # odd sizes: upsampling by non-integer factors
    feats = [torch.randn(2, c, h, w, generator=g) for c, (h, w) in zip(BACKBONES["mobilenet_v3_large"].channels, sizes)]
    if channels_last:
        feats = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    with torch.no_grad():
        got = model.fuse_features(feats)
        ref = _reference_fusion(model, feats)
    assert got.shape == (2, model.fuse.out_channels, 18, 14)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert ref.abs().max() > 0.1  # not trivially zero


def test_full_forward_equals_reference_pipeline():
    """features -> official fusion -> transformer -> upscale -> einsum, against :meth:`SegFace.forward`."""
    model = _tiny().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.features(x)
        fused = _reference_fusion(model, [f.contiguous() for f in feats])
        b, c, h, w = fused.shape
        pe = model.pos_enc(h, w).flatten(1).T.unsqueeze(0).expand(b, -1, -1)
        tokens = model.class_tokens.weight.unsqueeze(0).expand(b, -1, -1)
        tokens, image = model.transformer(fused.flatten(2).transpose(1, 2).contiguous(), pe, tokens)
        pixel = model.upscale(image.transpose(1, 2).reshape(b, c, h, w).contiguous())
        ref = torch.einsum("bkc,bchw->bkhw", model.token_mlp(tokens), pixel)
        got = model(x)
    assert got.shape == (2, 19, 64, 64)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_fusion_gradients_equal_the_concat_formulation():
    model = _tiny()
    feats = [torch.randn(1, c, s, s) for c, s in zip(BACKBONES["mobilenet_v3_large"].channels, (8, 4, 2, 1))]
    grads = []
    for fn in (model.fuse_features, lambda f: _reference_fusion(model, f)):
        model.zero_grad()
        fn(feats).square().sum().backward()
        grads.append([p.grad.clone() for p in [*model.level_proj.parameters(), model.fuse.weight]])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _step(model: SegFace, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)  # Swin's stochastic depth draws the same masks in both copies
    loss = faceparse.build_loss("ce_dice")(model.forward_train(x), {"mask": y})["loss"]
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("backbone", ["mobilenet_v3_large", "swinv2_tiny"])
def test_grad_checkpointing_keeps_loss_gradients_and_batchnorm_stats(backbone, monkeypatch):
    plain = _tiny(backbone).train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 64, 64, generator=g)
    y = torch.randint(0, 19, (2, 64, 64), generator=g)
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    ref = _step(plain, x, y)
    assert not calls
    got = _step(ckpt, x, y)
    # every backbone stage, the fusion, the transformer and the upscaling
    assert len(calls) == len(ckpt.backbone) + 3, len(calls)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    for (n, p), (_, q) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert p.grad is not None and q.grad is not None, n
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
    for (n, b), (_, c) in zip(plain.named_buffers(), ckpt.named_buffers()):
        torch.testing.assert_close(c, b, msg=lambda m, n=n: f"buffer {n}: {m}")


def test_grad_checkpointing_keeps_fewer_bytes_for_backward():
    plain = _tiny().train()
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 64, 64)
    kept = []
    for model in (plain, ckpt):
        with PeakMemory() as mem:
            out = model(x)
            kept.append(mem.live)  # the output and the tensors saved for backward
        del out
    assert kept[1] < 0.5 * kept[0], kept


def test_grad_checkpointing_is_inert_in_eval():
    model = _tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model.set_grad_checkpointing(True)
        torch.testing.assert_close(model(x), ref)


def test_unsupported_model_raises():
    model = faceparse.build_model("consensus_net", **tiny_kwargs("consensus_net"))
    with pytest.raises(FaceParseError, match="does not support activation checkpointing"):
        model.set_grad_checkpointing(True)


def test_per_image_inference_equals_batched_autograd_forward():
    """Eager inference decodes one image at a time; with autograd on the batch runs at once."""
    model = _tiny().eval()
    x = torch.randn(3, 3, 64, 64)
    batched = model(x)  # grad enabled: the batched path
    with torch.inference_mode():
        per_image = model(x)
    torch.testing.assert_close(per_image, batched.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_image[1:2], model(x[1:2]).detach(), rtol=1e-5, atol=1e-6)
