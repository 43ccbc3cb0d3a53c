"""ONNX export: every exportable registered model matches onnxruntime at a tiny size.

The model list is the registry at collection time, so models added later are covered (or must be
listed in ``faceparse.export.NOT_EXPORTABLE`` with the reason). Tiny builds use the registry's
``tiny`` metadata. Builds with more than 30M parameters even when tiny (large backbones) are marked
``slow``: ``make test-all`` and ``benchmarks/onnx_export.py`` cover them.

Parity is judged relative to the logits' scale plus argmax agreement (see faceparse.export); the
other tests cover atomic writes, axis names, dynamic height/width, metadata, OnnxModel and the
onnxruntime backend of Predictor and ``faceparse predict``.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import faceparse
import faceparse.export as fexport
from faceparse.cli import main
from faceparse.errors import FaceParseError
from faceparse.export import (
    NOT_EXPORTABLE,
    OnnxModel,
    build_tiny,
    check_onnx,
    export_onnx,
    read_onnx_metadata,
    tiny_param_count,
)
from faceparse.inference import Predictor

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

HEAVY_PARAMS = 30e6


def _cases() -> list:
    cases = []
    for name in faceparse.list_models():
        if name in NOT_EXPORTABLE:
            continue
        heavy = tiny_param_count(name) > HEAVY_PARAMS
        cases.append(pytest.param(name, marks=[pytest.mark.slow] if heavy else [], id=name))
    return cases


def _axes(path, which: str) -> list:
    """Dim names (``dim_param``) or sizes of the graph's first input or output."""
    graph = onnx.load(str(path), load_external_data=False).graph
    value = graph.input[0] if which == "input" else graph.output[0]
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("name", _cases())
def test_onnx_matches_pytorch(name, tmp_path):
    model, size = build_tiny(name)
    result = export_onnx(model, tmp_path / f"{name}.onnx", input_size=size)  # raises unless parity passes
    # parity on a batch of a different size than the traced one (2; the batch axis is dynamic)
    parity = result.parity[-1]
    assert parity.size == (size, size) and parity.batch == 3 and parity.passes(), f"{name}: {parity.describe()}"
    k = model.label_set.num_classes
    hw = ["height", "width"] if result.dynamic_hw else [size, size]
    assert _axes(result.path, "input") == ["batch", 3, *hw]
    assert _axes(result.path, "output") == ["batch", k, *hw]
    assert read_onnx_metadata(result.path)["dynamic_hw"] is result.dynamic_hw
    if result.dynamic_hw:  # export_onnx ran onnxruntime at size + 32 and compared it with PyTorch
        assert result.check_size == (size + 32, size + 32) and result.argmax_agreement >= 0.999
    if result.exporter == "torchscript":
        assert result.opset == 17


def test_not_exportable_reasons_are_recorded():
    for name, reason in NOT_EXPORTABLE.items():
        assert isinstance(reason, str) and len(reason) > 20, name


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return faceparse.build_model("unet", encoder="resnet18", input_size=32).eval()


@pytest.fixture(scope="module")
def tiny_export(tiny_unet, tmp_path_factory):
    """``tiny_unet`` saved with save_pretrained, exported at 32 px into its folder as model.onnx."""
    folder = tmp_path_factory.mktemp("tiny") / "model"
    tiny_unet.save_pretrained(folder)
    return export_onnx(faceparse.load_model(folder), folder / "model.onnx", input_size=32)


def test_check_detects_a_different_model(tiny_export):
    result = tiny_export
    assert result.max_abs_diff <= 1e-4 and result.opset == 17
    assert result.argmax_agreement >= 0.999 and result.max_rel_diff < 1e-4
    torch.manual_seed(1)
    other = faceparse.build_model("unet", encoder="resnet18", input_size=32).eval()
    parity = check_onnx(other, result.path, (32, 32))
    assert parity.max_rel_diff > 1e-2 and parity.argmax_agreement < 0.9 and not parity.passes()


def test_export_command(tiny_unet, tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_unet.save_pretrained(model_dir)
    assert main(["export", "--model", str(model_dir), "--format", "onnx"]) == 0
    assert (model_dir / "model.onnx").is_file()
    out = capsys.readouterr().out
    assert "opset 17" in out and "relative" in out and "argmax agreement 100.00%" in out
    assert "dynamic height/width, checked at 64x64" in out
    assert main(["export", "--model", str(model_dir), "--format", "tflite"]) == 2
    assert "the only export format is 'onnx'" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "missing")]) == 2
    assert "faceparse list models" in capsys.readouterr().err
    assert main(["export"]) == 2
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "fixed.onnx"), "--no-dynamic"]) == 0
    assert "fixed height/width" in capsys.readouterr().out
    assert read_onnx_metadata(tmp_path / "fixed.onnx")["dynamic_hw"] is False


def test_export_command_names_the_missing_extra(tiny_unet, tmp_path, monkeypatch, capsys):
    tiny_unet.save_pretrained(tmp_path / "model")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    assert main(["export", "--model", str(tmp_path / "model")]) == 2
    assert "pip install 'faceparse[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "model" / "model.onnx").exists()


