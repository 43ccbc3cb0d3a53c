"""Mask-FPAN Table I ablation pattern with rtformer_slim on occluded faces (synthetic or any dataset).

Rows (each SEGM run starts from the same initialisation and sees the same batches):

* ``SEGM``            rtformer_slim, cross-entropy (+ 0.4 x auxiliary head), RTFormer's recipe;
* ``+PPM``            occlusion/pose-weighted CE (Mask-FPAN Eq. 2) with the pose term only,
                      poses from the learned PPM head of the LOM network;
* ``+PPM+LOM``        + the occlusion term: occluded landmarks predicted by the LOM and the
                      labelled occlusion regions;
* ``+PPM+LOM+DOM``    + the semi-supervised path: faces whose occlusion is *not* labelled get
                      the DOM's occlusion mask as ``occlusion`` labels (and as regions for Eq. 2).

Data: the ``occluded`` dataset (procedural occluders pasted on the faces of ``--base``, any registered
dataset: ``synthetic`` by default, ``celebamask_hq`` with ``--root`` for CelebAMaskOcc-HQ-style data),
at ``--image-size``, with CelebAMaskOcc-HQ-style labels (the base's classes + ``occlusion``).
``--unlabelled-fraction`` of the training faces keep the face labels under their occluder (Mask-FPAN's
"occluded faces without occlusion labels"); the test faces are all labelled. The LOM (+PPM head) and
DOM are trained first on the labelled training faces; a base without landmarks (CelebAMask-HQ) needs
``--lom DIR``, a LOM saved by ``faceparse fit --config maskfpan_lom_cofw`` (``--dom DIR`` likewise
reuses a saved DOM). Reported: F1 per class (test, dataset-level), mean F1, mIoU, occlusion IoU of the
``occlusion`` class against the true occluder mask, plus LOM/DOM diagnostics.

    nice -n 10 python benchmarks/maskfpan_ablation.py --out benchmarks/results/maskfpan_ablation.md
    python benchmarks/maskfpan_ablation.py --base celebamask_hq --root /data/CelebAMask-HQ --image-size 512 \
        --num-train 24183 --num-test 2824 --lom runs/maskfpan_lom_cofw/model --out celebamaskocc_table1.md
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import faceparse
from faceparse.data.maskfpan_occlusion import OccludedFaces
from faceparse.losses.maskfpan import DeOcclusionLoss, LandmarkOcclusionLoss, OcclusionWeightedCE
from faceparse.metrics import FaceParsingMetrics, OcclusionIoU
from faceparse.models.maskfpan.deocclusion import DeOcclusionNet
from faceparse.models.maskfpan.landmarks import LandmarkOcclusionNet
from faceparse.models.maskfpan.pose import add_pose_targets

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load_split(
    split: str, n: int, size: int, seed: int, unlabelled: float, base: str = "synthetic", root: str | None = None
) -> dict[str, torch.Tensor]:
    """The first ``n`` samples of an occluded split as tensors in [0, 1] (clean images from the base)."""
    kw = {"num_samples": n} if base == "synthetic" else {"root": root}
    if base != "synthetic" and root is None:
        raise SystemExit(f"--base {base} needs --root (the dataset's folder)")
    ds = OccludedFaces(
        base=base,
        split=split,
        image_size=size,
        seed=seed,
        unlabelled_fraction=unlabelled,
        return_clean=True,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),  # the data pipeline's Normalize then gives pixels / 255
        **kw,
    )
    n = min(n, len(ds))
    keys = ("image", "clean", "mask", "occlusion", "landmarks", "landmark_occluded", "face_box")
    cols: dict[str, list] = {k: [] for k in (*keys, "labelled")}
    for i in range(n):
        sample = ds[i]
        for k in keys:
            cols[k].append(sample.get(k))
        cols["labelled"].append(sample["meta"]["occlusion_labelled"])
    out = {k: torch.stack(v) for k, v in cols.items() if k != "labelled" and all(x is not None for x in v)}
    out["labelled"] = torch.tensor(cols["labelled"])
    out["label_set"] = ds.label_set
    return out


def norm(x01: torch.Tensor) -> torch.Tensor:
    return (x01 - MEAN) / STD


def batches(n: int, batch_size: int, steps: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out, perm = [], torch.randperm(n, generator=g)
    while len(out) < steps:
        if len(perm) < batch_size:
            perm = torch.cat([perm, torch.randperm(n, generator=g)])
        out.append(perm[:batch_size])
        perm = perm[batch_size:]
    return out


def train_lom(train: dict, idx: torch.Tensor, steps: int, bs: int, lr: float, seed: int) -> LandmarkOcclusionNet:
    torch.manual_seed(seed)
    model = LandmarkOcclusionNet(num_landmarks=train["landmarks"].shape[1], input_size=train["image"].shape[-1])
    loss_fn = LandmarkOcclusionLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for b in batches(len(idx), bs, steps, seed):
        j = idx[b]
        batch = {"image": norm(train["image"][j]), "landmarks": train["landmarks"][j]}
        batch["landmark_occluded"] = train["landmark_occluded"][j]
        batch = add_pose_targets(batch)
        out = loss_fn(model(batch["image"]), batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        sched.step()
    return model.eval()


def train_dom(train: dict, idx: torch.Tensor, steps: int, bs: int, lr: float, seed: int, size: int) -> DeOcclusionNet:
    torch.manual_seed(seed)
    model = DeOcclusionNet(image_size=size, grids=(8, 4), embed=64, hidden=128)
    loss_fn = DeOcclusionLoss(pos_weight=3.0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for b in batches(len(idx), bs, steps, seed + 1):
        j = idx[b]
        x = F.interpolate(train["image"][j], size=(size, size), mode="bilinear", align_corners=False)
        out = loss_fn(model(x), {"clean": train["clean"][j], "occlusion": train["occlusion"][j]})
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def predict_in_chunks(fn, x: torch.Tensor, chunk: int = 32):
    outs = [fn(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    if isinstance(outs[0], dict):
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    return torch.cat(outs)


def train_segm(
    init: torch.nn.Module, train: dict, loss_fn, plan: list[torch.Tensor], lr: float, extras: dict
) -> torch.nn.Module:
    model = copy.deepcopy(init).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0125)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=len(plan), pct_start=0.1)
    for j in plan:
        batch = {k: v[j] for k, v in extras.items()}
        out = model.forward_train(norm(train["image"][j]))
        res = loss_fn(out, batch)
        loss = res["loss"] if isinstance(res, dict) else res
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


class CEAux(torch.nn.Module):
    """RTFormer recipe: CE on the main head + 0.4 CE on the auxiliary head."""

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        loss = F.cross_entropy(outputs["logits"], batch["mask"], ignore_index=255)
        if "aux_logits" in outputs:
            loss = loss + 0.4 * F.cross_entropy(outputs["aux_logits"], batch["mask"], ignore_index=255)
        return loss


@torch.no_grad()
def evaluate(model: torch.nn.Module, test: dict, label_set) -> dict:
    metrics = FaceParsingMetrics(label_set)
    occ_iou = OcclusionIoU()
    occ_id = label_set.index("occlusion")
    pred = predict_in_chunks(lambda x: model(norm(x)).argmax(1), test["image"])
    metrics.update(pred, test["mask"])
    occ_iou.update((pred == occ_id).long(), test["occlusion"])
    res = metrics.compute()
    res["occlusion_iou"] = occ_iou.compute()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="synthetic", help="any registered dataset with masks (the faces to occlude)")
    ap.add_argument("--root", default=None, help="the base dataset's folder (synthetic needs none)")
    ap.add_argument(
        "--lom", default=None, help="saved LOM folder to use instead of training one (needed without landmarks)"
    )
    ap.add_argument("--dom", default=None, help="saved DOM folder to use instead of training one")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--num-train", type=int, default=320)
    ap.add_argument("--num-test", type=int, default=96)
    ap.add_argument("--unlabelled-fraction", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=300, help="SEGM steps per row")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lom-steps", type=int, default=300)
    ap.add_argument("--dom-steps", type=int, default=500)
    ap.add_argument("--dom-size", type=int, default=32)
    ap.add_argument("--lambda-occ", type=float, default=2.0)
    ap.add_argument("--lambda-pose", type=float, default=1.0)
    ap.add_argument("--rows", default="segm,ppm,lom,dom,wce_oracle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.time()
    s = args.image_size

    train = load_split("train", args.num_train, s, args.seed, args.unlabelled_fraction, args.base, args.root)
    test = load_split("test", args.num_test, s, args.seed + 100, 0.0, args.base, args.root)
    args.num_train, args.num_test = len(train["image"]), len(test["image"])
    has_landmarks = "landmarks" in train and "landmark_occluded" in train
    ls = train.pop("label_set")
    test.pop("label_set")
    occ_id = ls.index("occlusion")
    labelled = torch.nonzero(train["labelled"]).flatten()
    unlabelled = torch.nonzero(~train["labelled"]).flatten()
    print(f"train {args.num_train} ({len(unlabelled)} with unlabelled occlusion), test {args.num_test}")

    # ---- LOM + PPM head, trained on the labelled faces (or loaded from --lom)
    t0 = time.time()
    if args.lom:
        lom = faceparse.load_model(args.lom)
        lom_size = int(lom.input_size)
    elif has_landmarks:
        lom = train_lom(train, labelled, args.lom_steps, 16, 3e-3, args.seed)
        lom_size = s
    else:
        raise SystemExit(
            f"--base {args.base} has no landmarks to train a LOM on: pass --lom DIR "
            "(e.g. from faceparse fit --config maskfpan_lom_cofw)"
        )

    def lom_predict(x: torch.Tensor) -> dict:
        small = F.interpolate(x, size=(lom_size, lom_size), mode="bilinear", align_corners=False)
        out = lom.predict(norm(small))
        out["landmarks"] = out["landmarks"] * (s - 1) / max(lom_size - 1, 1)
        return out

    lom_pred = predict_in_chunks(lom_predict, train["image"])
    test_lom = predict_in_chunks(lom_predict, test["image"])
    lom_note = f"loaded from `{args.lom}`" if args.lom else f"{args.lom_steps} steps on the labelled faces"
    nme = flag_acc = flag_base = pose_mae = float("nan")
    if has_landmarks and test_lom["landmarks"].shape[1] == test["landmarks"].shape[1]:
        nme = ((test_lom["landmarks"] - test["landmarks"]).norm(dim=-1).mean() / float(np.hypot(s, s))).item()
        flag_acc = (test_lom["landmark_occluded"] == test["landmark_occluded"]).float().mean().item()
        flag_base = (~test["landmark_occluded"]).float().mean().item()
        test_pose = add_pose_targets({"image": test["image"], "landmarks": test["landmarks"]})["pose"]
        pose_mae = (test_lom["pose"] - test_pose).abs().mean().item()
    t_lom = time.time() - t0
    print(f"LOM: NME {nme:.4f}, flag acc {flag_acc:.3f} (all-visible {flag_base:.3f}), pose MAE {pose_mae:.2f} deg")

    # ---- DOM, trained on labelled occluded/clean pairs
    t0 = time.time()
    if args.dom:
        dom = faceparse.load_model(args.dom)
        args.dom_size = int(dom.image_size)
    else:
        dom = train_dom(train, labelled, args.dom_steps, 16, 5e-3, args.seed, args.dom_size)
    dom_test = predict_in_chunks(lambda x: dom.predict_occlusion(x, size=(s, s)), test["image"])
    dom_iou = OcclusionIoU()
    dom_iou.update(dom_test, test["occlusion"])
    dom_iou = dom_iou.compute().item()
    dom_train = predict_in_chunks(lambda x: dom.predict_occlusion(x, size=(s, s)), train["image"])
    dom_unl_iou = OcclusionIoU()
    dom_unl_iou.update(dom_train[unlabelled], train["occlusion"][unlabelled])
    dom_unl_iou = dom_unl_iou.compute().item() if len(unlabelled) else float("nan")
    t_dom = time.time() - t0
    print(f"DOM: occlusion IoU test {dom_iou:.3f}, unlabelled train faces {dom_unl_iou:.3f}")

    # ---- training targets per row
    lab_f = train["labelled"].long()[:, None, None]
    base_extra = {"mask": train["mask"]}
    ppm_extra = {**base_extra, "pose": lom_pred["pose"]}
    lom_extra = {
        **ppm_extra,
        "landmarks": lom_pred["landmarks"],
        "landmark_occluded": lom_pred["landmark_occluded"],
        "occlusion": train["occlusion"] * lab_f,  # only labelled occlusion is known
    }
    if "face_box" in train:
        lom_extra["face_box"] = train["face_box"]
    dom_mask = train["mask"].clone()
    relabel = (dom_train > 0) & (lab_f == 0)
    dom_mask[relabel] = occ_id
    dom_extra = {**lom_extra, "mask": dom_mask, "occlusion": torch.where(lab_f > 0, train["occlusion"], dom_train)}
    ce = CEAux()
    rows = {
        "segm": ("SEGM (CE)", ce, base_extra),
        "ppm": ("SEGM+PPM", OcclusionWeightedCE(lambda_occ=0.0, lambda_pose=args.lambda_pose), ppm_extra),
        "lom": (
            "SEGM+PPM+LOM",
            OcclusionWeightedCE(lambda_occ=args.lambda_occ, lambda_pose=args.lambda_pose),
            lom_extra,
        ),
        "dom": (
            "SEGM+PPM+LOM+DOM",
            OcclusionWeightedCE(lambda_occ=args.lambda_occ, lambda_pose=args.lambda_pose),
            dom_extra,
        ),
    }
    if has_landmarks:
        oracle = {k: train[k] for k in ("landmarks", "landmark_occluded", "face_box") if k in train}
        rows["wce_oracle"] = (
            "SEGM + weighted CE (true landmarks/flags/regions)",
            OcclusionWeightedCE(lambda_occ=args.lambda_occ, lambda_pose=0.0),
            {**base_extra, **oracle, "occlusion": train["occlusion"] * lab_f},
        )
    torch.manual_seed(args.seed)
    init = faceparse.build_model("rtformer_slim", label_set=ls, input_size=s)
    plan = batches(args.num_train, args.batch_size, args.steps, args.seed + 2)
    results, times = {}, {}
    for key in args.rows.split(","):
        if key not in rows:
            print(f"row {key} skipped (needs the base's true landmarks)")
            continue
        name, loss_fn, extra = rows[key]
        t0 = time.time()
        torch.manual_seed(args.seed + 3)
        model = train_segm(init, train, loss_fn, plan, args.lr, extra)
        results[name] = evaluate(model, test, ls)
        times[name] = time.time() - t0
        r = results[name]
        print(
            f"{name}: mean F1 {100 * r['mean_f1']:.2f}, mIoU {100 * r['miou']:.2f}, "
            f"occlusion F1 {100 * r['f1'][occ_id]:.2f}, occlusion IoU {100 * r['occlusion_iou']:.2f} "
            f"({times[name]:.0f} s)"
        )

    # ---- report
    names = list(results)
    lines = [
        f"# Mask-FPAN ablation (Table I pattern) on occluded `{args.base}` faces",
        "",
        f"Date: {date.today().isoformat()}. Machine: {platform.machine()} 2-core CPU, no GPU, shared with other jobs. "
        f"torch {torch.__version__}, {args.threads} threads. Total time {time.time() - t_all:.0f} s.",
        "",
        "Command: `"
        + " ".join(
            ["nice -n 10 python benchmarks/maskfpan_ablation.py"]
            + [
                f"--{k.replace('_', '-')} {v}"
                for k, v in vars(args).items()
                if k not in ("out",) and v != ap.get_default(k)
            ]
        )
        + "` (other options at their defaults)",
        "",
        f"Setup: rtformer_slim (random init), {s}x{s} `occluded` `{args.base}` faces (label set `{ls.name}`, "
        f"{ls.num_classes} classes), {args.num_train} training faces of which {len(unlabelled)} have "
        f"unlabelled occlusion, {args.num_test} test faces (all labelled); {args.steps} steps of batch "
        f"{args.batch_size}, AdamW lr {args.lr} one-cycle, same initialisation and batches for every row. "
        f"Eq. 2 constants: lambda_occ {args.lambda_occ}, lambda_pose {args.lambda_pose}, sigma 0.1 x face box.",
        "",
        f"LOM (+PPM head; {lom_note}): test landmark NME "
        f"{nme:.4f} (/ image diagonal), occlusion-flag accuracy {100 * flag_acc:.1f} % "
        f"(all-visible guess {100 * flag_base:.1f} %), pose MAE vs solvePnP {pose_mae:.2f} deg ({t_lom:.0f} s).",
        f"DOM ({f'loaded from `{args.dom}`' if args.dom else f'{args.dom_steps} steps'} at {args.dom_size} px): occlusion IoU {100 * dom_iou:.1f} on test faces, "
        f"{100 * dom_unl_iou:.1f} on the unlabelled training faces it relabels ({t_dom:.0f} s).",
        "",
        "## Summary (test set, %)",
        "",
        "| row | mean F1 | mIoU | eyes F1 | mouth F1 | occlusion F1 | occlusion IoU | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    eyes = [ls.index("left_eye"), ls.index("right_eye")]
    mouth = [ls.index("mouth"), ls.index("upper_lip"), ls.index("lower_lip")]
    for n in names:
        r = results[n]
        lines.append(
            f"| {n} | {100 * r['mean_f1']:.2f} | {100 * r['miou']:.2f} | {100 * r['f1'][eyes].mean():.2f} | "
            f"{100 * r['f1'][mouth].mean():.2f} | {100 * r['f1'][occ_id]:.2f} | "
            f"{100 * r['occlusion_iou']:.2f} | {times[n]:.0f} |"
        )
    lines += ["", "## F1 per class (test set, %)", "", "| class | " + " | ".join(names) + " |"]
    lines.append("|---|" + "---:|" * len(names))
    for i, c in enumerate(ls.classes):
        lines.append(f"| {c} | " + " | ".join(f"{100 * results[n]['f1'][i]:.2f}" for n in names) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
