"""SegFace (MobileNetV3-L) vs smp U-Net baselines on synthetic faces, equal steps, from scratch.

Every model (SegFace, the default ``unet`` with ResNet-34, and a ``unet`` on the same MobileNetV3-L
backbone) trains on the same batches (same seed, same order) of procedural synthetic faces with the
same loss (faceparse ``ce_dice``: 0.5 CE + 0.5 Dice, the SegFace recipe; ``--class-weights balanced``
adds median-frequency weights to the CE term), optimiser (AdamW) and schedule (linear warm-up +
cosine), then is scored on the same held-out synthetic test faces with ``FaceParsingMetrics``
(dataset-level per-class F1). The rare classes of the synthetic generator are eyeglasses (12 % of
faces), earring (8 %), hat (7 %) and necklace (6 %).

    # one process per model (they share the cached faces' seed), then the combined table
    python benchmarks/segface_vs_unet.py --models segface_mobilenet_v3_large --steps 1800 --batch-size 8 \
        --size 128 --lr 0.002 --class-weights balanced --threads 1 --eval-every 600
    python benchmarks/segface_vs_unet.py --report-only --steps 1800 --batch-size 8 --size 128 --lr 0.002 \
        --class-weights balanced --out benchmarks/results/segface_vs_unet_128px.md

No pretrained weights are used for any model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import faceparse
from faceparse.data.stats import balanced_class_weights, class_pixel_frequencies
from faceparse.labels import get_label_set
from faceparse.metrics import FaceParsingMetrics

RARE = ("eyeglasses", "hat", "earring", "necklace")
# torchvision's MobileNetV3 BatchNorm momentum (0.01) suits fine-tuning; from scratch in a few hundred
# steps the eval-mode running statistics would still reflect the first steps, so use PyTorch's 0.1
# (smp's U-Net encoder already has 0.1).
MODELS = {
    "segface_mobilenet_v3_large": ("segface_mobilenet_v3_large", {"bn_momentum": 0.1}),
    "unet (resnet34)": ("unet", {"encoder": "resnet34"}),
    # the same MobileNetV3-L backbone as SegFace (timm build; SegFace uses torchvision's): mainly the decoders differ
    "unet (mobilenet_v3_large)": ("unet", {"encoder": "tu-mobilenetv3_large_100"}),
}


def cached(ds) -> list[dict]:
    """Render every synthetic sample once (the generator is CPU-heavy); keep image/mask only."""
    return [{"image": s["image"], "mask": s["mask"]} for s in (ds[i] for i in range(len(ds)))]


def collate(items: list[dict]) -> dict:
    return {"image": torch.stack([i["image"] for i in items]), "mask": torch.stack([i["mask"] for i in items])}


def train_one(name: str, kwargs: dict, train, test, args) -> tuple[dict, float, int]:
    torch.manual_seed(args.seed)
    model = faceparse.build_model(name, input_size=args.size, **kwargs)
    loss_fn = faceparse.build_loss("ce_dice", class_weights=args.weights)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    def factor(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(args.seed)  # identical batch order for both models
    loader = DataLoader(
        train, batch_size=args.batch_size, shuffle=True, collate_fn=collate, generator=gen, drop_last=True
    )
    step, t0 = 0, time.time()
    model.train()
    while step < args.steps:
        for batch in loader:
            out = loss_fn(model.forward_train(batch["image"]), batch)
            loss = out["loss"] if isinstance(out, dict) else out
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0 or step == args.steps:
                print(f"  {name} step {step}/{args.steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)", flush=True)
            if args.eval_every and step % args.eval_every == 0 and step < args.steps:
                res = evaluate(model, test)
                rare = rare_mean(res)
                print(f"  {name} step {step}: test mean F1 {res['mean_f1'].item():.4f}, rare {rare:.4f}", flush=True)
                model.train()
            if step >= args.steps:
                break
    train_time = time.time() - t0
    return evaluate(model, test), train_time, model.num_parameters()


def evaluate(model, test) -> dict:
    model.eval()
    metrics = FaceParsingMetrics(get_label_set("celebamask_hq"))
    with torch.no_grad():
        for batch in DataLoader(test, batch_size=32, collate_fn=collate):
            metrics.update(model(batch["image"]), batch["mask"])
    return metrics.compute()


def rare_mean(res: dict) -> float:
    ls = get_label_set("celebamask_hq")
    return sum(res["f1"][ls.index(c)].item() for c in RARE) / len(RARE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--train-samples", type=int, default=2000)
    ap.add_argument("--test-samples", type=int, default=300)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--class-weights",
        choices=["none", "balanced"],
        default="none",
        help="CE class weights: 'balanced' = median-frequency weights of the training masks (both models)",
    )
    ap.add_argument("--eval-every", type=int, default=0, help="also score the test set every N steps")
    ap.add_argument(
        "--models",
        nargs="*",
        default=list(MODELS),
        choices=list(MODELS),
        help="subset to train (run subsets in parallel processes)",
    )
    ap.add_argument("--json-dir", type=Path, default=Path("benchmarks/results/segface_vs_unet_runs"))
    ap.add_argument(
        "--report-only", action="store_true", help="train nothing; write the table from the runs in --json-dir"
    )
    ap.add_argument("--machine-note", default="2-core CPU", help="how loaded the machine was (for the report)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ls = get_label_set("celebamask_hq")
    run_key = f"steps{args.steps}_bs{args.batch_size}_size{args.size}_lr{args.lr:g}_seed{args.seed}"
    if args.class_weights == "balanced":
        run_key += "_balanced"
    args.json_dir.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        t0 = time.time()
        common = {"image_size": args.size, "seed": args.seed}
        train = cached(
            faceparse.build_dataset("synthetic", split="train", num_samples=args.train_samples, augment=True, **common)
        )
        test = cached(faceparse.build_dataset("synthetic", split="test", num_samples=args.test_samples, **common))
        print(f"rendered {len(train)} train / {len(test)} test faces in {time.time() - t0:.0f}s", flush=True)
        args.weights = (
            balanced_class_weights(class_pixel_frequencies(train, ls.num_classes))
            if args.class_weights == "balanced"
            else None
        )
    for label in [] if args.report_only else args.models:
        name, kwargs = MODELS[label]
        res, tt, n = train_one(name, kwargs, train, test, args)
        rare = rare_mean(res)
        print(f"{label}: mean F1 {res['mean_f1'].item():.4f}, rare-class mean F1 {rare:.4f}", flush=True)
        record = {"f1": res["f1"].tolist(), "mean_f1": res["mean_f1"].item(), "time": tt, "params": n}
        slug = name + "".join(f"_{k}{v}" for k, v in sorted(kwargs.items()))
        (args.json_dir / f"{run_key}_{slug}.json").write_text(json.dumps({"label": label, **record}))

    # Report every model of this configuration finished so far (this run's or a parallel one's).
    results = {}
    for label, (name, kwargs) in MODELS.items():
        slug = name + "".join(f"_{k}{v}" for k, v in sorted(kwargs.items()))
        f = args.json_dir / f"{run_key}_{slug}.json"
        if f.is_file():
            r = json.loads(f.read_text())
            results[label] = (
                {"f1": torch.tensor(r["f1"]), "mean_f1": torch.tensor(r["mean_f1"])},
                r["time"],
                r["params"],
            )
    labels = list(results)
    lines = [
        "# SegFace (MobileNetV3-L) vs U-Net on synthetic faces, equal steps, from scratch",
        "",
        f"Date: {datetime.date.today().isoformat()}. Machine: {platform.machine()} CPU, {args.threads} threads, "
        f"{args.machine_note} (times are indicative only). torch " + torch.__version__ + ".",
        "",
        f"Command: `nice -n 10 python benchmarks/segface_vs_unet.py --steps {args.steps} --batch-size "
        f"{args.batch_size} --size {args.size} --train-samples {args.train_samples} --test-samples "
        f"{args.test_samples} --lr {args.lr:g} --class-weights {args.class_weights} --out {args.out}`",
        "",
        f"Setup: synthetic faces ({args.train_samples} train with faceparse's train augmentation, "
        f"{args.test_samples} test, {args.size} px, seed {args.seed}), {args.steps} steps of batch "
        f"{args.batch_size} for every model on identical batches, loss `ce_dice` (0.5 CE + 0.5 Dice"
        + (", median-frequency class weights in the CE term" if args.class_weights == "balanced" else "")
        + "), "
        f"AdamW lr {args.lr:g} wd {args.weight_decay:g}, {args.warmup}-step warm-up + cosine, no pretrained "
        "weights; SegFace's backbone BatchNorm momentum set to 0.1 (`bn_momentum=0.1`, as U-Net's). "
        + (
            "`unet (mobilenet_v3_large)` has the same MobileNetV3-L backbone (timm's build; SegFace uses "
            "torchvision's), so mainly the decoders differ. "
            if "unet (mobilenet_v3_large)" in labels
            else ""
        )
        + "Test metric: dataset-level F1 per class (`FaceParsingMetrics`); mean F1 excludes background. "
        "Rare classes (share of synthetic faces): eyeglasses 12 %, earring 8 %, hat 7 %, necklace 6 %.",
        "",
        "| model | params (M) | train time (s) | mean F1 | rare-class mean F1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in labels:
        res, tt, n = results[label]
        rare = rare_mean(res)
        lines.append(f"| {label} | {n / 1e6:.2f} | {tt:.0f} | {res['mean_f1'].item():.4f} | {rare:.4f} |")
    lines += ["", "Per-class F1:", "", "| class | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for i, cls in enumerate(ls.classes):
        vals = [results[label][0]["f1"][i].item() for label in labels]
        mark = " (rare)" if cls in RARE else ""
        lines.append(f"| {cls}{mark} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
