"""Pseudo masks from class activation maps: the ``pseudo-labels cam`` command and the ``pseudo``
dataset that reads them back for stage 2 of weakly supervised face parsing (DisFaceRep Sec. 3.1).

Stage 1 trains an MCT-ViT on image-level labels (:class:`faceparse.tasks.weakly.WeaklySupervisedTask`);
``faceparse pseudo-labels cam --model DIR --data synthetic --out-dir masks/`` writes one label PNG per
image (``<image key>.png``, uint8 label-set indices at the image's original size, FCAMs thresholded at
theta = 0.5 restricted to the image-level labels); stage 2 trains any zoo model with
``SegmentationTask`` on ``dataset: pseudo`` (``masks_dir: masks/``), evaluating on the true masks of
the wrapped dataset (``masks_dir: null`` on the validation split). ``faceparse pseudo-labels score``
(:func:`score_pseudo_masks`) scores a folder of pseudo masks against the dataset's true masks, on the
whole split or on DisFaceRep's uniform training subset (``--subset uniform --n 3820``,
:mod:`faceparse.data.subset`), as the paper's Tables 1, 3 and 4 do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceparse.data.base import FaceDataset, build_wrapped_dataset, sample_key
from faceparse.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from faceparse.errors import FaceParseError
from faceparse.labels import LabelSet, get_label_set
from faceparse.registry import DATASETS

__all__ = ["PseudoMaskDataset", "pseudo_labels_cam", "score_pseudo_masks"]

META_NAME = "pseudo_labels.json"


@DATASETS.register("pseudo")
class PseudoMaskDataset(FaceDataset):
    """A registered dataset whose masks are replaced by pseudo-mask PNGs from ``masks_dir``.

    Args:
        masks_dir: folder written by ``faceparse pseudo-labels cam``; None keeps the wrapped
            dataset's own masks (use it for validation/test splits).
        dataset, dataset_kwargs: the wrapped registered dataset (images, keys, true masks).
        split: split passed to the wrapped dataset.
        image_size, augment, mean, std: as in FaceDataset.
    """

    def __init__(
        self,
        masks_dir: str | None = None,
        dataset: str = "synthetic",
        dataset_kwargs: dict | None = None,
        split: str = "train",
        image_size: int | Sequence[int] | None = 128,
        augment: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(image_size=image_size, augment=augment, mean=mean, std=std)
        kw = {"split": split, "image_size": image_size, **(dataset_kwargs or {})}
        self.base = build_wrapped_dataset(dataset, **kw)
        self.landmark_flip = self.base.landmark_flip
        self.label_set: LabelSet = self.base.label_set
        self.masks_dir = Path(masks_dir) if masks_dir is not None else None
        if self.masks_dir is not None:
            if not self.masks_dir.is_dir():
                raise FaceParseError(
                    f"pseudo-mask folder '{self.masks_dir}' does not exist (run `faceparse pseudo-labels cam`)"
                )
            meta = self.masks_dir / META_NAME
            if meta.is_file():
                info = json.loads(meta.read_text())
                if "label_set" in info:
                    self.label_set = get_label_set(info["label_set"])

    def __len__(self) -> int:
        return len(self.base)

    def load_raw(self, index: int) -> dict[str, Any]:
        raw = self.base.load_raw(index)
        if self.masks_dir is None:
            return raw
        path = self.masks_dir / f"{sample_key(raw, index)}.png"
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise FaceParseError(f"pseudo mask '{path}' is missing or unreadable (sample {index})")
        h, w = raw["image"].shape[:2]
        if mask.shape[:2] != (h, w):
            mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
        out = {k: v for k, v in raw.items() if k not in ("labels",)}
        out["mask"] = mask
        return out


def pseudo_labels_cam(
    model: str | None = None,
    out_dir: str = "pseudo_masks",
    data: str = "synthetic",
    root: str | None = None,
    split: str = "train",
    num_samples: int | None = None,
    dataset_kwargs: str | None = None,
    image_size: int | None = None,
    scales: list[float] = (1.0, 0.75, 1.25),
    flip: bool = True,
    refine: bool = True,
    theta: float = 0.5,
    use_labels: bool = True,
    batch_size: int = 8,
    device: str = "cpu",
    subset: str | None = None,
    n: int | None = None,
    subset_seed: int = 0,
) -> str:
    """Write FCAM pseudo masks (one label PNG per image) from a trained MCT-ViT.

    --model is a folder written by save_pretrained (stage 1); --data a registered dataset (with
    --root, --split, --num-samples or --dataset-kwargs JSON). FCAMs: multi-scale (--scales) + flip,
    affinity refinement, threshold --theta, restricted to the image-level labels (--use-labels) or to
    the classes the model predicts (--no-use-labels). --subset uniform --n 3820 writes only DisFaceRep's
    uniform training subset (:func:`faceparse.data.subset.subset_indices`).
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from faceparse.data.base import collate
    from faceparse.models.base import load_model
    from faceparse.models.mct_vit.cam import fcam, pseudo_masks
    from faceparse.tasks.weakly import foreground_labels

    if not model:
        raise FaceParseError("--model is required: a folder with config.json + model.safetensors of a trained MCT-ViT")
    net = load_model(model, map_location=device).to(device).eval()
    if not hasattr(net, "forward_features") or not hasattr(net, "fg_index"):
        raise FaceParseError(f"model '{model}' is a {type(net).__name__}, not an MCT-ViT (needs class tokens)")
    kw: dict[str, Any] = json.loads(dataset_kwargs) if dataset_kwargs else {}
    if root is not None:
        kw["root"] = root
    if num_samples is not None:
        kw["num_samples"] = num_samples
    size = image_size or net.default_input_size
    ds = build_wrapped_dataset(
        data, split=split, image_size=size, augment=False, mean=net.input_mean, std=net.input_std, **kw
    )
    if (subset is None) != (n is None):
        raise FaceParseError("--subset and --n go together (e.g. --subset uniform --n 3820)")
    if subset is not None:
        from faceparse.data.subset import SubsetDataset

        ds = SubsetDataset(ds, n=n, mode=subset, seed=subset_seed)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ls = net.label_set
    count = 0
    with torch.no_grad():
        for batch in tqdm(loader, desc="pseudo-labels cam", unit="batch"):
            images = batch["image"].to(device)
            labels = foreground_labels(batch, ls).to(device) if use_labels else None
            cams = fcam(net, images, labels=labels, scales=tuple(scales), flip=flip, refine=refine)
            masks = pseudo_masks(cams, labels, theta, net.fg_index, ls.background).cpu().numpy().astype(np.uint8)
            for j, meta in enumerate(batch["meta"]):
                m = masks[j]
                oh, ow = meta.get("orig_size", m.shape)
                if (oh, ow) != m.shape:
                    m = cv2.resize(m, (int(ow), int(oh)), interpolation=cv2.INTER_NEAREST)
                key = sample_key({"meta": meta}, int(meta.get("index", count)))
                cv2.imwrite(str(out / f"{key}.png"), m)
                count += 1
    info = {
        "label_set": ls.to_dict(),
        "model": str(model),
        "data": data,
        "split": split,
        "dataset_kwargs": kw,
        "image_size": size,
        "scales": list(scales),
        "flip": flip,
        "refine": refine,
        "theta": theta,
        "use_labels": use_labels,
        "subset": None if subset is None else {"mode": subset, "n": n, "seed": subset_seed},
        "count": count,
    }
    (out / META_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return f"wrote {count} pseudo masks to {out}"


def score_pseudo_masks(
    pred_dir: str | Path,
    dataset: str = "synthetic",
    root: str | None = None,
    split: str = "train",
    subset: str | None = None,
    n: int | None = None,
    subset_seed: int = 0,
    dataset_kwargs: dict | None = None,
    image_size: int | None = None,
    unmapped: str = "background",
) -> dict[str, Any]:
    """Score pseudo masks (``<key>.png`` label maps, as ``pseudo-labels cam`` writes) against the true masks.

    The dataset's masks are read at their own resolution (``load_raw``); a pseudo mask of another size
    is resized to it (nearest). Pseudo masks in another label set (``pseudo_labels.json``) are mapped
    into the dataset's by class name (``unmapped``: classes it lacks become background or ignore).
    Metrics are :class:`faceparse.metrics.FaceParsingMetrics` over the whole (sub)set: ``mean_f1``
    (non-background classes, DisFaceRep's Tables 1, 3, 4), ``miou`` (with background), per-class
    ``f1``/``iou``. Returns them with ``count`` (masks scored) and ``label_set``.

    Args:
        pred_dir: the folder of pseudo masks.
        dataset, root, split, dataset_kwargs: the registered dataset with the true masks.
        subset, n, subset_seed: score only :func:`~faceparse.data.subset.subset_indices` of the split
            (``"uniform"``, 3820: DisFaceRep's training subset).
        image_size: passed to the dataset (the synthetic faces are drawn at it; default: the
            dataset's default).
    """
    import torch

    from faceparse.data.subset import subset_indices
    from faceparse.metrics import FaceParsingMetrics

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise FaceParseError(f"--pred '{pred_dir}' is not a folder of pseudo masks (run `faceparse pseudo-labels cam`)")
    if (subset is None) != (n is None):
        raise FaceParseError("--subset and --n go together (e.g. --subset uniform --n 3820)")
    kw: dict[str, Any] = {"split": split, "augment": False, **(dataset_kwargs or {})}
    if root is not None:
        kw["root"] = root
    if image_size is not None:
        kw["image_size"] = image_size
    ds = build_wrapped_dataset(dataset, **kw)
    label_set = ds.label_set
    pred_set = label_set
    meta = pred_dir / META_NAME
    if meta.is_file():
        info = json.loads(meta.read_text())
        if "label_set" in info:
            pred_set = get_label_set(info["label_set"])
    lut = None if pred_set.classes == label_set.classes else pred_set.mapping_to(label_set, unmapped)
    indices = subset_indices(len(ds), n, subset, subset_seed) if subset is not None else np.arange(len(ds))
    metric = FaceParsingMetrics(label_set)
    missing: list[str] = []
    for i in indices.tolist():
        raw = ds.load_raw(i)
        if raw.get("mask") is None:
            raise FaceParseError(f"dataset '{dataset}' ({split}) has no true masks to score against")
        key = sample_key(raw, i)
        pred = cv2.imread(str(pred_dir / f"{key}.png"), cv2.IMREAD_UNCHANGED)
        if pred is None:
            missing.append(key)
            continue
        if pred.ndim != 2:
            raise FaceParseError(f"'{pred_dir / f'{key}.png'}' is a colour image; expected a label map (one channel)")
        gt = np.asarray(raw["mask"])
        if pred.shape != gt.shape:
            pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_NEAREST)
        pred = pred.astype(np.int64)
        if lut is not None:
            pred = lut[pred]
        metric.update(torch.from_numpy(pred)[None], torch.from_numpy(gt.astype(np.int64))[None])
    if missing:
        raise FaceParseError(
            f"{len(missing)} of {len(indices)} pseudo masks are missing in '{pred_dir}', e.g. '{missing[0]}.png' "
            "(write them with `faceparse pseudo-labels cam` over the same dataset, split and subset)"
        )
    result = metric.compute()
    result["count"] = len(indices)
    result["label_set"] = label_set
    return result
