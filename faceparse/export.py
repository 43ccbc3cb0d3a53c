"""ONNX export of zoo models, checked against onnxruntime.

``faceparse export --model DIR --format onnx`` writes ``DIR/model.onnx`` (opset 17, input ``image``
``B x 3 x H x W`` normalised as the model's ``input_mean``/``input_std``, output ``logits``
``B x K x H x W``; the axes are named ``batch``, ``height``, ``width``) and, unless ``--no-check``,
compares onnxruntime's output with PyTorch's on a random batch.

Dynamic axes: the batch axis is always dynamic. Height and width are exported dynamic, then
onnxruntime runs the graph at a second size (traced size + 32) and must match PyTorch there too;
a model whose graph bakes its spatial size in (or that cannot run at another size) is exported
again at the fixed traced size. :attr:`ExportResult.dynamic_hw` and the file's metadata say which.

Parity, judged as a user would: float32 rounding grows with the size of the activations, so the
max abs difference is compared with the scale of the logits, allclose-style with the reference
magnitude taken as the batch's max ``|logit|``: pass when
``max|onnx - torch| <= atol + rtol * max|torch|`` (defaults ``atol=1e-4``, ``rtol=1e-4``) *and* the
per-pixel argmax (the predicted label) agrees on at least ``min_agreement`` (0.999) of the pixels.
:class:`OnnxParity` reports the max abs and relative differences and the argmax agreement.

Writing is atomic: the exporter writes into a temporary folder next to the target, and the files
(``model.onnx``, plus ``model.onnx.data`` for external weights) are renamed into place only after
every check passed; a failed export leaves nothing behind.

The file carries metadata (``metadata_props``, read back with :func:`read_onnx_metadata`): class
names, the label set, input mean/std, default and traced input size, ``dynamic_hw``, the faceparse
version and the registry name. :class:`OnnxModel` runs an exported file with onnxruntime behind the
interface :class:`faceparse.inference.Predictor` uses (``Predictor(path, backend="onnxruntime")``).

The TorchScript-based exporter is used first because it writes opset 17 natively; when it fails
the ``torch.export``-based exporter (``dynamo=True``) is tried, whose lowest opset is 18 (the
version actually written is reported). Models known not to export are listed in
:data:`NOT_EXPORTABLE` with the reason; the docs show that list.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from faceparse.errors import FaceParseError, require
from faceparse.labels import LabelSet
from faceparse.registry import MODELS, NotExportableView

DEFAULT_OPSET = 17
# Parity defaults (see the module docstring): abs tolerance, tolerance relative to max |logit|, and
# the fraction of pixels whose argmax (predicted label) must agree.
ATOL = 1e-4
RTOL = 1e-4
MIN_AGREEMENT = 0.999
# Metadata keys whose values are JSON (the rest are plain strings).
_JSON_KEYS = ("class_names", "label_set", "input_mean", "input_std", "input_size", "default_input_size", "dynamic_hw")

# Registered models that cannot be exported to ONNX, with the reason (shown in docs/models.md): a
# read-only view derived from the models' typed configs (``ModelCfg(exportable=False,
# not_exportable_reason=...)`` in each model file), checked by benchmarks/onnx_export.py.
# RTFormer exports since the parity check is relative to the logits' scale (1.6e-6 / 1.1e-5 of
# max |logit| on tiny builds), at a fixed size: its pooling bins are traced for one input size.
NOT_EXPORTABLE: Mapping[str, str] = NotExportableView(MODELS)


@dataclass
class OnnxParity:
    """onnxruntime vs PyTorch logits on one random batch (:func:`check_onnx`).

    Attributes:
        max_abs_diff: max ``|onnx - torch|`` over the batch (NaN in one only counts as ``inf``).
        max_abs_logit: max ``|torch|`` over the batch's finite logits: the scale of the logits.
        argmax_agreement: fraction of pixels whose argmax over classes (the label) is the same.
        size: spatial size ``(h, w)`` compared.
        batch: batch size compared.
    """

    max_abs_diff: float
    max_abs_logit: float
    argmax_agreement: float
    size: tuple[int, int]
    batch: int

    @property
    def max_rel_diff(self) -> float:
        """``max_abs_diff / max_abs_logit``: the difference relative to the scale of the logits."""
        if self.max_abs_logit > 0:
            return self.max_abs_diff / self.max_abs_logit
        return 0.0 if self.max_abs_diff == 0 else math.inf

    def passes(self, atol: float = ATOL, rtol: float = RTOL, min_agreement: float = MIN_AGREEMENT) -> bool:
        """``max_abs_diff <= atol + rtol * max_abs_logit`` and ``argmax_agreement >= min_agreement``."""
        return self.max_abs_diff <= atol + rtol * self.max_abs_logit and self.argmax_agreement >= min_agreement

    def describe(self) -> str:
        return (
            f"max abs diff {self.max_abs_diff:.2e} (relative {self.max_rel_diff:.2e} of max |logit| "
            f"{self.max_abs_logit:.3g}), argmax agreement {100 * self.argmax_agreement:.2f}% "
            f"at {self.size[0]}x{self.size[1]}"
        )


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how it compared with PyTorch.

    The parity fields are the worst over every onnxruntime run made (the check at the traced size
    and, for dynamic height/width, the run at ``check_size``); ``None`` when none was made.
    """

    path: Path
    opset: int
    exporter: str
    max_abs_diff: float | None = None
    input_size: int | None = None
    max_rel_diff: float | None = None
    argmax_agreement: float | None = None
    max_abs_logit: float | None = None
    dynamic_hw: bool = False
    check_size: tuple[int, int] | None = None
    dynamic_hw_note: str = ""
    parity: list[OnnxParity] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    def _add(self, parity: OnnxParity) -> None:
        self.parity.append(parity)
        self.max_abs_diff = max(p.max_abs_diff for p in self.parity)
        self.max_rel_diff = max(p.max_rel_diff for p in self.parity)
        self.max_abs_logit = max(p.max_abs_logit for p in self.parity)
        self.argmax_agreement = min(p.argmax_agreement for p in self.parity)

    def summary(self) -> str:
        """One line: opset, exporter, sizes, and the onnxruntime comparison."""
        if self.dynamic_hw:
            hw = "dynamic height/width"
            if self.check_size:
                hw += f", checked at {self.check_size[0]}x{self.check_size[1]}"
        else:
            hw = "fixed height/width" + (f": {self.dynamic_hw_note}" if self.dynamic_hw_note else "")
        text = f"opset {self.opset}, {self.exporter} exporter, input {self.input_size}, {hw}"
        if self.max_abs_diff is not None:
            text += (
                f"; onnxruntime vs PyTorch: max abs diff {self.max_abs_diff:.2e}, relative {self.max_rel_diff:.2e} "
                f"(max |logit| {self.max_abs_logit:.3g}), argmax agreement {100 * self.argmax_agreement:.2f}%"
            )
        return text


