"""Reduced-precision inference: bf16 on the CPU's bf16 units, int8 by static quantisation.

:func:`optimize_for_inference` turns a model into a callable ``normalised B x 3 x H x W batch ->
fp32 logits`` in one of three precisions:

* ``"fp32"``: the model itself (``channels_last`` optional), or its ONNX export run by
  onnxruntime with ``backend="onnxruntime"``.
* ``"bf16"``: channels_last weights and input, and ``torch.autocast("cpu", dtype=torch.bfloat16)``
  so convolutions, linear layers and matmuls run in bf16 on oneDNN (AMX tiles or AVX-512-BF16
  where the CPU has them; :func:`cpu_supports_bf16`), with norms and softmax kept in fp32 by
  autocast's own op lists. On a CPU without native bf16 the conversion is emulated and slower than
  fp32, so the default is to warn (:class:`PrecisionFallbackWarning`) and run fp32; ``force=True``
  runs bf16 anyway (used by the accuracy tests, which check numerics, not speed).
* ``"int8"``: onnxruntime's static quantiser (``onnxruntime.quantization.quantize_static``, QDQ
  format, per-channel int8 weights, uint8 activations calibrated with min/max on a few normalised
  batches) applied to the model's ONNX export (:func:`faceparse.export.export_onnx`), run by an
  onnxruntime session. Chosen over PyTorch's PT2E flow (``X86InductorQuantizer``) because with the
  installed torch 2.14 PT2E lives in ``torchao`` (``torch.ao.quantization.quantize_pt2e`` is gone)
  and torchao is not a faceparse dependency, while onnxruntime already is (the ``onnx`` extra) and
  its quantised graphs need no compiler at run time. The int8 path is therefore always run by
  onnxruntime whatever ``backend`` says. Without ``calibration`` the first batch the callable sees
  calibrates it.

Every path returns fp32 logits. The accuracy of bf16 and int8 against fp32 is measured, not
assumed: ``tests/inference/test_precision.py`` (pixel agreement on a briefly trained model) and
``benchmarks/precision.py`` (validation mean F1 on the demo model, speed ratios).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from faceparse.errors import FaceParseError, require

PRECISIONS = ("fp32", "bf16", "int8")
BACKENDS = ("torch", "onnxruntime")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


class PrecisionFallbackWarning(UserWarning):
    """The requested precision cannot run natively here; a slower or fp32 path is used instead."""


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where the file does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively: AMX-BF16 or AVX512-BF16 in ``/proc/cpuinfo``.

    Without ``/proc/cpuinfo`` (macOS, Windows) torch's CPU capability decides (``AVX512`` builds
    with bf16 kernels report it; Apple silicon has no oneDNN bf16 path).
    """
    flags = cpu_flags()
    if flags:
        return any(f in flags for f in BF16_FLAGS)
    capability = str(torch.backends.cpu.get_cpu_capability())
    return "AMX" in capability or ("AVX512" in capability and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_supports_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def _logits(out: Any) -> torch.Tensor:
    return out["logits"] if isinstance(out, dict) else out


class InferenceRunner:
    """A model wrapped for one precision/backend: ``runner(x)`` returns fp32 logits.

    Attributes: ``precision`` and ``backend`` actually used (after any fallback), ``requested``
    (what the caller asked for), ``note`` (why they differ, or ``""``).
    """

    def __init__(
        self, fn: Callable[[torch.Tensor], torch.Tensor], precision: str, backend: str, requested: str, note: str = ""
    ):
        self._fn = fn
        self.precision = precision
        self.backend = backend
        self.requested = requested
        self.note = note

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)

    def __repr__(self) -> str:
        return f"InferenceRunner(precision={self.precision!r}, backend={self.backend!r})"


def optimize_for_inference(
    model: torch.nn.Module,
    precision: str = "fp32",
    backend: str = "torch",
    calibration: Iterable[torch.Tensor] | torch.Tensor | None = None,
    channels_last: bool = True,
    compile: bool = False,
    force: bool = False,
    input_size: int | None = None,
) -> InferenceRunner:
    """A callable running ``model`` in ``precision`` on ``backend``, returning fp32 logits.

    Args:
        model: a faceparse model (or any module mapping a normalised batch to logits or a dict
            with ``"logits"``). It is put in eval mode; with ``channels_last`` its weights are
            converted to channels_last in place (the fp32 results do not change).
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"`` (see the module docstring).
        backend: ``"torch"`` or ``"onnxruntime"`` (ONNX export run by onnxruntime; bf16 is
            torch only; int8 always runs on onnxruntime).
        calibration: int8 only: normalised batches (a ``B x 3 x H x W`` tensor or an iterable of
            them) whose activation ranges set the quantisation scales; ``None`` calibrates on
            the first batch passed to the returned callable.
        channels_last: torch backend: run with channels_last weights and input (what oneDNN's
            fast convolutions want).
        compile: torch backend: wrap the forward in ``torch.compile`` (pays off only after its
            first, slow call).
        force: bf16 on a CPU without native bf16: run it emulated anyway (slow; for accuracy
            checks) instead of warning and falling back to fp32.
        input_size: ONNX paths: the traced spatial size (default: ``model.default_input_size``;
            the export keeps height/width dynamic where the model allows).
    """
    if precision not in PRECISIONS:
        raise FaceParseError(f"precision='{precision}'; expected one of {', '.join(PRECISIONS)}")
    if backend not in BACKENDS:
        raise FaceParseError(f"backend='{backend}'; expected one of {', '.join(BACKENDS)}")
    model = model.eval()
    if precision == "int8":
        return _int8_onnxruntime(model, calibration, input_size)
    if backend == "onnxruntime":
        if precision == "bf16":
            raise FaceParseError(
                "precision='bf16' runs on backend='torch' only (onnxruntime's CPU provider has no bf16 "
                "convolutions); use backend='torch', or precision='int8' for a faster onnxruntime path"
            )
        return InferenceRunner(_onnx_session_runner(model, input_size), "fp32", "onnxruntime", precision)
    note = ""
    if precision == "bf16" and not cpu_supports_bf16():
        note = (
            "this CPU has neither AMX-BF16 nor AVX512-BF16 (/proc/cpuinfo), so bf16 would be emulated "
            "and slower than fp32"
        )
        if not force:
            warnings.warn(f"{note}; running fp32 instead", PrecisionFallbackWarning, stacklevel=2)
            precision = "fp32"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward: Callable[[torch.Tensor], Any] = torch.compile(model) if compile else model
    use_bf16 = precision == "bf16"

    def run(x: torch.Tensor) -> torch.Tensor:
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            out = _logits(forward(x))
        return out.float().contiguous()

    return InferenceRunner(run, precision, "torch", "bf16" if use_bf16 or note else precision, note)


