"""DisFaceRep stage 2 recipe (disfacerep_stage2_celebamask_hq: smp DeepLabV3+, dilated ResNet at output
stride 8, on pseudo masks) run by its command on a CelebAMask-HQ fixture tree with a ResNet-18 encoder."""

from __future__ import annotations

import json

import cv2
import numpy as np
import torch

import faceparse
from faceparse.cli import main
from faceparse.data.base import build_wrapped_dataset, sample_key
from faceparse.data.synthetic import SyntheticFaces

TRAINER = [
    "--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
    "--trainer.devices", "1", "--trainer.precision", "32", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "1", "--trainer.logger", "false",
    "--trainer.enable_checkpointing", "false", "--data.init_args.num_workers", "0",
    "--data.init_args.batch_size", "2", "--data.init_args.image_size", "64",
]  # fmt: skip


def test_stage2_deeplab_recipe_trains_on_pseudo_masks(tmp_path, monkeypatch):
    SyntheticFaces(split="train", num_samples=8, image_size=64, seed=1).write_celebamask_hq(tmp_path / "CelebAMask-HQ")
    monkeypatch.chdir(tmp_path)
    ds = build_wrapped_dataset("celebamask_hq", root="CelebAMask-HQ", split="train")
    pseudo = tmp_path / "runs" / "disfacerep_celebamask_hq_pseudo"
    pseudo.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(len(ds)):
        raw = ds.load_raw(i)
        cv2.imwrite(str(pseudo / f"{sample_key(raw, i)}.png"), rng.integers(0, 19, raw["mask"].shape, dtype=np.uint8))
    kw = {"encoder": "resnet18", "input_size": 64, "arch_kwargs": {"encoder_output_stride": 8}}
    argv = ["fit", "--config", "disfacerep_stage2_celebamask_hq", "--model.init_args.model_kwargs", json.dumps(kw)]
    argv += ["--data.init_args.dataset_kwargs.dataset_kwargs.root", "CelebAMask-HQ"]
    assert main([*argv, *TRAINER]) == 0
    folder = tmp_path / "runs" / "disfacerep_stage2_celebamask_hq" / "model"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["kwargs"]["arch"] == "deeplabv3plus" and cfg["kwargs"]["arch_kwargs"] == {"encoder_output_stride": 8}
    model = faceparse.load_model(folder).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.net.encoder(x)
        assert model(x).shape == (1, 19, 64, 64)
    assert feats[-1].shape[-1] == 64 // 8  # dilated: output stride 8, as DeepLab-V1
