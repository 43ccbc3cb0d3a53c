"""fp32 vs bf16 vs int8: accuracy on the demo model and speed, in one run (interleaved timings).

1. Accuracy: the demo model (``faceparse demo``'s U-Net trained on synthetic faces; reused from
   ``--model`` (default ``demo_output/model``), else trained once with the demo's defaults) is
   scored on the demo's validation faces (:class:`faceparse.data.synthetic.SyntheticFaces`, split
   ``val``, seed 0, same size and count as the demo) with :func:`faceparse.evaluate.evaluate` in
   each precision: mean F1 (no background), its delta from fp32 in points, and the fraction of
   pixels whose label equals fp32's.
2. Speed on the demo model: batch ``--batch`` at the demo's size, interleaved rounds
   (:func:`faceparse.perf.bench_precisions`), ratio to fp32.
3. Throughput (``--throughput``): images/s of unet, segface_mobilenet_v3_large and rtformer_slim at
   ``--size`` (512) in each precision, random weights, batch ``--batch``, interleaved per model.

bf16 is run with ``force=True`` so its numerics are measured even on a CPU without native bf16,
where it is emulated (its speed is then reported as measured, and the CPU's lack of AMX/AVX512-BF16
is stated in the header). int8 is onnxruntime's static quantiser calibrated on ``--calib`` training
faces (:mod:`faceparse.precision`).

Results: ``benchmarks/results/precision.md``. Example::

    nice -n 10 python benchmarks/precision.py --throughput
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
import warnings
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
PRECISIONS = ("fp32", "bf16", "int8")
THROUGHPUT_MODELS = ("unet", "segface_mobilenet_v3_large", "rtformer_slim")


def demo_model(path: Path):
    """The demo's model folder, trained once (the demo's defaults) when it does not exist."""
    from faceparse import load_model

    if not (path / "config.json").is_file():
        from faceparse.demo import run_demo

        print(f"{path} not found: training the demo model once (faceparse demo)", flush=True)
        run_demo(out_dir=str(path.parent))
    return load_model(path)


def accuracy(model, metrics: dict, calib: int, limit: int | None) -> list[dict]:
    """Mean F1 and agreement with fp32 of each precision on the demo's validation faces."""
    from faceparse.data.synthetic import SyntheticFaces
    from faceparse.evaluate import evaluate
    from faceparse.precision import optimize_for_inference

    size = int(metrics.get("image_size", model.default_input_size))
    kw = {"image_size": size, "seed": 0, "mean": tuple(model.input_mean), "std": tuple(model.input_std)}
    val = SyntheticFaces("val", num_samples=int(metrics.get("num_val", 200)), **kw)
    train = SyntheticFaces("train", num_samples=calib, **kw)
    x_cal = torch.stack([train[i]["image"] for i in range(calib)])
    rows, ref_labels = [], None
    for p in PRECISIONS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runner = optimize_for_inference(model, p, calibration=x_cal, force=True, input_size=size)
        wrapped = _Wrapped(runner, model)
        t0 = time.perf_counter()
        res = evaluate(wrapped, val, batch_size=8, limit=limit)
        labels = torch.cat(wrapped.labels)
        if ref_labels is None:
            ref_labels = labels
        rows.append(
            {
                "precision": p,
                "mean_f1": 100 * res["mean_f1"],
                "miou": 100 * res["miou"],
                "agreement": float((labels == ref_labels).float().mean()),
                "eval_s": time.perf_counter() - t0,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        r["delta_f1"] = r["mean_f1"] - rows[0]["mean_f1"]
    return rows


class _Wrapped(torch.nn.Module):
    """A runner with the model's attributes, for :func:`faceparse.evaluate.evaluate`."""

    def __init__(self, runner, model) -> None:
        super().__init__()
        self.runner = runner
        self.label_set = model.label_set
        self.labels: list[torch.Tensor] = []  # argmax of every batch, to compare with fp32's

    def forward(self, x):
        out = self.runner(x)
        self.labels.append(out.argmax(1))
        return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo_output/model")
    p.add_argument("--calib", type=int, default=16, help="training faces calibrating int8")
    p.add_argument("--limit", type=int, default=0, help="score only the first N validation faces (0: all)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--throughput", action="store_true", help="also time unet, segface_mobilenet_v3_large, rtformer_slim"
    )
    p.add_argument("--models", default=",".join(THROUGHPUT_MODELS))
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--budget", type=float, default=60.0, help="seconds of timed rounds per model")
    p.add_argument("--out", default=str(RESULTS / "precision.md"))
    args = p.parse_args(argv)

    from faceparse import perf, profiling
    from faceparse.precision import cpu_supports_bf16, cpu_supports_vnni

    t_start = time.perf_counter()
    load0 = profiling.load_average()
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    model_dir = Path(args.model)
    model = demo_model(model_dir).eval()
    metrics_file = model_dir.parent / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    acc = accuracy(model, metrics, args.calib, args.limit or None)
    peaks = perf.matmul_peaks()
    size = int(metrics.get("image_size", model.default_input_size))
    speed = perf.bench_precisions(
        "unet", PRECISIONS, size=size, batch=args.batch, repeats=args.repeats, peaks=peaks, model=model,
        budget_s=args.budget,
    )  # fmt: skip
    speed["model"] = f"demo model ({metrics.get('model', 'unet')}-{metrics.get('encoder', '')})"
    through = []
    if args.throughput:
        for name in [m for m in args.models.split(",") if m]:
            row = perf.bench_precisions(
                name, PRECISIONS, size=args.size, batch=args.batch, repeats=args.repeats, peaks=peaks,
                budget_s=args.budget,
            )  # fmt: skip
            print(json.dumps(row), flush=True)
            through.append(row)

    lines = [
        "# Precision: fp32 vs bf16 vs int8 (`benchmarks/precision.py`)",
        "",
        f"- date: {stamp}",
        "- machine: 2-core shared CPU, no GPU: " + profiling.machine_description(),
        f"- native bf16 (AMX-BF16 / AVX512-BF16 in /proc/cpuinfo): {cpu_supports_bf16()}; int8 dot products "
        f"(VNNI / AMX-INT8): {cpu_supports_vnni()}",
        f"- command: `nice -n 10 python benchmarks/{Path(__file__).name} {' '.join(argv or sys.argv[1:])}`",
        f"- load average (1/5/15 min) at start: {load0}; at end: {profiling.load_average()}; "
        f"total {time.perf_counter() - t_start:.0f} s. The CPU is shared: compare ratios, not absolute times",
        f"- matmul peaks (torch.mm 2048^3; bf16 at 512^3 where emulated; interleaved): fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s",
        f"- demo model: `{model_dir}` ({json.dumps({k: metrics.get(k) for k in ('model', 'encoder', 'image_size', 'epochs', 'num_train', 'num_val')})})",
        "- bf16: autocast + channels_last, forced (emulated where the CPU lacks native bf16); int8: onnxruntime "
        f"static QDQ quantisation calibrated on {args.calib} training faces",
        "",
        "## Accuracy on the demo's validation faces",
        "",
        "| precision | mean F1 | delta vs fp32 (points) | mIoU | pixels labelled as fp32 |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['precision']} | {r['mean_f1']:.2f} | {r['delta_f1']:+.2f} | {r['miou']:.2f} | {r['agreement']:.4%} |"
        for r in acc
    ]
    cols = perf.precision_columns(PRECISIONS)
    from faceparse.cli.bench import markdown_table

    lines += ["", f"## Speed of the demo model (batch {args.batch}, {size} px, interleaved)", ""]
    lines.append(markdown_table([speed], cols))
    if through:
        lines += ["", f"## Model throughput at {args.size} px (batch {args.batch}, random weights, interleaved)", ""]
        lines.append(markdown_table(through, cols))
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
