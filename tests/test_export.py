"""ONNX export: every exportable registered model matches onnxruntime at a tiny size.

The model list is the registry at collection time, so models added later are covered (or must be
listed in ``faceparse.export.NOT_EXPORTABLE`` with the reason). Tiny builds use the registry's
``tiny`` metadata. Builds with more than 30M parameters even when tiny (large backbones) are marked
``slow``: ``make test-all`` and ``benchmarks/onnx_export.py`` cover them.
"""

from __future__ import annotations

import pytest
import torch

import faceparse
from faceparse.cli import main
from faceparse.errors import FaceParseError
from faceparse.export import NOT_EXPORTABLE, build_tiny, check_onnx, export_onnx, tiny_kwargs

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

HEAVY_PARAMS = 30e6


def _tiny_param_count(name: str) -> float:
    """Parameters of the tiny build, counted on the meta device (no memory, no init compute)."""
    try:
        with torch.device("meta"):
            model = faceparse.build_model(name, **tiny_kwargs(name))
        return float(sum(p.numel() for p in model.parameters()))
    except Exception:  # noqa: BLE001 - cannot tell: treat as heavy
        return float("inf")


def _cases() -> list:
    cases = []
    for name in faceparse.list_models():
        if name in NOT_EXPORTABLE:
            continue
        heavy = _tiny_param_count(name) > HEAVY_PARAMS
        cases.append(pytest.param(name, marks=[pytest.mark.slow] if heavy else [], id=name))
    return cases


@pytest.mark.parametrize("name", _cases())
def test_onnx_matches_pytorch(name, tmp_path):
    model, size = build_tiny(name)
    result = export_onnx(model, tmp_path / f"{name}.onnx", input_size=size, check=False)
    # parity on a batch of a different size than the traced one (the batch axis is dynamic)
    diff = check_onnx(model, result.path, (size, size), batch=3)
    assert diff <= 1e-4, f"{name}: max abs diff {diff:.3g}"
    graph = onnx.load(str(result.path), load_external_data=False).graph
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value
    if result.exporter == "torchscript":
        assert result.opset == 17


def test_not_exportable_reasons_are_recorded():
    for name, reason in NOT_EXPORTABLE.items():
        assert isinstance(reason, str) and len(reason) > 20, name


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return faceparse.build_model("unet", encoder="resnet18", input_size=32).eval()


def test_check_detects_a_different_model(tiny_unet, tmp_path):
    result = export_onnx(tiny_unet, tmp_path / "a.onnx", input_size=32)
    assert result.max_abs_diff <= 1e-4 and result.opset == 17
    torch.manual_seed(1)
    other = faceparse.build_model("unet", encoder="resnet18", input_size=32).eval()
    assert check_onnx(other, result.path, (32, 32)) > 1e-3


def test_export_command(tiny_unet, tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_unet.save_pretrained(model_dir)
    assert main(["export", "--model", str(model_dir), "--format", "onnx"]) == 0
    assert (model_dir / "model.onnx").is_file()
    assert "opset 17" in capsys.readouterr().out
    assert main(["export", "--model", str(model_dir), "--format", "tflite"]) == 2
    assert "onnx" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "missing")]) == 2
    assert main(["export"]) == 2


def test_export_error_names_the_model():
    class Bad(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow is fine for tracing, but the op is not
                return torch.linalg.eigvals(x[:, :, :2, :2]).real
            return x

    with pytest.raises(FaceParseError, match="could not export Bad"):
        export_onnx(Bad(), "/tmp/never_written.onnx", input_size=4, dynamo=False)
