"""Evaluate a face-parsing model on a dataset, also across label sets (cross-dataset evaluation).

A model trained on one label set (say CelebAMask-HQ, 19 classes) is scored on a dataset with another
(LaPa or Helen, 11 classes) by translating its predicted labels by class name with
``model.label_set.mapping_to(dataset.label_set)``: the 11 shared classes map one to one and the
model's extra classes (neck, cloth, ears, accessories...) become background -- the protocol of the
DisFaceRep paper (Sec. 4.2.2, "map the same 11 categories ... by indices"). ``overrides`` changes
single entries (e.g. ``{"left_ear": "skin"}``).

Metrics are the dataset-level face-parsing metrics of :class:`faceparse.metrics.FaceParsingMetrics`
(per-class F1 / IoU, mean F1 without background, mIoU, pixel accuracy) in the dataset's label set.
With ``original_resolution=True`` predictions are mapped back onto the original image (inverse
alignment warp from ``meta["align_inverse"]``, crop box paste from ``meta["crop_box"]``, or a plain
resize) and scored against the original label map.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import FaceParseError
from .labels import IGNORE_INDEX, LabelSet, get_label_set
from .registry import COMMANDS, DATASETS


def label_mapping(
    source: LabelSet, target: LabelSet, unmapped: str = "background", overrides: dict[str, str] | None = None
) -> torch.Tensor:
    """Lookup table (256 entries) from ``source`` labels to ``target`` labels, by class name."""
    lut = source.mapping_to(target, unmapped=unmapped)
    for src, dst in (overrides or {}).items():
        lut[source.index(src)] = IGNORE_INDEX if dst in ("ignore", IGNORE_INDEX) else target.index(dst)
    return torch.as_tensor(lut, dtype=torch.long)


def _original_dataset(dataset: Any) -> Any:
    """A shallow copy of ``dataset`` that loads faces without alignment or face crop."""
    ds = copy.copy(dataset)
    for attr in ("align", "crop_face"):
        if hasattr(ds, attr):
            setattr(ds, attr, False)
    return ds


def _to_original(logits: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """``K x h x w`` logits on the model input -> ``K x H x W`` on the original image."""
    from .data.align import warp_to_original

    H, W = (int(v) for v in meta["orig_size"])
    if "align_inverse" in meta:
        return warp_to_original(logits, meta["align_inverse"], (H, W), meta.get("align_size"))
    if "crop_box" in meta:
        left, top, right, bottom = meta["crop_box"]
        crop = F.interpolate(logits[None], size=(bottom - top, right - left), mode="bilinear", align_corners=False)[0]
        out = torch.zeros(logits.shape[0], H, W, dtype=logits.dtype)
        out[0] = 1.0  # outside the crop: background
        y0, x0 = max(0, top), max(0, left)
        y1, x1 = min(H, bottom), min(W, right)
        out[:, y0:y1, x0:x1] = crop[:, y0 - top : y1 - top, x0 - left : x1 - left]
        return out
    return F.interpolate(logits[None], size=(H, W), mode="bilinear", align_corners=False)[0]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    batch_size: int = 8,
    unmapped: str = "background",
    overrides: dict[str, str] | None = None,
    flip_tta: bool = False,
    original_resolution: bool = False,
    device: str = "cpu",
    num_workers: int = 0,
    limit: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on ``dataset`` in the dataset's label set.

    Args:
        model: a face-parsing model (``model(x)`` -> ``B x K x H x W`` logits, ``model.label_set``).
        dataset: a :class:`~faceparse.data.base.FaceDataset` (built with the model's ``input_mean/std``).
        unmapped: what the model's classes missing from the dataset become: ``background`` or
            ``ignore`` (those pixels are then left out of the scores).
        overrides: class-name -> class-name entries replacing the name-based mapping.
        flip_tta: average the logits of the image and of its mirror (left/right channels swapped).
        original_resolution: score at the original image size against the original label map.
        limit: score only the first ``limit`` faces.

    Returns a dict: ``mean_f1``, ``miou``, ``pixel_acc`` (floats), ``f1`` / ``iou`` (class -> float),
    ``num_images``, ``label_set``, ``mapping`` (model class -> dataset class or "ignore").
    """
    from tqdm.auto import tqdm

    from .data.base import collate
    from .metrics import FaceParsingMetrics

    src = get_label_set(getattr(model, "label_set", None) or dataset.label_set)
    dst = dataset.label_set
    lut = label_mapping(src, dst, unmapped, overrides)
    metric = FaceParsingMetrics(dst)
    model = model.to(device).eval()
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    subset = torch.utils.data.Subset(dataset, range(n))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    orig_ds = _original_dataset(dataset) if original_resolution else None
    flip_perm = torch.as_tensor(src.flip_permutation)
    seen = 0
    for batch in tqdm(loader, desc="evaluating", disable=not progress):
        x = batch["image"].to(device)
        logits = model(x)
        if flip_tta:
            logits = (logits + model(x.flip(-1)).flip(-1)[:, flip_perm.to(device)]) / 2
        logits = logits.float().cpu()
        if original_resolution:
            for j in range(len(logits)):
                meta = batch["meta"][j]
                full = _to_original(logits[j], meta)
                target = torch.as_tensor(np.asarray(orig_ds.load_raw(seen + j)["mask"]).astype(np.int64))
                _update(metric, full[None], target[None], lut)
        else:
            _update(metric, logits, batch["mask"], lut)
        seen += len(logits)
    res = metric.compute()
    if seen == 0:
        raise FaceParseError("evaluate: the dataset is empty")
    mapping = {
        src.classes[i]: (dst.classes[int(lut[i])] if int(lut[i]) != IGNORE_INDEX else "ignore")
        for i in range(src.num_classes)
    }
    return {
        "mean_f1": float(res["mean_f1"]),
        "miou": float(res["miou"]),
        "pixel_acc": float(res["pixel_acc"]),
        "f1": {c: float(v) for c, v in zip(dst.classes, res["f1"])},
        "iou": {c: float(v) for c, v in zip(dst.classes, res["iou"])},
        "num_images": seen,
        "label_set": dst.name,
        "mapping": mapping,
    }