def tiny_kwargs(name: str) -> dict[str, Any]:
    """Keyword overrides for a tiny test build of registered model ``name``: its typed config's
    ``tiny`` (constructor kwargs given by the model's author, e.g. ``{"encoder": "resnet18", "input_size": 64}``).
    """
    return dict(MODELS.cfg(name).tiny or {})


def tiny_param_count(name: str) -> float:
    """Parameters of the tiny build of ``name``, counted on the meta device (no memory, no init
    compute); ``inf`` when it cannot be built there (the tests then treat it as heavy)."""
    import torch

    import faceparse

    try:
        with torch.device("meta"):
            model = faceparse.build_model(name, **tiny_kwargs(name))
        return float(sum(p.numel() for p in model.parameters()))
    except Exception:
        return float("inf")


def tiny_input_size(name: str, default: int = 64) -> int:
    """Spatial size for a tiny test build: ``tiny["input_size"]``, metadata ``tiny_input_size``,
    else ``default``."""
    cfg = MODELS.cfg(name)
    return int((cfg.tiny or {}).get("input_size") or cfg.tiny_input_size or default)


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
    atol: float = ATOL,
    dynamo: bool | None = None,
    rtol: float = RTOL,
    min_agreement: float = MIN_AGREEMENT,
    dynamic_hw: bool | None = None,
    check_size: int | tuple[int, int] | None = None,
    name: str | None = None,
) -> ExportResult:
    """Export ``model`` to ONNX at ``path`` (atomically: nothing is left behind on failure).

    Args:
        model: a faceparse model (or any module mapping ``B x 3 x H x W`` to logits).
        path: output ``.onnx`` file (its folder is created if needed).
        input_size: spatial size traced (``int`` or ``(h, w)``); defaults to
            ``model.default_input_size``.
        opset: ONNX opset version for the TorchScript exporter.
        batch: batch size of the example input (the batch axis is dynamic anyway).
        check: run onnxruntime at the traced size on a batch of a *different* size and compare
            with PyTorch; raises :class:`FaceParseError` unless
            ``max abs diff <= atol + rtol * max|logit|`` and the argmax agrees on at least
            ``min_agreement`` of the pixels (:meth:`OnnxParity.passes`).
        dynamo: force the exporter (``True``: torch.export based, ``False``: TorchScript);
            ``None`` tries TorchScript first, then torch.export.
        dynamic_hw: ``None`` (default) exports dynamic height/width, runs onnxruntime at
            ``check_size`` (the same parity criterion, also without ``check``) and falls back to the
            fixed traced size when that fails; ``True`` requires dynamic height/width (raises
            otherwise); ``False`` exports the fixed traced size.
        check_size: the second size for dynamic height/width (default: traced size + 32).
        name: registry name stored in the metadata (default: ``model.registry_name``).
    """
    require("onnx", "onnx")
    if check or dynamic_hw is not False:
        require("onnxruntime", "onnx")
    h, w = _hw(input_size or getattr(model, "default_input_size", 512))
    second = _hw(check_size) if check_size else (h + 32, w + 32)
    path = Path(path)
    created = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    done = False
    try:
        result = _export_checked(
            model, tmp / path.name, (h, w), second, opset, batch, check, atol, rtol, min_agreement, dynamo,
            dynamic_hw, name,
        )  # fmt: skip
        _move_into_place(tmp, path)
        result.path = path
        done = True
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done:
            for d in created:  # innermost first; only folders this call created, only if empty
                with contextlib.suppress(OSError):
                    d.rmdir()


