"""Run `faceparse demo` and record its accuracy and wall time in benchmarks/results/demo.md.

python benchmarks/demo.py            # same settings as `make demo`
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

from faceparse.demo import run_demo

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", default="demo_output")
    parser.add_argument("--note", default="", help="free text about the machine state (e.g. 'quiet')")
    args = parser.parse_args()
    summary = run_demo(out_dir=args.out_dir)
    import torch

    rows = "\n".join(f"| {name} | {100 * f1:.2f} |" for name, f1 in summary["per_class_f1"].items())
    text = f"""# `faceparse demo` on synthetic faces

- date: {datetime.date.today().isoformat()}
- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {summary["torch_threads"]} threads {args.note}
- command: `python benchmarks/demo.py` (the same run as `make demo` / `faceparse demo`)
- model: {summary["model"]} ({summary["encoder"]}), {summary["image_size"]} px, {summary["epochs"]} epochs on {summary["num_train"]} faces,
  validated on {summary["num_val"]} faces

| figure | value |
|---|---:|
| **mean F1 (no background)** | **{100 * summary["mean_f1"]:.2f}** |
| mIoU (with background) | {100 * summary["miou"]:.2f} |
| pixel accuracy | {100 * summary["pixel_acc"]:.2f} |
| wall time, whole demo (s) | {summary["seconds"]:.0f} |

Per-class F1 (validation):

| class | F1 |
|---|---:|
{rows}
"""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo.md").write_text(text)
    print(f"wrote {RESULTS / 'demo.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
