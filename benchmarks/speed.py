"""Zoo-wide speed benchmark: parameters, FLOPs, latency, throughput, memory, hardware efficiency.

Every registered model (or those matching shell patterns) is built at its default input size
(registry metadata ``input_size``, overridable) with random weights and measured in one run with
:mod:`faceparse.profiling` (the same measurements as ``faceparse bench``, which prints a table):

* parameters (computed, never stored); GFLOPs of one forward pass at batch 1
  (:class:`faceparse.profiling.FlopCount`, PyTorch's own formulas: a multiply-add is two FLOPs);
* CPU latency at batch 1 and throughput at batch ``--batch``: median of ``--repeats`` timed runs
  after ``--warmup`` untimed runs, under :func:`torch.inference_mode`;
* peak memory at batch 1 and ``--batch``: parameter bytes plus the peak of live activation bytes
  (:class:`faceparse.profiling.PeakMemory`, exact, independent of the allocator);
* achieved FLOP/s as a fraction of the machine's fp32 matmul peak, measured in the same run;
* optionally (``--cuda``) GPU latency/throughput with bf16 or fp16 autocast and channels_last.

``--variants`` times inference variants of the same model in the same process (eager ``no_grad``
baseline, ``inference_mode``, ``channels_last``, ``sdpa_math``, ``torch.compile``) and reports the
ratio of each to the baseline.

Results: ``benchmarks/results/speed[_TAG]_<date>.md`` and ``.csv`` (``--out-dir`` elsewhere);
``--docs docs/models.md`` also replaces the model-zoo table between ``<!-- zoo-table:start -->`` and
``<!-- zoo-table:end -->``.

Examples::

    python benchmarks/speed.py --models '*' --repeats 1 --budget 120 --skip 's3pot_vit_*' --docs docs/models.md
    python benchmarks/speed.py --models 'unet,segface_*' --size 256
    python benchmarks/speed.py --models segface_mobilenet_v3_large --variants eager,inference_mode,channels_last,sdpa_math,compile
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import gc
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from faceparse.cli.bench import columns, markdown_table, write_tables
from faceparse.errors import FaceParseError
from faceparse.profiling import (
    build_for_bench,
    load_average,
    machine_description,
    model_input_size,
    resolve_models,
    run_benchmark,
    time_call,
)
from faceparse.registry import MODELS

RESULTS = Path(__file__).resolve().parent / "results"
DOCS_START = "<!-- zoo-table:start -->"
DOCS_END = "<!-- zoo-table:end -->"
VARIANTS = ("eager", "inference_mode", "channels_last", "sdpa_math", "compile")
CUDA_COLUMNS = [
    ("cuda_latency_b1_ms", "GPU latency b1 (ms)", "{:.2f}"),
    ("cuda_throughput_bn_ips", "GPU throughput bN (img/s)", "{:.1f}"),
    ("cuda_peak_mem_mib", "GPU peak mem (MiB)", "{:.0f}"),
]


def bench_cuda(
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
        "cuda_throughput_bn_ips": batch / statistics.median(tb),
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
            except Exception as exc:
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
    except Exception as exc:
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


def update_docs_table(path: str | Path, table: str) -> None:
    """Replace the text between the zoo-table markers of a Markdown file with ``table``."""
    p = Path(path)
    text = p.read_text()
    if DOCS_START not in text or DOCS_END not in text:
        raise FaceParseError(f"{p} has no '{DOCS_START}' ... '{DOCS_END}' markers to place the zoo table between")
    a, rest = text.split(DOCS_START, 1)
    _, b = rest.split(DOCS_END, 1)
    p.write_text(a + DOCS_START + "\n" + table.rstrip() + "\n" + DOCS_END + b)


def docs_table(rows: list[dict[str, Any]], stamp: str, batch: int) -> str:
    """The model-zoo table of docs/models.md: speed columns plus each model's paper and label set."""
    for r in rows:
        try:
            md = MODELS.metadata(r["model"])
        except KeyError:
            continue
        r.setdefault("paper", md.get("paper", ""))
        r.setdefault("label_set", md.get("label_set", ""))
    cols = columns(batch)
    meta_cols = [("paper", "paper", "{}"), ("label_set", "labels", "{}")]
    return f"Measured {stamp} (`python benchmarks/speed.py`):\n\n" + markdown_table(
        rows, [cols[0], *meta_cols, *cols[1:6], *cols[9:11]]
    )


