"""Folder throughput of ``predict_folder``: decoding in DataLoader workers vs in the main process, per precision.

A folder of ``--images`` synthetic 512 x 512 JPEG faces (:func:`faceparse.data.synthetic.render_face`)
is parsed by :func:`faceparse.media.predict_folder` (read, parse, paste back, write the label map and
overlay PNGs) with ``num_workers=0`` (everything in this process) and ``num_workers=2`` (decoding, and
detection when on, in two DataLoader worker processes overlapping the model's forward pass), batch
``--batch``, for each model at ``--size`` with random weights (speed does not depend on the weights)
and each precision:

- ``fp32``: eager PyTorch;
- ``bf16``: ``torch.autocast`` bf16 + channels_last (:func:`faceparse.precision.optimize_for_inference`).
  On a CPU without AMX-BF16/AVX512-BF16 the ``Predictor`` falls back to fp32 with a warning (that
  row would only repeat fp32), so ``--bf16 forced`` (default) runs it emulated with ``force=True``
  and says so in the results; ``--bf16 fallback`` times what a user gets;
- ``int8``: onnxruntime static quantisation, calibrated on one warm-up batch of synthetic faces before
  timing (the calibration time is reported apart).

Whole-image parsing (``detect_faces=False``) so the model dominates; ``--detect-model`` adds fp32 rows
with detection on (the default offline cascade, run in the workers when ``num_workers > 0``). The two
worker settings are timed back to back with their order alternated between rows, and their label maps
are compared byte for byte. Ratios are to the same model's fp32 / ``num_workers=0`` row.

Usage::

    nice -n 10 python benchmarks/folder_throughput.py --out benchmarks/results/folder_throughput.md
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import faceparse
from faceparse.data.synthetic import render_face
from faceparse.inference import NoFaceWarning, Predictor
from faceparse.media import predict_folder
from faceparse.precision import PrecisionFallbackWarning, cpu_supports_bf16, optimize_for_inference
from faceparse.runtime import available_cpus

MODELS = ("unet", "segface_mobilenet_v3_large", "rtformer_slim")
PRECISIONS = ("fp32", "bf16", "int8")


def write_faces(folder: Path, n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    faces = [render_face(rng, size=size)["image"] for _ in range(n)]
    for i, im in enumerate(faces):
        Image.fromarray(im).save(folder / f"face{i:03d}.jpg", quality=92)
    return faces


def predictor(model: torch.nn.Module, precision: str, bf16: str, batch: int, size: int, detect: bool, warm):
    """A ready Predictor (warmed up; int8 calibrated) and the seconds its set-up took."""
    start = time.perf_counter()
    model = copy.deepcopy(model)  # bf16/int8 convert the weights (channels_last) in place
    if precision == "bf16" and bf16 == "forced":
        pred = Predictor(model, input_size=size, batch_size=batch, detect_faces=detect)
        # Predictor has no force option: the runner it would build, emulated where the CPU lacks bf16
        pred._runner = optimize_for_inference(pred.model, "bf16", force=True, input_size=size)
        pred.precision = "bf16"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PrecisionFallbackWarning)
            pred = Predictor(model, input_size=size, batch_size=batch, detect_faces=detect, precision=precision)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoFaceWarning)
        pred.predict(warm)  # warm-up; int8: calibrates the quantiser on this batch
    return pred, time.perf_counter() - start


def run_folder(pred: Predictor, folder: Path, workers: int) -> tuple[float, str, int]:
    """Seconds for the whole folder, a digest of the label maps in order, images without a face."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoFaceWarning)
            report = predict_folder(pred, folder, out, resume=False, progress=False, num_workers=workers)
        sec = time.perf_counter() - start
        digest = hashlib.sha256()
        for labels, _ in report.written:
            digest.update(labels.name.encode() + labels.read_bytes())
    return sec, digest.hexdigest(), len(report.no_face)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--images", type=int, default=16, help="synthetic JPEG faces in the folder")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=None, help="warm-up / int8 calibration images (default: --batch)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2, help="compared with num_workers=0")
    ap.add_argument("--bf16", choices=["forced", "fallback"], default="forced")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per setting (order alternated); best kept")
    ap.add_argument("--detect-model", default="segface_mobilenet_v3_large", help="fp32 rows with detection on ('' off)")
    ap.add_argument("--out", default=None, help="write the Markdown results here")
    args = ap.parse_args()
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    rows = []
    flip = False
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "faces"
        folder.mkdir()
        warm = write_faces(folder, args.images, args.size)[: args.warmup or args.batch]
        # precision-major, detection after fp32, emulated bf16 (slowest) last: a run stopped early has the key rows
        order = sorted(args.precisions, key=lambda p: ("fp32", "int8", "bf16").index(p))
        cells = [(m, p, False) for p in order for m in args.models]
        if args.detect_model:
            cells.insert(len(args.models) if "fp32" in order else 0, (args.detect_model, "fp32", True))
        base: dict[str, float] = {}
        for name, precision, detect in cells:
            torch.manual_seed(0)
            model = faceparse.build_model(name).eval()
            pred, setup = predictor(model, precision, args.bf16, args.batch, args.size, detect, warm)
            runs: dict[int, list] = {0: [], args.workers: []}
            orders = []
            for _ in range(args.repeats):
                order = [args.workers, 0] if flip else [0, args.workers]
                flip = not flip
                orders.append("/".join(str(w) for w in order))
                for w in order:
                    runs[w].append(run_folder(pred, folder, w))
            (s0, _, nf), (sw, _, _) = min(runs[0]), min(runs[args.workers])  # best of the repeats
            same = len({h for rs in runs.values() for _, h, _ in rs}) == 1
            if precision == "fp32" and not detect:
                base[name] = args.images / s0
            ref = base.get(name)
            label = precision
            if precision == "bf16":
                label += " (forced, emulated)" if args.bf16 == "forced" and not cpu_supports_bf16() else ""
                label += " (fallback: runs fp32)" if args.bf16 == "fallback" and not cpu_supports_bf16() else ""
            rows.append(
                {
                    "model": name,
                    "precision": label,
                    "detect": f"on ({args.images - nf}/{args.images} with a face)" if detect else "off",
                    "setup": setup,
                    "w0": args.images / s0,
                    "ww": args.images / sw,
                    "ref": ref,
                    "same": same,
                    "order": ", ".join(orders),
                }
            )
            r = rows[-1]
            print(
                f"{name} {label} detect={detect}: {r['w0']:.3f} img/s (0 workers), {r['ww']:.3f} img/s "
                f"({args.workers} workers), identical={r['same']}, setup {setup:.1f} s",
                flush=True,
            )
            write_report(args, rows, load0, t0)  # after every row: a long run stopped early keeps its rows
    print(Path(args.out).read_text() if args.out else rows)


