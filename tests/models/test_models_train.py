import json

import pytest
import pytorch_lightning as pl
import torch

import faceparse
from faceparse.data import FaceParsingDataModule
from faceparse.errors import FaceParseError, MissingWeightsError
from faceparse.tasks import SegmentationTask


@pytest.mark.parametrize("arch", ["unet", "fpn", "deeplabv3plus", "segformer"])
def test_smp_baselines_contract(arch):
    kw = {"encoder": "resnet18"} if arch != "segformer" else {"encoder": "mit_b0"}
    model = faceparse.build_model(arch, label_set="lapa", input_size=64, **kw)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    assert model(x).shape == (2, 11, 64, 64)
    model.eval()
    assert model.forward_train(x)["logits"].shape == (2, 11, 64, 64)


def test_save_load_round_trip(tmp_path):
    model = faceparse.build_model("unet", encoder="tu-resnet18", label_set="helen", input_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["registry_name"] == "unet" and config["label_set"]["name"] == "helen"
    loaded = faceparse.load_model(tmp_path / "m")
    assert loaded.label_set.name == "helen" and loaded.default_input_size == 64
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected)


def test_load_model_errors(tmp_path):
    with pytest.raises(MissingWeightsError, match="does not exist"):
        faceparse.load_model(tmp_path / "nope")
    model = faceparse.build_model("unet", encoder="resnet18", input_size=64)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(MissingWeightsError, match="no model.safetensors"):
        faceparse.load_model(tmp_path / "m")
    with pytest.raises(MissingWeightsError, match="not found"):
        faceparse.build_model("unet", encoder="resnet18", pretrained=str(tmp_path / "missing.pth"))
    with pytest.raises(FaceParseError, match="encoder"):
        faceparse.build_model("unet", encoder="no_such_encoder")


def test_short_fit_measurably_learns():
    pl.seed_everything(0, verbose=False)
    dm = FaceParsingDataModule(
        "synthetic",
        train_kwargs={"num_samples": 96},
        val_kwargs={"num_samples": 16},
        image_size=64,
        batch_size=8,
        augment=False,
    )
    task = SegmentationTask(
        "unet",
        model_kwargs={
            "encoder": "resnet18",
            "input_size": 64,
            "arch_kwargs": {"decoder_channels": [64, 32, 16, 16, 8]},
        },
        lr=2e-3,
        scheduler="cosine",
    )
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = trainer.validate(task, datamodule=dm, verbose=False)[0]
    trainer.fit(task, datamodule=dm)
    after = trainer.validate(task, datamodule=dm, verbose=False)[0]
    assert after["val/loss"] < 0.8 * before["val/loss"]
    assert after["val/pixel_acc"] > before["val/pixel_acc"] + 0.3
    assert after["val/mean_f1"] > before["val/mean_f1"]
    assert "val/f1/skin" in after
