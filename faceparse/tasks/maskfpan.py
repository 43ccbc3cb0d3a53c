"""Lightning modules of Mask-FPAN's three stages (Li et al. 2023, Fig. 2).

1. :class:`LandmarkOcclusionTask`: the landmark-occlusion module (LOM) with its pose head (PPM);
2. :class:`DeOcclusionTask`: the de-occlusion module (DOM) on (occluded, clean) pairs, Eq. 1;
3. :class:`MaskFPANTask`: the segmentation network trained with Eq. 2, its weights built from the
   frozen LOM's landmarks, occlusion flags and pose and the frozen DOM's occlusion masks, which also
   relabel faces whose occlusion is not annotated (the semi-supervised path).

Each stage is a ``faceparse fit --config maskfpan_<stage>_<data>`` run whose
:class:`~faceparse.tasks.callbacks.SavePretrained` callback writes the stage's model folder
(config.json + model.safetensors); stage 3 reads the LOM and DOM folders (``lom=``, ``dom=``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from faceparse.errors import FaceParseError
from faceparse.images import IMAGENET_MEAN, IMAGENET_STD
from faceparse.labels import IGNORE_INDEX, LabelSet
from faceparse.losses.maskfpan import DeOcclusionLoss, LandmarkOcclusionLoss
from faceparse.metrics import OcclusionIoU
from faceparse.models.maskfpan.deocclusion import DeOcclusionNet
from faceparse.models.maskfpan.landmarks import LandmarkOcclusionNet
from faceparse.models.maskfpan.pose import add_pose_targets
from faceparse.tasks.base import BaseTask
from faceparse.tasks.supervised import SegmentationTask

__all__ = ["DeOcclusionTask", "LandmarkOcclusionTask", "MaskFPANTask", "table1_columns", "to_unit_range"]


def to_unit_range(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the data pipeline's normalisation: B x 3 x H x W in [0, 1] (what the DOM works on)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0.0, 1.0)


class LandmarkOcclusionTask(BaseTask):
    """Lightning module training the LOM (+ PPM) on a dataset with landmarks and occlusion flags.

    Pose targets come from the 5-point (or 68 iBUG, 29 COFW) landmarks by solvePnP when the batch has no ``pose``
    (other schemes train without the pose term). Logs landmark NME (normalised by the image
    diagonal) and occlusion-flag accuracy on validation, averaged over the epoch's samples.

    Optimiser: ``optimizer`` (AdamW), ``lr``, ``weight_decay``; no schedule (``scheduler="none"``).
    """

    schedulers = ("none",)

    def __init__(
        self,
        num_landmarks: int = 29,
        model_kwargs: dict[str, Any] | None = None,
        loss_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
    ) -> None:
        super().__init__()
        self.model = LandmarkOcclusionNet(num_landmarks=num_landmarks, **(model_kwargs or {}))
        self.loss = LandmarkOcclusionLoss(**(loss_kwargs or {}))
        self.val_nme = MeanMetric()
        self.val_occ_acc = MeanMetric()
        self._occ_seen = False

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        batch = add_pose_targets(batch)
        out = self.loss(self.model(batch["image"]), batch)
        self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=True, batch_size=len(batch["image"]))
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        pred = self.model.predict(batch["image"])
        h, w = batch["image"].shape[-2:]
        bs = len(batch["image"])
        self.val_nme.update((pred["landmarks"] - batch["landmarks"]).norm(dim=-1).mean() / float(np.hypot(h, w)), bs)
        if batch.get("landmark_occluded") is not None:
            self.val_occ_acc.update((pred["landmark_occluded"] == batch["landmark_occluded"]).float().mean(), bs)
            self._occ_seen = True

    def on_validation_epoch_end(self) -> None:
        result = {"nme": self.val_nme.compute()}
        if self._occ_seen:
            result["occ_acc"] = self.val_occ_acc.compute()
        self.log_results("val", result, prog_bar="nme")
        self.val_nme.reset()
        self.val_occ_acc.reset()
        self._occ_seen = False

    def optimizer_parameters(self) -> Iterable[nn.Parameter]:
        return self.parameters()  # the model and any learnable loss weights


class DeOcclusionTask(BaseTask):
    """Lightning module training Mask-FPAN's de-occlusion module (DOM) on occlusion pairs.

    The data are (occluded, clean) pairs with the occluder mask: the ``occluded`` dataset with
    ``return_clean: true`` over any registered base dataset (``clean`` and ``image`` are normalised
    alike; the task brings both back to [0, 1] with ``mean``/``std``, which must match the data
    module's). Loss: :class:`~faceparse.losses.maskfpan.DeOcclusionLoss` (Eq. 1 + reconstruction +
    occlusion BCE). Validation logs ``val/occlusion_iou`` (the DOM's thresholded occlusion mask
    against the true occluder mask) and ``val/eq1`` (squared error of the de-occluded face).

    Args:
        model_kwargs: :class:`~faceparse.models.maskfpan.deocclusion.DeOcclusionNet` arguments.
        loss_kwargs: :class:`~faceparse.losses.maskfpan.DeOcclusionLoss` arguments.
        lr, weight_decay, optimizer, scheduler, warmup_steps: see :mod:`faceparse.tasks.base`.
        threshold: occlusion probability threshold of the validation mask.
        mean, std: the data normalisation to undo.
    """

    schedulers = ("cosine", "none")

    def __init__(
        self,
        model_kwargs: dict[str, Any] | None = None,
        loss_kwargs: dict[str, Any] | None = None,
        lr: float = 5e-3,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        scheduler: str = "none",
        warmup_steps: int = 0,
        threshold: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.model = DeOcclusionNet(**(model_kwargs or {}))
        self.loss = DeOcclusionLoss(**(loss_kwargs or {}))
        self.val_iou = OcclusionIoU()
        self.val_eq1 = MeanMetric()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(x)

    def _pair(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "clean" not in batch or "occlusion" not in batch:
            raise FaceParseError(
                "DeOcclusionTask needs occlusion pairs (batch keys 'clean' and 'occlusion'): use "
                "dataset: occluded with dataset_kwargs {base: <any registered dataset>, return_clean: true}"
            )
        hp = self.hparams
        x = to_unit_range(batch["image"], hp.mean, hp.std)
        clean = to_unit_range(batch["clean"], hp.mean, hp.std)
        return x, {"clean": clean, "occlusion": batch["occlusion"]}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x, target = self._pair(batch)
        out = self.loss(self.model(x), target)
        parts = {k: v for k, v in out.items() if k != "loss"}
        self.log_losses(out["loss"], parts, x.shape[0])
        return out["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x, target = self._pair(batch)
        out = self.model(x)
        size = tuple(target["occlusion"].shape[-2:])
        prob = F.interpolate(out["occlusion_prob"], size=size, mode="bilinear", align_corners=False)[:, 0]
        self.val_iou.update((prob > self.hparams.threshold).long(), target["occlusion"])
        self.val_eq1.update(self.loss(out, target)["eq1"], x.shape[0])

    def on_validation_epoch_end(self) -> None:
        self.log_results("val", {"occlusion_iou": self.val_iou.compute(), "eq1": self.val_eq1.compute()})
        self.val_iou.reset()
        self.val_eq1.reset()


class MaskFPANTask(SegmentationTask):
    """Mask-FPAN's segmentation stage: LOM -> DOM -> segmentation on any registered dataset.

    A :class:`~faceparse.tasks.supervised.SegmentationTask` (any zoo model, default loss
    ``occlusion_weighted_ce``, Mask-FPAN Eq. 2) whose training batches first pass the frozen
    stage-1 and stage-2 modules, loaded from their ``save_pretrained`` folders:

    * ``lom``: landmarks and per-landmark occlusion flags predicted on the batch (at the LOM's input
      size, scaled back to the image) replace the batch's ``landmarks``/``landmark_occluded``, and its
      PPM head gives ``pose`` (``use_pose``; a LOM trained without pose targets, e.g. 29-point COFW,
      should run with ``use_pose: false``) - the ``o_i`` and ``p_i`` terms of Eq. 2;
    * ``dom``: the occlusion mask predicted on the batch (images brought back to [0, 1] with
      ``mean``/``std``) relabels the occluded pixels of faces without occlusion labels as the
      ``occlusion`` class and becomes their ``occlusion`` region (``relabel``: ``"unlabelled"``
      relabels the faces whose ``meta["occlusion_labelled"]`` is False, as the ``occluded`` dataset
      marks them with ``unlabelled_fraction``; ``"all"`` every face, for data with no occlusion
      labels at all; ``"none"`` only adds the DOM regions to Eq. 2's weights).

    The ``occlusion`` mask that the ``occluded`` dataset still carries for faces it marks unlabelled
    (kept there to score them) is zeroed before Eq. 2 with or without a DOM, so no row of the
    ablation sees the true occluders of those faces.

    Validation and test score the segmentation model alone (the LOM and DOM are only needed to
    train it); :class:`~faceparse.tasks.callbacks.SavePretrained` saves the segmentation model.

    Args:
        lom, dom: model folders written by the LOM and DOM stages (``None``: skip that stage).
        lom_threshold, dom_threshold: probability thresholds of the occlusion flags / mask.
        use_pose: take ``pose`` from the LOM's PPM head.
        relabel: ``"unlabelled"``, ``"all"`` or ``"none"`` (see above).
        mean, std: the data normalisation (to undo for the DOM).
        other arguments: as :class:`~faceparse.tasks.supervised.SegmentationTask`.
    """

    schedulers = ("multistep", "cosine", "none")

    def __init__(
        self,
        model: str | nn.Module = "rtformer_slim",
        loss: str | nn.Module = "occlusion_weighted_ce",
        label_set: str | LabelSet = "celebamask_hq_occ",
        model_kwargs: dict[str, Any] | None = None,
        loss_kwargs: dict[str, Any] | None = None,
        lom: str | None = None,
        dom: str | None = None,
        lom_threshold: float = 0.5,
        dom_threshold: float = 0.5,
        use_pose: bool = True,
        relabel: str = "unlabelled",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        lr: float = 4e-4,
        weight_decay: float = 0.0125,
        scheduler: str = "cosine",
        milestones: list[int] | None = None,
        gamma: float = 0.1,
        warmup_steps: int = 0,
        optimizer: str = "adamw",
    ) -> None:
        from faceparse.models.base import load_model

        super().__init__(
            model=model,
            loss=loss,
            label_set=label_set,
            model_kwargs=model_kwargs,
            loss_kwargs=loss_kwargs,
            lr=lr,
            weight_decay=weight_decay,
            scheduler=scheduler,
            milestones=milestones,
            gamma=gamma,
            warmup_steps=warmup_steps,
            optimizer=optimizer,
        )
        if relabel not in ("unlabelled", "all", "none"):
            raise FaceParseError(f"relabel must be 'unlabelled', 'all' or 'none'; got {relabel!r}")
        self.occlusion_class = self.label_set.index("occlusion") if "occlusion" in self.label_set else None
        if dom is not None and relabel != "none" and self.occlusion_class is None:
            raise FaceParseError(
                f"relabel={relabel!r} writes the DOM's occlusion as the 'occlusion' class, which label set "
                f"'{self.label_set.name}' lacks: use a label set with it (celebamask_hq_occ) or relabel: none"
            )
        self.lom = self._frozen(load_model(lom), LandmarkOcclusionNet, "lom") if lom is not None else None
        self.dom = self._frozen(load_model(dom), DeOcclusionNet, "dom") if dom is not None else None

    @staticmethod
    def _frozen(net: nn.Module, cls: type, arg: str) -> nn.Module:
        if not isinstance(net, cls):
            raise FaceParseError(f"{arg}= must be a folder of a saved {cls.__name__}; it holds a {type(net).__name__}")
        for p in net.parameters():
            p.requires_grad_(False)
        return net.eval()

    @torch.no_grad()
    def chain(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch with the LOM's landmarks, flags and pose and the DOM's occlusion (see the class)."""
        batch = dict(batch)
        image = batch["image"]
        h, w = image.shape[-2:]
        hp = self.hparams
        if self.lom is not None:
            self.lom.eval()
            size = int(self.lom.input_size)
            x = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False)
            pred = self.lom.predict(x, threshold=hp.lom_threshold)
            scale = torch.tensor([(w - 1) / max(size - 1, 1), (h - 1) / max(size - 1, 1)], device=image.device)
            batch["landmarks"] = pred["landmarks"] * scale
            batch["landmark_occluded"] = pred["landmark_occluded"]
            if hp.use_pose and "pose" in pred:
                batch["pose"] = pred["pose"]
        metas = batch.get("meta") or [{}] * image.shape[0]
        unlabelled = torch.tensor(
            [not m.get("occlusion_labelled", True) for m in metas], dtype=torch.bool, device=image.device
        )
        known = batch.get("occlusion")
        if known is not None and bool(unlabelled.any()):
            # the occlusion of these faces is not annotated (the dataset keeps the true mask only to
            # score them): Eq. 2 must not see it
            known = torch.where(unlabelled[:, None, None], torch.zeros_like(known), known)
            batch["occlusion"] = known
        if self.dom is not None:
            self.dom.eval()
            occ = self.dom.predict_occlusion(
                to_unit_range(image, hp.mean, hp.std), threshold=hp.dom_threshold, size=(h, w)
            )
            chosen = torch.ones_like(unlabelled) if hp.relabel == "all" else unlabelled
            if known is None:
                batch["occlusion"] = occ
            else:
                batch["occlusion"] = torch.where(chosen[:, None, None], occ, known.to(occ.dtype))
            if hp.relabel != "none" and bool(chosen.any()):
                mask = batch["mask"].clone()
                relabel = chosen[:, None, None] & (occ > 0) & (mask != IGNORE_INDEX)
                mask[relabel] = self.occlusion_class
                batch["mask"] = mask
        return batch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return super().training_step(self.chain(batch), batch_idx)

    def _eval_end(self, metrics, prefix: str) -> None:
        """Mean F1, mIoU, pixel accuracy, IoU per class and Mask-FPAN Table I's columns:
        ``{prefix}/table1_eyes``, ``table1_mouth`` and ``table1_occlusion`` (IoU; eyes = mean of both
        eyes, mouth = mean of mouth and lips) with ``miou`` as its "overall"."""
        result = metrics.compute()
        metrics.reset()
        result.update(table1_columns(result["iou"], self.label_set))
        log = ("mean_f1", "miou", "pixel_acc", *(k for k in result if k.startswith("table1_")))
        self.log_results(prefix, result, log=log, prog_bar="mean_f1", per_class="iou")


TABLE1_GROUPS = {
    "eyes": ("left_eye", "right_eye"),
    "mouth": ("mouth", "upper_lip", "lower_lip"),
    "occlusion": ("occlusion",),
}


def table1_columns(iou: torch.Tensor, label_set: LabelSet) -> dict[str, torch.Tensor]:
    """Mask-FPAN Table I's eyes / mouth / occlusion IoU from per-class IoU (classes the label set
    lacks, or that never occur, are left out of a group's mean; an empty group is omitted)."""
    out = {}
    for name, classes in TABLE1_GROUPS.items():
        values = [iou[label_set.index(c)] for c in classes if c in label_set]
        values = [v for v in values if not torch.isnan(v)]
        if values:
            out[f"table1_{name}"] = torch.stack(values).mean()
    return out
