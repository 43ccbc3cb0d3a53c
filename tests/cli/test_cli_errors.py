"""One error style: every user error prints ``error: <message naming the culprit>`` and exits 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import faceparse
from faceparse.cli import main

ENV = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")


def _run(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    return last


@pytest.mark.parametrize(
    "argv, names",
    [
        (["evalute"], ["'evalute'", "Did you mean: evaluate"]),
        (["convert", "segfase", "a.pt", "out"], ["'segfase'", "segface, consensus"]),
        (["convert"], ["faceparse convert", "segface"]),
        (["bench", "--batch", "0"], ["--batch must be > 0, got 0"]),
        (["bench", "--size", "-8"], ["--size must be > 0, got -8"]),
        (["bench", "--models", "no_such_model_*"], ["no_such_model_*"]),
        (["demo", "--lr", "0"], ["--lr must be > 0"]),
        (["demo", "--batch-size", "0"], ["--batch-size must be > 0"]),
        (["predict", "a.jpg", "--model", "m", "--input-size", "0"], ["--input-size must be > 0"]),
        (["evaluate", "--model", "m", "--dataset", "lapa", "--batch-size", "-1"], ["--batch-size must be > 0"]),
        (["evaluate", "--model", "m", "--dataset", "lapaa"], ["unknown dataset 'lapaa'", "Did you mean: lapa"]),
        (["datasets", "check", "/nowhere", "--dataset", "celeba"], ["'celeba'", "celebamask_hq"]),
        (["list", "modelz"], ["'modelz'", "models"]),
        (["pseudo-labels", "cam", "--model", "m", "--data", "synthetic"], ["--data"]),  # the vocabulary is --dataset
        (["export", "--model", "m", "--format", "tflite"], ["'tflite'"]),
    ],
)
def test_argument_errors(capsys, argv, names):
    last = _run(capsys, argv)
    for name in names:
        assert name in last, last


def test_help_lists_commands_and_methods(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("fit", "predict", "evaluate", "convert", "pseudo-labels", "bench", "list"))
    assert main(["convert", "--help"]) == 0
    out = capsys.readouterr().out
    assert "segface" in out and "consensus" in out
    assert main(["evaluate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--model" in out and "--dataset" in out and "evaluate consensus" in out


def test_out_dir_that_is_a_file(tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    last = _run(capsys, ["predict", "a.jpg", "--model", "m", "--out-dir", str(blocker)])
    assert str(blocker) in last and "is a file" in last
    last = _run(capsys, ["demo", "--out-dir", str(blocker)])
    assert str(blocker) in last and "is a file" in last
    last = _run(capsys, ["bench", "--models", "unet", "--out-dir", str(blocker)])
    assert str(blocker) in last


def test_predict_with_a_config_that_does_not_match_the_weights(tmp_path, capsys):
    faceparse.build_model("unet", encoder="resnet18", input_size=32).save_pretrained(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    data = json.loads(config.read_text())
    data["kwargs"]["label_set"] = "lapa"  # 11 classes; the weights have 19
    config.write_text(json.dumps(data))
    last = _run(capsys, ["predict", str(tmp_path / "a.jpg"), "--model", str(tmp_path / "m")])
    assert "config.json" in last and "model.safetensors" in last and "(19," in last and "(11," in last


def test_missing_optional_extra_names_the_pip_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    last = _run(capsys, ["export", "--model", str(tmp_path)])
    assert "'onnx'" in last and "pip install -e '.[onnx]'" in last


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("model", "unett", "unknown model 'unett'. Did you mean: unet"),
        ("loss", "ce_dic", "unknown loss 'ce_dic'. Did you mean: ce_dice"),
        ("label_set", "lapaa", "unknown label set 'lapaa'. Did you mean: lapa"),
        ("dataset", "synthetc", "unknown dataset 'synthetc'. Did you mean: synthetic"),
    ],
)
def test_unknown_names_in_a_fit_config(tmp_path, capsys, key, value, message):
    model_args = {"model": "unet", key: value} if key != "dataset" else {"model": "unet"}
    data_args = {"dataset": value} if key == "dataset" else {"dataset": "synthetic"}
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        json.dumps(  # JSON is YAML
            {
                "trainer": {"max_epochs": 1, "logger": False, "enable_progress_bar": False},
                "model": {"class_path": "faceparse.tasks.SegmentationTask", "init_args": model_args},
                "data": {"class_path": "faceparse.data.FaceParsingDataModule", "init_args": data_args},
            }
        )
    )
    last = _run(capsys, ["fit", "--config", str(cfg)])
    assert str(cfg) in last and message in last, last


@pytest.mark.parametrize(
    "section, key, value", [("model", "lr", -0.1), ("data", "batch_size", 0), ("data", "image_size", -32)]
)
def test_non_positive_numbers_in_a_fit_config(tmp_path, capsys, section, key, value):
    args = {
        "model": {"model": "unet", "lr": 1e-3},
        "data": {"dataset": "synthetic", "batch_size": 2, "image_size": 32},
    }
    args[section][key] = value
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        json.dumps(
            {
                "trainer": {"max_epochs": 1, "logger": False},
                "model": {"class_path": "faceparse.tasks.SegmentationTask", "init_args": args["model"]},
                "data": {"class_path": "faceparse.data.FaceParsingDataModule", "init_args": args["data"]},
            }
        )
    )
    last = _run(capsys, ["fit", "--config", str(cfg)])
    assert f"{section}.init_args.{key} must be > 0, got {value}" in last and str(cfg) in last


def test_wrong_key_in_a_fit_config_is_named(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  class_path: faceparse.tasks.SegmentationTask\n  init_args:\n    modle: unet\n")
    last = _run(capsys, ["fit", "--config", str(cfg)])
    assert "'modle'" in last and str(cfg) in last


def test_no_traceback_unless_debug_and_fast_start(tmp_path):
    cmd = [sys.executable, "-m", "faceparse.cli", "predict", str(tmp_path / "missing.jpg"), "--model", "x"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "'x'" in proc.stderr  # the model folder that does not exist
    proc = subprocess.run([*cmd, "--debug"], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    # the answer comes before torch is imported (a generous bound: the 2 cores are shared)
    for argv in (["--help"], ["predict", "missing.jpg", "--model", "x"], ["bench", "--batch", "0"]):
        probe = f"import sys, faceparse.cli as c; c.main({argv!r}); print('torch' in sys.modules, file=sys.stderr)"
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, timeout=120)
        assert proc.stderr.strip().endswith("False"), (argv, proc.stderr)
    assert elapsed < 60


def test_python_dash_m_faceparse_is_the_command():
    proc = subprocess.run(
        [sys.executable, "-m", "faceparse", "list", "nonexistent-kind"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    proc_cli = subprocess.run(
        [sys.executable, "-m", "faceparse.cli", "list", "nonexistent-kind"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == proc_cli.returncode == 2
    assert proc.stderr == proc_cli.stderr and proc.stderr.startswith("error: ")