def _hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def _export_checked(
    model: nn.Module,
    target: Path,
    hw: tuple[int, int],
    second: tuple[int, int],
    opset: int,
    batch: int,
    check: bool,
    atol: float,
    rtol: float,
    min_agreement: float,
    dynamo: bool | None,
    dynamic_hw: bool | None,
    name: str | None,
) -> ExportResult:
    """Export into ``target`` (inside a temporary folder), name the axes, write metadata, check."""
    import onnx

    wrapped = _LogitsOnly(model).eval()
    # batch >= 2: torch.export specialises size-1 dimensions, which would fix the batch axis
    x = torch.randn(max(batch, 2), 3, *hw)
    check_batch = max(batch, 2) + 1
    try:
        ref = _reference(model, hw, check_batch if check else 1)  # without check: for the output shape
    except Exception as exc:
        raise FaceParseError(
            f"could not export {type(model).__name__} to ONNX: the PyTorch model fails on a {hw[0]}x{hw[1]} input "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    modes = [True, False] if dynamic_hw is None else [bool(dynamic_hw)]
    second_ref = None
    note = ""
    if modes[0]:
        try:
            second_ref = _reference(model, second, 1)
        except Exception as exc:
            note = f"the PyTorch model does not run at {second[0]}x{second[1]} ({type(exc).__name__}: {exc})"[:300]
            if dynamic_hw:
                raise FaceParseError(f"dynamic height/width impossible: {note}") from exc
            modes = [False]
    errors: list[str] = []
    for dyn in modes:
        _clear(target.parent)  # a clean temporary folder for each try
        used, errs = _export_any(wrapped, x, target, opset, dynamo, dyn)
        if used is None:
            errors = errs
            if dyn and not dynamic_hw:
                note = "dynamic export failed: " + " | ".join(e[:200] for e in errs)
            continue
        written = onnx.load(str(target), load_external_data=False)
        metadata = onnx_metadata(model, hw, dyn, name)
        _name_axes(written.graph, hw, tuple(ref.shape), dyn)
        onnx.helper.set_model_props(written, metadata)
        onnx.save(written, str(target))
        opset_written = next((o.version for o in written.opset_import if o.domain in ("", "ai.onnx")), -1)
        result = ExportResult(
            path=target, opset=opset_written, exporter=used, input_size=hw[0], dynamic_hw=dyn, metadata=metadata
        )
        try:
            session = onnx_session(target)
        except Exception as exc:
            if dyn and not dynamic_hw:
                note = f"onnxruntime cannot load the dynamic graph ({type(exc).__name__})"
                continue
            raise FaceParseError(f"onnxruntime cannot load the ONNX graph of {type(model).__name__}: {exc}") from exc
        if dyn:
            try:
                parity = check_onnx(model, target, second, batch=1, session=session, reference=second_ref)
            except Exception as exc:
                if dynamic_hw:
                    raise FaceParseError(
                        f"dynamic height/width: the ONNX graph of {type(model).__name__} does not run at {second}: {exc}"
                    ) from exc
                note = f"onnxruntime cannot run the dynamic graph at {second[0]}x{second[1]} ({type(exc).__name__})"
                continue
            if not parity.passes(atol, rtol, min_agreement):
                if dynamic_hw:
                    raise FaceParseError(
                        f"dynamic height/width: the ONNX graph of {type(model).__name__} differs: {parity.describe()}"
                    )
                note = f"the dynamic graph differs from PyTorch at {second[0]}x{second[1]}: {parity.describe()}"
                continue
            result.check_size = second
            result._add(parity)
        result.dynamic_hw_note = note
        if check:
            try:
                parity = check_onnx(model, target, hw, batch=check_batch, session=session, reference=ref)
            except FaceParseError:
                raise
            except Exception as exc:
                raise FaceParseError(
                    f"onnxruntime fails on the ONNX graph of {type(model).__name__} at {hw[0]}x{hw[1]}: {exc}"
                ) from exc
            result._add(parity)
            if not parity.passes(atol, rtol, min_agreement):
                raise FaceParseError(
                    f"ONNX output of {type(model).__name__} differs from PyTorch: {parity.describe()} (expected max abs "
                    f"diff <= {atol:g} + {rtol:g} x max |logit| = {atol + rtol * parity.max_abs_logit:.3g} and "
                    f"argmax agreement >= {100 * min_agreement:g}%); nothing was written to {target.name}"
                )
        return result
    raise FaceParseError(
        f"could not export {type(model).__name__} to ONNX: "
        + (" | ".join(e[:300] for e in errors) if errors else note)
        + (f" (dynamic height/width: {note})" if errors and note else "")
    )


def _reference(model: nn.Module, hw: tuple[int, int], batch: int, seed: int = 0) -> np.ndarray:
    """PyTorch logits (float32 numpy) of the seeded random batch :func:`check_onnx` uses."""
    x = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return _LogitsOnly(model).eval()(x).float().numpy()


def _export_any(
    module: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamo: bool | None, dynamic_hw: bool
) -> tuple[str | None, list[str]]:
    """Try the exporters in order; the one used (or ``None``) and the errors of those that failed."""
    errors = []
    for use_dynamo in [False, True] if dynamo is None else [bool(dynamo)]:
        label = "dynamo" if use_dynamo else "torchscript"
        try:
            _export(module, x, path, opset, use_dynamo, dynamic_hw)
            return label, errors
        except Exception as exc:
            errors.append(f"{label}: {type(exc).__name__}: {exc}")
            _clear(path.parent)
    return None, errors


def _clear(folder: Path) -> None:
    for f in folder.iterdir():
        shutil.rmtree(f) if f.is_dir() and not f.is_symlink() else f.unlink()


def _export(module: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamo: bool, dynamic_hw: bool = False) -> None:
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=4096)}
            if dynamic_hw:
                shapes.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            torch.onnx.export(
                module, (x,), str(path), opset_version=max(opset, 18), dynamo=True,
                input_names=["image"], output_names=["logits"],
                dynamic_shapes={"x": shapes}, external_data=False,
            )  # fmt: skip
        else:
            axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
            torch.onnx.export(
                module, (x,), str(path), opset_version=opset, dynamo=False,
                input_names=["image"], output_names=["logits"],
                dynamic_axes={"image": dict(axes), "logits": dict(axes)},
            )  # fmt: skip


