"""Parity of :func:`faceparse.models.parsenet.convert_parsenet` with facexlib's ParseNet (random weights).

Builds ``ParseNet(in_size=512, out_size=512, parsing_ch=19)`` (how facexlib's ``init_parsing_model``
builds it for ``parsing_parsenet.pth``) from a local copy of github.com/xinntao/facexlib
(``facexlib/parsing/parsenet.py``, copied to a temporary folder, never committed) with random weights
and random BatchNorm statistics, ``torch.save``s its state dict exactly as distributed (a bare state
dict), converts it, and compares the parsing logits and the restored-image head in eval mode on an
input normalised with mean 0.5 / std 0.5.

    python benchmarks/parsenet_parity.py --reference-dir /work/.mirror/xinntao+facexlib/repo \
        --out benchmarks/results/parsenet_parity.md

``--reference-dir`` is a checkout or a bare git directory (read at HEAD).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference_repo import commit_of, copy_files, machine, randomize_batchnorm, today

TOL = 1e-4


def build_reference(repo: Path, tmp: Path):
    folder = copy_files(repo, {"facexlib/parsing/parsenet.py": "ref_parsenet.py"}, tmp / "ref_fx")
    sys.path.insert(0, str(folder))
    try:
        module = importlib.import_module("ref_parsenet")
    finally:
        sys.path.remove(str(folder))
    return module.ParseNet(in_size=512, out_size=512, parsing_ch=19)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, type=Path, help="facexlib checkout or git dir")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the Markdown result here")
    args = ap.parse_args()

    from faceparse.models.parsenet import convert_parsenet, match_parsenet

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(args.seed)
        ref = build_reference(args.reference_dir, tmp)
        randomize_batchnorm(ref, torch.Generator().manual_seed(args.seed + 1))
        ref.eval()
        ckpt = tmp / "parsing_parsenet.pth"
        torch.save(ref.state_dict(), ckpt)
        ok, why = match_parsenet(torch.load(ckpt, weights_only=True))
        model = convert_parsenet(ckpt, tmp / "out").eval()

        img = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed + 2))
        mean = torch.tensor(model.input_mean).view(1, 3, 1, 1)
        std = torch.tensor(model.input_std).view(1, 3, 1, 1)
        x = (img - mean) / std
        with torch.no_grad():
            r_mask, r_img = ref(x)
            ours = model.forward_train(x)
    d_mask = (ours["logits"] - r_mask).abs().max().item()
    d_img = (ours["restored_image"] - r_img).abs().max().item()
    agree = (ours["logits"].argmax(1) == r_mask.argmax(1)).float().mean().item()
    passed = ok and max(d_mask, d_img) <= TOL
    commit = commit_of(args.reference_dir)
    lines = [
        "# ParseNet (facexlib / PSFRGAN) parity (random weights)",
        "",
        f"Date: {today()}. Machine: {machine()}. Run time {time.perf_counter() - t0:.0f} s.",
        "",
        "Command: `python benchmarks/parsenet_parity.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"Reference: github.com/xinntao/facexlib @ {commit} (`facexlib/parsing/parsenet.py`, "
        "`ParseNet(in_size=512, out_size=512, parsing_ch=19)`; local copy, not committed).",
        "",
        f"Input 1 x 3 x {args.size} x {args.size} (random image, normalised with mean 0.5 / std 0.5), eval mode, "
        f"seed {args.seed}; random weights and BatchNorm statistics; tolerance max |difference| <= {TOL:g}. The "
        "reference state dict is saved with `torch.save(model.state_dict())` (the distributed format), then "
        "converted with `faceparse.models.parsenet.convert_parsenet`.",
        "",
        "| params ref | params faceparse | max abs diff logits | max abs diff restored image | argmax agreement "
        "| max abs logit | status |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {sum(p.numel() for p in ref.parameters()):,} | {model.num_parameters():,} | {d_mask:.2e} | {d_img:.2e} | "
        f"{100 * agree:.4f}% | {r_mask.abs().max().item():.2f} | {'ok' if passed else 'FAIL'} |",
        "",
        f"`match_parsenet` on the saved file: {ok}: {why}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
