"""``faceparse demo``: train a small model on synthetic faces, print per-class F1, save outputs."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from faceparse.labels import get_label_set
from faceparse.metrics import per_class_table
from faceparse.runtime import available_cpus, configure_threads
from faceparse.viz import overlay


def run_demo(
    out_dir: str = "demo_output",
    model: str = "unet",
    encoder: str = "resnet18",
    image_size: int = 128,
    epochs: int = 4,
    num_train: int = 1200,
    num_val: int = 200,
    batch_size: int = 8,
    lr: float = 2e-3,
    seed: int = 0,
    balanced: bool = True,
) -> dict:
    """Train ``model`` on synthetic faces and write ``model/``, ``overlay.png``, ``metrics.json``."""
    import pytorch_lightning as pl

    from faceparse.data import FaceParsingDataModule
    from faceparse.data.stats import balanced_class_weights, class_pixel_frequencies
    from faceparse.models.smp_zoo import _ARCHS
    from faceparse.tasks import SegmentationTask

    start = time.perf_counter()
    out = Path(out_dir)
    pl.seed_everything(seed, verbose=False)
    dm = FaceParsingDataModule(
        "synthetic",
        dataset_kwargs={"seed": seed, "cache": True},
        train_kwargs={"num_samples": num_train},
        val_kwargs={"num_samples": num_val},
        image_size=image_size,
        batch_size=batch_size,
        augment=True,
    )
    model_kwargs: dict = {"input_size": image_size}
    if model in _ARCHS:
        model_kwargs["encoder"] = encoder
        if model == "unet":  # a lighter decoder than smp's default (256..16): ~1.3x cheaper per step on CPU
            model_kwargs["arch_kwargs"] = {"decoder_channels": [128, 64, 32, 16, 16]}
    loss_kwargs = {}
    if balanced:  # median-frequency class weights in the CE term lift the rare classes early
        freq = class_pixel_frequencies(dm.build("train"), progress=True)
        loss_kwargs["class_weights"] = balanced_class_weights(freq)
    task = SegmentationTask(
        model,
        loss="ce_dice",
        label_set="celebamask_hq",
        model_kwargs=model_kwargs,
        loss_kwargs=loss_kwargs,
        lr=lr,
        weight_decay=1e-4,
        scheduler="cosine",
        warmup_steps=50,
    )
    threads = configure_threads()
    steps = epochs * (num_train // batch_size)
    step_s = _seconds_per_step(task, batch_size, image_size)
    estimate = steps * step_s + (num_val / batch_size) * step_s / 3
    arch = f"{model} ({encoder})" if model in _ARCHS else model
    print(
        f"faceparse demo plan: train {arch} on {num_train} synthetic faces at {image_size} px, "
        f"{epochs} epoch(s) x {num_train // batch_size} steps of batch {batch_size}, then validate on {num_val}\n"
        f"  {threads} torch thread(s) on {available_cpus()} available core(s); one step takes {step_s:.2f} s now, "
        f"so training should take about {_minutes(estimate)} (258 s in all on a quiet 2-core CPU, "
        "measured by benchmarks/demo_time.py)",
        flush=True,
    )
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)  # GPU/TPU/tip lines
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=epochs,
    )
    trainer.fit(task, datamodule=dm)
    result = task.last_results["val"]
    label_set = get_label_set("celebamask_hq")
    print(f"\nValidation on {num_val} synthetic faces:\n")
    print(per_class_table(result, label_set))

    model_dir = task.model.save_pretrained(out / "model")
    val = dm.build("val")
    sample = val[0]
    task.model.eval()
    with torch.inference_mode():
        pred = task.model(sample["image"][None]).argmax(1)[0].numpy()
    raw = val.load_raw(0)["image"]
    pred_full = cv2.resize(pred.astype(np.uint8), raw.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    panel = np.concatenate([raw, overlay(raw, pred_full, label_set), label_set.colorize(pred_full)], axis=1)
    cv2.imwrite(str(out / "overlay.png"), cv2.cvtColor(panel, cv2.COLOR_RGB2BGR))
    elapsed = time.perf_counter() - start
    summary = {
        "model": model,
        "encoder": encoder if model in _ARCHS else None,
        "image_size": image_size,
        "epochs": epochs,
        "num_train": num_train,
        "num_val": num_val,
        "batch_size": batch_size,
        "balanced": balanced,
        "mean_f1": float(result["mean_f1"]),
        "miou": float(result["miou"]),
        "pixel_acc": float(result["pixel_acc"]),
        "per_class_f1": {n: float(v) for n, v in zip(label_set.classes, result["f1"])},
        "seconds": round(elapsed, 1),
        "torch_threads": torch.get_num_threads(),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nmean F1 (no background): {100 * summary['mean_f1']:.2f}  |  time: {elapsed:.0f} s")
    print(f"wrote {model_dir}/, {out / 'overlay.png'}, {out / 'metrics.json'}")
    return summary


def _seconds_per_step(task, batch_size: int, image_size: int, repeats: int = 2) -> float:
    """Seconds per training step, timed on a copy of the model (the real model stays untouched)."""
    import copy

    model = copy.deepcopy(task.model).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    x = torch.randn(batch_size, 3, image_size, image_size)
    y = torch.randint(0, model.num_classes, (batch_size, image_size, image_size))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # warm-up: first-call allocations and oneDNN kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"
