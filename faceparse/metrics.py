"""Dataset-level face-parsing metrics on torchmetrics (state syncs under DDP).

Protocol (SegFace / FaRL, REFERENCE.md §3): one confusion matrix accumulated over the whole test
set; per-class ``F1 = 2 TP / (|GT| + |Pred|)``; mean F1 excludes background; mIoU averages every
class including background; pixel accuracy over non-ignored pixels. torchmetrics'
``MulticlassF1Score`` would give the same per-class F1, but we need F1, IoU, recall and accuracy
from one matrix, so the matrix is the state and the formulas are written here.
"""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import Metric

from faceparse.labels import IGNORE_INDEX, LabelSet, get_label_set


def _labels(preds: torch.Tensor) -> torch.Tensor:
    return preds.argmax(1) if preds.is_floating_point() and preds.dim() == 4 else preds


class FaceParsingMetrics(Metric):
    """Per-class F1 / IoU / recall, mean F1 (no background), mIoU (with background), pixel accuracy.

    ``update(preds, target)`` takes logits ``B x K x H x W`` or labels ``B x H x W`` and targets
    ``B x H x W`` (255 = ignore). ``compute()`` returns a dict of tensors.
    """

    full_state_update = False

    def __init__(
        self, label_set: LabelSet | str = "celebamask_hq", ignore_index: int = IGNORE_INDEX, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.label_set = get_label_set(label_set)
        self.num_classes = self.label_set.num_classes
        self.ignore_index = ignore_index
        k = self.num_classes
        self.add_state("confmat", default=torch.zeros(k, k, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds = _labels(preds)
        if preds.shape != target.shape:
            raise ValueError(f"predictions {tuple(preds.shape)} and targets {tuple(target.shape)} differ in shape")
        valid = target != self.ignore_index
        t, p = target[valid].long(), preds[valid].long()
        if t.numel() and (t.max() >= self.num_classes or t.min() < 0):
            raise ValueError(
                f"target has label {int(t.max())} outside 0..{self.num_classes - 1} ({self.label_set.name})"
            )
        k = self.num_classes
        # out-of-place: the state may be an inference tensor created under torch.inference_mode
        self.confmat = self.confmat + torch.bincount(t * k + p.clamp(0, k - 1), minlength=k * k).reshape(k, k)

    def compute(self) -> dict[str, torch.Tensor]:
        return metrics_from_confmat(self.confmat, self.label_set.background)

    def per_class_table(self, result: dict[str, torch.Tensor] | None = None) -> str:
        return per_class_table(result or self.compute(), self.label_set)


def metrics_from_confmat(cm: torch.Tensor, background: int = 0) -> dict[str, torch.Tensor]:
    """Face-parsing metrics from a confusion matrix ``cm[target, pred]``."""
    cm = cm.double()
    tp = cm.diag()
    gt, pred = cm.sum(1), cm.sum(0)
    f1 = torch.where(gt + pred > 0, 2 * tp / (gt + pred).clamp(min=1), torch.full_like(tp, float("nan")))
    iou = torch.where(gt + pred - tp > 0, tp / (gt + pred - tp).clamp(min=1), torch.full_like(tp, float("nan")))
    recall = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    fg = torch.ones_like(f1, dtype=torch.bool)
    fg[background] = False
    return {
        "f1": f1.float(),
        "iou": iou.float(),
        "recall": recall.float(),
        "mean_f1": f1[fg].nanmean().float(),
        "miou": iou.nanmean().float(),
        "pixel_acc": (tp.sum() / cm.sum().clamp(min=1)).float(),
        "rec_all": recall.nanmean().float(),
    }


def per_class_table(result: dict[str, torch.Tensor], label_set: LabelSet) -> str:
    """Markdown table of per-class F1 and IoU plus the summary figures."""
    rows = ["| class | F1 | IoU |", "|---|---:|---:|"]
    for i, name in enumerate(label_set.classes):
        rows.append(f"| {name} | {100 * float(result['f1'][i]):.2f} | {100 * float(result['iou'][i]):.2f} |")
    rows.append(f"| **mean F1 (no bg)** | **{100 * float(result['mean_f1']):.2f}** | |")
    rows.append(f"| mIoU (with bg) | | {100 * float(result['miou']):.2f} |")
    rows.append(f"| pixel accuracy | {100 * float(result['pixel_acc']):.2f} | |")
    return "\n".join(rows)


class OcclusionIoU(Metric):
    """IoU of a binary occlusion mask accumulated over the dataset (S3POT's occlusion IoU).

    ``update(pred, target)``: boolean / 0-1 masks ``B x H x W`` (or 2-class logits ``B x 2 x H x W``);
    target pixels equal to 255 are ignored.
    """

    full_state_update = False

    def __init__(self, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ignore_index = ignore_index
        self.add_state("intersection", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("union", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        pred = _labels(pred)
        valid = target != self.ignore_index
        p, t = (pred > 0) & valid, (target > 0) & valid
        self.intersection = self.intersection + (p & t).sum()
        self.union = self.union + (p | t).sum()

    def compute(self) -> torch.Tensor:
        return (self.intersection.double() / self.union.clamp(min=1)).float()


# ------------------------------------------------------------------------------------------------
# Structure-via-consensus evaluation (Masi et al., CVPR 2020, §4.3-4.4, REFERENCE.md §3): sparsity,
# superpixel accuracy, the COFW face-box protocol, the Part Labels 128 -> 250 upsampling, and a
# wrapper reporting them with the confusion-matrix figures (pixel acc., recall, rec_all, face IoU).


def upsample_labels(labels: torch.Tensor, size: int | tuple[int, int] = 250) -> torch.Tensor:
    """Nearest-neighbour resize of label maps (``B x H x W`` or ``H x W``).

    The consensus paper scores its 128 x 128 Part Labels predictions at the original 250 x 250 this
    way (``F.interpolate(mode="nearest")``, the resampling its authors' evaluation uses).
    """
    import torch.nn.functional as F

    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    x = labels[None] if labels.dim() == 2 else labels
    out = F.interpolate(x[:, None].float(), size=size, mode="nearest")[:, 0].to(labels.dtype)
    return out[0] if labels.dim() == 2 else out


def count_components(
    labels: Any, background: int = 0, per_class: bool = False, connectivity: int = 8, ignore_index: int = IGNORE_INDEX
) -> int:
    """Connected components of the non-background pixels of one label map (``H x W``).

    ``per_class=False`` (the sparsity measure as the issue / REFERENCE.md state it): all
    non-background pixels together. ``per_class=True``: every non-background class separately (what
    the authors' script counts on multi-class maps). ``ignore_index`` pixels count as background.
    """
    import cv2
    import numpy as np

    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    fg = (lab != background) & (lab != ignore_index)
    if not per_class:
        return int(cv2.connectedComponents(fg.astype(np.uint8), connectivity=connectivity)[0]) - 1
    return sum(
        int(cv2.connectedComponents((fg & (lab == c)).astype(np.uint8), connectivity=connectivity)[0]) - 1
        for c in np.unique(lab[fg])
    )


class SparsityError(Metric):
    """Sparsity (consensus paper, Fig. 4b and Tables 1, 3): mean over images of
    ``|#components(GT) - #components(prediction)|``, non-background pixels, 8-connectivity.

    ``update(preds, target)`` with labels ``B x H x W`` (or logits); target pixels equal to
    ``ignore_index`` count as background in both maps. ``compute()`` returns ``sparsity`` and the mean
    component counts ``components_gt`` / ``components_pred``.
    """

    full_state_update = False

    def __init__(
        self,
        background: int = 0,
        per_class: bool = False,
        connectivity: int = 8,
        ignore_index: int = IGNORE_INDEX,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.background, self.per_class, self.connectivity, self.ignore_index = (
            background,
            per_class,
            connectivity,
            ignore_index,
        )
        for name in ("abs_error", "cc_gt", "cc_pred", "images"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds = _labels(preds)
        if target.dim() == 2:
            preds, target = preds.reshape(target.shape)[None], target[None]
        kw = {"background": self.background, "per_class": self.per_class, "connectivity": self.connectivity}
        for p, t in zip(preds.detach().cpu(), target.detach().cpu()):
            ignored = t == self.ignore_index
            p = torch.where(ignored, torch.full_like(p, self.background), p)
            t = torch.where(ignored, torch.full_like(t, self.background), t)
            n_gt, n_pred = count_components(t, **kw), count_components(p, **kw)
            self.abs_error += abs(n_gt - n_pred)
            self.cc_gt += n_gt
            self.cc_pred += n_pred
            self.images += 1

    def compute(self) -> dict[str, torch.Tensor]:
        n = self.images.clamp(min=1)
        return {
            "sparsity": (self.abs_error / n).float(),
            "components_gt": (self.cc_gt / n).float(),
            "components_pred": (self.cc_pred / n).float(),
        }


def superpixel_vote(
    labels: torch.Tensor, superpixels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Majority label of every superpixel of one image (ties: lowest class); returns one label per
    superpixel id ``0..max``. Ids without valid pixels get ``ignore_index``."""
    sp = superpixels.reshape(-1).long()
    lab = labels.reshape(-1).long()
    valid = (lab >= 0) & (lab < num_classes)
    n_sp = int(sp.max()) + 1 if sp.numel() else 0
    hist = torch.bincount(sp[valid] * num_classes + lab[valid], minlength=n_sp * num_classes)
    hist = hist.reshape(n_sp, num_classes)
    vote = hist.argmax(1)
    vote[hist.sum(1) == 0] = ignore_index
    return vote


class SuperpixelAccuracy(Metric):
    """Superpixel accuracy (Part Labels, consensus paper Table 2): each superpixel takes the majority
    label of the ground truth and of the prediction; accuracy over all superpixels of the dataset.

    ``update(preds, target, superpixels)`` with ``B x H x W`` maps (``preds`` may be logits).
    """

    full_state_update = False

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor, superpixels: torch.Tensor) -> None:
        preds = _labels(preds)
        if target.dim() == 2:
            preds, target, superpixels = preds.reshape(target.shape)[None], target[None], superpixels[None]
        for p, t, s in zip(preds, target, superpixels):
            gt = superpixel_vote(t, s, self.num_classes, self.ignore_index)
            pr = superpixel_vote(p, s, self.num_classes, self.ignore_index)
            keep = gt != self.ignore_index
            self.correct += (gt[keep] == pr[keep]).sum()
            self.total += keep.sum()

    def compute(self) -> torch.Tensor:
        return (self.correct.double() / self.total.clamp(min=1)).float()


def face_box_mask(face_box: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Boolean ``H x W`` mask of the pixels inside a box ``(x0, y0, x1, y1)`` (0-based, inclusive)."""
    h, w = shape
    x0, y0, x1, y1 = (float(v) for v in face_box)
    ys = torch.arange(h, device=face_box.device)[:, None]
    xs = torch.arange(w, device=face_box.device)[None, :]
    return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


def cofw_protocol(
    preds: torch.Tensor,
    target: torch.Tensor,
    face_box: torch.Tensor | None = None,
    pred_face: int | list[int] = 1,
    target_face: int | list[int] = 1,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """COFW protocol of the consensus paper (§4.3): face (1) vs non-face (0), the occlusion class
    merged with background, pixels outside the COFW face box ignored.

    ``preds`` ``B x H x W`` labels (or logits), ``target`` ``B x H x W``, ``face_box`` ``B x 4``
    (``None`` scores whole images). ``pred_face`` / ``target_face``: the face class(es) on each side.
    Returns ``(preds01, target01)`` for a 2-class metric (label set ``cofw``).
    """
    preds = _labels(preds)
    pf = torch.as_tensor([pred_face] if isinstance(pred_face, int) else list(pred_face), device=preds.device)
    tf = torch.as_tensor([target_face] if isinstance(target_face, int) else list(target_face), device=target.device)
    p01 = torch.isin(preds, pf).long()
    t01 = torch.isin(target, tf).long()
    t01[target == ignore_index] = ignore_index
    if face_box is not None:
        inside = torch.stack([face_box_mask(b, tuple(target.shape[-2:])) for b in face_box.reshape(-1, 4)])
        t01[~inside.reshape(t01.shape).to(t01.device)] = ignore_index
    return p01, t01


class ConsensusMetrics(Metric):
    """The consensus paper's evaluation in one metric (Tables 1-3).

    Confusion-matrix figures (``iou``, ``recall``, ``pixel_acc``, ``rec_all`` = mean recall, ``miou``,
    ``f1``), ``face_iou`` / ``rec_face`` (when the label set has a ``face`` class), ``sparsity`` and,
    when superpixels are given, ``superpixel_acc``.

    Args:
        label_set: label set of the targets.
        protocol: ``None``; ``"cofw"`` (face vs non-face inside the face box, occlusion merged with
            background; targets in ``cofw`` or ``cofw_occlusion``); ``"part_labels"`` (nothing special
            beyond upsampling: predictions smaller than the targets are upsampled by nearest neighbour,
            128 -> 250 as the paper does).
        pred_label_set: label set of the predictions when it differs (mapped by class name).
        per_class_sparsity: count components per class instead of all non-background together.

    ``update(preds, target, superpixels=None, face_box=None)``: predictions at any size (upsampled
    to the target's by nearest neighbour).
    """

    full_state_update = False

    def __init__(
        self,
        label_set: LabelSet | str = "part_labels",
        protocol: str | None = None,
        pred_label_set: LabelSet | str | None = None,
        per_class_sparsity: bool = False,
        ignore_index: int = IGNORE_INDEX,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if protocol not in (None, "none", "cofw", "part_labels"):
            raise ValueError(f"protocol must be None, 'cofw' or 'part_labels', got {protocol!r}")
        self.protocol = None if protocol == "none" else protocol
        self.label_set = get_label_set(label_set)
        self.pred_label_set = get_label_set(pred_label_set) if pred_label_set is not None else self.label_set
        self.ignore_index = ignore_index
        scored = get_label_set("cofw") if self.protocol == "cofw" else self.label_set
        self.scored_label_set = scored
        self.confusion = FaceParsingMetrics(scored, ignore_index)
        self.sparsity = SparsityError(scored.background, per_class_sparsity, ignore_index=ignore_index)
        self.superpixel = SuperpixelAccuracy(scored.num_classes, ignore_index)
        self._lut = (
            torch.as_tensor(self.pred_label_set.mapping_to(self.label_set))
            if self.pred_label_set.classes != self.label_set.classes
            else None
        )

    def update(
        self,
        preds: torch.Tensor,
        target: torch.Tensor,
        superpixels: torch.Tensor | None = None,
        face_box: torch.Tensor | None = None,
    ) -> None:
        preds = _labels(preds)
        if preds.shape[-2:] != target.shape[-2:]:
            preds = upsample_labels(preds, tuple(target.shape[-2:]))
        if self._lut is not None:
            preds = self._lut.to(preds.device)[preds.long()]
        if self.protocol == "cofw":
            face = [i for i, c in enumerate(self.label_set.classes) if c == "face"]
            if not face:
                raise ValueError(f"the cofw protocol needs a 'face' class; label set {self.label_set.name} has none")
            preds, target = cofw_protocol(preds, target, face_box, face, face, self.ignore_index)
        self.confusion.update(preds, target)
        self.sparsity.update(preds, target)
        if superpixels is not None:
            self.superpixel.update(preds, target, superpixels)

    def reset(self) -> None:
        super().reset()
        for child in (self.confusion, self.sparsity, self.superpixel):
            child.reset()

    def compute(self) -> dict[str, torch.Tensor]:
        out = dict(self.confusion.compute())
        if "face" in self.scored_label_set:
            i = self.scored_label_set.index("face")
            out["face_iou"], out["rec_face"] = out["iou"][i], out["recall"][i]
        out.update(self.sparsity.compute())
        if int(self.superpixel.total) > 0:
            out["superpixel_acc"] = self.superpixel.compute()
        return out
