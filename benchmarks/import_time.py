"""How long ``import faceparse`` takes, next to ``import torch``.

Each command runs in a fresh interpreter, ``--repeats`` times, interleaved (so machine load hits all of
them alike); the table gives the median wall time, the median ``-X importtime`` cumulative time of the
top-level module where there is one, and the ratio to ``import torch``. Also checks that ``import
faceparse`` imports none of torch, Lightning, albumentations, timm, segmentation-models-pytorch.
Writes ``benchmarks/results/import_time.md``.

    python benchmarks/import_time.py --repeats 7
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    ("interpreter start", "pass", None),
    ("import torch", "import torch", "torch"),
    ("import faceparse", "import faceparse", "faceparse"),
    ("import faceparse; list_models()", "import faceparse; faceparse.list_models()", None),
    (
        "faceparse.cli --help",
        "import sys; sys.argv = ['faceparse', '--help']; import faceparse.cli as c; c.main()",
        None,
    ),
]
HEAVY = ("torch", "pytorch_lightning", "lightning", "albumentations", "timm", "segmentation_models_pytorch")


def run_once(code: str, top: str | None) -> tuple[float, float | None]:
    """Wall seconds of ``python -X importtime -c code`` and the cumulative import time of ``top``."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    wall = time.perf_counter() - t0
    if proc.returncode not in (0,) and "--help" not in code:
        raise SystemExit(f"'{code}' failed:\n{proc.stderr[-2000:]}")
    cumulative = None
    if top:
        for line in proc.stderr.splitlines():
            m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)$", line)
            if m and m.group(3) == top and not m.group(2):
                cumulative = int(m.group(1)) / 1e6
    return wall, cumulative


def heavy_modules_after_import() -> list[str]:
    code = f"import sys, faceparse; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return eval(out.stdout.strip())


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    return f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}; load average {load}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "import_time.md")
    args = ap.parse_args()

    walls: dict[str, list[float]] = {label: [] for label, _, _ in COMMANDS}
    cums: dict[str, list[float]] = {label: [] for label, _, _ in COMMANDS}
    for _ in range(args.repeats):
        for label, code, top in COMMANDS:
            wall, cum = run_once(code, top)
            walls[label].append(wall)
            if cum is not None:
                cums[label].append(cum)
    torch_wall = statistics.median(walls["import torch"])
    torch_cum = statistics.median(cums["import torch"])
    rows = []
    for label, code, _ in COMMANDS:
        w = statistics.median(walls[label])
        c = statistics.median(cums[label]) if cums[label] else None
        rows.append(
            f'| `{label}` | `python -X importtime -c "{code}"` | {w:.3f} | '
            + (f"{c:.3f} | {c / torch_cum:.2f}x |" if c is not None else "- | - |")
            + f" {w / torch_wall:.2f}x |"
        )
    heavy = heavy_modules_after_import()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = "\n".join(
        [
            "# Import time",
            "",
            f"Measured {stamp} with `python benchmarks/import_time.py --repeats {args.repeats}`.",
            f"Machine: {machine()}.",
            "",
            f"Median of {args.repeats} fresh interpreters per command (interleaved). `importtime` is the "
            "cumulative `-X importtime` figure of the top-level module; ratios are to `import torch`.",
            "",
            "| what | command | wall s | importtime s | importtime vs torch | wall vs torch |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            f"Heavy modules in `sys.modules` after `import faceparse`: {', '.join(heavy) if heavy else 'none'} "
            f"(checked: {', '.join(HEAVY)}).",
            "",
            "`list_models()` imports the model modules (and so torch), never timm, smp, albumentations or "
            "Lightning: those are imported inside the constructors and functions that use them.",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
