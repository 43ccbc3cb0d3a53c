"""Activation checkpointing (``set_grad_checkpointing`` / ``grad_checkpointing=True`` of the tasks).

For every model family that supports it: the same loss, the same gradient of every parameter and
the same BatchNorm statistics with and without checkpointing (two copies of one tiny model, same
seed, train mode: dropout and stochastic depth included), checkpoints really taken, fewer bytes
kept for backward; the task flag turns it on; a model without it raises naming the model.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.utils.checkpoint

import faceparse
from faceparse.errors import FaceParseError
from faceparse.export import tiny_input_size, tiny_kwargs
from faceparse.profiling import PeakMemory

SUPPORTED = [
    "unet",
    "fpn",
    "deeplabv3plus",
    "segformer",
    "rtformer_slim",
    "segformer_hf_b0",
    "bisenet",
    "mct_vit_tiny",
    "segface_mobilenet_v3_large",
]


def _build(name: str) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    return faceparse.build_model(name, **tiny_kwargs(name)).train(), tiny_input_size(name)


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    out = model.forward_train(x)
    loss = faceparse.build_loss("ce_dice")(out, {"mask": y})["loss"]
    if "cls_logits" in out:  # MCT-ViT: its image-level heads too (what WeaklySupervisedTask trains)
        loss = loss + out["cls_logits"].square().mean() + out["patch_logits"].square().mean()
    return loss


def _step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)  # dropout / drop path draw the same masks in both copies
    loss = _loss(model, x, y)
    loss.backward()
    return loss.detach()


@pytest.mark.parametrize("name", SUPPORTED)
def test_checkpointing_keeps_loss_gradients_and_batchnorm_stats(name, monkeypatch):
    plain, s = _build(name)
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, s, s, generator=g)
    y = torch.randint(0, plain.num_classes, (2, s, s), generator=g)
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    ref = _step(plain, x, y)
    assert not calls  # off by default
    got = _step(ckpt, x, y)
    assert len(calls) >= 2, f"{name}: {len(calls)} checkpointed segments"
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    for (n, p), (_, q) in zip(plain.named_parameters(), ckpt.named_parameters()):
        if p.grad is None:
            assert q.grad is None, n
            continue
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{name} {n}: {m}")
    for (n, b), (_, c) in zip(plain.named_buffers(), ckpt.named_buffers()):
        torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{name} buffer {n}: {m}")


@pytest.mark.parametrize("name", ["unet", "rtformer_slim", "mct_vit_tiny", "segface_mobilenet_v3_large"])
def test_checkpointing_keeps_fewer_bytes_for_backward(name):
    plain, s = _build(name)
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    x = torch.randn(2, 3, s, s)
    kept = []
    for model in (plain, ckpt):
        with PeakMemory() as mem:
            out = model.forward_train(x)
            kept.append(mem.live)  # what the forward pass leaves alive: the outputs and the saved tensors
        del out
    assert kept[1] < 0.8 * kept[0], kept


def test_eval_and_no_grad_never_checkpoint(monkeypatch):
    model, s = _build("rtformer_slim")
    model.set_grad_checkpointing(True)
    calls = []
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1))
    with torch.no_grad():
        model(torch.randn(2, 3, s, s))  # train mode, no grad
    model.eval()(torch.randn(1, 3, s, s))
    assert not calls


def test_set_grad_checkpointing_off_again():
    model, s = _build("unet")
    model.set_grad_checkpointing(True)
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing
    model.set_grad_checkpointing(True)  # wrapping happens once: turning it on twice is harmless
    assert model.grad_checkpointing


def test_unsupported_model_raises_naming_it():
    model = faceparse.build_model("consensus_net", **tiny_kwargs("consensus_net"))
    with pytest.raises(FaceParseError, match="ConsensusNet.*set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    model.set_grad_checkpointing(False)  # turning it off is always allowed


def test_segmentation_task_flag_enables_it():
    from faceparse.tasks import SegmentationTask

    task = SegmentationTask("unet", model_kwargs=tiny_kwargs("unet"), grad_checkpointing=True)
    assert task.model.grad_checkpointing and task.hparams.grad_checkpointing
    assert not SegmentationTask("unet", model_kwargs=tiny_kwargs("unet")).model.grad_checkpointing
    with pytest.raises(FaceParseError, match="ConsensusNet"):
        SegmentationTask("consensus_net", model_kwargs=tiny_kwargs("consensus_net"), grad_checkpointing=True)
    with pytest.raises(FaceParseError, match="Conv2d"):
        SegmentationTask(torch.nn.Conv2d(3, 19, 1), grad_checkpointing=True)


def test_weakly_task_flag_enables_it():
    from faceparse.tasks.weakly import WeaklySupervisedTask

    task = WeaklySupervisedTask("mct_vit_tiny", model_kwargs=tiny_kwargs("mct_vit_tiny"), grad_checkpointing=True)
    assert task.model.grad_checkpointing


def test_cli_flag_reaches_the_task():
    """``faceparse fit --model.init_args.grad_checkpointing true``: the option jsonargparse builds
    from SegmentationTask's signature."""
    from jsonargparse import ArgumentParser

    from faceparse.tasks import SegmentationTask

    parser = ArgumentParser()
    parser.add_class_arguments(SegmentationTask, "model")
    cfg = parser.parse_args(["--model.model", "unet", "--model.grad_checkpointing", "true"])
    assert cfg.model.grad_checkpointing is True
