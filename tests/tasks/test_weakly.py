"""Weakly supervised pipeline: image-level labels, stage-1 task, pseudo-label command, pseudo dataset."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

import faceparse
from faceparse.cli import main
from faceparse.data.base import collate
from faceparse.errors import FaceParseError
from faceparse.labels import get_label_set
from faceparse.tasks.weakly import WeaklySupervisedTask, foreground_labels

LS = get_label_set("celebamask_hq")
TINY = dict(img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2, projector_dim=32, projector_hidden_dim=16)


def test_foreground_labels_from_mask_and_labels():
    mask = torch.zeros(2, 4, 4, dtype=torch.long)
    mask[0, 0, 0] = LS.index("nose")
    mask[0, 1, 1] = 255
    mask[1, 2, 2] = LS.index("hair")
    y = foreground_labels({"mask": mask}, LS)
    assert y.shape == (2, 18)
    assert y[0].nonzero().flatten().tolist() == [LS.index("nose") - 1]
    assert y[1].nonzero().flatten().tolist() == [LS.index("hair") - 1]
    full = torch.zeros(2, 19)
    full[:, 0] = 1
    full[0, 3] = 1
    assert foreground_labels({"labels": full}, LS)[0].nonzero().flatten().tolist() == [2]
    assert torch.equal(foreground_labels({"labels": full[:, 1:]}, LS), full[:, 1:])
    # the dataset's labels win when asked, even with a mask present
    assert torch.equal(foreground_labels({"labels": full, "mask": mask}, LS, "labels"), full[:, 1:])
    with pytest.raises(FaceParseError):
        foreground_labels({"labels": torch.zeros(1, 7)}, LS)


def test_synthetic_labels_agree_with_masks():
    ds = faceparse.build_dataset("synthetic", split="train", num_samples=4, image_size=32)
    batch = collate([ds[i] for i in range(4)])
    from_mask = foreground_labels(batch, LS, "mask")
    from_labels = foreground_labels(batch, LS, "labels")
    # resizing can drop a class of a few pixels, never add one
    assert torch.all(from_mask <= from_labels) and (from_mask == from_labels).float().mean() > 0.9


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny stage-1 fit (1 epoch) with TCD on a tiny random CLIP, saved with save_pretrained."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    task = WeaklySupervisedTask("mct_vit_tiny", model_kwargs=TINY, tcd={"encoder": "tiny_clip"}, lr=1e-3)
    ds = faceparse.build_dataset("synthetic", split="train", num_samples=8, image_size=32)
    loader = DataLoader(ds, batch_size=4, collate_fn=collate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            max_epochs=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(task, loader, loader)
    out = tmp_path_factory.mktemp("weak") / "model"
    task.model.save_pretrained(out)
    return task, trainer, out


def test_stage1_task_logs_losses_and_pseudo_f1(trained):
    task, trainer, _ = trained
    m = trainer.callback_metrics
    for key in ("train/cls", "train/patch", "train/tcd", "train/tcd_neg_cls", "train/tcd_reg", "val/pseudo_mean_f1"):
        assert key in m and torch.isfinite(m[key]), key
    assert 0 <= float(m["val/pseudo_mean_f1"]) <= 1
    # only the ViT is optimised; the vision-language encoder stays frozen
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for p in task.tcd.encoder.parameters())
    assert all(not p.requires_grad for p in task.tcd.encoder.parameters())


def test_pseudo_labels_command_and_dataset(trained, tmp_path, capsys):
    _, _, model_dir = trained
    out = tmp_path / "masks"
    rc = main(
        [
            "pseudo-labels",
            "cam",
            "--model",
            str(model_dir),
            "--out-dir",
            str(out),
            "--dataset",
            "synthetic",
            "--num-samples",
            "3",
            "--image-size",
            "32",
            "--scales",
            "1.0",
            "0.75",
            "--batch-size",
            "2",
        ]
    )
    assert rc == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.stem for p in pngs] == [f"synthetic_train_{i:06d}" for i in range(3)]
    info = json.loads((out / "pseudo_labels.json").read_text())
    assert info["count"] == 3 and info["theta"] == 0.5 and info["scales"] == [1.0, 0.75]
    base = faceparse.build_dataset("synthetic", split="train", num_samples=3, image_size=32)
    for i, p in enumerate(pngs):
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert m.shape == (32, 32) and m.dtype == np.uint8 and m.max() < 19
        present = set(np.unique(base.load_raw(i)["mask"]).tolist())
        assert set(np.unique(m).tolist()) <= present | {0}  # restricted to the image-level labels
    ds = faceparse.build_dataset("pseudo", masks_dir=str(out), dataset_kwargs={"num_samples": 3}, image_size=32)
    raw = ds.load_raw(1)
    assert np.array_equal(raw["mask"], cv2.imread(str(pngs[1]), cv2.IMREAD_UNCHANGED))
    assert ds[1]["mask"].shape == (32, 32)
    true = faceparse.build_dataset("pseudo", masks_dir=None, dataset_kwargs={"num_samples": 3}, image_size=32)
    assert np.array_equal(true.load_raw(1)["mask"], base.load_raw(1)["mask"])
    # errors name the missing thing
    assert main(["pseudo-labels", "cam", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "error: faceparse pseudo-labels cam:" in err and "required" in err and "model" in err
    (out / pngs[2].name).unlink()
    with pytest.raises(FaceParseError, match="synthetic_train_000002.png"):
        ds.load_raw(2)


def test_packaged_configs_reference_real_classes():
    import importlib

    cfg_dir = Path(faceparse.__file__).parent / "configs"
    paths = sorted(cfg_dir.glob("disfacerep_*.yaml"))
    assert len(paths) >= 2
    for path in paths:
        cfg = yaml.safe_load(path.read_text())
        for part in ("model", "data"):
            mod, _, name = cfg[part]["class_path"].rpartition(".")
            assert hasattr(importlib.import_module(mod), name), cfg[part]["class_path"]
        args = cfg["model"]["init_args"]
        if cfg["model"]["class_path"].endswith("WeaklySupervisedTask"):
            assert args["model"] in faceparse.list_models("mct_vit_*")
        else:
            assert cfg["data"]["init_args"]["dataset"] == "pseudo"


def test_validation_fcams_follow_the_refine_setting(trained, monkeypatch):
    """WeaklySupervisedTask(refine=...) decides whether the validation FCAMs use affinity refinement."""
    from faceparse.metrics import FaceParsingMetrics
    from faceparse.models.mct_vit.cam import fcam, pseudo_masks

    task, _, _ = trained
    ds = faceparse.build_dataset("synthetic", split="val", num_samples=4, image_size=32)
    batch = collate([ds[i] for i in range(4)])
    y = foreground_labels(batch, LS)
    model = task.model.eval()
    monkeypatch.setattr(task, "log", lambda *args, **kwargs: None)  # no trainer loop to log into here

    def direct(refine: bool) -> torch.Tensor:
        with torch.no_grad():
            cams = fcam(model, batch["image"], labels=y, scales=(1.0,), flip=False, refine=refine)
        m = FaceParsingMetrics(LS)
        m.update(pseudo_masks(cams, y, 0.5, model.fg_index, LS.background), batch["mask"])
        return m.confmat.clone()

    expected = {r: direct(r) for r in (True, False)}
    assert not torch.equal(expected[True], expected[False])  # the two settings do differ here
    for refine in (True, False):
        monkeypatch.setitem(task.hparams, "refine", refine)  # restored even if an assertion fails
        task.val_metrics.reset()
        with torch.no_grad():
            task.validation_step(batch, 0)
        assert torch.equal(task.val_metrics.confmat, expected[refine])
