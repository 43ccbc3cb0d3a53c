"""Measuring models: parameters, FLOPs, peak memory, latency, and the machine's fp32 matmul peak.

The primitives behind ``faceparse bench`` (a table of registered models) and the zoo-wide speed
harness in ``benchmarks/speed.py`` (dated result files, inference variants, GPU timings, the docs
table). Nothing here writes files.

* FLOPs: :class:`FlopCount` with the formulas of :class:`torch.utils.flop_counter.FlopCounterMode`
  (a multiply-add counts as two FLOPs; matmul/convolution/attention kernels only).
* memory: parameter bytes plus the peak of live activation bytes, tracked exactly with a
  ``TorchDispatchMode`` (:class:`PeakMemory`), independent of the allocator and other jobs.
* latency: median of timed calls after untimed warm-up calls (:func:`time_call`), with a budget.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from faceparse.errors import FaceParseError

__all__ = [
    "FlopCount",
    "PeakMemory",
    "bench_model",
    "build_for_bench",
    "count_flops",
    "count_parameters",
    "load_average",
    "machine_description",
    "matmul_peak_flops",
    "meta_count",
    "model_input_size",
    "parameter_bytes",
    "resolve_models",
    "run_benchmark",
    "time_call",
]


def count_parameters(model: torch.nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


class FlopCount(TorchDispatchMode):
    """FLOPs of the operators run while the mode is active, with PyTorch's own formulas.

    Uses ``torch.utils.flop_counter.flop_registry``, the table behind
    :class:`torch.utils.flop_counter.FlopCounterMode`, so the totals are the same; it leaves out
    that class's per-module tracker, which fails under ``torch.inference_mode`` on models that pass
    a parameter as a module input (SegFace's class tokens).
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        formula = flop_registry.get(func._overloadpacket)
        if formula is None:  # composite ops (conv2d, matmul...): count their decomposition
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``model(x)`` (see :class:`FlopCount`).

    A multiply-add counts as two FLOPs; element-wise operations are not counted (the PyTorch
    formulas cover matmul, convolution and attention kernels, which dominate these models).
    """
    counter = FlopCount()
    with torch.inference_mode(), counter:
        model(x)
    return counter.total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(
    fn: Callable[[], Any],
    repeats: int = 5,
    warmup: int = 1,
    budget_s: float | None = None,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    With ``budget_s``, timing stops early once that many seconds were spent on timed calls
    (at least one timed call is always made), so slow models do not stall a zoo-wide run.
    """
    device = torch.device(device)
    for _ in range(max(warmup, 0)):
        fn()
    _sync(device)
    times: list[float] = []
    spent = 0.0
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if budget_s is not None and spent >= budget_s:
            break
    return times


def matmul_peak_flops(
    n: int = 1024, repeats: int = 10, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> float:
    """Measured peak FLOP/s of a square ``n x n`` matmul (best of ``repeats``).

    This is the reference for "achieved FLOP/s as a fraction of peak": the best the BLAS
    library reaches on this machine with the current thread count, not a datasheet figure.
    """
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    times = time_call(lambda: torch.mm(a, b), repeats=repeats, warmup=2, device=device)
    return 2.0 * n**3 / min(times)


class PeakMemory(TorchDispatchMode):
    """Peak bytes of live tensors allocated by operators while the mode is active.

    Every tensor an operator returns whose storage was not seen before is counted until that
    storage is freed (a ``weakref.finalize`` on the storage; PyTorch keeps one Python object per
    live storage). Views and in-place results share storage and are not double counted. Inputs
    and parameters that exist before the mode starts are not counted. Hand-written: PyTorch has
    no CPU allocator statistics (``torch.cuda.max_memory_allocated`` is CUDA only).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            if key == 0 or key in self._seen:
                continue
            n = st.nbytes()
            self._seen.add(key)
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(st, self._free, key, n)
        return out


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


# --------------------------------------------------------------------------------------------
# registered models


def _models():
    from faceparse.registry import MODELS

    return MODELS


def model_input_size(name: str, size: int | None = None) -> int:
    """The input size to measure ``name`` at: ``size`` or the registry's ``input_size``."""
    if size:
        return int(size)
    return int(_models().metadata(name).get("input_size") or 512)


def build_for_bench(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build a registered model with random weights, in eval mode."""
    import faceparse

    return faceparse.build_model(name, **kwargs).eval()


def resolve_models(models: str | Sequence[str]) -> list[str]:
    """Registered names matching comma-separated shell patterns (or a list of patterns)."""
    registry = _models()
    pats = models.split(",") if isinstance(models, str) else list(models)
    names: list[str] = []
    for p in pats:
        p = p.strip()
        if not p:
            continue
        found = registry.list(p)
        if not found:
            raise FaceParseError(
                f"--models pattern '{p}' matches no registered model; "
                f"registered: {', '.join(registry.list()) or '(none)'}"
            )
        names += [n for n in found if n not in names]
    return names


def meta_count(name: str, size: int, model_kwargs: dict[str, Any] | None = None) -> tuple[int | None, int | None]:
    """Parameters and batch-1 FLOPs of ``name`` built on the ``meta`` device (no memory, no compute).

    Either is ``None`` when the model cannot be built or run on the meta device (constructors or
    forwards that read tensor values).
    """
    try:
        with torch.device("meta"):
            model = build_for_bench(name, **(model_kwargs or {}))
    except Exception:
        return None, None
    params = count_parameters(model)
    try:
        counter = FlopCount()
        with torch.inference_mode(), counter:
            model(torch.empty(1, 3, size, size, device="meta"))
        return params, counter.total
    except Exception:
        return params, None


def bench_model(
    name: str,
    size: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    batch: int = 8,
    budget_s: float | None = 60.0,
    model_kwargs: dict[str, Any] | None = None,
    max_gflops: float | None = None,
    skip_timing: str | None = None,
) -> dict[str, Any]:
    """Measure one registered model on the CPU; returns a row (a dict of figures).

    Keys: ``model``, ``input_size``, ``batch``, ``params_m``, ``gflops`` (batch 1),
    ``peak_mem_b1_mib``, ``latency_b1_ms``, ``runs_b1``, and at batch ``batch``: ``peak_mem_bn_mib``,
    ``throughput_bn_ips``, ``runs_bn``; ``achieved_gflops_s`` (at batch ``batch`` when measured,
    else batch 1); ``note`` and ``error`` when something was skipped or failed.

    The first batch-1 call counts FLOPs and tracks memory and serves as warm-up (``warmup - 1``
    more untimed calls follow); the first batch-``batch`` call tracks memory and serves as its
    warm-up. Batch ``batch`` is skipped when ``batch x`` the batch-1 median exceeds ``budget_s``.
    Timing is skipped (parameters and FLOPs still counted, on the meta device) when
    ``skip_timing`` gives a reason or the model needs more than ``max_gflops`` per image.
    Failures are reported in the row's ``error`` field instead of raised.
    """
    row: dict[str, Any] = {"model": name, "batch": batch}
    notes: list[str] = []
    try:
        s = model_input_size(name, size)
        row["input_size"] = s
        if skip_timing or max_gflops:
            params, flops = meta_count(name, s, model_kwargs)
            too_big = flops is not None and max_gflops and flops / 1e9 > max_gflops
            if skip_timing or too_big:
                if params is None:
                    params = count_parameters(build_for_bench(name, **(model_kwargs or {})))
                row["params_m"] = params / 1e6
                row["gflops"] = None if flops is None else flops / 1e9
                row["note"] = skip_timing or f"timing skipped: {flops / 1e9:.1f} GFLOPs > --max-gflops {max_gflops:g}"
                return row
        model = build_for_bench(name, **(model_kwargs or {}))
        row["params_m"] = count_parameters(model) / 1e6
        wbytes = parameter_bytes(model)
        x1 = torch.randn(1, 3, s, s)
        with torch.inference_mode():
            counter, mem = FlopCount(), PeakMemory()
            with counter, mem:
                model(x1)
            flops = counter.total
            row["gflops"] = flops / 1e9
            row["peak_mem_b1_mib"] = (wbytes + mem.peak) / 2**20
            t1 = time_call(lambda: model(x1), repeats, max(warmup - 1, 0), budget_s)
            row["latency_b1_ms"] = statistics.median(t1) * 1e3
            row["runs_b1"] = len(t1)
            row["achieved_gflops_s"] = flops / statistics.median(t1) / 1e9
            estimate = statistics.median(t1) * batch
            if budget_s is not None and estimate > budget_s:
                notes.append(f"batch {batch} skipped (about {estimate:.0f} s a call > budget {budget_s:.0f} s)")
            else:
                xb = torch.randn(batch, 3, s, s)
                mem = PeakMemory()
                with mem:
                    model(xb)
                row["peak_mem_bn_mib"] = (wbytes + mem.peak) / 2**20
                tb = time_call(lambda: model(xb), repeats, 0, budget_s)
                row["throughput_bn_ips"] = batch / statistics.median(tb)
                row["runs_bn"] = len(tb)
                row["achieved_gflops_s"] = flops * batch / statistics.median(tb) / 1e9
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    if notes:
        row["note"] = "; ".join(notes)
    return row


def run_benchmark(
    names: Sequence[str],
    size: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    batch: int = 8,
    budget_s: float | None = 60.0,
    max_gflops: float | None = None,
    skip: Sequence[str] = (),
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """:func:`bench_model` for each name, and the best fp32 matmul peak (FLOP/s) seen during the run.

    The peak is measured at the start and right before every model (the machine's load changes);
    each row gets ``matmul_peak_gflops_s`` (its own measurement) and ``peak_fraction`` (achieved
    FLOP/s over the best peak of the run). Names in ``skip`` get parameters and FLOPs only.
    """
    peaks = [matmul_peak_flops()]
    rows = []
    for name in names:
        peaks.append(matmul_peak_flops(repeats=5))
        row = bench_model(
            name,
            size=size,
            repeats=repeats,
            warmup=warmup,
            batch=batch,
            budget_s=budget_s,
            max_gflops=max_gflops,
            skip_timing="timing skipped (--skip)" if name in skip else None,
        )
        row["matmul_peak_gflops_s"] = peaks[-1] / 1e9
        rows.append(row)
        if on_row:
            on_row(row)
        gc.collect()
    peak = max(peaks)
    for r in rows:
        if r.get("achieved_gflops_s") is not None:
            r["peak_fraction"] = r["achieved_gflops_s"] * 1e9 / peak
    return rows, peak


# --------------------------------------------------------------------------------------------
# the machine


def machine_description() -> str:
    """CPU model, core count, torch version and threads, GPU name."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:  # pragma: no cover
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"
    )


def load_average() -> str:
    """The 1/5/15-minute load averages, or ``n/a``."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"
