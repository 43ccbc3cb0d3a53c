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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from faceparse.errors import FaceParseError
from faceparse.labels import IGNORE_INDEX, LabelSet, get_label_set
from faceparse.models.base import FaceParsingModel


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
    from faceparse.data.align import warp_to_original

    H, W = (int(v) for v in meta["orig_size"])
    if "tanh_matrix" in meta:
        from faceparse.data.tanh_warp import tanh_to_original

        return tanh_to_original(logits, meta)
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
    precision: str = "fp32",
    backend: str = "torch",
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
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"`` (:func:`faceparse.precision.optimize_for_inference`;
            int8 is calibrated on the first batch).
        backend: ``"torch"`` or ``"onnxruntime"`` (the model's fp32 ONNX export run by onnxruntime;
            int8 always runs on onnxruntime, bf16 only on torch).

    Returns a dict: ``mean_f1``, ``miou``, ``pixel_acc`` (floats), ``f1`` / ``iou`` (class -> float),
    ``num_images``, ``label_set``, ``mapping`` (model class -> dataset class or "ignore").
    """
    from tqdm.auto import tqdm

    from faceparse.data.base import collate
    from faceparse.metrics import FaceParsingMetrics

    src = get_label_set(getattr(model, "label_set", None) or dataset.label_set)
    dst = dataset.label_set
    lut = label_mapping(src, dst, unmapped, overrides)
    metric = FaceParsingMetrics(dst)
    model = model.to(device).eval()
    from faceparse.precision import optimize_for_inference, predictor_runner

    size = int(getattr(model, "default_input_size", 512))
    if backend == "onnxruntime" and isinstance(model, torch.nn.Module) and precision == "fp32":
        runner = optimize_for_inference(model, "fp32", backend="onnxruntime", input_size=size)
    else:
        runner = predictor_runner(model, precision, backend, size)
    forward = runner or model
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    subset = torch.utils.data.Subset(dataset, range(n))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    orig_ds = _original_dataset(dataset) if original_resolution else None
    flip_perm = torch.as_tensor(src.flip_permutation)
    seen = 0
    for batch in tqdm(loader, desc="evaluating", disable=not progress):
        x = batch["image"].to(device)
        with torch.inference_mode():
            logits = forward(x)
            if flip_tta:
                logits = (logits + forward(x.flip(-1)).flip(-1)[:, flip_perm.to(device)]) / 2
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


# ---------------------------------------------------------------------------- Structure via Consensus protocol
@torch.no_grad()
def evaluate_consensus(
    model: FaceParsingModel,
    dataset: torch.utils.data.Dataset,
    protocol: str | None = None,
    batch_size: int = 16,
    input_size: int | None = None,
    device: str = "cpu",
    limit: int | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Score a model with the consensus paper's metrics (:class:`faceparse.metrics.ConsensusMetrics`).

    Images are resized to the model's input size (bilinear) when the dataset gives another size;
    predictions are upsampled to the label maps' size by nearest neighbour, as the paper does to
    score its 128 x 128 Part Labels predictions at 250 x 250. ``protocol``: ``None``, ``"cofw"``
    (face vs non-face inside the face box) or ``"part_labels"`` (adds superpixel accuracy when the
    samples carry ``superpixels``).
    """
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from faceparse.data.base import collate
    from faceparse.metrics import ConsensusMetrics

    size = int(input_size or model.default_input_size)
    metric = ConsensusMetrics(dataset.label_set, protocol=protocol, pred_label_set=model.label_set)
    model = model.to(device).eval()
    n = len(dataset) if not limit else min(int(limit), len(dataset))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, range(n)), batch_size=batch_size, collate_fn=collate
    )
    for batch in tqdm(loader, desc="consensus evaluate", disable=not progress):
        images = batch["image"] if isinstance(batch["image"], list) else list(batch["image"])
        for j, img in enumerate(images):  # per sample: original-resolution datasets vary in size
            x = img[None].to(device)
            if tuple(x.shape[-2:]) != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            pred = model(x).argmax(1).cpu()
            sp = batch.get("superpixels")
            box = batch.get("face_box")
            metric.update(
                pred,
                batch["mask"][j][None],
                superpixels=sp[j][None] if sp is not None else None,
                face_box=box[j][None] if box is not None and protocol == "cofw" else None,
            )
    if n == 0:
        raise FaceParseError("consensus evaluate: the dataset is empty")
    return metric.compute()


def consensus_table(result: dict[str, torch.Tensor], label_set: LabelSet) -> str:
    """Markdown table of :func:`evaluate_consensus` results (percentages; sparsity as is)."""
    rows = ["| metric | value |", "|---|---:|"]
    for key in ("face_iou", "pixel_acc", "rec_face", "rec_all", "miou", "superpixel_acc"):
        if key in result:
            rows.append(f"| {key} | {100 * float(result[key]):.2f} |")
    for i, name in enumerate(label_set.classes):
        rows.append(f"| IoU {name} | {100 * float(result['iou'][i]):.2f} |")
        rows.append(f"| recall {name} | {100 * float(result['recall'][i]):.2f} |")
    rows.append(f"| sparsity | {float(result['sparsity']):.3f} |")
    return "\n".join(rows)