def _name_axes(graph: Any, hw: tuple[int, int], out_shape: tuple[int, ...], dynamic_hw: bool) -> None:
    """Name the axes of input ``image`` and output ``logits``: ``batch``, ``height``, ``width``.

    The exporters name them inconsistently (TorchScript's shape inference called the logits'
    height ``batch``; torch.export writes ``s0``...). Symbols of the input are renamed everywhere
    in the graph; the output's are set from the PyTorch output shape ``out_shape`` (``K``, and
    ``height`` / ``width`` when the logits have the input's size, else ``logits_height`` /
    ``logits_width``). Fixed axes get their sizes.
    """
    image, logits = graph.input[0], graph.output[0]
    dims_in = image.type.tensor_type.shape.dim
    if len(dims_in) != 4:
        return
    names_in = ["batch", None, "height", "width"] if dynamic_hw else ["batch", None, None, None]
    renames = {d.dim_param: n for d, n in zip(dims_in, names_in) if n and d.dim_param and d.dim_param != n}
    for info in [*graph.value_info, *graph.output]:
        for d in info.type.tensor_type.shape.dim:
            if d.dim_param in renames:
                d.dim_param = renames[d.dim_param]
    dims_in[0].dim_param = "batch"
    for d, n, v in zip(dims_in[2:], names_in[2:], hw):
        if dynamic_hw:
            d.dim_param = n
        else:
            d.dim_value = v
    dims_out = logits.type.tensor_type.shape.dim
    if len(out_shape) != 4:  # not B x K x H x W: only the batch axis is named
        if dims_out and len(dims_out) == len(out_shape):
            dims_out[0].dim_param = "batch"
        return
    if len(dims_out) != 4:
        del dims_out[:]
        for _ in range(4):
            dims_out.add()
    _, k, oh, ow = out_shape
    same = (oh, ow) == hw
    dims_out[0].dim_param = "batch"
    dims_out[1].dim_value = k
    for d, n, v in zip(dims_out[2:], ("height", "width") if same else ("logits_height", "logits_width"), (oh, ow)):
        if dynamic_hw:
            d.dim_param = n
        else:
            d.dim_value = v


