"""Zoo-wide speed benchmark: parameters, FLOPs, latency, throughput, memory, hardware efficiency.

Every registered model (or those matching a shell pattern) is built at its default input size
(registry metadata ``input_size``, overridable) with random weights and measured in one run:

* parameters (computed, never stored);
* GFLOPs of one forward pass at batch 1, counted with the formulas of
  :class:`torch.utils.flop_counter.FlopCounterMode` (see :class:`FlopCount`)
  (which counts a multiply-add as two FLOPs and only covers matmul/convolution/attention kernels);
* CPU latency at batch 1 and throughput at batch 8: median of ``repeats`` timed runs after
  ``warmup`` untimed runs, under :func:`torch.inference_mode`;
* peak memory at batch 1 and batch 8: parameter bytes plus the peak of live activation bytes
  during the forward pass, tracked exactly with a ``TorchDispatchMode`` (every tensor an operator
  allocates is counted until its storage is freed), so the figure does not depend on the
  allocator, other models in the process or other jobs on the machine;
* achieved FLOP/s at batch 8 as a fraction of the machine's fp32 matmul peak, which is measured in
  the same run with a large ``torch.mm``;
* optionally (``--cuda``) GPU latency/throughput with bf16 or fp16 autocast and channels_last.

``--variants`` times inference variants of the same model in the same process (eager
``no_grad`` baseline, ``inference_mode``, ``channels_last``, ``torch.compile``) and reports the
ratio of each to the baseline.

Results are written as Markdown and CSV under ``benchmarks/results/``; ``--docs FILE`` also
replaces the model-zoo table between ``<!-- zoo-table:start -->`` and ``<!-- zoo-table:end -->``.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import datetime as _dt
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from faceparse.errors import FaceParseError
from faceparse.registry import COMMANDS, MODELS

DOCS_START = "<!-- zoo-table:start -->"
DOCS_END = "<!-- zoo-table:end -->"

VARIANTS = ("eager", "inference_mode", "channels_last", "sdpa_math", "compile")


# --------------------------------------------------------------------------------------------
# measurement primitives


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

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
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

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
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
# one model


def model_input_size(name: str, size: int | None = None) -> int:
    """The input size to benchmark ``name`` at: ``size`` or the registry's ``input_size``."""
    if size:
        return int(size)
    meta = MODELS.metadata(name)
    return int(meta.get("input_size") or 512)


