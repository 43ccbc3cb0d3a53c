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

from .labels import IGNORE_INDEX, LabelSet, get_label_set


def _labels(preds: torch.Tensor) -> torch.Tensor:
    return preds.argmax(1) if preds.is_floating_point() and preds.dim() == 4 else preds


class FaceParsingMetrics(Metric):
    """Per-class F1 / IoU / recall, mean F1 (no background), mIoU (with background), pixel accuracy.

    ``update(preds, target)`` takes logits ``B x K x H x W`` or labels ``B x H x W`` and targets
    ``B x H x W`` (255 = ignore). ``compute()`` returns a dict of tensors.
    """

    full_state_update = False

    def __init__(self, label_set: LabelSet | str = "celebamask_hq", ignore_index: int = IGNORE_INDEX, **kwargs: Any) -> None:
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
            raise ValueError(f"target has label {int(t.max())} outside 0..{self.num_classes - 1} ({self.label_set.name})")
        k = self.num_classes
        self.confmat += torch.bincount(t * k + p.clamp(0, k - 1), minlength=k * k).reshape(k, k)

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
        self.intersection += (p & t).sum()
        self.union += (p | t).sum()

    def compute(self) -> torch.Tensor:
        return (self.intersection.double() / self.union.clamp(min=1)).float()