def _move_into_place(tmp: Path, path: Path) -> None:
    """Rename the exported files from ``tmp`` next to ``path``: side files (external data) first."""
    main = tmp / path.name
    side = [f for f in tmp.iterdir() if f.is_file() and f != main]
    for f in side:
        os.replace(f, path.parent / f.name)
    os.replace(main, path)
    stale = path.with_name(path.name + ".data")  # external data of an earlier, larger export
    if stale.is_file() and all(f.name != stale.name for f in side):
        stale.unlink()


def onnx_metadata(
    model: nn.Module, input_size: int | tuple[int, int], dynamic_hw: bool, name: str | None = None
) -> dict[str, str]:
    """The ``metadata_props`` :func:`export_onnx` writes (JSON values for :data:`_JSON_KEYS`).

    Keys: ``class_names`` (JSON list), ``label_set`` (JSON of ``LabelSet.to_dict()``),
    ``input_mean``, ``input_std`` (JSON lists), ``default_input_size`` (the model's),
    ``input_size`` (``[h, w]`` traced), ``dynamic_hw`` (``true``/``false``),
    ``faceparse_version``, ``registry_name``, ``model_class``.
    """
    from faceparse import __version__

    meta: dict[str, str] = {}
    label_set = getattr(model, "label_set", None)
    if isinstance(label_set, LabelSet):
        meta["class_names"] = json.dumps(list(label_set.classes))
        meta["label_set"] = json.dumps(label_set.to_dict())
    for key in ("input_mean", "input_std"):
        value = getattr(model, key, None)
        if value is not None:
            meta[key] = json.dumps([float(v) for v in value])
    default = getattr(model, "default_input_size", None)
    if default:
        meta["default_input_size"] = json.dumps(int(default))
    meta["input_size"] = json.dumps(list(_hw(input_size)))
    meta["dynamic_hw"] = json.dumps(bool(dynamic_hw))
    meta["faceparse_version"] = __version__
    registry_name = name or getattr(model, "registry_name", None)
    if registry_name:
        meta["registry_name"] = str(registry_name)
    meta["model_class"] = f"{type(model).__module__}.{type(model).__qualname__}"
    return meta


