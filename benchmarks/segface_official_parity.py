"""Parity of ``faceparse convert segface`` against the official SegFace code (random weights).

For each backbone: build the official model from a local copy of the public repository
Kartik-3004/SegFace (never committed here) with random weights, save its state dict in the official
checkpoint format (``{"state_dict_backbone", "optimizer", "scheduler"}``), convert it with
``faceparse convert segface``, load the faceparse model directory and compare logits on the same
random input. Torchvision ImageNet weights are not downloaded: the official constructors are called
with ``weights``/``pretrained`` stripped.

    python benchmarks/segface_official_parity.py /tmp/segface_official --size 512 \
        --out benchmarks/results/segface_official_parity.md

Speed (``--time``): the same converted weights in both models, ``torch.inference_mode``, fp32;
rounds interleave the two (official, faceparse, official, ...) and each model's median is reported
with the max |logit difference| of the same inputs:

    nice -n 10 python benchmarks/segface_official_parity.py /tmp/segface_official --time \
        --models mobilenet convnext_base swin_base --batches 1 8 --rounds 3 2 --size 512 \
        --official-commit 9416628 --out benchmarks/results/segface_official_speed.md

Known exceptions, checked separately:
- official ``resnet`` never records its features (its hook skips it) and crashes in forward, so only
  the conversion (key names and shapes) is checked for it;
- official ``convnext_tiny`` builds ConvNeXt-S, so it is converted with ``--backbone convnext_small``;
- official LaPa models warp their input with landmarks (not reproduced); Helen/CelebAMask-HQ are
  compared.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

OFFICIAL_MODELS = [
    "swin_base",
    "swinv2_base",
    "swinv2_small",
    "swinv2_tiny",
    "convnext_base",
    "convnext_small",
    "convnext_tiny",
    "resnet",
    "mobilenet",
    "efficientnet",
]


def _no_download(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        kwargs.pop("weights", None)
        kwargs.pop("pretrained", None)
        return fn(*args, weights=None)

    return wrapper


def import_official(repo: Path):
    """Import the official model classes with torchvision constructors that never download."""
    import torchvision.models as tvm

    for name in (
        "swin_b swin_v2_b swin_v2_s swin_v2_t convnext_large convnext_base convnext_small convnext_tiny "
        "resnet101 mobilenet_v3_large efficientnet_v2_m"
    ).split():
        setattr(tvm, name, _no_download(getattr(tvm, name)))
    sys.path.insert(0, str(repo))
    from network.models.segface_celeb import SegFaceCeleb
    from network.models.segface_helen import SegFaceHelen

    return {"celebamask_hq": SegFaceCeleb, "helen": SegFaceHelen}


def save_official_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Write the official train.py checkpoint layout (optimizer/scheduler states included)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[80, 200], gamma=0.1)
    ckpt = {"state_dict_backbone": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    torch.save(ckpt, path)


def build_pair(classes, dataset: str, official: str, size: int, tmp: Path):
    """The official model (random weights, seed 0) and the faceparse model converted from its checkpoint."""
    from faceparse.models.base import load_model
    from faceparse.models.segface import convert_segface

    torch.manual_seed(0)
    ref = classes[dataset](size, official).eval()
    ckpt = tmp / f"{dataset}_{official}.pt"
    save_official_checkpoint(ref, ckpt)
    backbone = "convnext_small" if official == "convnext_tiny" else official
    out_dir = tmp / f"{dataset}_{official}"
    convert_segface(str(ckpt), str(out_dir), backbone=backbone, dataset=dataset)
    return ref, load_model(out_dir).eval(), backbone


def _official_logits(ref: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = ref(x.clone(), {}, None)  # the official forward clears/fills hooks; x is not modified
    return y.unsqueeze(0) if y.dim() == 3 else y  # official .squeeze() drops the batch of 1


def time_pair(ref, ours, batch: int, size: int, rounds: int, backbone: bool = False) -> dict:
    """Interleaved timing (official, faceparse, official, ...), medians in seconds per batch. The max
    |logit difference| is taken on the first round's outputs (same input for both)."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    fns = [("official", lambda: _official_logits(ref, x)), ("faceparse", lambda: ours(x))]
    if backbone:  # faceparse's backbone alone (the torchvision code both models run)
        fns.append(("backbone", lambda: ours.features(x)[-1]))
    times: dict[str, list[float]] = {name: [] for name, _ in fns}
    cpu: dict[str, list[float]] = {name: [] for name, _ in fns}
    outs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, fn in fns:
                t0, c0 = time.perf_counter(), time.process_time()
                y = fn()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                outs.setdefault(name, y)
                del y
    diff = (outs["official"] - outs["faceparse"]).abs().max().item()
    scale = outs["official"].abs().max().item()
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {"wall": med, "cpu": med_cpu, "diff": diff, "scale": scale, "times": times}


