"""Consensus loss vs plain cross-entropy at equal steps: sparsity of the predicted masks.

The claim of Masi et al. (CVPR 2020, Fig. 4b, Tables 1 and 3): training with the structure-via-
consensus loss (Eq. 8) gives less fragmented ("sparse") masks than pixel-wise softmax +
cross-entropy. Setup here, on the procedural synthetic faces with occluders (no download):

- 3 classes as in the paper's occlusion task (label set ``cofw_occlusion``): CelebAMask-HQ face
  parts -> face, everything else -> background, occluder pixels -> occlusion;
- ``consensus_net`` (the paper's encoder-decoder) at quarter width (``--width 16``, 284k parameters;
  64 = published) and 64 x 64 input, to fit a shared 2-core CPU;
- the same initial weights, batches and Adam settings for every run; only the loss differs.
  Consensus: alpha 10, beta 5 (``--betas`` sweeps it, as Fig. 4b does), blobs = one per class per
  image, 8-connected components of each class, or the paper's C map (background, face, one blob
  per occluder; ``--blobs``);
- evaluation on held-out faces with :class:`faceparse.metrics.ConsensusMetrics`: sparsity
  (|#components GT - #components prediction| over non-background pixels, 8-connectivity), the
  same per class, pixel accuracy, mIoU and per-class IoU.

    nice -n 10 python benchmarks/consensus_sparsity.py --steps 500 --seeds 0 1 2 \
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


def make_split(split: str, n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (normalised for consensus_net), 3-class masks and blob maps (the paper's C map:
    background, face, one id per occluder component) of synthetic occluded faces."""
    ds = faceparse.build_dataset(
        "synthetic_occlusion",
        split=split,
        num_samples=n,
        image_size=size,
        seed=seed,
        occluder_prob=1.0,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    samples = [ds[i] for i in range(n)]
    return tuple(torch.stack([s[k] for s in samples]) for k in ("image", "mask", "blobs"))


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, blobs: torch.Tensor, bs: int = 25
) -> dict:
    model.eval()
    together = ConsensusMetrics("cofw_occlusion")
    per_class = ConsensusMetrics("cofw_occlusion", per_class_sparsity=True)
    face = ConsensusMetrics("cofw_occlusion", protocol="cofw")  # face vs rest, as on COFW (no box)
    for i in range(0, len(images), bs):
        pred = model(images[i : i + bs]).argmax(1)
        for m in (together, per_class, face):
            m.update(pred, masks[i : i + bs])
    model.train()
    r, rc, rf = together.compute(), per_class.compute(), face.compute()
    return {
        "sparsity_face": float(rf["sparsity"]),
        "face_iou": float(rf["face_iou"]),
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
    loss_name: str,
    data,
    test,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    eval_every: int,
    width: int,
    init: dict | None = None,
    beta: float = 5.0,
) -> dict:
    """Train one model; ``init`` is a state dict to start from (fine-tuning), else random init.

    ``loss_name`` is ``"ce"`` or ``"consensus-{class,components,given}..."``; ``beta`` weighs the
    consensus term of Eq. 8."""
    images, masks, blob_maps = data
    torch.manual_seed(seed)
    model = faceparse.build_model("consensus_net", width=width)
    if init is not None:
        model.load_state_dict(init)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed + 1)
    curve = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(images), (batch_size,), generator=order)
        x, y, c = images[idx], masks[idx], blob_maps[idx]
        flip = torch.rand(batch_size, generator=order) < 0.5  # flip augmentation (paper's "+reg.")
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        y = torch.where(flip[:, None, None], y.flip(-1), y)
        c = torch.where(flip[:, None, None], c.flip(-1), c)
        logits = model(x)
        if loss_name == "ce":
            loss = F.cross_entropy(logits, y)
        else:  # blobs: one per class, 8-connected components, or given (the paper's C map)
            mode = loss_name.split("-")[1]
            loss = consensus_loss(logits, y, 10.0, beta, blobs=mode, blob_ids=c if mode == "given" else None)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            curve.append((step, evaluate(model, *test)))
            print(
                f"[{loss_name}] step {step}: loss {loss.item():.4f} sparsity {curve[-1][1]['sparsity']:.3f}", flush=True
            )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"final": curve[-1][1], "curve": curve, "seconds": time.perf_counter() - t0, "state": state}


