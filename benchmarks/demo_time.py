"""Wall time of `faceparse demo`, alone and beside one CPU-bound process; OpenMP wait policies compared.

python benchmarks/demo_time.py                 # full demo twice (quiet, then with a hog) + step table
python benchmarks/demo_time.py --steps-only    # only the per-step table (about a minute)

Writes benchmarks/results/demo_time.md. The "hog" is one Python process spinning on a core, as
when a user's other job shares the 2-core machine. The per-step table times 6 training steps of
the demo's U-Net (batch 8, 128 px) in fresh interpreters under three OpenMP wait settings: GNU
OpenMP's default (300,000 spins: what faceparse had before), OMP_WAIT_POLICY=PASSIVE (no spinning)
and GOMP_SPINCOUNT=10000 (what faceparse sets), each quiet and beside the hog, interleaved; ratios
are what to compare, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

STEP_SCRIPT = r"""
import sys, time, torch, faceparse
m = faceparse.build_model("unet", encoder="resnet18", input_size=128,
                          arch_kwargs={"decoder_channels": [128, 64, 32, 16, 16]})
opt = torch.optim.AdamW(m.parameters(), 1e-3)
x = torch.randn(8, 3, 128, 128); y = torch.randint(0, 19, (8, 128, 128))
def step():
    opt.zero_grad(); torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step()
step(); step()
t = time.perf_counter()
for _ in range(6): step()
print((time.perf_counter() - t) / 6)
"""


def hog() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


POLICIES = {
    "OpenMP default (300,000 spins; faceparse before)": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "GOMP_SPINCOUNT=10000 (faceparse's default)": {"GOMP_SPINCOUNT": "10000"},
}


def step_seconds(policy: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    # an empty OMP_WAIT_POLICY keeps faceparse from setting its own default and OpenMP ignores it
    env.update(NO_ALBUMENTATIONS_UPDATE="1", OMP_WAIT_POLICY="")
    env.update(POLICIES[policy])
    out = subprocess.run([sys.executable, "-c", STEP_SCRIPT], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def demo_seconds(extra: list[str]) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "faceparse.cli", "demo", "--out-dir", tmp, *extra],
            check=True,
            env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        elapsed = time.perf_counter() - start
        return elapsed, json.loads((Path(tmp) / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps-only", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the step table")
    parser.add_argument("--demo-args", default="", help="extra `faceparse demo` arguments (e.g. '--epochs 1')")
    args = parser.parse_args()

    load_before = os.getloadavg()
    steps: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for policy in POLICIES:
            steps.setdefault((policy, "quiet"), []).append(step_seconds(policy))
            h = hog()
            try:
                steps.setdefault((policy, "hog"), []).append(step_seconds(policy))
            finally:
                h.kill()
    best = {k: min(v) for k, v in steps.items()}

    demo_rows = []
    if not args.steps_only:
        extra = args.demo_args.split()
        quiet, summary = demo_seconds(extra)
        h = hog()
        try:
            loaded, summary_hog = demo_seconds(extra)
        finally:
            h.kill()
        demo_rows = [
            f"| `make demo` alone | {quiet:.0f} s | 1.00 | {100 * summary['mean_f1']:.2f} |",
            f"| `make demo` beside one CPU hog | {loaded:.0f} s | {loaded / quiet:.2f} | "
            f"{100 * summary_hog['mean_f1']:.2f} |",
        ]
    import torch

    lines = [
        "# `faceparse demo` wall time, alone and on a shared machine",
        "",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        f"- load average before the run: {load_before[0]:.2f} (1 min); other sessions may share the machine",
        f"- command: `python benchmarks/demo_time.py {' '.join(sys.argv[1:])}`".rstrip() + "",
        "",
    ]
    if demo_rows:
        lines += ["| run | wall time | ratio | mean F1 |", "|---|---:|---:|---:|", *demo_rows, ""]
    lines += [
        f"Seconds per training step of the demo's U-Net (batch 8, 128 px, best of {args.repeats} interleaved runs):",
        "",
        "| OpenMP wait policy | alone | beside one CPU hog | slowdown |",
        "|---|---:|---:|---:|",
    ]
    for policy in POLICIES:
        q, h = best[(policy, "quiet")], best[(policy, "hog")]
        lines.append(f"| {policy} | {q:.2f} s | {h:.2f} s | {h / q:.1f}x |")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "demo_time.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
