"""Parity of :func:`faceparse.models.segformer_hf.convert_segformer_hf` with transformers'
``SegformerForSemanticSegmentation`` at the size of the Hub face parser (random weights).

Builds transformers' SegFormer with the architecture of ``jonathandinu/face-parsing`` (MiT-b5: widths
64/128/320/512, depths 3/6/40/3, heads 1/2/5/8, decoder 768, its 19 ``id2label`` names), random weights
(transformers' initialisation) and random BatchNorm statistics, writes it with ``save_pretrained``
(config.json + model.safetensors, the Hub layout), converts the folder and compares, in eval mode on
a random ImageNet-normalised 512 x 512 input:

- the 1/4-resolution logits (what transformers returns) with :meth:`SegformerHF.forward_quarter`;
- faceparse's full-resolution logits with transformers' logits upsampled bilinearly
  (``align_corners=False``, as its loss and the model card do).

    python benchmarks/segformer_hf_parity.py --out benchmarks/results/segformer_hf_parity.md

Needs transformers (``pip install -e '.[hf]'``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _reference_repo import machine, randomize_batchnorm, today

TOL = 1e-4
HUB_ID2LABEL = dict(
    enumerate(
        "background skin nose eye_g l_eye r_eye l_brow r_brow l_ear r_ear mouth u_lip l_lip hair hat ear_r "
        "neck_l neck cloth".split()
    )
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the Markdown result here")
    args = ap.parse_args()

    import transformers

    from faceparse.models.segformer_hf import convert_segformer_hf, match_segformer_hf

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(args.seed)
        cfg = transformers.SegformerConfig(
            hidden_sizes=[64, 128, 320, 512],
            depths=[3, 6, 40, 3],
            num_attention_heads=[1, 2, 5, 8],
            decoder_hidden_size=768,
            num_labels=19,
            id2label=HUB_ID2LABEL,
            label2id={v: k for k, v in HUB_ID2LABEL.items()},
        )
        ref = transformers.SegformerForSemanticSegmentation(cfg)
        randomize_batchnorm(ref, torch.Generator().manual_seed(args.seed + 1))
        ref.eval()
        ref.save_pretrained(tmp / "face-parsing")
        from safetensors.torch import load_file

        ok, why = match_segformer_hf(load_file(str(tmp / "face-parsing" / "model.safetensors")))
        model = convert_segformer_hf(tmp / "face-parsing", tmp / "out").eval()

        img = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed + 2))
        mean = torch.tensor(model.input_mean).view(1, 3, 1, 1)
        std = torch.tensor(model.input_std).view(1, 3, 1, 1)
        x = (img - mean) / std
        with torch.no_grad():
            t1 = time.perf_counter()
            r_quarter = ref(pixel_values=x).logits
            t_ref = time.perf_counter() - t1
            t1 = time.perf_counter()
            quarter = model.forward_quarter(x)
            t_ours = time.perf_counter() - t1
            full = model(x)
        r_full = F.interpolate(r_quarter, size=x.shape[-2:], mode="bilinear", align_corners=False)
    d_quarter = (quarter - r_quarter).abs().max().item()
    d_full = (full - r_full).abs().max().item()
    agree = (full.argmax(1) == r_full.argmax(1)).float().mean().item()
    n_ref = sum(p.numel() for p in ref.parameters())
    n_ours = sum(p.numel() for p in model.parameters())
    passed = ok and max(d_quarter, d_full) <= TOL
    lines = [
        "# SegFormer (transformers, jonathandinu/face-parsing architecture) parity (random weights)",
        "",
        f"Date: {today()}. Machine: {machine()}. Run time {time.perf_counter() - t0:.0f} s.",
        "",
        "Command: `python benchmarks/segformer_hf_parity.py --out benchmarks/results/segformer_hf_parity.md`",
        "",
        f"Reference: transformers {transformers.__version__} `SegformerForSemanticSegmentation` (PyPI package, "
        "not a repository checkout), config of jonathandinu/face-parsing: MiT-b5 widths 64/128/320/512, depths "
        "3/6/40/3, heads 1/2/5/8, decoder 768, 19 labels (its `id2label`). Written with `save_pretrained` "
        "(config.json + model.safetensors, the Hub layout), converted with "
        "`faceparse.models.segformer_hf.convert_segformer_hf` from the folder.",
        "",
        f"Input 1 x 3 x {args.size} x {args.size} (random image, ImageNet mean/std), eval mode, seed {args.seed}; "
        f"random weights and BatchNorm statistics; tolerance max |difference| <= {TOL}.",
        "",
        "| params ref | params faceparse | max abs diff 1/4-res logits | max abs diff full-res logits | "
        "argmax agreement | max abs logit | forward ref / faceparse | status |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {n_ref:,} | {n_ours:,} | {d_quarter:.2e} | {d_full:.2e} | {agree:.4%} | "
        f"{r_quarter.abs().max().item():.2f} | {t_ref:.1f} s / {t_ours:.1f} s | {'ok' if passed else 'FAIL'} |",
        "",
        f"Label set of the converted model: `{model.label_set.name}` (from config.json `id2label`). "
        f"`match_segformer_hf` on the saved file: {ok}: {why}",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
