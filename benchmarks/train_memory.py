"""Peak memory of one training step per model family (forward + loss + backward + optimizer step).

Each measurement runs in its own subprocess (so one model's freed memory cannot hide another's
peak): it builds the model at its default input size (random weights, train mode), makes a batch
of ``--batch`` random images and labels, records its resident set size (RSS), runs one step of
AdamW on the default training loss (``ce_dice`` on ``forward_train``'s outputs, auxiliary heads
included, as ``SegmentationTask.training_step``) and reports the peak RSS (``ru_maxrss``) minus
the RSS before the step: what the step itself needs, on top of the model and the batch. A second
step is not run (AdamW's state, 2x the parameters, is allocated in the first). The exact peak of
live tensors (:class:`faceparse.profiling.PeakMemory`) over the step is reported beside it, with
the bytes of one full-resolution ``B x K x H x W`` fp32 tensor (the logits) for scale.

``--grad-checkpointing off|on|both``: without and/or with the model's activation checkpointing
(``model.set_grad_checkpointing(True)``, the ``grad_checkpointing`` flag of the tasks); models
without it get no ``on`` row. ``segface_official_mobilenet`` is the official SegFace code's
``SegFaceCeleb(512, "mobilenet")`` (its forward returns the logits at full resolution), imported
from a local copy of the official repository (``--official-repo``) with
``segface_official_parity.import_official``, measured with the same loss.

Rows are merged into ``benchmarks/results/train_memory.json`` by (model, checkpointing), so a
run of a few models updates theirs; ``benchmarks/results/train_memory.md`` is rewritten from it,
and ``--docs docs/performance.md`` rewrites the table between its ``train-memory-table`` markers.
Example::

    nice -n 10 python benchmarks/train_memory.py --models unet,rtformer_slim --batch 8
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
FAMILIES = (
    "unet,bisenet,rtformer_slim,consensus_net,segformer_hf_b0,mct_vit_small,"
    "segface_mobilenet_v3_large,segface_official_mobilenet"
)
OFFICIAL = "segface_official_mobilenet"  # SegFaceCeleb(size, "mobilenet") of the official code


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        import os

        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _build(name: str, size: int, official_repo: str):
    """(model in train mode, its input size, number of classes, the training forward)."""
    from faceparse.profiling import build_for_bench, model_input_size

    if name == OFFICIAL:
        from segface_official_parity import import_official

        s = size or 512
        model = import_official(Path(official_repo))["celebamask_hq"](s, "mobilenet").train()
        return model, s, 19, lambda x: model(x, {}, None)
    s = model_input_size(name, size or None)
    model = build_for_bench(name).train()
    return model, s, model.num_classes, model.forward_train


def one(
    name: str, batch: int, size: int, loss_name: str = "ce_dice", ckpt: bool = False, official_repo: str = ""
) -> dict:
    """One training step of ``name`` in this process; the figures as a dict."""
    import resource

    import torch

    from faceparse.profiling import PeakMemory
    from faceparse.tasks.base import build_task_loss, loss_value

    torch.manual_seed(0)
    model, s, k, forward = _build(name, size, official_repo)
    if ckpt:
        model.set_grad_checkpointing(True)
    x = torch.randn(batch, 3, s, s)
    y = torch.randint(0, k, (batch, s, s))
    loss_fn = build_task_loss(loss_name, {})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    params = sum(p.numel() for p in model.parameters())
    before = _rss_bytes()
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        out = forward(x)
        after_forward = mem.live  # activations saved for backward, and the outputs
        loss, _ = loss_value(loss_fn(out, {"mask": y}))  # the training step's loss, aux heads included
        after_loss, peak_to_loss = mem.live, mem.peak
        del out
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return {
        "model": name,
        "grad_ckpt": "on" if ckpt else "off",
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


def _supports(name: str) -> bool:
    if name == OFFICIAL:
        return False
    import torch

    import faceparse

    with torch.device("meta"):
        return faceparse.build_model(name)._supports_grad_checkpointing()


COLS = [
    ("model", "{}"),
    ("grad_ckpt", "{}"),
    ("input_size", "{}"),
    ("batch", "{}"),
    ("params_m", "{:.1f}"),
    ("rss_before_gib", "{:.2f}"),
    ("peak_rss_gib", "{:.2f}"),
    ("step_delta_gib", "{:.2f}"),
    ("live_tensor_peak_gib", "{:.2f}"),
    ("after_forward_gib", "{:.2f}"),
    ("after_loss_gib", "{:.2f}"),
    ("logits_gib", "{:.3f}"),
    ("step_s", "{:.1f}"),
    ("run", "{}"),
]


def _cells(r: dict) -> list[str]:
    return [f.format(r[c]) if r.get(c) is not None else "-" for c, f in COLS]


def render_md(data: dict) -> str:
    lines = [
        "# Training-step memory per model family (`benchmarks/train_memory.py`)",
        "",
        "Each model's default input size, random weights, one AdamW step on `ce_dice` "
        "(`forward_train`'s outputs, auxiliary heads included), each measurement in its own process. "
        "step_delta = peak RSS (ru_maxrss) - RSS before the step; live_tensor_peak = exact peak of live "
        "tensors allocated during the step (PeakMemory); after_forward / after_loss = live tensors after "
        "the forward pass / after the loss (what backward starts from); logits = one B x K x H x W fp32 "
        "tensor; grad_ckpt = activation checkpointing (`set_grad_checkpointing`). "
        f"`{OFFICIAL}`: the official SegFace code (`SegFaceCeleb(512, 'mobilenet')`), same loss.",
        "",
        "Runs (machine: AMD EPYC 2-core shared CPU, no GPU; the load average says how shared):",
        "",
    ]
    for i, run in enumerate(data["runs"]):
        lines.append(
            f"{i}. {run['date']}, `{run['command']}`, {run['machine']}, load average at start "
            f"{run['load_start']}, at end {run['load_end']}, {run['total_s']:.0f} s"
            + (f"; official SegFace {run['official_commit']}" if run.get("official_commit") else "")
        )
    lines += ["", "| " + " | ".join(c for c, _ in COLS) + " | error |", "|" + "---|" * (len(COLS) + 1)]
    for r in data["rows"]:
        lines.append("| " + " | ".join(_cells(r)) + f" | {r.get('error', '')} |")
    if data.get("notes"):  # hand-written analysis kept in the JSON file
        lines += ["", *data["notes"]]
    return "\n".join(lines) + "\n"


def render_docs_table(data: dict) -> str:
    """The docs/performance.md table: step memory off / on per model."""
    by = {(r["model"], r["grad_ckpt"]): r for r in data["rows"] if "error" not in r}
    names = list(dict.fromkeys(r["model"] for r in data["rows"]))
    dates = sorted({run["date"][:10] for run in data["runs"]})
    lines = [
        f"{', '.join(dates)}, `nice -n 10 python benchmarks/train_memory.py`",
        "(`benchmarks/results/train_memory.md` has the commands, the load and the live-tensor figures),",
        "batch 8, AdamW, the `ce_dice` training loss (`forward_train`, auxiliary heads included); peak RSS",
        "of the step over the RSS before it, without / with `grad_checkpointing`:",
        "",
        "| model | input | params (M) | step memory (GiB) | with checkpointing (GiB) | step time (s) off / on |",
        "|---|---|---|---|---|---|",
    ]
    for n in names:
        off, on = by.get((n, "off")), by.get((n, "on"))
        base = off or on
        if base is None:
            continue
        mem_off = f"{off['step_delta_gib']:.2f}" if off else "-"
        mem_on = f"{on['step_delta_gib']:.2f}" if on else "not supported"
        t = " / ".join(f"{r['step_s']:.0f}" for r in (off, on) if r)
        lines.append(f"| {n} | {base['input_size']} | {base['params_m']:.1f} | {mem_off} | {mem_on} | {t} |")
    if data.get("docs_note"):  # hand-written reading of the figures, kept in the JSON file
        lines += ["", *data["docs_note"]]
    return "\n".join(lines) + "\n"


def update_docs(path: Path, table: str) -> None:
    start, end = "<!-- train-memory-table:start -->", "<!-- train-memory-table:end -->"
    text = path.read_text()
    i, j = text.index(start) + len(start), text.index(end)
    path.write_text(text[:i] + "\n" + table + text[j:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=FAMILIES)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=0, help="input size (0: each model's default)")
    p.add_argument(
        "--loss", default="ce_dice", help="registered loss (ce: cross-entropy only, to see the Dice term's share)"
    )
    p.add_argument("--grad-checkpointing", choices=("off", "on", "both"), default="both")
    p.add_argument("--official-repo", default="/tmp/segface_official", help="local copy of the official SegFace code")
    p.add_argument("--official-commit", default="", help="commit of that copy, for the results file")
    p.add_argument("--docs", default="", help="also rewrite the table between the markers of this docs page")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    p.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default=str(RESULTS / "train_memory.json"))
    p.add_argument("--out", default=str(RESULTS / "train_memory.md"))
    args = p.parse_args(argv)
    if args.one:
        row = one(args.one, args.batch, args.size, args.loss, args.ckpt, args.official_repo)
        print("RESULT " + json.dumps(row), flush=True)
        return 0

    from faceparse.profiling import load_average, machine_description

    jpath = Path(args.json)
    data = json.loads(jpath.read_text()) if jpath.exists() else {"runs": [], "rows": []}
    run_id = len(data["runs"])
    load0, t0 = load_average(), time.perf_counter()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.grad_checkpointing]
    official_commit = ""
    for name in [m for m in args.models.split(",") if m]:
        if name == OFFICIAL:
            official_commit = f"Kartik-3004/SegFace {args.official_commit or '(commit not given)'}"
        for ckpt in modes:
            if ckpt and not _supports(name):
                continue
            cmd = [sys.executable, __file__, "--one", name, "--batch", str(args.batch), "--size", str(args.size)]
            cmd += ["--loss", args.loss, "--official-repo", args.official_repo] + (["--ckpt"] if ckpt else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            res = [ln[7:] for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            err = (proc.stderr.strip().splitlines() or ["?"])[-1]
            row = json.loads(res[0]) if res else {"model": name, "grad_ckpt": "on" if ckpt else "off", "error": err}
            row["run"] = run_id
            print(json.dumps(row), flush=True)
            data["rows"] = [r for r in data["rows"] if (r["model"], r["grad_ckpt"]) != (name, row["grad_ckpt"])]
            data["rows"].append(row)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data["runs"].append(
        {
            "date": stamp,
            "command": "nice -n 10 python benchmarks/train_memory.py " + " ".join(argv or sys.argv[1:]),
            "machine": machine_description(),
            "load_start": load0,
            "load_end": load_average(),
            "total_s": time.perf_counter() - t0,
            "official_commit": official_commit,
        }
    )
    order = {n: i for i, n in enumerate(FAMILIES.split(","))}
    data["rows"].sort(key=lambda r: (order.get(r["model"], len(order)), r["grad_ckpt"] == "on"))
    jpath.write_text(json.dumps(data, indent=1) + "\n")
    text = render_md(data)
    Path(args.out).write_text(text)
    if args.docs:
        update_docs(Path(args.docs), render_docs_table(data))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