def write_report(args, rows: list[dict], load0: tuple[float, float, float], t0: float) -> None:
    load1 = os.getloadavg()
    total = time.perf_counter() - t0
    w = args.workers
    cmd = " ".join(
        ["python benchmarks/folder_throughput.py", "--models", *args.models, "--precisions", *args.precisions]
        + [f"--images {args.images} --batch {args.batch} --warmup {args.warmup or args.batch} --size {args.size}"]
        + [f"--workers {w} --bf16 {args.bf16} --repeats {args.repeats}"]
        + [f"--detect-model '{args.detect_model}'"]
        + ([f"--out {args.out}"] if args.out else [])
    )
    lines = [
        "# Folder throughput: decoding in DataLoader workers, per precision (`benchmarks/folder_throughput.py`)",
        "",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: AMD EPYC 2-core shared CPU, no GPU, no native bf16 (AMX-BF16/AVX512-BF16: "
        f"{cpu_supports_bf16()}); {available_cpus()} usable cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads in the main process, 1 per worker)",
        f"- command: `nice -n 10 {cmd}`",
        f"- folder: {args.images} synthetic {args.size} x {args.size} JPEG faces (quality 92); "
        f"`predict_folder` reads, parses the whole image, pastes back and writes 2 PNGs per image; "
        f"batch {args.batch}; random weights",
        "- bf16: "
        + (
            "forced (`optimize_for_inference(..., force=True)`): this CPU has no native bf16, so the bf16 "
            "convolutions are emulated and the figures say nothing about an AMX CPU; a user's "
            "`--precision bf16` here falls back to fp32 with a warning"
            if args.bf16 == "forced"
            else "as a user gets it (`Predictor(precision='bf16')`: fp32 with a warning on a CPU without native bf16)"
        ),
        "- int8: onnxruntime static QDQ quantisation calibrated on the warm-up batch (set-up column: "
        "build + export + quantise + warm-up)",
        f"- load average (1/5/15 min) at start: {load0[0]:.2f}, {load0[1]:.2f}, {load0[2]:.2f}; at end: "
        f"{load1[0]:.2f}, {load1[1]:.2f}, {load1[2]:.2f}; total {total:.0f} s. The 2 cores are shared with "
        "other jobs: compare ratios within this run, not absolute rates",
        f"- the two worker settings run back to back, order alternated (column 'order'), {args.repeats} time(s) "
        "each, the fastest run kept; 'same labels' compares the label-map PNGs of all runs byte for byte",
        "",
        f"| model | precision | detection | set-up s | img/s, 0 workers | img/s, {w} workers | {w} workers / 0 "
        f"| vs fp32 (0 workers) | vs fp32 ({w} workers) | same labels | order |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        ref = r["ref"]
        vs0 = f"{r['w0'] / ref:.2f}x" if ref and not r["detect"].startswith("on") else "-"
        vsw = f"{r['ww'] / ref:.2f}x" if ref and not r["detect"].startswith("on") else "-"
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['detect']} | {r['setup']:.1f} | {r['w0']:.3f} | {r['ww']:.3f} "
            f"| {r['ww'] / r['w0']:.2f}x | {vs0} | {vsw} | {'yes' if r['same'] else 'NO'} | {r['order']} |"
        )
    lines.append("")
    text = "\n".join(lines)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
