"""Parity of ``faceparse convert segface`` against the official SegFace code (random weights).

For each backbone: build the official model from a local copy of the public repository
Kartik-3004/SegFace (never committed here) with random weights, save its state dict in the official
checkpoint format (``{"state_dict_backbone", "optimizer", "scheduler"}``), convert it with
``faceparse convert segface``, load the faceparse model directory and compare logits on the same
random input. Torchvision ImageNet weights are not downloaded: the official constructors are called
with ``weights``/``pretrained`` stripped.

    python benchmarks/segface_official_parity.py /tmp/segface_official --size 512 \
        --out benchmarks/results/segface_official_parity.md

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
import platform
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
    args = ap.parse_args()
    torch.set_num_threads(2)

    from faceparse.models.base import load_model
    from faceparse.models.segface import convert_segface

    classes = import_official(args.repo)
    try:
        commit = subprocess.run(
            ["git", "-C", str(args.repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    commit = args.official_commit or commit
    rows = []
    ok_all = True
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            for official in args.models:
                t0 = time.time()
                torch.manual_seed(0)
                ref = classes[dataset](args.size, official).eval()
                ckpt = Path(tmp) / f"{dataset}_{official}.pt"
                save_official_checkpoint(ref, ckpt)
                backbone = "convnext_small" if official == "convnext_tiny" else official
                out_dir = Path(tmp) / f"{dataset}_{official}"
                convert_segface(str(ckpt), str(out_dir), backbone=backbone, dataset=dataset)
                ours = load_model(out_dir).eval()
                n_ref = sum(p.numel() for p in ref.parameters())
                n_ours = ours.num_parameters()
                x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
                if official == "resnet":
                    diff, status = float("nan"), "converted (official forward crashes)"
                else:
                    with torch.no_grad():
                        y_ref = ref(x.clone(), {}, None)
                        y_ours = ours(x)
                    if y_ref.dim() == 3:  # official .squeeze() paths keep the batch for B=1 here
                        y_ref = y_ref.unsqueeze(0)
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
