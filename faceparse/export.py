"""ONNX export of zoo models, checked against onnxruntime.

``faceparse export --model DIR --format onnx`` writes ``DIR/model.onnx`` (opset 17, dynamic batch
axis, input ``image`` ``B x 3 x H x W`` normalised as the model's ``input_mean``/``input_std``,
output ``logits`` ``B x K x H x W``) and, unless ``--no-check``, compares onnxruntime's output with
PyTorch's on a random batch.

The TorchScript-based exporter is used first because it writes opset 17 natively; when it fails
the ``torch.export``-based exporter (``dynamo=True``) is tried, whose lowest opset is 18 (the
version actually written is reported). Models known not to export are listed in
:data:`NOT_EXPORTABLE` with the reason; the docs show that list.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import FaceParseError, require
from .registry import COMMANDS, MODELS

DEFAULT_OPSET = 17

# Registered models that cannot be exported to ONNX, with the reason (shown in docs/models.md).
# Checked with torch 2.15 / onnx 1.23 / onnxruntime 1.31 by benchmarks/onnx_export.py.
_RTFORMER = (
    "traces since its separable-bin adaptive max pooling, but onnxruntime differs from PyTorch by "
    "1.5e-4 on a tiny random build (2026-11-22), above the 1e-4 parity bound"
)
_MCT = (
    "forward computes class activation maps (faceparse.cam.fcam): TorchScript tracing fails on "
    "round() of traced shapes, and the torch.export graph gives NaN where PyTorch zeroes classes "
    "predicted absent (parity check fails)"
)
_S3POT = (
    "frozen SAM prompt pipeline: aten::_upsample_nearest_exact2d is not in opset 17 (TorchScript) "
    "and torch.export fails on the data-dependent prompt selection"
)
NOT_EXPORTABLE: dict[str, str] = {
    "rtformer_slim": _RTFORMER,
    "rtformer_base": _RTFORMER,
    "mct_vit_small": _MCT,
    "mct_vit_tiny": _MCT,
    "s3pot_tiny": _S3POT,
    "s3pot_vit_b": _S3POT,
    "s3pot_vit_l": _S3POT,
    "s3pot_vit_h": _S3POT,
}


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how it compared with PyTorch."""

    path: Path
    opset: int
    exporter: str
    max_abs_diff: float | None = None
    input_size: int | None = None


def tiny_kwargs(name: str) -> dict[str, Any]:
    """Keyword overrides for a tiny test build of registered model ``name``.

    The registry metadata key ``tiny`` (a dict of constructor kwargs, given by the model's author,
    e.g. ``{"encoder": "resnet18", "input_size": 64}``) when present, else no overrides.
    """
    return dict(MODELS.metadata(name).get("tiny") or {})


def tiny_input_size(name: str, default: int = 64) -> int:
    """Spatial size for a tiny test build: ``tiny["input_size"]``, metadata ``tiny_input_size``,
    else ``default``."""
    meta = MODELS.metadata(name)
    tiny = meta.get("tiny") or {}
    return int(tiny.get("input_size") or meta.get("tiny_input_size") or default)


def build_tiny(name: str, seed: int = 0) -> tuple[nn.Module, int]:
    """A tiny eval-mode build of ``name`` (see :func:`tiny_kwargs`) and its test input size."""
    import faceparse

    torch.manual_seed(seed)
    model = faceparse.build_model(name, **tiny_kwargs(name)).eval()
    return model, tiny_input_size(name)


def exportable_models(pattern: str = "*") -> list[str]:
    """Registered models not listed in :data:`NOT_EXPORTABLE`."""
    return [n for n in MODELS.list(pattern) if n not in NOT_EXPORTABLE]