def parse_onnx_metadata(props: dict[str, str], source: str = "ONNX file") -> dict[str, Any]:
    """Decode ``metadata_props`` written by :func:`onnx_metadata` (JSON values decoded)."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        if key in _JSON_KEYS:
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise FaceParseError(f"metadata '{key}' of {source} is not valid JSON: {value[:100]!r}") from exc
        else:
            out[key] = value
    return out


def resolve_onnx_path(path: str | Path) -> Path:
    """``path`` itself (an ``.onnx`` file), or ``path/model.onnx`` for a model directory."""
    p = Path(path)
    if p.is_dir():
        if not (p / "model.onnx").is_file():
            raise FaceParseError(f"'{p}' has no model.onnx; write one with: faceparse export --model {p} --format onnx")
        return p / "model.onnx"
    if not p.is_file():
        raise FaceParseError(f"ONNX file '{p}' does not exist (expected an .onnx file or a directory with model.onnx)")
    return p


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The faceparse metadata of an exported file (or of ``DIR/model.onnx``), JSON values decoded.

    E.g. ``{"class_names": [...], "label_set": {...}, "input_mean": [...], "input_std": [...],
    "default_input_size": 512, "input_size": [512, 512], "dynamic_hw": True,
    "faceparse_version": "0.1.0", "registry_name": "unet", "model_class": "..."}``.
    """
    onnx = require("onnx", "onnx")
    p = resolve_onnx_path(path)
    model = onnx.load(str(p), load_external_data=False)
    return parse_onnx_metadata({prop.key: prop.value for prop in model.metadata_props}, str(p))


