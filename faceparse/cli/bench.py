"""``faceparse bench``: a speed table of registered models (parameters, FLOPs, latency, memory).

Prints a Markdown table; ``--out-dir`` also writes it as ``speed[_TAG]_<date>.md`` and ``.csv`` there.
The zoo-wide harness with dated result files, inference variants, GPU timings and the docs table
is ``benchmarks/speed.py``; both measure with :mod:`faceparse.profiling`.
"""

from __future__ import annotations

import csv
import datetime
from pathlib import Path
from typing import Any

from faceparse.cli._args import NonNegativeInt, PositiveFloat, PositiveInt, out_dir


def columns(batch: int) -> list[tuple[str, str, str]]:
    """(row key, title, format) of the table; the batch-``batch`` titles name that batch size."""
    return [
        ("model", "model", "{}"),
        ("input_size", "input", "{}"),
        ("params_m", "params (M)", "{:.2f}"),
        ("gflops", "GFLOPs (b1)", "{:.2f}"),
        ("latency_b1_ms", "CPU latency b1 (ms)", "{:.1f}"),
        ("throughput_bn_ips", f"CPU throughput b{batch} (img/s)", "{:.2f}"),
        ("peak_mem_b1_mib", "peak mem b1 (MiB)", "{:.0f}"),
        ("peak_mem_bn_mib", f"peak mem b{batch} (MiB)", "{:.0f}"),
        ("achieved_gflops_s", f"achieved GFLOP/s (b{batch})", "{:.1f}"),
        ("peak_fraction", "% of fp32 matmul peak", "{:.1%}"),
        ("note", "note", "{}"),
    ]


def _fmt(v: Any, f: str) -> str:
    if v is None or v == "":
        return "-"
    try:
        return f.format(v)
    except (ValueError, TypeError):
        return str(v)


