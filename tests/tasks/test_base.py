"""BaseTask: the learning-rate schedule and the epoch-metric logging shared by every task."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

import faceparse
from faceparse.errors import FaceParseError
from faceparse.tasks.base import BaseTask, cosine_with_warmup
from faceparse.tasks.maskfpan import LandmarkOcclusionTask
from faceparse.tasks.s3pot import OcclusionPromptTask
from faceparse.tasks.supervised import SegmentationTask
from faceparse.tasks.weakly import WeaklySupervisedTask


def closed_form(step: int, total: int, warmup: int) -> float:
    """Linear warmup ((t + 1) / warmup) then half a cosine to zero, written out independently."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class _LrRecorder(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _tiny_loader(n: int, batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    items = [
        {"image": torch.randn(3, 8, 8, generator=g), "mask": torch.randint(0, 19, (8, 8), generator=g)}
        for _ in range(n)
    ]
    return DataLoader(items, batch_size=batch_size)


@pytest.mark.parametrize("warmup", [0, 1, 4])
def test_cosine_lr_per_step_matches_closed_form(tmp_path, warmup):
    lr, batches, epochs = 0.01, 5, 3
    task = SegmentationTask(model=nn.Conv2d(3, 19, 1), loss="ce", lr=lr, scheduler="cosine", warmup_steps=warmup)
    rec = _LrRecorder()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[rec],
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, _tiny_loader(batches * 2, 2))
    total = batches * epochs
    expected = [lr * closed_form(t, total, warmup) for t in range(total)]
    assert len(rec.lrs) == total
    torch.testing.assert_close(torch.tensor(rec.lrs), torch.tensor(expected), rtol=1e-6, atol=1e-12)
    assert max(rec.lrs) == pytest.approx(lr)  # the peak is the base lr


@pytest.mark.parametrize("total,warmup", [(10, 0), (10, 3), (7, 6)])
def test_cosine_with_warmup_scheduler_steps(total, warmup):
    """The S3POT (per epoch) and step schedules alike: the multiplier per scheduler step."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = cosine_with_warmup(opt, total, warmup)
    got = []
    for _ in range(total):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [2.0 * closed_form(t, total, warmup) for t in range(total)]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=1e-6, atol=1e-12)


def test_every_task_derives_from_base_task():
    for cls in (SegmentationTask, WeaklySupervisedTask, OcclusionPromptTask, LandmarkOcclusionTask):
        assert issubclass(cls, BaseTask)
    assert SegmentationTask.schedulers == ("multistep", "cosine", "plateau", "none")
    assert OcclusionPromptTask.scheduler_interval == "epoch"


def test_bad_scheduler_and_optimizer_are_rejected_at_construction():
    with pytest.raises(FaceParseError, match="scheduler must be"):
        SegmentationTask(model=nn.Conv2d(3, 19, 1), loss="ce", scheduler="poly")
    with pytest.raises(FaceParseError, match="optimizer must be"):
        SegmentationTask(model=nn.Conv2d(3, 19, 1), loss="ce", optimizer="lamb")


@pytest.mark.parametrize(
    "name,cls", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)]
)
def test_optimizer_choice(name, cls):
    task = SegmentationTask(model=nn.Conv2d(3, 19, 1), loss="ce", scheduler="none", optimizer=name, lr=0.5)
    opt = task.configure_optimizers()
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.5


def test_multistep_schedule_per_epoch():
    task = SegmentationTask(model=nn.Conv2d(3, 19, 1), loss="ce", milestones=[2], gamma=0.5, lr=1.0)
    conf = task.configure_optimizers()
    assert conf["lr_scheduler"]["interval"] == "epoch"
    sched = conf["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(4):
        lrs.append(conf["optimizer"].param_groups[0]["lr"])
        sched.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5]


def test_log_results_stores_floats_and_vectors_and_logs_names(tmp_path):
    task = SegmentationTask(model=nn.Conv2d(3, 19, 1), loss="ce", scheduler="none")
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.validate(task, _tiny_loader(4, 2), verbose=False)
    val = task.last_results["val"]
    assert isinstance(val["mean_f1"], float) and isinstance(val["miou"], float)
    assert isinstance(val["f1"], torch.Tensor) and val["f1"].shape == (19,)
    logged = set(trainer.callback_metrics)
    assert {"val/loss", "val/mean_f1", "val/miou", "val/pixel_acc"} <= logged
    assert any(k.startswith("val/f1/") for k in logged)
    assert abs(float(trainer.callback_metrics["val/mean_f1"]) - val["mean_f1"]) < 1e-6


@pytest.mark.parametrize("align, expected", [("tanh", "tanh"), (True, "similarity"), (False, None)])
def test_save_pretrained_records_the_training_warp(tmp_path, align, expected):
    from types import SimpleNamespace

    from faceparse.inference import model_warp
    from faceparse.tasks.callbacks import SavePretrained

    model = faceparse.build_model("unet", **faceparse.registry.MODELS.cfg("unet").tiny, label_set="lapa")
    trainer = SimpleNamespace(is_global_zero=True, datamodule=SimpleNamespace(dataset_kwargs={"align": align}))
    SavePretrained(str(tmp_path / "m")).on_fit_end(trainer, SimpleNamespace(model=model))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config.get("warp") == expected
    loaded = faceparse.load_model(tmp_path / "m")
    assert model_warp(loaded, tmp_path / "m")[0] == expected
