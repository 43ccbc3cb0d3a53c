import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import faceparse
from faceparse.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    faceparse.build_model("unet", encoder="resnet18", input_size=64).save_pretrained(d)
    return d


def _write_image(path: Path, h=50, w=70) -> Path:
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
    return path


def test_predict_writes_labels_and_overlay_at_original_size(tmp_path, model_dir):
    img = _write_image(tmp_path / "face.jpg")
    assert main(["predict", str(img), "--model", str(model_dir)]) == 0
    labels = cv2.imread(str(tmp_path / "face_labels.png"), cv2.IMREAD_UNCHANGED)
    overlay = cv2.imread(str(tmp_path / "face_overlay.png"))
    assert labels.shape == (50, 70) and overlay.shape == (50, 70, 3)
    assert labels.max() < 19


def test_predict_writes_the_good_images_and_lists_the_bad_ones(tmp_path, model_dir, capsys):
    good = _write_image(tmp_path / "good.png")
    rc = main(["predict", str(good), str(tmp_path / "missing.jpg"), "--model", str(model_dir)])
    out = capsys.readouterr()
    assert rc == 2  # some inputs failed
    assert "missing.jpg" in out.err and "1 of 2 image(s) failed" in out.err
    assert (tmp_path / "good_labels.png").is_file()  # the good image is still parsed
    assert "no face found in" in out.err  # random noise has no face: warned, then parsed whole
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    assert main(["predict", str(broken), "--model", str(model_dir)]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["predict", str(good), "--model", str(tmp_path / "nomodel")]) == 2
    assert not (tmp_path / "broken_labels.png").exists()


def test_predict_skip_faceless_and_truncated_png_is_quiet(tmp_path, model_dir):
    good = _write_image(tmp_path / "noise.png")
    data = (tmp_path / "noise.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    proc = subprocess.run(
        [sys.executable, "-m", "faceparse.cli", "predict", str(good), str(tmp_path / "cut.png"),
         "--model", str(model_dir), "--no-face", "skip"],
        capture_output=True, text=True, env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"),
    )  # fmt: skip
    assert proc.returncode == 2
    assert "libpng" not in proc.stderr  # no library noise before faceparse's own message
    assert proc.stderr.startswith("error:") and "cut.png" in proc.stderr and "no face found" in proc.stderr
    assert not list(tmp_path.glob("*_labels.png"))  # skipped: the noise image has no face


def test_predict_routes_s3pot_folders_to_occlusion_masks(tmp_path, model_dir, capsys):
    import json

    from faceparse.cli.predict import is_s3pot_folder

    assert not is_s3pot_folder(model_dir) and not is_s3pot_folder(tmp_path / "nothing")
    fake = tmp_path / "s3pot"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"class": "faceparse.models.s3pot.model.S3POT"}))
    assert is_s3pot_folder(fake)
    img = _write_image(tmp_path / "a.png")
    assert main(["predict", str(img), "--model", str(model_dir), "--references", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--references" in err and "not an S3POT model" in err
    assert main(["s3pot", "predict", str(model_dir), str(img)]) == 2  # one way to predict: faceparse predict
    assert "unknown command 's3pot'" in capsys.readouterr().err


def test_list_and_unknown_names(capsys):
    assert main(["list", "models", "unet"]) == 0
    assert capsys.readouterr().out.strip().startswith("unet")
    from faceparse.cli import run_lightning

    with pytest.raises(faceparse.FaceParseError, match="packaged"):
        run_lightning(["fit", "--config", "no_such_config"])


def test_config_with_wrong_key_fails_clearly(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  class_path: faceparse.tasks.SegmentationTask\n  init_args:\n    modle: unet\n")
    proc = subprocess.run(
        [sys.executable, "-m", "faceparse.cli", "fit", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "modle" in proc.stderr


def test_unknown_model_in_config_fails(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "trainer:\n  max_epochs: 1\n  logger: false\nmodel:\n  class_path: faceparse.tasks.SegmentationTask\n  init_args:\n    model: unett\n"
        "data:\n  class_path: faceparse.data.FaceParsingDataModule\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "faceparse.cli", "fit", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "unett" in proc.stderr and "unet" in proc.stderr


def test_fit_from_packaged_style_config(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"""
trainer:
  accelerator: cpu
  max_epochs: 1
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  limit_val_batches: 1
  callbacks:
    - class_path: faceparse.tasks.callbacks.SavePretrained
      init_args:
        dirpath: {tmp_path}/model
model:
  class_path: faceparse.tasks.SegmentationTask
  init_args:
    model: unet
    model_kwargs: {{encoder: resnet18, input_size: 32}}
data:
  class_path: faceparse.data.FaceParsingDataModule
  init_args:
    dataset: synthetic
    train_kwargs: {{num_samples: 8}}
    val_kwargs: {{num_samples: 4}}
    image_size: 32
    batch_size: 4
"""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "faceparse.cli", "fit", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert faceparse.load_model(tmp_path / "model").label_set.name == "celebamask_hq"


def test_packaged_configs_parse():
    from faceparse.cli import CONFIG_DIR, resolve_config

    assert resolve_config("synthetic_unet").endswith("synthetic_unet.yaml")
    assert (CONFIG_DIR / "synthetic_unet.yaml").is_file()