def markdown_table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> str:
    """A Markdown table of ``rows``; failed models get their error in the last column."""
    has_err = any(r.get("error") for r in rows)
    head = [c[1] for c in cols] + (["error"] if has_err else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [_fmt(r.get(k), f) for k, _, f in cols]
        if has_err:
            cells.append(str(r.get("error", "")).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_tables(
    rows: list[dict[str, Any]], directory: str | Path, stem: str, header: str, cols: list[tuple[str, str, str]]
) -> tuple[Path, Path]:
    """Write ``<stem>.md`` (header + table) and ``<stem>.csv`` (every field) into ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{stem}.md"
    md.write_text(header.rstrip() + "\n\n" + markdown_table(rows, cols) + "\n")
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    path = out / f"{stem}.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return md, path


def bench_arguments(parser) -> None:
    parser.add_argument("--models", default="*", help="comma-separated shell patterns, e.g. 'segface_*,unet'")
    parser.add_argument("--size", type=PositiveInt, default=None, help="input size (default: each model's)")
    parser.add_argument("--repeats", type=PositiveInt, default=5, help="timed runs per batch size (median)")
    parser.add_argument("--warmup", type=NonNegativeInt, default=1)
    parser.add_argument("--batch", type=PositiveInt, default=8, help="the throughput batch size")
    parser.add_argument("--budget", type=PositiveFloat, default=60.0, help="seconds of timed runs per batch size")
    parser.add_argument("--threads", type=PositiveInt, default=None, help="torch intra-op threads")
    parser.add_argument("--max-gflops", type=PositiveFloat, default=None, help="skip timing above this (FLOPs only)")
    parser.add_argument("--skip", default="", help="patterns of models to count but not time")
    parser.add_argument("--out-dir", default=None, help="also write speed[_TAG]_<date>.md and .csv here")
    parser.add_argument("--tag", default="", help="file name tag for --out-dir")
    parser.add_argument(
        "--precision",
        default="",
        help="comma-separated of fp32,bf16,int8: also time each model in these precisions (interleaved) against "
        "the fp32 and bf16 matmul peaks measured in the same run (docs/performance.md)",
    )
    parser.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="with --precision: fp32 on torch or on onnxruntime (the ONNX export); int8 always runs on onnxruntime",
    )
    parser.add_argument("--profile", type=NonNegativeInt, default=0, help="print the N top operators per model")


def bench(cfg) -> None:
    """Speed of registered models: parameters, FLOPs, CPU latency and throughput, peak memory.

    Prints a Markdown table; --out-dir also writes it as Markdown and CSV. With --precision
    fp32,bf16,int8 (and/or --profile N) it prints instead each model's speed per precision against
    the fp32 and bf16 matmul peaks measured in the same run (and its top operators); --out-dir
    writes that as peaks[_TAG]_<date>.md. Zoo-wide runs with dated
    result files, inference variants, GPU timings and the docs table: python benchmarks/speed.py.
    """
    target = out_dir(cfg.out_dir)
    import torch

    from faceparse import profiling

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    names = profiling.resolve_models(cfg.models)
    skip = profiling.resolve_models(cfg.skip) if cfg.skip else []
    if cfg.precision or cfg.profile:  # the per-precision table (its fp32 columns replace the default table)
        precision_report(cfg, [n for n in names if n not in skip], target)
        return
    rows, peak = profiling.run_benchmark(
        names,
        size=cfg.size,
        repeats=cfg.repeats,
        warmup=cfg.warmup,
        batch=cfg.batch,
        budget_s=cfg.budget,
        max_gflops=cfg.max_gflops,
        skip=skip,
    )
    cols = columns(cfg.batch)
    print(markdown_table(rows, cols))
    print(f"fp32 matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s")
    if target is not None:
        header = (
            "# Model speed (`faceparse bench`)\n\n"
            f"- machine: {profiling.machine_description()}\n"
            f"- timing: median of up to {cfg.repeats} runs after {cfg.warmup} warm-up run(s), "
            f"torch.inference_mode, random weights, fp32; batch {cfg.batch} for throughput\n"
            f"- fp32 matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s\n"
            f"- load average (1/5/15 min): {profiling.load_average()}\n"
        )
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        md, path = write_tables(rows, target, f"speed{'_' + cfg.tag if cfg.tag else ''}_{date}", header, cols)
        print(f"wrote {md} and {path}")


def precision_report(cfg, names: list[str], target: Path | None) -> str:
    """``--precision`` / ``--profile``: per-precision speed against both matmul peaks, top operators."""

    from faceparse import perf, profiling
    from faceparse.precision import cpu_supports_bf16

    precisions = [p.strip() for p in (cfg.precision or "fp32").split(",") if p.strip()]
    load0 = profiling.load_average()
    peaks = perf.matmul_peaks()
    cols = perf.precision_columns(precisions)
    if cfg.profile:
        cols = [*cols, ("dense_share", "dense GEMM/conv share of time", "{:.0%}")]
    cols.append(("fp32_peak_near", "fp32 peak before it (GFLOP/s)", "{:.1f}"))
    lines = [
        "# Precision speed against the fp32 and bf16 matmul peaks (`faceparse bench --precision`)\n",
        f"- machine: {profiling.machine_description()}; native bf16 (AMX/AVX512-BF16): {cpu_supports_bf16()}",
        f"- torch.mm peaks (2048^3; bf16 at 512^3 where emulated), interleaved in this run: fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s (bf16/fp32 {peaks['bf16'] / peaks['fp32']:.2f}x)",
        f"- backend: {cfg.backend}; batch {cfg.batch}, random weights, median of up to {cfg.repeats} interleaved rounds; achieved FLOP/s = "
        "fp32 FLOPs of the forward pass / time; each model's % of peak is against the best of the run's "
        "peak and one measured right before the model; load average (1/5/15 min) at start: " + load0,
        "",
    ]
    rows = []
    profiles = []
    for name in names:
        # the matmul peak again right before each model: on a shared machine the load changes
        # during a zoo-wide run, and each model's fraction is taken against its neighbouring peak
        near = perf.matmul_peaks(repeats=2, dtypes=("fp32",))
        model_peaks = {**peaks, "fp32": max(peaks["fp32"], near["fp32"])}
        row = perf.bench_precisions(
            name,
            precisions,
            size=cfg.size,
            batch=cfg.batch,
            repeats=cfg.repeats,
            budget_s=cfg.budget,
            peaks=model_peaks,
            profile=cfg.profile,
            backend=cfg.backend,
        )
        row["fp32_peak_near"] = near["fp32"] / 1e9
        rows.append(row)
        print(markdown_table([row], cols), flush=True)
        if cfg.profile and row.get("top_ops"):
            s = row["input_size"]
            title = f"{name} (fp32, batch {cfg.batch}, {s} px; dense GEMM/conv kernels {row['dense_share']:.0%} of self time)"
            profiles.append(perf.operators_markdown(title, row["top_ops"]))
    lines.append(markdown_table(rows, cols))
    lines.append(f"\nload average at end: {profiling.load_average()}")
    if profiles:
        lines += ["", "## Top operators (self CPU time, torch.profiler)", "", *profiles]
    text = "\n".join(lines) + "\n"
    print(text)
    if target is not None:
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        target.mkdir(parents=True, exist_ok=True)
        out = target / f"peaks{'_' + cfg.tag if cfg.tag else ''}_{date}.md"
        out.write_text(text)
        print(f"wrote {out}")
    return text
