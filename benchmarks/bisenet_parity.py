"""Parity of :func:`faceparse.models.bisenet.convert_bisenet` with the reference BiSeNet (random weights).

Builds the reference network from a local copy of github.com/zllrunning/face-parsing.PyTorch
(``model.py`` + ``resnet.py``; and, with ``--facexlib-dir``, facexlib's ``facexlib/parsing/bisenet.py``
+ ``resnet.py``) with random weights and random BatchNorm statistics, ``torch.save``s its state dict
exactly as the release distributes it (a bare state dict, like ``79999_iter.pth`` /
``parsing_bisenet.pth``), converts it, and compares the logits of the main head (``forward``) and of
the two auxiliary heads (``forward_train``) in eval mode. The reference code is copied to a temporary
folder and never committed; the ImageNet download in the release's ``Resnet18.init_weight`` is
replaced by an empty state dict.

    python benchmarks/bisenet_parity.py --reference-dir /work/.mirror/zllrunning+face-parsing.PyTorch/repo \
        --facexlib-dir /work/.mirror/xinntao+facexlib/repo --out benchmarks/results/bisenet_parity.md

``--reference-dir`` is a checkout or a bare git directory (the files are read at HEAD).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference_repo import commit_of, copy_files, machine, randomize_batchnorm, today

TOL = 1e-4


def _fresh_import(folder: Path, module: str):
    for name in [n for n in sys.modules if n in ("model", "resnet") or n.startswith("fxparsing")]:
        del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(folder))


def build_reference(kind: str, repo: Path, tmp: Path):
    """The reference BiSeNet(19) class of ``kind`` (``zllrunning`` or ``facexlib``), never downloading."""
    if kind == "zllrunning":
        folder = copy_files(repo, {"model.py": "model.py", "resnet.py": "resnet.py"}, tmp / "ref_zll")
        import torch.utils.model_zoo as model_zoo

        model_zoo.load_url = lambda *args, **kwargs: {}  # the release loads ImageNet weights in __init__
        return _fresh_import(folder, "model").BiSeNet(n_classes=19)
    folder = copy_files(
        repo,
        {
            "facexlib/parsing/bisenet.py": "fxparsing/bisenet.py",
            "facexlib/parsing/resnet.py": "fxparsing/resnet.py",
        },
        tmp / "ref_fx",
    )
    (folder / "fxparsing" / "__init__.py").write_text("")  # facexlib's own __init__ imports its downloader
    return _fresh_import(folder, "fxparsing.bisenet").BiSeNet(num_class=19)


def run_one(kind: str, repo: Path, size: int, seed: int, tmp: Path) -> dict:
    from faceparse.models.bisenet import convert_bisenet, match_bisenet

    torch.manual_seed(seed)
    ref = build_reference(kind, repo, tmp)
    randomize_batchnorm(ref, torch.Generator().manual_seed(seed + 1))
    ref.eval()
    ckpt = tmp / f"{kind}_bisenet.pth"
    torch.save(ref.state_dict(), ckpt)
    ok, why = match_bisenet(torch.load(ckpt, weights_only=True))
    model = convert_bisenet(ckpt, tmp / f"{kind}_out").eval()

    img = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed + 2))
    mean, std = torch.tensor(model.input_mean).view(1, 3, 1, 1), torch.tensor(model.input_std).view(1, 3, 1, 1)
    x = (img - mean) / std
    with torch.no_grad():
        r_main, r16, r32 = ref(x)[:3]
        ours = model.forward_train(x)
        main = model(x)
    diffs = {
        "main": (main - r_main).abs().max().item(),
        "aux16": (ours["aux_logits16"] - r16).abs().max().item(),
        "aux32": (ours["aux_logits32"] - r32).abs().max().item(),
    }
    agree = (main.argmax(1) == r_main.argmax(1)).float().mean().item()
    return {
        "kind": kind,
        "commit": commit_of(repo),
        "match": f"{ok}: {why}",
        "params_ref": sum(p.numel() for p in ref.parameters()),
        "params_ours": model.num_parameters(),
        "diffs": diffs,
        "max_logit": r_main.abs().max().item(),
        "argmax": agree,
        "ok": ok and max(diffs.values()) <= TOL,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, type=Path, help="face-parsing.PyTorch checkout or git dir")
    ap.add_argument("--facexlib-dir", type=Path, help="also compare facexlib's BiSeNet (checkout or git dir)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the Markdown result here")
    args = ap.parse_args()

    runs = [("zllrunning", args.reference_dir)] + ([("facexlib", args.facexlib_dir)] if args.facexlib_dir else [])
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_one(kind, repo, args.size, args.seed, Path(tmp)) for kind, repo in runs]

    names = {"zllrunning": "github.com/zllrunning/face-parsing.PyTorch", "facexlib": "github.com/xinntao/facexlib"}
    lines = [
        "# BiSeNet face-parsing parity (random weights)",
        "",
        f"Date: {today()}. Machine: {machine()}.",
        "",
        "Command: `python benchmarks/bisenet_parity.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"Input 1 x 3 x {args.size} x {args.size} (random image, ImageNet-normalised), eval mode, seed {args.seed}; "
        f"random weights and BatchNorm statistics; tolerance max |logit difference| <= {TOL:g}. The reference "
        "state dict is saved with `torch.save(model.state_dict())` (the distributed format), then converted with "
        "`faceparse.models.bisenet.convert_bisenet`.",
        "",
        "| reference | commit | params ref | params faceparse | max abs diff main | aux16 | aux32 "
        "| argmax agreement | max abs logit | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        d = r["diffs"]
        lines.append(
            f"| {names[r['kind']]} | {r['commit'][:7]} | {r['params_ref']:,} | {r['params_ours']:,} | "
            f"{d['main']:.2e} | {d['aux16']:.2e} | {d['aux32']:.2e} | {100 * r['argmax']:.4f}% | "
            f"{r['max_logit']:.2f} | {'ok' if r['ok'] else 'FAIL'} |"
        )
    lines += ["", "`match_bisenet` on the saved files:", ""]
    lines += [f"- {names[r['kind']]}: {r['match']}" for r in results]
    lines += ["", "Full commits: " + ", ".join(f"{names[r['kind']]} @ {r['commit']}" for r in results), ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
