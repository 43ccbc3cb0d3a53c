"""Lightning DDP on CPU (2 processes, gloo) gives the same training result and metrics as 1 process.

Equivalence holds when both runs see the same samples per optimiser step: the train set is
exactly one global batch (2 processes x 4 = 1 process x 8), so every step uses all samples in
either run and shuffling cannot change anything; the validation set is divisible by
2 x batch so ``DistributedSampler`` adds no padding duplicates. The loss is plain cross-entropy
(a per-pixel mean, so the average of the two processes' gradients is the full-batch gradient;
a batch-level Dice term would not decompose). BatchNorm would normalise each process's half
batch separately (SyncBatchNorm needs a GPU), so the zoo U-Net's BatchNorm layers are swapped
for GroupNorm, which is per sample.
"""

from __future__ import annotations

import math
import sys

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

import faceparse
from faceparse.data import FaceParsingDataModule
from faceparse.tasks import SegmentationTask

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or sys.platform == "win32", reason="needs torch.distributed (gloo)"
)


TINY = {"encoder": "resnet18", "input_size": 32, "arch_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]}}


def _bn_to_gn(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            c = child.num_features
            setattr(module, name, nn.GroupNorm(math.gcd(c, 8), c))
        else:
            _bn_to_gn(child)
    return module


def _run(devices: int, per_process_batch: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    pl.seed_everything(0, workers=True)
    model = _bn_to_gn(faceparse.build_model("unet", **TINY))
    task = SegmentationTask(model=model, loss="ce", lr=1e-2, scheduler="none")
    dm = FaceParsingDataModule(
        dataset="synthetic",
        train_kwargs={"num_samples": 8},
        val_kwargs={"num_samples": 8},
        image_size=32,
        batch_size=per_process_batch,
        augment=False,
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, datamodule=dm)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    state = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
    return metrics, state


def test_ddp_two_cpu_processes_match_one_process():
    single_metrics, single_state = _run(devices=1, per_process_batch=8)
    ddp_metrics, ddp_state = _run(devices=2, per_process_batch=4)
    assert {"val/mean_f1", "val/miou", "val/pixel_acc", "val/loss"} <= set(single_metrics)
    assert set(single_metrics) == set(ddp_metrics)
    for key, value in single_metrics.items():
        assert ddp_metrics[key] == pytest.approx(value, abs=1e-4), key
    # the weights after two optimiser steps agree too (the main process gets rank 0's weights)
    max_diff = max((single_state[k].float() - ddp_state[k].float()).abs().max().item() for k in single_state)
    assert max_diff < 1e-4
    # and training moved them: the comparison is not between two untouched initialisations
    pl.seed_everything(0, workers=True)
    init = _bn_to_gn(faceparse.build_model("unet", **TINY))
    moved = max((init.state_dict()[k].float() - single_state[k].float()).abs().max().item() for k in single_state)
    assert moved > 1e-3


@pytest.mark.parametrize(
    "name, devices, nodes", [("ddp_cpu_synthetic", 2, 1), ("ddp_multi_gpu", 8, 1), ("ddp_multi_node", 8, 2)]
)
def test_ddp_configs_parse(name, devices, nodes, capsys):
    import yaml

    from faceparse.cli import run_lightning

    with pytest.raises(SystemExit) as exc:
        run_lightning(["fit", "--config", name, "--print_config"])
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["devices"] == devices and cfg["trainer"]["num_nodes"] == nodes
    assert cfg["trainer"]["strategy"]["class_path"].endswith("DDPStrategy")
    assert cfg["model"]["class_path"] == "faceparse.tasks.SegmentationTask"


def test_ddp_config_trains_with_two_processes_from_the_command_line(tmp_path):
    """`faceparse fit --config ddp_cpu_synthetic`: Lightning's ddp launcher re-runs the command."""
    import subprocess

    args = [
        "fit", "--config", "ddp_cpu_synthetic", "--trainer.max_epochs", "1", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.callbacks.init_args.dirpath", str(tmp_path / "model"),
        "--data.init_args.train_kwargs.num_samples", "16", "--data.init_args.val_kwargs.num_samples", "8",
        "--data.init_args.image_size", "32", "--data.init_args.batch_size", "4",
        "--model.init_args.model_kwargs.input_size", "32",
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "faceparse.cli", *args], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stderr + proc.stdout
    model = faceparse.load_model(tmp_path / "model")
    assert model.default_input_size == 32
