"""One seed controls a run, and a run resumed from a mid-epoch checkpoint ends where it would have.

Tiny U-Net (resnet18, 64 px) on 16 synthetic faces with augmentation on (flip, affine, colour
jitter), batch 4: 4 optimiser steps per epoch.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

import faceparse
from faceparse.data import FaceParsingDataModule
from faceparse.data.datamodule import SeededSampler, sample_seed
from faceparse.tasks import SegmentationTask


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: identical results either way, and far faster on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _datamodule(num_workers: int = 0, seed: int | None = None) -> FaceParsingDataModule:
    return FaceParsingDataModule(
        dataset="synthetic",
        train_kwargs={"num_samples": 16},
        val_kwargs={"num_samples": 4},
        image_size=64,
        batch_size=4,
        num_workers=num_workers,
        augment=True,
        seed=seed,
    )


class _Crash(pl.Callback):
    """Kill the run when step ``at`` is about to start (after the checkpoint of step ``at`` is written)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


def _fit(
    root: Path,
    seed: int,
    steps: int,
    num_workers: int = 0,
    data_seed: int | None = None,
    callbacks: list[pl.Callback] | None = None,
    ckpt_path: str | None = None,
) -> dict[str, torch.Tensor]:
    pl.seed_everything(seed)
    model = faceparse.build_model("unet", encoder="resnet18", input_size=64)
    task = SegmentationTask(model=model, loss="ce", lr=3e-3, scheduler="cosine", warmup_steps=2)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks or []),
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
        default_root_dir=root,
    )
    trainer.fit(task, _datamodule(num_workers, data_seed), ckpt_path=ckpt_path)
    return {k: v.detach().clone() for k, v in task.model.state_dict().items()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(max abs difference, max relative difference) over the floating-point entries."""
    abs_d = rel_d = 0.0
    for k, v in a.items():
        if not v.is_floating_point():
            assert torch.equal(v, b[k]), k
            continue
        d = (v - b[k]).abs().max().item()
        abs_d = max(abs_d, d)
        rel_d = max(rel_d, d / max(v.abs().max().item(), 1e-12))
    return abs_d, rel_d


def test_train_batches_depend_on_seed_not_on_workers():
    """Same seed: identical augmented batches with 0 or 2 workers; another seed or epoch: other batches."""

    def batches(num_workers: int, seed: int, epoch: int = 0) -> list[torch.Tensor]:
        loader = _datamodule(num_workers, seed).train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [b["image"] for b in loader]

    a0, a2 = batches(0, 7), batches(2, 7)
    assert len(a0) == 4
    assert all(torch.equal(x, y) for x, y in zip(a0, a2))
    assert not torch.equal(torch.cat(a0), torch.cat(batches(0, 8)))
    assert not torch.equal(torch.cat(a0), torch.cat(batches(0, 7, epoch=1)))


def test_sampler_pairs_each_index_with_its_seed_and_shards_by_rank():
    data = list(range(10))
    s = SeededSampler(data, seed=3)
    s.set_epoch(2)
    items = list(s)
    assert sorted(i for i, _ in items) == data
    assert all(k == sample_seed(3, 2, i) for i, k in items)
    shards = [list(SeededSampler(data, seed=3, num_replicas=2, rank=r, with_seeds=False)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == data and not set(shards[0]) & set(shards[1])


def test_same_seed_same_weights_with_0_and_2_workers(tmp_path):
    steps = 3
    ref = _fit(tmp_path / "a", seed=1, steps=steps)
    again = _fit(tmp_path / "b", seed=1, steps=steps)
    workers = _fit(tmp_path / "c", seed=1, steps=steps, num_workers=2)
    other_data = _fit(tmp_path / "d", seed=1, steps=steps, data_seed=2)  # same init, other order/augmentation
    same0, same2 = _max_diff(ref, again), _max_diff(ref, workers)
    print(f"same seed: max abs diff {same0[0]:.3g} (0 workers), {same2[0]:.3g} (2 workers vs 0)")
    assert same0 == (0.0, 0.0) and same2 == (0.0, 0.0)
    data_diff = _max_diff(ref, other_data)[0]
    print(f"other data seed, same init: max abs diff {data_diff:.3g}")
    assert data_diff > 1e-4


def test_other_seed_other_weights(tmp_path):
    a = _fit(tmp_path / "a", seed=1, steps=2)
    b = _fit(tmp_path / "b", seed=2, steps=2)
    diff = _max_diff(a, b)[0]
    print(f"other seed: max abs diff {diff:.3g}")
    assert diff > 1e-4


@pytest.mark.parametrize(
    "k,num_workers",
    [
        (5, 0),  # checkpoint after the 1st batch of epoch 1 (mid-epoch), finish with the 2nd
        (5, 2),
        (4, 0),  # checkpoint after the last batch of epoch 0: resume at the start of epoch 1
    ],
)
def test_resume_mid_epoch_matches_uninterrupted(tmp_path, k, num_workers):
    n = 6
    full = _fit(tmp_path / "full", seed=3, steps=n, num_workers=num_workers)
    ckpt_dir = tmp_path / "ckpt"
    ckpt = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=k, save_last=True, save_top_k=0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path / "run", seed=3, steps=n, num_workers=num_workers, callbacks=[ckpt, _Crash(k)])
    state = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    assert state["global_step"] == k
    loader_state = state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state  # the StatefulDataLoader's position is in the checkpoint
    resumed = _fit(
        tmp_path / "run",
        seed=99,  # another global seed: the checkpoint alone must determine the rest of the run
        steps=n,
        num_workers=num_workers,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_top_k=0)],
        ckpt_path=str(ckpt_dir / "last.ckpt"),
    )
    abs_d, rel_d = _max_diff(full, resumed)
    print(f"resume at step {k} vs uninterrupted ({num_workers} workers): max abs diff {abs_d:.3g}, rel {rel_d:.3g}")
    assert abs_d == 0.0