class OnnxModel:
    """An exported file run by onnxruntime, usable where :class:`faceparse.inference.Predictor`
    expects a model (``Predictor(path, backend="onnxruntime")`` wraps it).

    Reads the metadata back (:func:`read_onnx_metadata`): ``label_set``, ``input_mean``,
    ``input_std``, ``default_input_size`` (the model's for a dynamic-size graph, the traced size
    for a fixed one), ``dynamic_hw``, ``metadata``. ``to``/``eval`` are no-ops; calling it with a
    normalised ``B x 3 x H x W`` tensor returns the logits as a tensor on the input's device.

    Args:
        path: an ``.onnx`` file written by :func:`export_onnx`, or a directory with ``model.onnx``.
        providers: onnxruntime execution providers (default: CPU).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        self.path = resolve_onnx_path(path)
        self.session = onnx_session(self.path, providers)
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        meta = parse_onnx_metadata(props, str(self.path))
        missing = [k for k in ("label_set", "input_mean", "input_std", "input_size") if k not in meta]
        if missing:
            raise FaceParseError(
                f"'{self.path}' lacks faceparse metadata ({', '.join(missing)}); export it with "
                "faceparse.export.export_onnx or `faceparse export`"
            )
        self.metadata = meta
        self.label_set = LabelSet.from_dict(meta["label_set"])
        self.input_mean = tuple(float(v) for v in meta["input_mean"])
        self.input_std = tuple(float(v) for v in meta["input_std"])
        self.input_hw = _hw(meta["input_size"])
        self.dynamic_hw = bool(meta.get("dynamic_hw", False))
        default = meta.get("default_input_size") if self.dynamic_hw else None
        self.default_input_size = int(default or self.input_hw[0])
        self.registry_name = meta.get("registry_name")
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @property
    def num_classes(self) -> int:
        return self.label_set.num_classes

    def to(self, *args: Any, **kwargs: Any) -> OnnxModel:
        """No-op (onnxruntime runs where its providers say; outputs follow the input's device)."""
        return self

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise FaceParseError(f"OnnxModel expects a B x 3 x H x W tensor, got shape {tuple(x.shape)}")
        if not self.dynamic_hw and tuple(x.shape[-2:]) != self.input_hw:
            raise FaceParseError(
                f"'{self.path}' was exported with a fixed input size {self.input_hw[0]}x{self.input_hw[1]}; got "
                f"{x.shape[-2]}x{x.shape[-1]} (use input_size={self.input_hw[0]}, or export again)"
            )
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run([self.output_name], {self.input_name: arr})[0]
        return torch.from_numpy(out).to(x.device)

    forward = __call__

    def __repr__(self) -> str:
        return f"OnnxModel('{self.path}', {self.registry_name or self.metadata.get('model_class')})"


def onnx_session(path: str | Path, providers: list[str] | None = None) -> Any:
    """An onnxruntime inference session for ``path`` (CPU unless ``providers`` says otherwise)."""
    ort = require("onnxruntime", "onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(torch.get_num_threads(), 4))
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


def check_onnx(
    model: nn.Module,
    path: str | Path,
    size: int | tuple[int, int],
    batch: int = 3,
    seed: int = 0,
    session: Any = None,
    reference: np.ndarray | None = None,
) -> OnnxParity:
    """Compare onnxruntime with PyTorch logits on a seeded random batch (see :class:`OnnxParity`).

    ``session`` reuses an onnxruntime session; ``reference`` the PyTorch logits of the same batch.
    Raises :class:`FaceParseError` when the output shapes differ.
    """
    hw = _hw(size)
    x = torch.randn(batch, 3, *hw, generator=torch.Generator().manual_seed(seed))
    ref = _reference(model, hw, batch, seed) if reference is None else reference
    out = (session or onnx_session(path)).run(["logits"], {"image": x.numpy()})[0]
    if out.shape != ref.shape:
        raise FaceParseError(f"ONNX output shape {out.shape} != PyTorch {ref.shape} for {path}")
    out64, ref64 = out.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(out64 - ref64)
    diff[np.isnan(out64) & np.isnan(ref64)] = 0.0  # NaN in both is agreement
    diff[np.isnan(diff)] = np.inf  # NaN in one only is not
    finite = np.abs(ref64[np.isfinite(ref64)])
    agree = 1.0
    if ref.ndim >= 2 and ref.size:
        agree = float((np.argmax(out64, axis=1) == np.argmax(ref64, axis=1)).mean())
    return OnnxParity(
        max_abs_diff=float(diff.max()) if diff.size else 0.0,
        max_abs_logit=float(finite.max()) if finite.size else 0.0,
        argmax_agreement=agree,
        size=hw,
        batch=batch,
    )


def _load_any(model: str) -> nn.Module:
    """A model directory (save_pretrained) or a registered name (random weights)."""
    import faceparse

    p = Path(model)
    if p.is_dir():
        return faceparse.load_model(p)
    if model in MODELS:
        return faceparse.build_model(model).eval()
    raise FaceParseError(
        f"--model '{model}' is neither a model directory (config.json + model.safetensors) nor a registered "
        "model name (`faceparse list models` lists them)"
    )