def _update(metric: Any, logits: torch.Tensor, target: torch.Tensor, lut: torch.Tensor) -> None:
    pred = lut[logits.argmax(1)]
    target = target.clone()
    target[pred == IGNORE_INDEX] = IGNORE_INDEX  # model classes mapped to "ignore" are not scored
    metric.update(pred.clamp(max=metric.num_classes - 1), target)


@COMMANDS.register("evaluate")
def evaluate_command(
    model_dir: str,
    dataset: str,
    root: str = "",
    split: str = "test",
    image_size: int = 512,
    batch_size: int = 8,
    unmapped: str = "background",
    flip_tta: bool = False,
    original_resolution: bool = False,
    align: bool = False,
    limit: int = 0,
    device: str = "cpu",
) -> None:
    """Evaluate a saved model (``save_pretrained`` folder) on a dataset, across label sets if needed.

    Example: ``faceparse evaluate runs/celeb_model lapa --root /data/LaPa --split test``; the synthetic
    dataset needs no root (``faceparse evaluate runs/model synthetic --split val``).
    """
    from . import build_dataset, load_model
    from .metrics import per_class_table

    model = load_model(model_dir)
    kwargs: dict[str, Any] = {"split": split, "image_size": image_size}
    if root:
        kwargs["root"] = root
    elif "root" in inspect.signature(DATASETS.get(dataset)).parameters:
        params = inspect.signature(DATASETS.get(dataset)).parameters
        if params["root"].default is inspect.Parameter.empty:
            raise FaceParseError(f"dataset '{dataset}' needs --root: the folder that holds it")
    kwargs["mean"], kwargs["std"] = tuple(model.input_mean), tuple(model.input_std)
    if align:
        kwargs["align"] = True
    ds = build_dataset(dataset, **kwargs)
    res = evaluate(
        model,
        ds,
        batch_size=batch_size,
        unmapped=unmapped,
        flip_tta=flip_tta,
        original_resolution=original_resolution,
        device=device,
        limit=limit or None,
        progress=True,
    )
    table = {
        "f1": torch.tensor([res["f1"][c] for c in ds.label_set.classes]),
        "iou": torch.tensor([res["iou"][c] for c in ds.label_set.classes]),
        "mean_f1": torch.tensor(res["mean_f1"]),
        "miou": torch.tensor(res["miou"]),
        "pixel_acc": torch.tensor(res["pixel_acc"]),
    }
    print(f"{res['num_images']} faces of {dataset} {split}, scored in the '{res['label_set']}' label set")
    try:
        print(per_class_table(table, ds.label_set))
    except (KeyError, TypeError):
        print(res)
