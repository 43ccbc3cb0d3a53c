"""Peak memory of one training step per model family (forward + loss + backward + optimizer step).

Each model runs in its own subprocess (so one model's freed memory cannot hide another's peak):
it builds the model at its default input size (random weights, train mode), makes a batch of
``--batch`` random images and labels, records its resident set size (RSS), runs one step of
AdamW on the default training loss (``ce_dice``, auxiliary heads included, as
``SegmentationTask``) and reports the peak
RSS (``ru_maxrss``) minus the RSS before the step: what the step itself needs, on top of the
model and the batch. A second step is not run (AdamW's state, 2x the parameters, is allocated
in the first). The exact peak of live tensors (:class:`faceparse.profiling.PeakMemory`) over the
step is reported beside it, with the bytes of one full-resolution ``B x K x H x W`` fp32 tensor
(the logits) for scale.

Results: ``benchmarks/results/train_memory.md``. Example::

    nice -n 10 python benchmarks/train_memory.py --models segface_mobilenet_v3_large,unet --batch 8
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FAMILIES = "segface_mobilenet_v3_large,unet,rtformer_slim,bisenet,consensus_net,segformer_hf_b0"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one(name: str, batch: int, size: int, loss_name: str = "ce_dice") -> dict:
    """One training step of ``name`` in this process; the figures as a dict."""
    import resource

    import torch

    from faceparse.profiling import PeakMemory, build_for_bench, model_input_size
    from faceparse.tasks.base import build_task_loss, loss_value

    torch.manual_seed(0)
    s = model_input_size(name, size or None)
    model = build_for_bench(name).train()
    k = model.num_classes
    x = torch.randn(batch, 3, s, s)
    y = torch.randint(0, k, (batch, s, s))
    loss_fn = build_task_loss(loss_name, {})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params = sum(p.numel() for p in model.parameters())
    before = _rss_bytes()
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        out = model(x)
        after_forward = mem.live  # activations saved for backward, and the outputs
        loss, _ = loss_value(loss_fn(out, {"mask": y}))  # the training step's loss, aux heads included
        after_loss, peak_to_loss = mem.live, mem.peak
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {
        "model": name,
        "input_size": s,
        "batch": batch,
        "params_m": params / 1e6,
        "rss_before_gib": before / 2**30,
        "peak_rss_gib": peak / 2**30,
        "step_delta_gib": (peak - before) / 2**30,
        "live_tensor_peak_gib": mem.peak / 2**30,
        "after_forward_gib": after_forward / 2**30,
        "after_loss_gib": after_loss / 2**30,
        "peak_until_loss_gib": peak_to_loss / 2**30,
        "logits_gib": batch * k * s * s * 4 / 2**30,
        "step_s": step_s,
        "loss": loss_name,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=FAMILIES)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=0, help="input size (0: each model's default)")
    p.add_argument(
        "--loss", default="ce_dice", help="registered loss (ce: cross-entropy only, to see the Dice term's share)"
    )
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(RESULTS / "train_memory.md"))
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.batch, args.size, args.loss)), flush=True)
        return 0

    from faceparse.profiling import load_average, machine_description

    load0, t0 = load_average(), time.perf_counter()
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        cmd = [sys.executable, __file__, "--one", name, "--batch", str(args.batch), "--size", str(args.size)]
        cmd += ["--loss", args.loss]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        res = [ln[7:] for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        row = json.loads(res[0]) if res else {"model": name, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    cols = [
        ("model", "{}"),
        ("input_size", "{}"),
        ("params_m", "{:.1f}"),
        ("rss_before_gib", "{:.2f}"),
        ("peak_rss_gib", "{:.2f}"),
        ("step_delta_gib", "{:.2f}"),
        ("live_tensor_peak_gib", "{:.2f}"),
        ("after_forward_gib", "{:.2f}"),
        ("after_loss_gib", "{:.2f}"),
        ("logits_gib", "{:.3f}"),
        ("step_s", "{:.1f}"),
        ("loss", "{}"),
    ]
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Training-step memory per model family (`benchmarks/train_memory.py`)",
        "",
        f"- date: {stamp}",
        f"- machine: 2-core shared CPU, no GPU: {machine_description()}",
        f"- command: `nice -n 10 python benchmarks/train_memory.py {' '.join(argv or sys.argv[1:])}`",
        f"- batch {args.batch}, each model's default input size, random weights, one AdamW step on ce_dice; "
        f"each model in its own process; load average at start {load0}, at end {load_average()}, "
        f"total {time.perf_counter() - t0:.0f} s",
        "- step_delta = peak RSS (ru_maxrss) - RSS before the step; live_tensor_peak = exact peak of live "
        "tensors allocated during the step (PeakMemory); after_forward / after_loss = live tensors "
        "after the forward pass / after the loss (what backward starts from); logits = one B x K x H x W fp32 tensor",
        "",
        "| " + " | ".join(c for c, _ in cols) + " | error |",
        "|" + "---|" * (len(cols) + 1),
    ]
    for r in rows:
        cells = [f.format(r[c]) if r.get(c) is not None else "-" for c, f in cols]
        lines.append("| " + " | ".join(cells) + f" | {r.get('error', '')} |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
