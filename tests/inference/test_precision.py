"""bf16 and int8 inference (faceparse.precision): they run for every exportable zoo model, and on a
model trained for a few seconds on synthetic faces they label >= 99 % of the pixels as fp32 does.

Not timed: speed is measured by ``benchmarks/precision.py``. bf16 is forced (``force=True``) so
the bf16 numerics are checked even on a CPU without native bf16 (there it is emulated); int8 is
onnxruntime's static quantiser. Tiny builds above 30M parameters (SegFace's real-size backbones)
are ``slow``, as in tests/inference/test_export.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import faceparse
from faceparse.errors import FaceParseError
from faceparse.export import build_tiny, exportable_models, tiny_param_count
from faceparse.precision import (
    PrecisionFallbackWarning,
    cpu_supports_bf16,
    optimize_for_inference,
    predictor_runner,
)

pytest.importorskip("onnxruntime")

# Tiny builds above this many parameters (SegFace's real backbones, rtformer_base) run with `make test-all`;
# `faceparse bench --models NAME --precision fp32,bf16,int8` runs the same paths on any model.
HEAVY_PARAMS = 15e6


def _cases() -> list:
    return [
        pytest.param(n, marks=[pytest.mark.slow] if tiny_param_count(n) > HEAVY_PARAMS else [], id=n)
        for n in exportable_models()
    ]


def _logits(model, x):
    with torch.inference_mode():
        out = model(x)
    return (out["logits"] if isinstance(out, dict) else out).float()


@pytest.mark.parametrize("name", _cases())
def test_bf16_and_int8_run_for_every_exportable_model(name):
    model, size = build_tiny(name)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    ref = _logits(model, x)
    for precision in ("bf16", "int8"):
        runner = optimize_for_inference(model, precision, calibration=x, force=True, input_size=size)
        out = runner(x)
        assert out.dtype == torch.float32 and out.shape == ref.shape, (precision, out.shape)
        assert torch.isfinite(out).all(), precision
        # random weights: the logits only need to stay close in scale (agreement is tested on a trained model)
        assert (out - ref).abs().mean() < 0.5 * ref.abs().mean() + 0.1, precision


@pytest.fixture(scope="module")
def trained():
    """A small U-Net trained for a few seconds on synthetic faces, and held-out faces."""
    from faceparse.data.synthetic import SyntheticFaces

    torch.manual_seed(0)
    model = faceparse.build_model("unet", encoder="resnet18", input_size=64).train()
    train = SyntheticFaces("train", num_samples=64, image_size=64, seed=0)
    val = SyntheticFaces("val", num_samples=8, image_size=64, seed=0)
    xs = torch.stack([train[i]["image"] for i in range(len(train))])
    ys = torch.stack([torch.as_tensor(train[i]["mask"]).long() for i in range(len(train))])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(40):
        idx = torch.arange(step * 8, step * 8 + 8) % len(train)
        loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xv = torch.stack([val[i]["image"] for i in range(len(val))])
    yv = torch.stack([torch.as_tensor(val[i]["mask"]).long() for i in range(len(val))])
    return model, xs[:8], xv, yv


def test_trained_model_learned_something(trained):
    model, _, xv, yv = trained
    acc = (_logits(model, xv).argmax(1) == yv).float().mean()
    assert acc > 0.6  # background alone is ~0.45 of the pixels: the agreement below is not trivial


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_agrees_with_fp32_on_99_percent_of_pixels(trained, precision):
    model, calib, xv, _ = trained
    ref = _logits(model, xv).argmax(1)
    runner = optimize_for_inference(model, precision, calibration=calib, force=True, input_size=64)
    assert runner.precision == precision
    pred = runner(xv).argmax(1)
    agreement = (pred == ref).float().mean().item()
    assert agreement >= 0.99, f"{precision}: {agreement:.4f} of pixels agree with fp32"


def test_int8_calibrates_on_the_first_batch_without_calibration(trained):
    model, _, xv, _ = trained
    runner = optimize_for_inference(model, "int8", input_size=64)
    a = runner(xv)
    b = runner(xv)  # the second call reuses the quantised session
    assert torch.equal(a, b)


def test_bf16_without_native_support_warns_and_runs_fp32(monkeypatch, trained):
    import faceparse.precision as precision

    model, _, xv, _ = trained
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    with pytest.warns(PrecisionFallbackWarning, match="AMX-BF16"):
        runner = optimize_for_inference(model, "bf16")
    assert runner.precision == "fp32" and runner.requested == "bf16"
    torch.testing.assert_close(runner(xv), _logits(model, xv), rtol=1e-4, atol=1e-4)
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionFallbackWarning)
        assert optimize_for_inference(model, "bf16").precision == "bf16"


def test_cpu_supports_bf16_reads_the_cpu_flags(monkeypatch):
    import faceparse.precision as precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "amx_bf16"}))
    assert cpu_supports_bf16()
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not cpu_supports_bf16()


def test_bad_precision_and_backend_are_clear_errors(trained):
    model = trained[0]
    with pytest.raises(FaceParseError, match="precision='fp16'"):
        optimize_for_inference(model, "fp16")
    with pytest.raises(FaceParseError, match="backend='tensorrt'"):
        optimize_for_inference(model, "fp32", backend="tensorrt")
    with pytest.raises(FaceParseError, match="backend='torch' only"):
        optimize_for_inference(model, "bf16", backend="onnxruntime")
    with pytest.raises(FaceParseError, match="not an exported ONNX file"):
        predictor_runner(object(), "int8", "torch", 64)
    assert predictor_runner(model, "fp32", "torch", 64) is None


def test_onnxruntime_fp32_matches_torch(trained):
    model, _, xv, _ = trained
    runner = optimize_for_inference(model, "fp32", backend="onnxruntime", input_size=64)
    assert runner.backend == "onnxruntime"
    np.testing.assert_allclose(runner(xv).numpy(), _logits(model, xv).numpy(), atol=1e-3, rtol=1e-3)


def test_predictor_precision_int8_matches_fp32_labels(trained):
    from faceparse.data.synthetic import render_face
    from faceparse.inference import Predictor

    model = trained[0]
    image = render_face(np.random.default_rng(5), 64)["image"]
    fp32 = Predictor(model, input_size=64).predict(image)[0].labels
    predictor = Predictor(model, input_size=64, precision="int8")
    assert predictor.precision == "int8"
    int8 = predictor.predict(image)[0].labels
    assert fp32.shape == int8.shape == image.shape[:2]
    assert (fp32 == int8).mean() >= 0.99
    with pytest.raises(FaceParseError, match="precision='fp8'"):
        Predictor(model, input_size=64, precision="fp8")


def test_evaluate_backend_onnxruntime_scores_as_torch(trained):
    """``evaluate(backend="onnxruntime")`` runs the fp32 export and gives torch's scores."""
    pytest.importorskip("onnxruntime")
    from faceparse.data.synthetic import SyntheticFaces
    from faceparse.evaluate import evaluate

    model, _, _, _ = trained
    val = SyntheticFaces("val", num_samples=4, image_size=64, seed=0)
    ref = evaluate(model, val, batch_size=4)
    ort = evaluate(model, val, batch_size=4, backend="onnxruntime")
    assert ort["mean_f1"] == pytest.approx(ref["mean_f1"], abs=1e-3)
    assert ort["miou"] == pytest.approx(ref["miou"], abs=1e-3)
    with pytest.raises(FaceParseError, match="bf16"):
        evaluate(model, val, batch_size=4, backend="onnxruntime", precision="bf16")