def build_for_bench(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build a registered model with random weights, in eval mode."""
    import faceparse

    return faceparse.build_model(name, **kwargs).eval()


def meta_count(name: str, size: int, model_kwargs: dict[str, Any] | None = None) -> tuple[int | None, int | None]:
    """Parameters and batch-1 FLOPs of ``name`` built on the ``meta`` device (no memory, no compute).

    Either is ``None`` when the model cannot be built or run on the meta device (constructors or
    forwards that read tensor values).
    """
    try:
        with torch.device("meta"):
            model = build_for_bench(name, **(model_kwargs or {}))
    except Exception:  # noqa: BLE001
        return None, None
    params = count_parameters(model)
    try:
        counter = FlopCount()
        with torch.inference_mode(), counter:
            model(torch.empty(1, 3, size, size, device="meta"))
        return params, counter.total
    except Exception:  # noqa: BLE001
        return params, None


def bench_model(
    name: str,
    size: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    batch: int = 8,
    budget_s: float | None = 60.0,
    cuda: bool = False,
    cuda_dtype: str = "bf16",
    model_kwargs: dict[str, Any] | None = None,
    max_gflops: float | None = None,
    skip_timing: str | None = None,
) -> dict[str, Any]:
    """Measure one registered model; returns a row of the results table (see module docs).

    The first batch-1 call counts FLOPs and tracks memory and serves as warm-up (``warmup - 1``
    more untimed calls follow); the first batch-``batch`` call tracks memory and serves as its
    warm-up. Batch ``batch`` is skipped when ``batch x`` the batch-1 median exceeds ``budget_s``.
    Timing is skipped (parameters and FLOPs still counted, on the meta device) when
    ``skip_timing`` gives a reason or the model needs more than ``max_gflops`` per image.
    Failures are reported in the row's ``error`` field instead of raised.
    """
    row: dict[str, Any] = {"model": name}
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
                row["peak_mem_b8_mib"] = (wbytes + mem.peak) / 2**20
                tb = time_call(lambda: model(xb), repeats, 0, budget_s)
                row["throughput_b8_ips"] = batch / statistics.median(tb)
                row["runs_b8"] = len(tb)
                row["achieved_gflops_s"] = flops * batch / statistics.median(tb) / 1e9
        if cuda and torch.cuda.is_available():
            row.update(_bench_cuda(model, s, batch, repeats, warmup, cuda_dtype))
    except Exception as exc:  # noqa: BLE001 - a failing model is reported, not fatal
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    if notes:
        row["note"] = "; ".join(notes)
    return row


def _bench_cuda(
    model: torch.nn.Module, s: int, batch: int, repeats: int, warmup: int, dtype_name: str
) -> dict[str, Any]:
    dev = torch.device("cuda")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    m = model.to(dev).to(memory_format=torch.channels_last)
    x1 = torch.randn(1, 3, s, s, device=dev).to(memory_format=torch.channels_last)
    xb = torch.randn(batch, 3, s, s, device=dev).to(memory_format=torch.channels_last)
    torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
        t1 = time_call(lambda: m(x1), repeats * 4, max(warmup, 3), device=dev)
        tb = time_call(lambda: m(xb), repeats * 4, max(warmup, 3), device=dev)
    out = {
        "cuda_dtype": dtype_name,
        "cuda_latency_b1_ms": statistics.median(t1) * 1e3,
        "cuda_throughput_b8_ips": batch / statistics.median(tb),
        "cuda_peak_mem_mib": torch.cuda.max_memory_allocated(dev) / 2**20,
    }
    model.to("cpu").to(memory_format=torch.contiguous_format)
    return out


def bench_variants(
    name: str,
    size: int | None = None,
    variants: Sequence[str] = VARIANTS,
    repeats: int = 5,
    warmup: int = 1,
    batch: int = 1,
    budget_s: float | None = 60.0,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Time inference variants of one model in one process; speed-up = ``eager / variant``.

    Variants: ``eager`` (``torch.no_grad``, NCHW: the baseline), ``inference_mode``,
    ``channels_last`` (inference mode + channels_last weights and input), ``sdpa_math``
    (inference mode with ``scaled_dot_product_attention`` restricted to its unfused math kernel:
    shows what the fused kernels bring to models that use SDPA), ``compile``
    (inference mode + ``torch.compile``; the first call's compile time is reported separately).
    Timing runs in interleaved rounds (each variant once per round, ``repeats`` rounds) so load
    changes on a shared machine affect all variants alike. The max abs difference of each
    variant's logits from the first variant's is recorded.
    """
    row: dict[str, Any] = {"model": name}
    try:
        s = model_input_size(name, size)
        row["input_size"] = s
        row["batch"] = batch
        model = build_for_bench(name, **(model_kwargs or {}))
        x = torch.randn(batch, 3, s, s)
        runners: dict[str, Callable[[], torch.Tensor]] = {}
        ref = None
        for v in variants:
            if v not in VARIANTS:
                raise FaceParseError(f"unknown variant '{v}'; expected one of {', '.join(VARIANTS)}")
            try:
                fn = _variant_runner(v, model, x)
                t0 = time.perf_counter()
                out = fn()  # first call: compiles for "compile"
                if v == "compile":
                    row["compile_s"] = time.perf_counter() - t0
                if ref is None:
                    ref = out.float().clone()
                else:
                    row[f"{v}_maxdiff"] = float((out.float() - ref).abs().max())
                runners[v] = fn
            except Exception as exc:  # noqa: BLE001
                row[f"{v}_ms"] = None
                row[f"{v}_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        for fn in runners.values():
            for _ in range(max(warmup, 0)):
                fn()
        # interleaved rounds: every variant once per round, so drifting machine load hits all alike
        times: dict[str, list[float]] = {v: [] for v in runners}
        spent = 0.0
        for _ in range(max(repeats, 1)):
            for v, fn in runners.items():
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                times[v].append(dt)
                spent += dt
            if budget_s is not None and spent >= budget_s * max(len(runners), 1):
                break
        for v, ts in times.items():
            row[f"{v}_ms"] = statistics.median(ts) * 1e3
        row["rounds"] = min((len(ts) for ts in times.values()), default=0)
        base = row.get("eager_ms") or row.get(f"{variants[0]}_ms")
        for v in variants:
            if row.get(f"{v}_ms") and base:
                row[f"{v}_speedup"] = base / row[f"{v}_ms"]
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
    return row


def _variant_runner(v: str, model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A no-argument callable running one forward pass of ``model`` as variant ``v``."""
    if v == "eager":
        return lambda: _run_in(torch.no_grad, model, x)
    if v == "inference_mode":
        return lambda: _run_in(torch.inference_mode, model, x)
    if v == "sdpa_math":
        return lambda: _run_in(_math_sdpa, model, x)
    if v == "channels_last":
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        xcl = x.contiguous(memory_format=torch.channels_last)
        return lambda: _run_in(torch.inference_mode, cl, xcl)
    compiled = torch.compile(model)
    return lambda: _run_in(torch.inference_mode, compiled, x)


def _run_in(ctx: Callable[[], Any], model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with ctx():
        return model(x)


@contextlib.contextmanager
def _math_sdpa() -> Iterator[None]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with torch.inference_mode(), sdpa_kernel([SDPBackend.MATH]):
        yield


def run_benchmark(
    models: str | Sequence[str] = "*",
    size: int | None = None,
    repeats: int = 5,
    warmup: int = 1,
    batch: int = 8,
    budget_s: float | None = 60.0,
    cuda: bool = False,
    cuda_dtype: str = "bf16",
    progress: bool = True,
    max_gflops: float | None = None,
    skip: str = "",
) -> list[dict[str, Any]]:
    """Benchmark every registered model matching ``models`` (shell patterns, comma separated).

    Models matching ``skip`` (comma-separated patterns) get parameters and FLOPs only.
    """
    names = resolve_models(models)
    skipped = set(resolve_models(skip)) if skip else set()
    rows = []
    it: Any = names
    if progress:
        from tqdm import tqdm

        it = tqdm(names, desc="bench", unit="model")
    for name in it:
        peak = matmul_peak_flops(repeats=5)  # the machine's load right before this model
        rows.append(
            bench_model(
                name,
                size=size,
                repeats=repeats,
                warmup=warmup,
                batch=batch,
                budget_s=budget_s,
                cuda=cuda,
                cuda_dtype=cuda_dtype,
                max_gflops=max_gflops,
                skip_timing="timing skipped (--skip)" if name in skipped else None,
            )
        )
        rows[-1]["matmul_peak_gflops_s"] = peak / 1e9
        gc.collect()
    return rows


def resolve_models(models: str | Sequence[str]) -> list[str]:
    """Registered names matching comma-separated shell patterns (or a list of patterns)."""
    pats = models.split(",") if isinstance(models, str) else list(models)
    names: list[str] = []
    for p in pats:
        p = p.strip()
        if not p:
            continue
        found = MODELS.list(p)
        if not found:
            raise FaceParseError(
                f"--models pattern '{p}' matches no registered model; "
                f"registered: {', '.join(MODELS.list()) or '(none)'}"
            )
        names += [n for n in found if n not in names]
    return names


# --------------------------------------------------------------------------------------------
# reporting

COLUMNS = [
    ("model", "model", "{}"),
    ("input_size", "input", "{}"),
    ("params_m", "params (M)", "{:.2f}"),
    ("gflops", "GFLOPs (b1)", "{:.2f}"),
    ("latency_b1_ms", "CPU latency b1 (ms)", "{:.1f}"),
    ("throughput_b8_ips", "CPU throughput b8 (img/s)", "{:.2f}"),
    ("peak_mem_b1_mib", "peak mem b1 (MiB)", "{:.0f}"),
    ("peak_mem_b8_mib", "peak mem b8 (MiB)", "{:.0f}"),
    ("achieved_gflops_s", "achieved GFLOP/s (b8)", "{:.1f}"),
    ("peak_fraction", "% of fp32 matmul peak", "{:.1%}"),
    ("note", "note", "{}"),
]
CUDA_COLUMNS = [
    ("cuda_latency_b1_ms", "GPU latency b1 (ms)", "{:.2f}"),
    ("cuda_throughput_b8_ips", "GPU throughput b8 (img/s)", "{:.1f}"),
    ("cuda_peak_mem_mib", "GPU peak mem (MiB)", "{:.0f}"),
]


def _fmt(v: Any, f: str) -> str:
    if v is None or v == "":
        return "-"
    try:
        return f.format(v)
    except (ValueError, TypeError):
        return str(v)


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table of ``rows``; failed models get their error in the last column."""
    cols = list(columns)
    has_err = any(r.get("error") for r in rows)
    head = [c[1] for c in cols] + (["error"] if has_err else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [_fmt(r.get(k), f) for k, _, f in cols]
        if has_err:
            cells.append(str(r.get("error", "")).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_description() -> str:
    """CPU model, core count and torch version, for the results header."""
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
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def write_results(
    rows: list[dict[str, Any]],
    out_dir: str | Path,
    stem: str,
    header: str,
    columns: list[tuple[str, str, str]],
) -> tuple[Path, Path]:
    """Write ``<stem>.md`` (header + table) and ``<stem>.csv`` (all fields) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{stem}.md"
    md.write_text(header.rstrip() + "\n\n" + markdown_table(rows, columns) + "\n")
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    cs = out / f"{stem}.csv"
    with cs.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return md, cs


def update_docs_table(path: str | Path, table: str) -> None:
    """Replace the text between the zoo-table markers of a Markdown file with ``table``."""
    p = Path(path)
    text = p.read_text()
    if DOCS_START not in text or DOCS_END not in text:
        raise FaceParseError(f"{p} has no '{DOCS_START}' ... '{DOCS_END}' markers to place the zoo table between")
    a, rest = text.split(DOCS_START, 1)
    _, b = rest.split(DOCS_END, 1)
    p.write_text(a + DOCS_START + "\n" + table.rstrip() + "\n" + DOCS_END + b)


# --------------------------------------------------------------------------------------------
# command


@COMMANDS.register("bench")
def bench(
    models: str = "*",
    size: int = 0,
    repeats: int = 5,
    warmup: int = 1,
    batch: int = 8,
    budget: float = 60.0,
    threads: int = 0,
    cuda: bool = False,
    cuda_dtype: str = "bf16",
    max_gflops: float = 0.0,
    skip: str = "",
    variants: str = "",
    out_dir: str = "benchmarks/results",
    tag: str = "",
    docs: str = "",
    note: str = "",
) -> None:
    """Speed benchmark over registered models (``--models 'segface_*,unet*'``).

    Models run one after another in this process with ``--threads`` intra-op threads (default:
    torch's). ``--variants eager,inference_mode,channels_last,sdpa_math,compile`` times inference variants instead
    and reports speed-ups over the eager baseline. ``--docs docs/models.md`` refreshes the zoo
    table in the docs. Results: ``OUT_DIR/speed[_TAG]_<date>.md`` and ``.csv``.
    """
    if threads:
        torch.set_num_threads(threads)
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "faceparse bench " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else ""
    cmd = cmd or "python " + shlex.join(sys.argv)
    load0 = load_average()
    t0 = time.perf_counter()
    names = resolve_models(models)
    if variants:
        vs = [v.strip() for v in variants.split(",") if v.strip()]
        rows = []
        for name in names:
            spec = dict(
                name=name, size=size or None, variants=vs, repeats=repeats, warmup=warmup, batch=1, budget_s=budget
            )
            rows.append(bench_variants(**spec))
            print(json.dumps(rows[-1]), flush=True)
            gc.collect()
        cols = [("model", "model", "{}"), ("input_size", "input", "{}")]
        for v in vs:
            cols.append((f"{v}_ms", f"{v} b1 (ms)", "{:.1f}"))
            if v != "eager":
                cols.append((f"{v}_speedup", f"{v} speed-up", "{:.2f}x"))
        if "compile" in vs:
            cols.append(("compile_s", "compile time (s)", "{:.0f}"))
        stem = f"speed_variants{'_' + tag if tag else ''}_{date}"
        header = _header("Inference variants (batch 1, CPU)", stamp, cmd, load0, repeats, warmup)
        md, cs = write_results(rows, out_dir, stem, header, cols)
        print(f"wrote {md} and {cs}")
        return
    peak = matmul_peak_flops()
    rows = run_benchmark(
        names,
        size=size or None,
        repeats=repeats,
        warmup=warmup,
        batch=batch,
        budget_s=budget,
        cuda=cuda,
        cuda_dtype=cuda_dtype,
        max_gflops=max_gflops or None,
        skip=skip,
    )
    peaks = [peak] + [r["matmul_peak_gflops_s"] * 1e9 for r in rows if r.get("matmul_peak_gflops_s")]
    peak = max(peaks)  # the best the machine reached during the run
    for r in rows:
        if r.get("achieved_gflops_s") is not None:
            r["peak_fraction"] = r["achieved_gflops_s"] * 1e9 / peak
    cols = COLUMNS + (CUDA_COLUMNS if any("cuda_latency_b1_ms" in r for r in rows) else [])
    elapsed = time.perf_counter() - t0
    header = _header("Model zoo speed", stamp, cmd, load0, repeats, warmup)
    header += (
        f"- fp32 matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s, the best of 1024x1024 "
        f"torch.mm timings taken at the start and right before every model (range "
        f"{min(peaks) / 1e9:.1f}-{peak / 1e9:.1f} GFLOP/s: the spread is the load of other jobs)\n"
        f"- load average at end: {load_average()}; total time {elapsed:.0f} s\n"
        f"- memory: parameter + buffer bytes plus the peak of live activation tensors during "
        f"the forward pass (exact count of operator outputs, see faceparse.bench.PeakMemory)\n"
        f"- achieved FLOP/s: batch-1 FLOPs x batch / median batch time (batch 1 when batch {batch} "
        f"was skipped by the budget)\n"
        f"- budget: timing of one batch size stops after {budget:.0f} s of timed runs "
        f"(see runs_b1/runs_b8 in the CSV)\n"
    )
    if note:
        header += f"- note: {note}\n"
    stem = f"speed{'_' + tag if tag else ''}_{date}"
    md, cs = write_results(rows, out_dir, stem, header, cols)
    if docs:
        update_docs_table(docs, _docs_table(rows, stamp))
    print(markdown_table(rows, cols))
    print(f"wrote {md} and {cs}")


def _header(title: str, stamp: str, cmd: str, load0: str, repeats: int, warmup: int) -> str:
    return (
        f"# {title}\n\n"
        f"- date: {stamp}\n"
        f"- machine: {machine_description()}\n"
        f"- command: `{cmd}`\n"
        f"- timing: median of up to {repeats} runs after {warmup} warm-up run(s), "
        f"torch.inference_mode, random weights, fp32\n"
        f"- load average at start (1/5/15 min): {load0}; the CPU is shared with other jobs, "
        f"so absolute times are noisy, ratios within this run are comparable\n"
    )


def _docs_table(rows: list[dict[str, Any]], stamp: str) -> str:
    meta_cols = [("paper", "paper", "{}"), ("label_set", "labels", "{}")]
    for r in rows:
        try:
            md = MODELS.metadata(r["model"])
        except KeyError:
            continue
        r.setdefault("paper", md.get("paper", ""))
        r.setdefault("label_set", md.get("label_set", ""))
    cols = [COLUMNS[0]] + meta_cols + COLUMNS[1:6] + COLUMNS[9:11]
    return f"Measured {stamp} (`faceparse bench`):\n\n" + markdown_table(rows, cols)
