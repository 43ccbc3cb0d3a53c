"""Consensus loss vs plain cross-entropy at equal steps: sparsity of the predicted masks.

The claim of Masi et al. (CVPR 2020, Fig. 4b, Tables 1 and 3): training with the structure-via-
consensus loss (Eq. 8) gives less fragmented ("sparse") masks than pixel-wise softmax +
cross-entropy. Setup here, on the procedural synthetic faces with occluders (no download):

- 3 classes as in the paper's occlusion task (label set ``cofw_occlusion``): CelebAMask-HQ face
  parts -> face, everything else -> background, occluder pixels -> occlusion;
- ``consensus_net`` (the paper's encoder-decoder) at half width (``--width 32``, 1.13M parameters;
  64 = published) and 64 x 64 input, to fit a shared 2-core CPU;
- the same initial weights, batches and Adam settings for both losses; only the loss differs.
  Consensus: alpha 10, beta 5, blobs = 8-connected components of each class;
- evaluation on held-out faces with :class:`faceparse.metrics.ConsensusMetrics`: sparsity
  (|#components GT - #components prediction| over non-background pixels, 8-connectivity), the
  same per class, pixel accuracy, mIoU and per-class IoU.

    nice -n 10 python benchmarks/consensus_sparsity.py --steps 150 \
        --out benchmarks/results/consensus_sparsity.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import faceparse
from faceparse.labels import get_label_set
from faceparse.losses.consensus import consensus_loss
from faceparse.metrics import ConsensusMetrics


def make_split(split: str, n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (normalised for consensus_net) and 3-class masks of synthetic occluded faces."""
    ds = faceparse.build_dataset(
        "synthetic",
        split=split,
        num_samples=n,
        image_size=size,
        seed=seed,
        occluder_prob=1.0,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    lut = torch.as_tensor(ds.label_set.mapping_to(get_label_set("cofw_occlusion")))
    images, masks = [], []
    for i in range(n):
        s = ds[i]
        m = lut[s["mask"]]
        m[s["occlusion"] > 0] = 2
        images.append(s["image"])
        masks.append(m)
    return torch.stack(images), torch.stack(masks)


@torch.no_grad()
def evaluate(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, bs: int = 25) -> dict:
    model.eval()
    together = ConsensusMetrics("cofw_occlusion")
    per_class = ConsensusMetrics("cofw_occlusion", per_class_sparsity=True)
    for i in range(0, len(images), bs):
        pred = model(images[i : i + bs]).argmax(1)
        together.update(pred, masks[i : i + bs])
        per_class.update(pred, masks[i : i + bs])
    model.train()
    r, rc = together.compute(), per_class.compute()
    return {
        "sparsity": float(r["sparsity"]),
        "sparsity_per_class": float(rc["sparsity"]),
        "components_pred": float(rc["components_pred"]),
        "components_gt": float(rc["components_gt"]),
        "pixel_acc": float(r["pixel_acc"]),
        "miou": float(r["miou"]),
        "rec_all": float(r["rec_all"]),
        "iou": [float(v) for v in r["iou"]],
    }


def train(
    loss_name: str, data, test, steps: int, batch_size: int, lr: float, seed: int, eval_every: int, width: int
) -> dict:
    images, masks = data
    torch.manual_seed(seed)
    model = faceparse.build_model("consensus_net", width=width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed + 1)
    curve = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(images), (batch_size,), generator=order)
        x, y = images[idx], masks[idx]
        flip = torch.rand(batch_size, generator=order) < 0.5  # flip augmentation (paper's "+reg.")
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        logits = model(x)
        if loss_name == "ce":
            loss = F.cross_entropy(logits, y)
        else:  # "consensus-class" / "consensus-components"
            loss = consensus_loss(logits, y, alpha=10.0, beta=5.0, blobs=loss_name.split("-")[1])["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            curve.append((step, evaluate(model, *test)))
            print(
                f"[{loss_name}] step {step}: loss {loss.item():.4f} sparsity {curve[-1][1]['sparsity']:.3f}", flush=True
            )
    return {"final": curve[-1][1], "curve": curve, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--num-train", type=int, default=512)
    ap.add_argument("--num-test", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=16, help="consensus_net width (64 = published)")
    ap.add_argument(
        "--blobs", nargs="+", default=["class", "components"], help="consensus blob modes to compare with CE"
    )
    ap.add_argument("--out", default=None, help="write a Markdown report here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = make_split("train", args.num_train, args.size, args.seed)
    test = make_split("test", args.num_test, args.size, args.seed)
    runs = {
        name: train(name, data, test, args.steps, args.batch_size, args.lr, args.seed, args.eval_every, args.width)
        for name in ["ce", *(f"consensus-{b}" for b in args.blobs)]
    }
    total = time.perf_counter() - t0
    classes = get_label_set("cofw_occlusion").classes
    lines = [
        "# Consensus loss vs cross-entropy: sparsity at equal steps (synthetic occluded faces)",
        "",
        f"Date: {datetime.date.today().isoformat()}. Machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, 2-core CPU shared with other jobs, no GPU. "
        f"Total wall time {total / 60:.1f} min.",
        "",
        f"Command: `nice -n 10 python benchmarks/consensus_sparsity.py --steps {args.steps} "
        f"--batch-size {args.batch_size} --size {args.size} --num-train {args.num_train} "
        f"--num-test {args.num_test} --lr {args.lr} --seed {args.seed} --width {args.width} --blobs {' '.join(args.blobs)}`",
        "",
        f"`consensus_net` (width {args.width}; 64 is the published 4,524,323-parameter network) "
        f"at {args.size} x {args.size}, 3 classes (background, face, "
        f"occlusion), {args.num_train} training / {args.num_test} test synthetic faces, every face with an "
        f"occluder; Adam lr {args.lr}, batch {args.batch_size}, random flips, {args.steps} steps; same "
        "initial weights and batches for every run. Consensus loss: alpha 10, beta 5, paper normalisation, "
        "blobs = one per class per image (official practice) or 8-connected components of each class. Sparsity = mean over test images of "
        "|#components(GT) - #components(prediction)|, 8-connectivity, non-background pixels together "
        "(the issue's definition) or per class (what the authors' script counts).",
        "",
        "| loss | sparsity (together) | sparsity (per class) | components / image (pred, GT per class) "
        "| pixel acc. | mIoU | rec_all | " + " | ".join(f"IoU {c}" for c in classes) + " | train time |",
        "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(classes) + "---:|",
    ]
    for name, run in runs.items():
        r = run["final"]
        label = "softmax + CE" if name == "ce" else f"structure via consensus, {name.split('-')[1]} blobs"
        lines.append(
            f"| {label} | {r['sparsity']:.2f} | {r['sparsity_per_class']:.2f} | "
            f"{r['components_pred']:.2f} ({r['components_gt']:.2f}) | {100 * r['pixel_acc']:.2f} | "
            f"{100 * r['miou']:.2f} | {100 * r['rec_all']:.2f} | "
            + " | ".join(f"{100 * v:.2f}" for v in r["iou"])
            + f" | {run['seconds']:.0f} s |"
        )
    lines += ["", "Sparsity during training, together / per class (evaluated on the test faces):", ""]
    lines += ["| step | " + " | ".join(runs) + " |", "|---:|" + "---:|" * len(runs)]
    for i, (step, _) in enumerate(runs["ce"]["curve"]):
        cells = [
            f"{r['curve'][i][1]['sparsity']:.2f} / {r['curve'][i][1]['sparsity_per_class']:.2f}" for r in runs.values()
        ]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