KEYS = ("sparsity_face", "sparsity_per_class", "sparsity", "components_pred", "pixel_acc", "miou", "rec_all")


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    v = np.asarray(values) * scale
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}" if len(v) > 1 else f"{v.mean():.{digits}f}"


def _paired_summary(
    runs: dict[str, list[dict]], names: list[str], label: dict[str, str], seeds: list[int]
) -> list[str]:
    """Per-seed sparsity and the paired consensus - CE difference (same seed = same init and batches).

    The 95 % interval is the paired t interval over seeds (scipy's t quantile).
    """
    from scipy import stats

    keys = [("sparsity_face", "face"), ("sparsity_per_class", "per class"), ("sparsity", "together")]
    lines = ["", "Sparsity per seed at the last step (face / per class / together):", ""]
    lines += ["| seed | " + " | ".join(label[n] for n in names) + " |", "|---:|" + "---:|" * len(names)]
    for i, seed in enumerate(seeds):
        cells = [" / ".join(f"{runs[n][i]['final'][k]:.2f}" for k, _ in keys) for n in names]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    if len(seeds) < 2:
        return lines
    lines += [
        "",
        "Paired difference consensus - CE over seeds (negative = consensus less fragmented), "
        "mean with 95 % t interval, and the number of seeds where consensus is lower:",
        "",
        "| loss | " + " | ".join(f"sparsity ({t})" for _, t in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    q = stats.t.ppf(0.975, len(seeds) - 1)
    for n in names[1:]:
        cells = []
        for k, _ in keys:
            d = np.array([c["final"][k] - e["final"][k] for c, e in zip(runs[n], runs["ce"])])
            half = q * d.std(ddof=1) / np.sqrt(len(d))
            cells.append(
                f"{d.mean():+.2f} [{d.mean() - half:+.2f}, {d.mean() + half:+.2f}], {int((d < 0).sum())}/{len(d)} lower"
            )
        lines.append(f"| {label[n]} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--num-train", type=int, default=512)
    ap.add_argument("--num-test", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--width", type=int, default=16, help="consensus_net width (64 = published)")
    ap.add_argument("--blobs", nargs="+", default=["class"], help="consensus blob modes to compare with CE")
    ap.add_argument(
        "--betas",
        type=float,
        nargs="+",
        default=[5.0],
        help="beta values of Eq. 8 to run for each blob mode (the paper's Fig. 4b sweeps beta; default 5)",
    )
    ap.add_argument("--out", default=None, help="write a Markdown report here")
    ap.add_argument(
        "--pretrain-steps",
        type=int,
        default=0,
        help="fine-tuning protocol: first train with CE for this many steps on all --num-train faces "
        "(shared by both losses of a seed), then train each loss from it on --num-finetune faces",
    )
    ap.add_argument("--pretrain-lr", type=float, default=1e-3)
    ap.add_argument("--num-finetune", type=int, default=64, help="faces in the fine-tuning set")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    betas = {"ce": 5.0}  # run name -> beta of Eq. 8 (unused for CE)
    betas.update(
        {f"consensus-{b}" + ("" if beta == 5 else f"-beta{beta:g}"): beta for b in args.blobs for beta in args.betas}
    )
    names = list(betas)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    data = make_split("train", args.num_train, args.size, 0)  # the same faces for every seed
    test = make_split("test", args.num_test, args.size, 0)
    pretrained = []
    for seed in args.seeds:  # initial weights and batch order change with the seed
        init, train_data = None, data
        if args.pretrain_steps:
            pre = train(
                "ce",
                data,
                test,
                args.pretrain_steps,
                args.batch_size,
                args.pretrain_lr,
                seed,
                args.pretrain_steps,
                args.width,
            )
            pretrained.append(pre["final"])
            init = pre["state"]
            train_data = tuple(t[: args.num_finetune] for t in data)
        for name in names:
            runs[name].append(
                train(
                    name,
                    train_data,
                    test,
                    args.steps,
                    args.batch_size,
                    args.lr,
                    seed,
                    args.eval_every,
                    args.width,
                    init,
                    betas[name],
                )
            )
    total = time.perf_counter() - t0
    classes = get_label_set("cofw_occlusion").classes
    label = {
        n: "softmax + CE"
        if n == "ce"
        else f"structure via consensus ({n.split('-')[1]} blobs"
        + ("" if betas[n] == 5 else f", beta {betas[n]:g}")
        + ")"
        for n in names
    }
    lines = [
        "# Consensus loss vs cross-entropy: sparsity at equal steps (synthetic occluded faces)",
        "",
        f"Date: {datetime.date.today().isoformat()}. Machine: {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, 2-core CPU shared with other jobs, no GPU. "
        f"Total wall time {total / 60:.1f} min.",
        "",
        f"Command: `nice -n 10 python benchmarks/consensus_sparsity.py --steps {args.steps} "
        f"--batch-size {args.batch_size} --size {args.size} --num-train {args.num_train} "
        f"--num-test {args.num_test} --lr {args.lr} --seeds {' '.join(map(str, args.seeds))} "
        f"--width {args.width} --blobs {' '.join(args.blobs)} --betas {' '.join(f'{b:g}' for b in args.betas)} --eval-every {args.eval_every} --threads {args.threads}"
        + (
            f" --pretrain-steps {args.pretrain_steps} --pretrain-lr {args.pretrain_lr} "
            f"--num-finetune {args.num_finetune}"
            if args.pretrain_steps
            else ""
        )
        + "`",
        "",
        f"`consensus_net` (width {args.width}; 64 is the published 4,524,323-parameter network) at "
        f"{args.size} x {args.size}, 3 classes (background, face, occlusion), {args.num_train} training / "
        f"{args.num_test} test synthetic faces, every face with an occluder; Adam lr {args.lr}, batch "
        f"{args.batch_size}, random flips, {args.steps} steps. For each seed (initial weights and batch "
        "order) every loss sees the same initial weights and batches. Consensus loss: alpha 10, beta 5 unless named, "
        "paper normalisation; blobs = one per class per image (official practice), 8-connected components "
        "of each class, or given = the paper's C map (background, face, one blob per occluder component; "
        "Eq. 2). Sparsity = mean over test images of |#components(GT) - #components(prediction)|, "
        "8-connectivity: *face* = face vs the rest (occlusion merged with background, the COFW protocol "
        "of the paper's Table 1), *per class* = components of each non-background class (what the "
        "authors' script counts), *together* = all non-background pixels as one mask.",
        "",
        f"Mean ± std over {len(args.seeds)} seed(s) after {args.steps} steps (lower sparsity is better):",
        "",
        "| loss | sparsity (face) | sparsity (per class) | sparsity (together) | components / image "
        "| pixel acc. | mIoU | rec_all | " + " | ".join(f"IoU {c}" for c in classes) + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(classes),
    ]
    for name in names:
        finals = [r["final"] for r in runs[name]]
        cells = [_mean_std([f[k] for f in finals]) for k in KEYS[:4]]
        cells += [_mean_std([f[k] for f in finals], 100) for k in KEYS[4:]]
        cells += [_mean_std([f["iou"][i] for f in finals], 100) for i in range(len(classes))]
        lines.append(f"| {label[name]} | " + " | ".join(cells) + " |")
    if pretrained:
        lines += [
            "",
            f"Fine-tuning protocol: each seed first trains with CE for {args.pretrain_steps} steps on all "
            f"{args.num_train} faces (lr {args.pretrain_lr}); both losses then start from that model and train "
            f"{args.steps} steps on the first {args.num_finetune} faces at lr {args.lr}. The pretrained models "
            "score: sparsity (face) "
            + _mean_std([f["sparsity_face"] for f in pretrained])
            + ", per class "
            + _mean_std([f["sparsity_per_class"] for f in pretrained])
            + ", together "
            + _mean_std([f["sparsity"] for f in pretrained])
            + ", mIoU "
            + _mean_std([f["miou"] for f in pretrained], 100)
            + ".",
        ]
    gt = runs["ce"][0]["final"]["components_gt"]
    lines += ["", f"Ground truth: {gt:.2f} components per image (per class).", ""]
    lines += ["Sparsity during training (face / per class), mean over seeds:", ""]
    lines += ["| step | " + " | ".join(label[n] for n in names) + " |", "|---:|" + "---:|" * len(names)]
    for i, (step, _) in enumerate(runs["ce"][0]["curve"]):
        cells = []
        for n in names:
            face = np.mean([r["curve"][i][1]["sparsity_face"] for r in runs[n]])
            pc = np.mean([r["curve"][i][1]["sparsity_per_class"] for r in runs[n]])
            cells.append(f"{face:.2f} / {pc:.2f}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += _paired_summary(runs, names, label, args.seeds)
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