def header(title: str, stamp: str, cmd: str, load0: str, repeats: int, warmup: int) -> str:
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="*", help="comma-separated shell patterns")
    p.add_argument("--size", type=int, default=0, help="input size (0: each model's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--budget", type=float, default=60.0, help="seconds of timed runs per batch size")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cuda", action="store_true", help="also time on the GPU (autocast, channels_last)")
    p.add_argument("--cuda-dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--max-gflops", type=float, default=0.0)
    p.add_argument("--skip", default="", help="patterns of models to count but not time")
    p.add_argument("--variants", default="", help=f"comma-separated, of {','.join(VARIANTS)}")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--tag", default="")
    p.add_argument("--docs", default="", help="Markdown file whose zoo table to replace")
    p.add_argument("--note", default="")
    args = p.parse_args(argv)
    for name in ("size", "warmup", "threads"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0")
    for name in ("repeats", "batch", "budget"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    now = _dt.datetime.now(_dt.timezone.utc)
    date, stamp = now.strftime("%Y-%m-%d"), now.strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python benchmarks/speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    load0 = load_average()
    t0 = time.perf_counter()
    names = resolve_models(args.models)
    if args.variants:
        vs = [v.strip() for v in args.variants.split(",") if v.strip()]
        rows = []
        for name in names:
            rows.append(
                bench_variants(name, args.size or None, vs, args.repeats, args.warmup, batch=1, budget_s=args.budget)
            )
            print(json.dumps(rows[-1]), flush=True)
            gc.collect()
        cols = [("model", "model", "{}"), ("input_size", "input", "{}")]
        for v in vs:
            cols.append((f"{v}_ms", f"{v} b1 (ms)", "{:.1f}"))
            if v != "eager":
                cols.append((f"{v}_speedup", f"{v} speed-up", "{:.2f}x"))
        if "compile" in vs:
            cols.append(("compile_s", "compile time (s)", "{:.0f}"))
        stem = f"speed_variants{'_' + args.tag if args.tag else ''}_{date}"
        head = header("Inference variants (batch 1, CPU)", stamp, cmd, load0, args.repeats, args.warmup)
        md, cs = write_tables(rows, args.out_dir, stem, head, cols)
        print(f"wrote {md} and {cs}")
        return 0
    rows, peak = run_benchmark(
        names,
        size=args.size or None,
        repeats=args.repeats,
        warmup=args.warmup,
        batch=args.batch,
        budget_s=args.budget,
        max_gflops=args.max_gflops or None,
        skip=resolve_models(args.skip) if args.skip else (),
        on_row=lambda r: print(json.dumps(r), flush=True),
    )
    if args.cuda and torch.cuda.is_available():
        for r in rows:
            if "error" not in r and "latency_b1_ms" in r:
                model = build_for_bench(r["model"])
                r.update(bench_cuda(model, r["input_size"], args.batch, args.repeats, args.warmup, args.cuda_dtype))
    cols = columns(args.batch)
    if any("cuda_latency_b1_ms" in r for r in rows):
        cols += [(k, t.replace("bN", f"b{args.batch}"), f) for k, t, f in CUDA_COLUMNS]
    peaks = [r["matmul_peak_gflops_s"] for r in rows if r.get("matmul_peak_gflops_s")]
    head = header("Model zoo speed", stamp, cmd, load0, args.repeats, args.warmup)
    head += (
        f"- fp32 matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s, the best of 1024x1024 "
        f"torch.mm timings taken at the start and right before every model (range "
        f"{min(peaks, default=peak / 1e9):.1f}-{peak / 1e9:.1f} GFLOP/s: the spread is the load of other jobs)\n"
        f"- load average at end: {load_average()}; total time {time.perf_counter() - t0:.0f} s\n"
        f"- memory: parameter + buffer bytes plus the peak of live activation tensors during "
        f"the forward pass (exact count of operator outputs, see faceparse.profiling.PeakMemory)\n"
        f"- achieved FLOP/s: batch-1 FLOPs x batch / median batch time (batch 1 when batch {args.batch} "
        f"was skipped by the budget)\n"
        f"- budget: timing of one batch size stops after {args.budget:.0f} s of timed runs "
        f"(see runs_b1/runs_bn in the CSV)\n"
    )
    if args.note:
        head += f"- note: {args.note}\n"
    stem = f"speed{'_' + args.tag if args.tag else ''}_{date}"
    md, cs = write_tables(rows, args.out_dir, stem, head, cols)
    if args.docs:
        update_docs_table(args.docs, docs_table(rows, stamp, args.batch))
    print(markdown_table(rows, cols))
    print(f"wrote {md} and {cs}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FaceParseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
