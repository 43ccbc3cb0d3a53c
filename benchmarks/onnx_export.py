"""ONNX export status of every registered model: export at a tiny size, compare with onnxruntime.

For each model not in ``faceparse.export.NOT_EXPORTABLE``: build it with the registry's ``tiny``
kwargs, export (opset 17, dynamic batch; dynamic height/width when onnxruntime also matches PyTorch
at the tiny size + 32, else fixed), run onnxruntime on a batch of 3 and record the max abs and
relative difference from PyTorch and the argmax agreement (pass: max abs diff <= 1e-4 + 1e-4 x
max |logit| and agreement >= 99.9%, see faceparse.export), whether height/width are dynamic, the
exporter used, the opset written and the times.
Models in ``NOT_EXPORTABLE`` are listed with the recorded reason (``--retry-skipped`` tries them
again). Writes ``benchmarks/results/onnx_export_<date>.md`` and, with ``--docs``, the export table
of docs/models.md.

    python benchmarks/onnx_export.py --models '*' --docs docs/models.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

import faceparse
from faceparse.cli.bench import markdown_table
from faceparse.export import NOT_EXPORTABLE, build_tiny, export_onnx
from faceparse.profiling import load_average, machine_description

START, END = "<!-- export-table:start -->", "<!-- export-table:end -->"


def check_model(name: str, workdir: Path) -> dict:
    row: dict = {"model": name}
    t0 = time.perf_counter()
    try:
        model, size = build_tiny(name)
        row["input"] = size
        row["tiny_params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        res = export_onnx(model, workdir / f"{name}.onnx", input_size=size, check=True)
        row.update(
            exportable="yes",
            max_abs_diff=res.max_abs_diff,
            max_rel_diff=res.max_rel_diff,
            argmax_agreement=100 * res.argmax_agreement,
            dynamic_hw="yes" if res.dynamic_hw else "no",
            opset=res.opset,
            exporter=res.exporter,
            onnx_mb=res.path.stat().st_size / 2**20,
        )
        res.path.unlink()
    except Exception as exc:
        row.update(exportable="no", reason=f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
    row["seconds"] = time.perf_counter() - t0
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="*", help="shell pattern(s), comma separated")
    ap.add_argument("--retry-skipped", action="store_true", help="also try models in NOT_EXPORTABLE")
    ap.add_argument("--out-dir", default="benchmarks/results")
    ap.add_argument("--docs", default="", help="Markdown file with export-table markers to update")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    names = [n for p in args.models.split(",") for n in faceparse.list_models(p.strip())]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name in NOT_EXPORTABLE and not args.retry_skipped:
                rows.append({"model": name, "exportable": "no", "reason": NOT_EXPORTABLE[name]})
            else:
                rows.append(check_model(name, Path(tmp)))
                gc.collect()
            print(rows[-1], flush=True)
    cols = [
        ("model", "model", "{}"),
        ("exportable", "exports", "{}"),
        ("input", "tiny input", "{}"),
        ("max_abs_diff", "max abs diff vs PyTorch", "{:.1e}"),
        ("max_rel_diff", "relative to max abs logit", "{:.1e}"),
        ("argmax_agreement", "argmax agreement %", "{:.2f}"),
        ("dynamic_hw", "dynamic H/W", "{}"),
        ("opset", "opset", "{}"),
        ("exporter", "exporter", "{}"),
        ("reason", "reason it does not export", "{}"),
    ]
    table = markdown_table(rows, cols)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"onnx_export_{stamp[:10]}.md"
    md.write_text(
        f"# ONNX export status\n\n- date: {stamp}\n- machine: {machine_description()}\n"
        f"- load average: {load_average()} (shared CPU)\n"
        f"- command: `python {shlex.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]])}`\n"
        "- tiny builds (registry metadata `tiny`), random weights, parity on a batch of 3 (traced with 2) and, "
        "for dynamic height/width, on a batch of 1 at the tiny size + 32 (worst of both shown)\n\n"
        + markdown_table(rows, cols + [("seconds", "seconds", "{:.0f}"), ("onnx_mb", "ONNX MiB", "{:.0f}")])
        + "\n"
    )
    print(f"wrote {md}")
    if args.docs:
        p = Path(args.docs)
        text = p.read_text()
        a, rest = text.split(START, 1)
        _, b = rest.split(END, 1)
        p.write_text(a + START + f"\nChecked {stamp} (`benchmarks/onnx_export.py`):\n\n" + table + "\n" + END + b)
        print(f"updated {p}")
    failed = [r["model"] for r in rows if r["exportable"] == "no" and r["model"] not in NOT_EXPORTABLE]
    if failed:
        print(f"not exportable and not in NOT_EXPORTABLE: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
