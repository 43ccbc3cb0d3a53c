"""Loader throughput of the dataset adapters on generated trees in the real layouts.

Measures samples/s of ``load_raw`` (file reading and decoding only) and of ``__getitem__`` (plus the
eval transform: resize, normalise, to tensors) for every adapter, and for CelebAMask-HQ the label
path with the cache (one PNG per face) against merging the part PNGs on every read.

    python benchmarks/loaders.py                       # writes benchmarks/results/loaders.md
    python benchmarks/loaders.py --faces 10 --out -    # quick run, print only

Trees are written at realistic sizes (CelebAMask-HQ 1024 px images and 512 px parts, LaPa/Helen
512, COFW 256, Part Labels 250) into a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # fixture_trees: the tests' tree writers

import fixture_trees as fx

from faceparse.data.celebamask_hq import CelebAMaskHQ
from faceparse.data.cofw import COFWDataset
from faceparse.data.helen import HelenDataset
from faceparse.data.lapa import LaPaDataset
from faceparse.data.part_labels import PartLabelsDataset
from faceparse.data.synthetic import SyntheticFaces


def rate(fn, n: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` samples/s of calling ``fn(i)`` for i in range(n)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - t)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=24, help="faces per adapter")
    ap.add_argument("--image-size", type=int, default=512, help="output size of __getitem__")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "loaders.md"), help="'-' = print only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.faces
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        syn = SyntheticFaces(split="train", num_samples=n, image_size=512, seed=1)
        syn.write_celebamask_hq(tmp / "CelebAMask-HQ", n, mask_size=512)
        fx.write_lapa(tmp, counts={"train": n}, size=512)
        fx.write_helen_smith(tmp, counts={"train": n}, size=512)
        fx.write_helen_star(tmp / "star", counts={"train": n}, size=512)
        fx.write_cofw(tmp / "cofw", n_train=1, n_test=n, size=256, version="7.3")
        fx.write_part_labels(tmp / "parts", counts={"train": n}, size=250)
        print(f"trees written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        t0 = time.perf_counter()
        cached = CelebAMaskHQ(tmp / "CelebAMask-HQ", split="all", image_size=args.image_size, progress=False)
        build_s = time.perf_counter() - t0
        uncached = CelebAMaskHQ(tmp / "CelebAMask-HQ", split="all", image_size=args.image_size, cache=False)
        parts = sum(len(v) for v in uncached.part_files.values()) / len(uncached)
        m_c, m_u = rate(cached.load_mask, n), rate(uncached.load_mask, n)
        r_c, r_u = rate(cached.load_raw, n), rate(uncached.load_raw, n)
        g_c, g_u = rate(cached.__getitem__, n), rate(uncached.__getitem__, n)
        rows.append(("celebamask_hq (cached)", "1024 img / 512 lbl", r_c, g_c))
        rows.append(("celebamask_hq (merge every read)", "1024 img / 512 lbl", r_u, g_u))

        adapters = [
            ("lapa", "512", LaPaDataset(tmp, split="train", image_size=args.image_size)),
            ("helen (smith, 11 maps)", "512", HelenDataset(tmp, split="train", image_size=args.image_size)),
            ("helen (HELEN*)", "512", HelenDataset(tmp / "star", split="train", image_size=args.image_size)),
            (
                "helen (HELEN*, crop 1.2x)",
                "512",
                HelenDataset(tmp / "star", split="train", image_size=args.image_size, crop_face=True),
            ),
            ("lapa (aligned 5-point)", "512", LaPaDataset(tmp, split="train", image_size=args.image_size, align=True)),
            ("cofw (v7.3, test masks)", "256", COFWDataset(tmp / "cofw", split="test", image_size=args.image_size)),
            (
                "part_labels (+superpixels)",
                "250",
                PartLabelsDataset(tmp / "parts", split="train", image_size=args.image_size),
            ),
        ]
        for name, size, ds in adapters:
            rows.append((name, size, rate(ds.load_raw, len(ds)), rate(ds.__getitem__, len(ds))))

    lines = [
        "# Dataset loader throughput",
        "",
        f"Date: 2026-11-22. Machine: {platform.processor() or platform.machine()}, 2-core CPU, no GPU, shared "
        "with other jobs (single process, 1 torch thread, best of 3 passes).",
        f"Command: `python benchmarks/loaders.py --faces {n} --image-size {args.image_size}`",
        "",
        "## CelebAMask-HQ label cache",
        "",
        f"{n} faces, {parts:.1f} part PNGs per face on average (512 x 512), cache built once in {build_s:.2f} s "
        f"({n / build_s:.1f} faces/s).",
        "",
        "| path | cached (faces/s) | merge every read (faces/s) | speed-up |",
        "|---|---:|---:|---:|",
        f"| label map only (`load_mask`) | {m_c:.1f} | {m_u:.1f} | **{m_c / m_u:.1f}x** |",
        f"| raw sample (`load_raw`: + 1024 px JPEG decode and resize) | {r_c:.1f} | {r_u:.1f} | {r_c / r_u:.1f}x |",
        f"| tensor sample (`__getitem__`, eval transform at {args.image_size}) | {g_c:.1f} | {g_u:.1f} | {g_c / g_u:.1f}x |",
        "",
        "## All adapters",
        "",
        f"| adapter | source size | `load_raw` (samples/s) | `__getitem__` at {args.image_size} (samples/s) |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {name} | {size} | {r:.1f} | {g:.1f} |" for name, size, r, g in rows]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += [
        "",
        "Notes:",
        f"- Load average during the run: {load:.1f} (other jobs on the same 2 cores): compare ratios within "
        "this table, not absolute figures across runs.",
        "- The cache replaces the label path (one PNG instead of ~14 part PNGs): that is the figure the "
        "cache is judged on. A raw sample adds the 1024 px JPEG decode (at half scale); the tensor sample adds "
        "the shared eval transform (resize, normalise, to tensors), the same cost for both paths.",
        "- Helen (original layout) reads 11 soft class maps per face, hence its low rate; LaPa aligned adds "
        "one affine warp of image and mask.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out != "-":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