class _LogitsOnly(nn.Module):
    """Wraps a model so the exported graph has one tensor output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, dict):
            out = out["logits"]
        return out


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: int | tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    batch: int = 2,
    check: bool = True,
    atol: float = 1e-4,
    dynamo: bool | None = None,
) -> ExportResult:
    """Export ``model`` to ONNX at ``path`` with a dynamic batch axis.

    Args:
        model: a faceparse model (or any module mapping ``B x 3 x H x W`` to logits).
        path: output ``.onnx`` file.
        input_size: spatial size traced (``int`` or ``(h, w)``); the graph keeps H, W fixed.
            Defaults to ``model.default_input_size``.
        opset: ONNX opset version for the TorchScript exporter.
        batch: batch size of the example input (the batch axis is dynamic anyway).
        check: run onnxruntime on a batch of a *different* size and compare with PyTorch;
            raises :class:`FaceParseError` when the max abs difference exceeds ``atol``.
        dynamo: force the exporter (``True``: torch.export based, ``False``: TorchScript);
            ``None`` tries TorchScript first, then torch.export.
    """
    require("onnx", "onnx")
    size = input_size or getattr(model, "default_input_size", 512)
    h, w = (size, size) if isinstance(size, int) else size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = _LogitsOnly(model).eval()
    # batch >= 2: torch.export specialises size-1 dimensions, which would fix the batch axis
    x = torch.randn(max(batch, 2), 3, h, w)
    errors = []
    tries = [False, True] if dynamo is None else [bool(dynamo)]
    used = None
    for use_dynamo in tries:
        try:
            _export(wrapped, x, path, opset, use_dynamo)
            used = "dynamo" if use_dynamo else "torchscript"
            break
        except Exception as exc:  # noqa: BLE001 - try the other exporter, report both
            errors.append(f"{'dynamo' if use_dynamo else 'torchscript'}: {type(exc).__name__}: {exc}")
    if used is None:
        raise FaceParseError(f"could not export {type(model).__name__} to ONNX: " + " | ".join(e[:300] for e in errors))
    import onnx

    written = onnx.load(str(path), load_external_data=False)
    opset_written = next((o.version for o in written.opset_import if o.domain in ("", "ai.onnx")), -1)
    result = ExportResult(path=path, opset=opset_written, exporter=used, input_size=h)
    if check:
        result.max_abs_diff = check_onnx(model, path, (h, w), batch=max(batch, 2) + 1)
        if result.max_abs_diff > atol:
            raise FaceParseError(
                f"ONNX output of {path} differs from PyTorch by {result.max_abs_diff:.3g} (expected <= {atol})"
            )
    return result


def _export(module: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamo: bool) -> None:
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            torch.onnx.export(
                module, (x,), str(path), opset_version=max(opset, 18), dynamo=True,
                input_names=["image"], output_names=["logits"],
                dynamic_shapes={"x": {0: batch}}, external_data=False,
            )  # fmt: skip
        else:
            torch.onnx.export(
                module, (x,), str(path), opset_version=opset, dynamo=False,
                input_names=["image"], output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            )  # fmt: skip


def onnx_session(path: str | Path) -> Any:
    """An onnxruntime CPU inference session for ``path``."""
    ort = require("onnxruntime", "onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(torch.get_num_threads(), 4))
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_onnx(model: nn.Module, path: str | Path, size: tuple[int, int], batch: int = 3, seed: int = 0) -> float:
    """Max abs difference between onnxruntime and PyTorch logits on a random batch."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, *size, generator=g)
    with torch.inference_mode():
        ref = _LogitsOnly(model).eval()(x).float().numpy()
    out = onnx_session(path).run(["logits"], {"image": x.numpy()})[0]
    if out.shape != ref.shape:
        raise FaceParseError(f"ONNX output shape {out.shape} != PyTorch {ref.shape} for {path}")
    diff = np.abs(out.astype(np.float64) - ref)
    diff[np.isnan(out) & np.isnan(ref)] = 0.0  # NaN in both is agreement
    diff[np.isnan(diff)] = np.inf  # NaN in one only is not
    return float(diff.max())


def _load_any(model: str) -> nn.Module:
    """A model directory (save_pretrained) or a registered name (random weights)."""
    import faceparse

    p = Path(model)
    if p.is_dir():
        return faceparse.load_model(p)
    if model in MODELS:
        return faceparse.build_model(model).eval()
    raise FaceParseError(
        f"--model '{model}' is neither a model directory (config.json + model.safetensors) nor a registered model name"
    )


@COMMANDS.register("export")
def export(
    model: str = "",
    format: str = "onnx",
    out: str = "",
    size: int = 0,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
) -> None:
    """Export a saved model directory (or a registered model name) to ONNX.

    ``faceparse export --model DIR --format onnx`` writes ``DIR/model.onnx`` (or ``--out``) and
    compares onnxruntime with PyTorch (``--no-check`` skips that). ``--size`` sets the traced
    input size (default: the model's).
    """
    if not model:
        raise FaceParseError("--model is required: a directory written by save_pretrained")
    if format.lower() != "onnx":
        raise FaceParseError(f"--format '{format}' is not supported; expected 'onnx'")
    m = _load_any(model)
    target = Path(out) if out else (Path(model) / "model.onnx" if Path(model).is_dir() else Path(f"{model}.onnx"))
    res = export_onnx(m, target, input_size=size or None, opset=opset, check=check)
    diff = "" if res.max_abs_diff is None else f", onnxruntime max abs diff {res.max_abs_diff:.2e}"
    print(f"wrote {res.path} (opset {res.opset}, {res.exporter} exporter, input {res.input_size}{diff})")