# ------------------------------------------------------------------------------------ onnxruntime
def _export(model: torch.nn.Module, folder: Path, input_size: int | None) -> Path:
    from faceparse.export import export_onnx

    path = folder / "model.onnx"
    size = int(input_size or getattr(model, "default_input_size", 512))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, path, input_size=size, check=False, dynamic_hw=None)
    return path


def _session(path: Path) -> Any:
    from faceparse.export import onnx_session

    return onnx_session(path)


def _session_fn(session: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    name_in, name_out = session.get_inputs()[0].name, session.get_outputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(session.run([name_out], {name_in: arr})[0]).to(x.device)

    return run


def _onnx_session_runner(model: torch.nn.Module, input_size: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    require("onnxruntime", "onnx")
    folder = Path(tempfile.mkdtemp(prefix="faceparse_onnx_"))
    try:
        session = _session(_export(model, folder, input_size))  # the session holds the graph in memory
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return _session_fn(session)


def _batches(calibration: Iterable[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
    if isinstance(calibration, torch.Tensor):
        calibration = [calibration]
    batches = [b if b.ndim == 4 else b[None] for b in calibration]
    if not batches:
        raise FaceParseError("int8 calibration got no batches; pass a few normalised B x 3 x H x W images")
    return batches


def quantize_onnx(
    model: torch.nn.Module, calibration: Iterable[torch.Tensor] | torch.Tensor, input_size: int | None = None
) -> Any:
    """An onnxruntime session of ``model``'s ONNX export statically quantised to int8.

    QDQ format, per-channel symmetric int8 weights, asymmetric uint8 activations with min/max
    calibration over ``calibration``'s batches (one sample at a time). On a CPU without int8
    dot-product instructions (VNNI/AMX-INT8) the weights use a 7-bit range (``reduce_range``),
    as onnxruntime advises, so the AVX2 u8 x s8 kernels cannot saturate their 16-bit accumulators.
    """
    require("onnxruntime", "onnx")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    samples = [s[None].detach().float().cpu().numpy() for b in _batches(calibration) for s in b]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(samples)

        def get_next(self) -> dict[str, Any] | None:
            item = next(self._it, None)
            return None if item is None else {"image": item}

    folder = Path(tempfile.mkdtemp(prefix="faceparse_int8_"))
    try:
        size = input_size or int(samples[0].shape[-1])
        fp32 = _export(model, folder, size)
        pre = folder / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing (shape inference, folding) only helps; quantise the raw graph
            pre = fp32
        out = folder / "int8.onnx"
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=not cpu_supports_vnni(),
        )
        return _session(out)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _int8_onnxruntime(
    model: torch.nn.Module, calibration: Iterable[torch.Tensor] | torch.Tensor | None, input_size: int | None
) -> InferenceRunner:
    require("onnxruntime", "onnx")
    state: dict[str, Any] = {}
    if calibration is not None:
        state["fn"] = _session_fn(quantize_onnx(model, calibration, input_size))

    def run(x: torch.Tensor) -> torch.Tensor:
        if "fn" not in state:  # calibrate on the first batch seen
            state["fn"] = _session_fn(quantize_onnx(model, x, input_size or int(x.shape[-1])))
        return state["fn"](x).float()

    return InferenceRunner(run, "int8", "onnxruntime", "int8")


def predictor_runner(model: Any, precision: str, backend: str, input_size: int) -> InferenceRunner | None:
    """The runner :class:`faceparse.inference.Predictor` uses for ``precision`` (``None``: fp32 as is).

    ``model`` is a torch model, or an :class:`faceparse.export.OnnxModel` for
    ``backend="onnxruntime"``, which runs fp32 only (its graph is already exported).
    """
    if precision not in PRECISIONS:
        raise FaceParseError(f"precision='{precision}'; expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if not isinstance(model, torch.nn.Module):
        raise FaceParseError(
            f"precision='{precision}' needs the PyTorch model folder, not an exported ONNX file "
            "(int8 quantises the model's own export; bf16 runs on torch)"
        )
    return optimize_for_inference(model, precision, backend=backend, input_size=input_size)