def warm_up(ref, ours, size: int) -> None:
    """One untimed batch-1 call of each model (oneDNN primitive creation, first-touch allocation)."""
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        _official_logits(ref, x)
        ours(x)


def run_timing(args, classes, commit: str) -> None:
    rounds = args.rounds + [args.rounds[-1]] * (len(args.batches) - len(args.rounds))
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for official in args.models:
            ref, ours, backbone = build_pair(classes, args.datasets[0], official, args.size, Path(tmp))
            warm_up(ref, ours, args.size)
            for batch, n in zip(args.batches, rounds):
                load = os.getloadavg()[0]
                r = time_pair(ref, ours, batch, args.size, n, args.backbone)
                wall, cpu = r["wall"], r["cpu"]
                ratio, cpu_ratio = wall["official"] / wall["faceparse"], cpu["official"] / cpu["faceparse"]
                bb = cpu.get("backbone", float("nan"))
                rows.append((official, batch, n, wall["official"], wall["faceparse"], ratio, cpu["official"],
                             cpu["faceparse"], cpu_ratio, r["diff"], r["scale"], load, bb))  # fmt: skip
                print(f"{official:14s} b{batch} rounds {n}: wall official {wall['official']:.3f}s faceparse "
                      f"{wall['faceparse']:.3f}s x{ratio:.2f}; cpu official {cpu['official']:.3f}s faceparse "
                      f"{cpu['faceparse']:.3f}s x{cpu_ratio:.2f} backbone {bb:.3f}s  max|diff| {r['diff']:.2e}  load {load:.2f}  "
                      f"all {[[round(t, 3) for t in v] for v in r['times'].values()]}", flush=True)  # fmt: skip
            del ref, ours
    load_after = os.getloadavg()
    header = [
        "| official --model | batch | rounds | official wall s | faceparse wall s | wall speed-up | official CPU s "
        "| faceparse CPU s | CPU-time speed-up | max abs logit diff | 1-min load |"
        + (" backbone CPU s (share of faceparse) | ceiling official / backbone |" if args.backbone else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.backbone else ""),
    ]
    table = [
        f"| {o} | {b} | {n} | {t1:.2f} | {t2:.2f} | **{ratio:.2f}x** | {c1:.2f} | {c2:.2f} | **{cr:.2f}x** | "
        f"{d:.1e} (max abs logit {sc:.2f}) | {ld:.1f} |"
        + (f" {bb:.2f} ({bb / c2:.0%}) | {c1 / bb:.2f}x |" if args.backbone else "")
        for o, b, n, t1, t2, ratio, c1, c2, cr, d, sc, ld, bb in rows
    ]
    command = (
        f"`nice -n 10 python benchmarks/segface_official_parity.py OFFICIAL_REPO --time --size {args.size} "
        f"--threads {args.threads}{' --backbone' if args.backbone else ''} --models {' '.join(args.models)} --batches {' '.join(map(str, args.batches))} "
        f"--rounds {' '.join(map(str, args.rounds))}`"
    )
    run_info = (
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: {command}; load average "
        f"{load_before[0]:.2f}/{load_before[1]:.2f} before, {load_after[0]:.2f}/{load_after[1]:.2f} after."
    )
    if not args.out:
        return
    if args.append and args.out.is_file():
        text = args.out.read_text()
        head, sep, notes = text.partition("\nNotes:")
        args.out.write_text(
            head.rstrip("\n") + "\n\n" + run_info + "\n\n" + "\n".join([*header, *table]) + "\n" + sep + notes
        )
        return
    from faceparse.profiling import machine_description

    lines = [
        "# SegFace: faceparse vs the official code, inference speed at identical logits",
        "",
        f"Date: {datetime.date.today().isoformat()}. Machine: shared CPU, {machine_description()}; other jobs "
        f"ran beside it, so only the interleaved ratios count. fp32, `torch.inference_mode()`, input "
        f"{args.size} x {args.size}.",
        f"Official code: github.com/Kartik-3004/SegFace @ {commit or 'unknown'} (local copy, not committed), "
        "random weights (seed 0), converted with `faceparse convert segface`.",
        "",
        "Per model: one untimed batch-1 call of each (warm-up); per row: `rounds` interleaved rounds "
        "(official, faceparse, official, ...) on one random input, median seconds per batch, and the max "
        "|logit difference| of the first round's outputs. CPU s: the process's CPU time (all torch threads) "
        "per batch, less sensitive than wall time to other jobs taking the cores.",
        "",
        run_info,
        "",
        *header,
        *table,
        "",
        "Notes:",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("repo", type=Path, help="local copy (work tree) of github.com/Kartik-3004/SegFace")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--models", nargs="*", default=OFFICIAL_MODELS)
    ap.add_argument("--datasets", nargs="*", default=["celebamask_hq", "helen"])
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--out", type=Path, default=None, help="write a Markdown table here")
    ap.add_argument("--append", action="store_true", help="append rows to --out instead of rewriting it")
    ap.add_argument("--official-commit", default=None, help="commit of the official copy (if not a git work tree)")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--time", action="store_true", help="time both models (interleaved) instead of parity only")
    ap.add_argument(
        "--backbone", action="store_true", help="--time: also time faceparse's backbone alone (CPU-time share)"
    )
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 8], help="--time: batch sizes")
    ap.add_argument("--rounds", type=int, nargs="*", default=[3, 2], help="--time: rounds per batch size")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    classes = import_official(args.repo)
    try:
        commit = subprocess.run(
            ["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    commit = args.official_commit or commit
    if args.time:
        run_timing(args, classes, commit)
        return
    rows = []
    ok_all = True
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            for official in args.models:
                t0 = time.time()
                ref, ours, backbone = build_pair(classes, dataset, official, args.size, Path(tmp))
                n_ref = sum(p.numel() for p in ref.parameters())
                n_ours = ours.num_parameters()
                x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
                if official == "resnet":
                    diff, status = float("nan"), "converted (official forward crashes)"
                else:
                    with torch.no_grad():
                        y_ref = _official_logits(ref, x)
                        y_ours = ours(x)
                    diff = (y_ref - y_ours).abs().max().item()
                    scale = y_ref.abs().max().item()
                    status = "ok" if diff <= args.tol else "FAIL"
                    ok_all &= diff <= args.tol
                    status += f" (max abs logit {scale:.2f})"
                dt = time.time() - t0
                row = (dataset, official, f"--backbone {backbone}", n_ref, n_ours, diff, status, dt)
                rows.append(row)
                print(f"{dataset:14s} {official:14s} params {n_ref / 1e6:8.3f}M -> {n_ours / 1e6:8.3f}M  "
                      f"max|diff| {diff:.2e}  {status}  {dt:.0f}s", flush=True)  # fmt: skip
                del ref, ours
    header = [
        "| dataset | official --model | convert with | params official | params faceparse | max abs diff | status |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    table = [f"| {d} | {o} | `{b}` | {n1:,} | {n2:,} | {diff:.2e} | {st} |" for d, o, b, n1, n2, diff, st, _ in rows]
    if args.out and args.append and args.out.is_file():
        text = args.out.read_text()
        head, sep, notes = text.partition("\nNotes:")
        extra = (
            f"\nAlso: `--size {args.size} --datasets {' '.join(args.datasets)} --models {' '.join(args.models)}`:\n\n"
        )
        args.out.write_text(head.rstrip("\n") + "\n" + extra + "\n".join([*header, *table]) + "\n" + sep + notes)
    elif args.out:
        lines = [
            "# SegFace official-code parity (random weights)",
            "",
            f"Date: {datetime.date.today().isoformat()}. Machine: {platform.machine()} CPU "
            f"({torch.get_num_threads()} threads), shared with other jobs. torch {torch.__version__}.",
            f"Official code: github.com/Kartik-3004/SegFace @ {commit or 'unknown'} (local copy, not committed).",
            "",
            f"Command: `python benchmarks/segface_official_parity.py OFFICIAL_REPO --size {args.size} "
            f"--batch {args.batch} --out {args.out}`",
            "",
            f"Input {args.batch} x 3 x {args.size} x {args.size}; tolerance max |logit difference| <= {args.tol:g}.",
            "Parameters: official model (incl. the unused Swin final norm) vs converted faceparse model.",
            "",
            *header,
            *table,
        ]
        lines += [
            "",
            "Notes: the official `convnext_tiny` option builds ConvNeXt-S (so it converts as convnext_small); "
            "the official `resnet` option never records its features and crashes in forward, so only its "
            "conversion is checked; LaPa models (input tanh-warp from landmarks) are not compared.",
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    sys.exit(0 if ok_all else 1)


if __name__ == "__main__":
    main()