def test_export_error_names_the_model(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow is fine for tracing, but the op is not
                return torch.linalg.eigvals(x[:, :, :2, :2]).real
            return x

    with pytest.raises(FaceParseError, match="could not export Bad"):
        export_onnx(Bad(), tmp_path / "new" / "never_written.onnx", input_size=4, dynamo=False)
    assert list(tmp_path.iterdir()) == []  # neither the file, nor a temporary, nor the new folder


def _scaled_unet(scale: float, size: int = 64) -> torch.nn.Module:
    """A tiny random U-Net whose logits are ``scale`` times larger (like a trained model's)."""
    torch.manual_seed(0)
    model = faceparse.build_model("unet", encoder="resnet18", input_size=size).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(scale)
        if last.bias is not None:
            last.bias.mul_(scale)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A saved tiny U-Net (64 px) with logits in the hundreds like the quickstart's trained one,
    exported into its folder as model.onnx: ``(folder, model, ExportResult)``."""
    folder = tmp_path_factory.mktemp("exported") / "model"
    model = _scaled_unet(40.0)
    model.save_pretrained(folder)
    return folder, model, export_onnx(model, folder / "model.onnx", input_size=64)


def test_large_logits_pass_the_relative_criterion(exported):
    """The quickstart case: logits in the hundreds, float32 rounding above 1e-4 in absolute terms."""
    _, _, result = exported
    assert result.max_abs_logit > 100
    assert result.max_rel_diff < 1e-5 and result.argmax_agreement >= 0.999
    assert result.dynamic_hw and result.check_size == (96, 96)
    assert [p.size for p in result.parity] == [(96, 96), (64, 64)]


def test_failed_check_leaves_nothing_behind(tiny_unet, tmp_path):
    folder = tmp_path / "out"
    with pytest.raises(FaceParseError, match="differs from PyTorch"):
        export_onnx(tiny_unet, folder / "model.onnx", input_size=32, atol=0.0, rtol=0.0, dynamic_hw=False)
    assert not folder.exists()  # created by the call, removed with everything in it
    # an existing file is kept as it was
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"previous export")
    with pytest.raises(FaceParseError):
        export_onnx(tiny_unet, folder / "model.onnx", input_size=32, atol=0.0, rtol=0.0, dynamic_hw=False)
    assert sorted(f.name for f in folder.iterdir()) == ["model.onnx"]
    assert (folder / "model.onnx").read_bytes() == b"previous export"


def test_wrong_onnxruntime_output_is_caught(tiny_unet, tmp_path, monkeypatch):
    """onnxruntime output with swapped classes: the argmax agreement fails the export."""
    real_session = fexport.onnx_session

    class Swapped:
        def __init__(self, path, providers=None):
            self.session = real_session(path, providers)

        def run(self, names, feeds):
            out = self.session.run(names, feeds)
            return [out[0][:, ::-1].copy()]

    monkeypatch.setattr(fexport, "onnx_session", Swapped)
    with pytest.raises(FaceParseError, match="argmax agreement"):
        export_onnx(tiny_unet, tmp_path / "model.onnx", input_size=32, dynamic_hw=False)
    assert list(tmp_path.iterdir()) == []


def test_failed_export_removes_external_data(tiny_unet, tmp_path, monkeypatch):
    def fake_export(module, x, path, opset, dynamo, dynamic_hw=False):
        path.write_bytes(b"partial")
        path.with_name(path.name + ".data").write_bytes(b"weights")
        raise RuntimeError("exporter crashed half-way")

    monkeypatch.setattr(fexport, "_export", fake_export)
    with pytest.raises(FaceParseError, match="exporter crashed half-way"):
        export_onnx(tiny_unet, tmp_path / "model.onnx", input_size=32)
    assert list(tmp_path.iterdir()) == []


def test_axes_are_named(tiny_unet, tiny_export, tmp_path):
    dynamic = tiny_export
    assert dynamic.dynamic_hw
    assert _axes(dynamic.path, "input") == ["batch", 3, "height", "width"]
    assert _axes(dynamic.path, "output") == ["batch", 19, "height", "width"]
    fixed = export_onnx(tiny_unet, tmp_path / "fixed.onnx", input_size=32, dynamic_hw=False)
    assert not fixed.dynamic_hw and fixed.check_size is None
    assert _axes(fixed.path, "input") == ["batch", 3, 32, 32]
    assert _axes(fixed.path, "output") == ["batch", 19, 32, 32]


def test_dynamic_height_width(exported):
    _, model, result = exported
    assert result.dynamic_hw and read_onnx_metadata(result.path)["dynamic_hw"] is True
    for size in [(96, 96), (64, 128)]:
        parity = check_onnx(model, result.path, size, batch=2)
        assert parity.passes(), parity.describe()


class BakedSize(torch.nn.Module):
    """Runs at any size in PyTorch, but the traced graph bakes the size in (Python ints)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        h, w = int(x.shape[2]), int(x.shape[3])
        return F.interpolate(F.avg_pool2d(self.conv(x), 4), size=(h, w), mode="bilinear")


def test_baked_sizes_fall_back_to_a_fixed_size(tmp_path):
    model = BakedSize().eval()
    result = export_onnx(model, tmp_path / "model.onnx", input_size=32)
    assert not result.dynamic_hw and "64x64" in result.dynamic_hw_note
    assert result.argmax_agreement == 1.0
    assert _axes(result.path, "output") == ["batch", 4, 32, 32]
    assert read_onnx_metadata(result.path)["dynamic_hw"] is False
    with pytest.raises(FaceParseError, match="dynamic"):
        export_onnx(model, tmp_path / "dynamic.onnx", input_size=32, dynamic_hw=True)
    assert not (tmp_path / "dynamic.onnx").exists()


def test_metadata_round_trip(tiny_unet, tiny_export):
    model_dir = tiny_export.path.parent
    meta = read_onnx_metadata(model_dir)  # a directory means DIR/model.onnx
    assert meta["class_names"] == list(tiny_unet.label_set.classes)
    assert meta["label_set"] == tiny_unet.label_set.to_dict()
    assert meta["input_mean"] == pytest.approx(list(tiny_unet.input_mean))
    assert meta["input_std"] == pytest.approx(list(tiny_unet.input_std))
    assert meta["default_input_size"] == tiny_unet.default_input_size and meta["input_size"] == [32, 32]
    assert meta["dynamic_hw"] is True and meta["registry_name"] == "unet"
    assert meta["faceparse_version"] == faceparse.__version__
    props = {p.key: p.value for p in onnx.load(str(model_dir / "model.onnx")).metadata_props}
    assert json.loads(props["class_names"]) == meta["class_names"]

    wrapped = OnnxModel(model_dir / "model.onnx")
    assert wrapped.label_set == tiny_unet.label_set
    assert wrapped.input_mean == pytest.approx(tuple(tiny_unet.input_mean))
    assert wrapped.input_std == pytest.approx(tuple(tiny_unet.input_std))
    assert wrapped.default_input_size == tiny_unet.default_input_size
    assert wrapped.to("cpu") is wrapped and wrapped.eval() is wrapped
    assert wrapped.to(memory_format=torch.channels_last) is wrapped
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(wrapped(x), tiny_unet(x), rtol=1e-4, atol=1e-4)


def test_onnx_model_errors(tmp_path):
    with pytest.raises(FaceParseError, match="has no model.onnx"):
        OnnxModel(tmp_path)
    with pytest.raises(FaceParseError, match="does not exist"):
        OnnxModel(tmp_path / "missing.onnx")
    model = BakedSize().eval()
    export_onnx(model, tmp_path / "plain.onnx", input_size=32, dynamic_hw=False)
    with pytest.raises(FaceParseError, match="lacks faceparse metadata"):
        OnnxModel(tmp_path / "plain.onnx")  # not a faceparse model: no label set, mean, std


def test_predictor_onnxruntime_backend(exported):
    exported_dir = exported[0]
    rng = np.random.default_rng(0)
    image = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
    torch_pred = Predictor(exported_dir).predict(image)[0]
    for source in (exported_dir, exported_dir / "model.onnx"):
        predictor = Predictor(source, backend="onnxruntime", channels_last=True, flip_tta=True)
        assert isinstance(predictor.model, OnnxModel) and predictor.input_size == 64
        onnx_pred = predictor.predict(image)[0]
        assert onnx_pred.labels.shape == (90, 120)
        flip_pred = Predictor(exported_dir, flip_tta=True).predict(image)[0]
        assert (onnx_pred.labels == flip_pred.labels).mean() >= 0.99
    onnx_pred = Predictor(exported_dir, backend="onnxruntime", input_size=96).predict(image)[0]
    torch_96 = Predictor(exported_dir, input_size=96).predict(image)[0]
    assert (onnx_pred.labels == torch_96.labels).mean() >= 0.99
    assert (Predictor(exported_dir, backend="onnxruntime").predict(image)[0].labels == torch_pred.labels).mean() >= 0.99
    with pytest.raises(FaceParseError, match="backend"):
        Predictor(exported_dir, backend="tensorrt")


def test_predict_command_onnxruntime_backend(exported, tmp_path, capsys):
    import cv2

    exported_dir = exported[0]

    rng = np.random.default_rng(1)
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), (rng.random((80, 80, 3)) * 255).astype(np.uint8))
    argv = ["predict", str(image), "--model", str(exported_dir), "--no-detect-faces"]
    assert main([*argv, "--backend", "onnxruntime", "--out-dir", str(tmp_path / "ort")]) == 0
    assert main([*argv, "--out-dir", str(tmp_path / "torch")]) == 0
    ort_labels = cv2.imread(str(tmp_path / "ort" / "img_labels.png"), cv2.IMREAD_UNCHANGED)
    torch_labels = cv2.imread(str(tmp_path / "torch" / "img_labels.png"), cv2.IMREAD_UNCHANGED)
    assert (ort_labels == torch_labels).mean() >= 0.99
    assert main([*argv, "--backend", "onnxruntime", "--model", str(tmp_path)]) == 2
    assert "has no model.onnx" in capsys.readouterr().err
