"""Speed per precision against the machine's measured fp32 and bf16 matmul peaks, and operator profiles.

Used by ``faceparse bench --precision ... --profile N`` and ``benchmarks/speed.py --precision``:

* :func:`matmul_peaks`: fp32 and bf16 ``torch.mm`` FLOP/s at ``2048^3``, measured interleaved
  (one fp32 and one bf16 product per round, best of the rounds), so both see the same load;
* :func:`bench_precisions`: one model's batch time in each precision
  (:func:`faceparse.precision.optimize_for_inference`), interleaved rounds, with the achieved
  FLOP/s (fp32 FLOPs of the forward pass, :class:`faceparse.profiling.FlopCount`, over the
  time) as a fraction of both peaks;
* :func:`top_operators`: the operators that take the most self CPU time in one forward pass
  (``torch.profiler``), to see where a model below its share of the peak spends its time.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from faceparse.profiling import FlopCount, build_for_bench, model_input_size


def matmul_peaks(n: int = 2048, repeats: int = 3, dtypes: Sequence[str] = ("fp32", "bf16")) -> dict[str, float]:
    """Best FLOP/s of an ``n x n x n`` ``torch.mm`` in each of ``dtypes`` (fp32, bf16), timed interleaved.

    Without native bf16 (:func:`faceparse.precision.cpu_supports_bf16`) the bf16 product is emulated
    at well under 1 GFLOP/s, so it is timed at ``min(n, 512)`` (seconds instead of minutes).
    """
    from faceparse.precision import cpu_supports_bf16

    torch_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    sizes = {d: n if d == "fp32" or cpu_supports_bf16() else min(n, 512) for d in dtypes}
    mats = {d: (torch.randn(sizes[d], sizes[d]).to(torch_dtypes[d]),) * 2 for d in dtypes}
    for a, b in mats.values():  # warm-up: thread pool start, oneDNN kernel selection
        torch.mm(a, b)
    best = {d: float("inf") for d in mats}
    for _ in range(max(repeats, 1)):
        for d, (a, b) in mats.items():
            t0 = time.perf_counter()
            torch.mm(a, b)
            best[d] = min(best[d], time.perf_counter() - t0)
    return {d: 2.0 * sizes[d] ** 3 / best[d] for d in mats}


def _runner(
    model: torch.nn.Module, precision: str, x: torch.Tensor, backend: str = "torch"
) -> Callable[[torch.Tensor], torch.Tensor]:
    from faceparse.precision import optimize_for_inference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the emulated-bf16 note is reported in the row instead
        if precision == "bf16":
            backend = "torch"  # bf16 runs on torch only
        return optimize_for_inference(
            model, precision, backend=backend, calibration=x[:2], force=True, input_size=x.shape[-1]
        )


def bench_precisions(
    name: str,
    precisions: Sequence[str] = ("fp32", "bf16", "int8"),
    size: int | None = None,
    batch: int = 8,
    repeats: int = 3,
    budget_s: float = 60.0,
    peaks: dict[str, float] | None = None,
    model: torch.nn.Module | None = None,
    profile: int = 0,
    backend: str = "torch",
) -> dict[str, Any]:
    """Batch time of registered model ``name`` in each precision, timed in interleaved rounds.

    Row keys: ``model``, ``input_size``, ``batch``, ``gflops`` (fp32 FLOPs per image), and per
    precision ``p``: ``{p}_ms`` (median batch time), ``{p}_ips`` (images/s), ``{p}_gflops_s``,
    ``{p}_speedup`` (fp32 time / ``p`` time), with ``peaks`` also ``{p}_of_fp32_peak`` and
    ``{p}_of_bf16_peak``; ``{p}_error`` when a precision failed. Rounds stop once the timed runs
    took ``budget_s`` seconds in all (at least one round). ``profile=N`` profiles one more pass of
    the (already warm) fp32 runner: ``top_ops`` (:func:`top_operators`, N entries) and
    ``dense_share`` (:func:`dense_share`, over all operators). ``backend="onnxruntime"`` runs fp32
    on the model's ONNX export (bf16 stays on torch; int8 always runs on onnxruntime).
    """
    row: dict[str, Any] = {"model": name, "batch": batch}
    s = model_input_size(name, size)
    row["input_size"] = s
    model = (model if model is not None else build_for_bench(name)).eval()
    x = torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), FlopCount() as counter:
        model(x[:1])
    row["gflops"] = counter.total / 1e9
    runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for p in precisions:
        try:
            fn = _runner(model, p, x, backend)
            fn(x)  # warm-up (and int8 calibration/quantisation, bf16 kernel selection)
            runners[p] = fn
        except Exception as exc:
            row[f"{p}_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
    times: dict[str, list[float]] = {p: [] for p in runners}
    spent = 0.0
    for _ in range(max(repeats, 1)):
        for p, fn in runners.items():
            t0 = time.perf_counter()
            fn(x)
            dt = time.perf_counter() - t0
            times[p].append(dt)
            spent += dt
        if spent >= budget_s:
            break
    base = statistics.median(times["fp32"]) if times.get("fp32") else None
    for p, ts in times.items():
        t = statistics.median(ts)
        row[f"{p}_ms"] = t * 1e3
        row[f"{p}_ips"] = batch / t
        row[f"{p}_gflops_s"] = counter.total * batch / t / 1e9
        if base:
            row[f"{p}_speedup"] = base / t
        if peaks:
            row[f"{p}_of_fp32_peak"] = row[f"{p}_gflops_s"] * 1e9 / peaks["fp32"]
            row[f"{p}_of_bf16_peak"] = row[f"{p}_gflops_s"] * 1e9 / peaks["bf16"]
    row["rounds"] = min((len(ts) for ts in times.values()), default=0)
    if profile and "fp32" in runners and backend == "torch":
        ops = top_operators(runners["fp32"], x, k=None, warmup=False)
        row["top_ops"] = ops[:profile]
        row["dense_share"] = dense_share(ops)
    return row


# aten operators that run dense GEMM-class kernels (oneDNN / BLAS), the only ones that can approach
# the matmul peak; everything else (depthwise and grouped convolutions fall under the
# ``_convolution``/``thnn`` slow paths on CPU, norms, activations, copies, interpolation) is
# memory-bound and runs far below it.
DENSE_OPS = (
    "aten::mkldnn_convolution",
    "aten::addmm",
    "aten::mm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::matmul",
    "aten::linear",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::mkldnn_linear",
    "aten::convolution_overrideable",
)


def dense_share(ops: list[dict[str, Any]]) -> float:
    """Share of the self CPU time (of ``ops``, all operators of a :func:`top_operators` call with
    ``k=None``) spent in dense GEMM-class kernels (:data:`DENSE_OPS`): an upper bound on the
    fraction of the matmul peak a model can reach is about this share."""
    return sum(o["share"] for o in ops if o["op"] in DENSE_OPS)


def precision_columns(precisions: Sequence[str]) -> list[tuple[str, str, str]]:
    """(row key, title, format) columns of a :func:`bench_precisions` table."""
    cols = [("model", "model", "{}"), ("input_size", "input", "{}"), ("gflops", "GFLOPs/img", "{:.2f}")]
    for p in precisions:
        cols += [
            (f"{p}_ips", f"{p} img/s", "{:.2f}"),
            (f"{p}_gflops_s", f"{p} GFLOP/s", "{:.1f}"),
            (f"{p}_of_fp32_peak", f"{p} % fp32 peak", "{:.0%}"),
            (f"{p}_of_bf16_peak", f"{p} % bf16 peak", "{:.0%}"),
        ]
        if p != "fp32":
            cols.append((f"{p}_speedup", f"{p} / fp32 speed", "{:.2f}x"))
    return cols


def top_operators(
    model: torch.nn.Module | Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    k: int | None = 10,
    runs: int = 1,
    warmup: bool = True,
) -> list[dict[str, Any]]:
    """The ``k`` operators (``None``: all) with the most self CPU time over ``runs`` forward passes
    (after one warm-up pass unless ``warmup=False``, for a runner that already ran).

    Each entry: ``op`` (aten name), ``calls``, ``self_ms`` (total self CPU time), ``share``
    (of all operators' self time). Uses ``torch.profiler`` (``key_averages`` by operator name).
    """
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        if warmup:
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(max(runs, 1)):
                model(x)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::") or "::" in e.key]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:k]  # [:None] keeps all
    return [
        {"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total}
        for e in top
    ]


def operators_markdown(name: str, ops: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`top_operators` for model ``name``."""
    lines = [f"### {name}", "", "| operator | calls | self CPU (ms) | share |", "|---|---|---|---|"]
    lines += [f"| `{o['op']}` | {o['calls']} | {o['self_ms']:.1f} | {o['share']:.0%} |" for o in ops]
    return "\n".join(lines) + "\n"
