"""S3POT training: self-supervised occlusion segmentation with prompt losses (paper Sec. 3-4).

:class:`OcclusionPromptTask` trains S3POT's screening layer with the losses of Eq. 1-4
(:class:`faceparse.losses.s3pot.PromptLoss`); no occlusion labels are used for training, the
``occlusion`` masks of the data only feed the occlusion IoU metric. Two settings (paper Sec. 4):

- *standard training*: one model over a training set (``Trainer.fit``);
- *per-image overfitting*: a separate screening layer per test image, optimised on that image
  alone (``per_image_steps > 0`` in ``test``/``predict``, or :func:`per_image_overfit`). The frozen
  stages (SAM encoder, feature enhancement, prompt selection) run once per image and are reused by
  every step.

Batches are the sample dicts of ``faceparse.data``; S3POT reads ``image``, ``reference`` (else the
reference source of the task), ``face_mask`` (else the face classes of ``mask``) and ``occlusion``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from faceparse.errors import FaceParseError
from faceparse.labels import LabelSet, get_label_set
from faceparse.losses.s3pot import PromptLoss
from faceparse.metrics import OcclusionIoU
from faceparse.registry import MODELS
from faceparse.tasks.base import BaseTask


def _require_screening(model: nn.Module, what: str) -> None:
    if not getattr(model, "use_screening", True):
        raise FaceParseError(
            f"S3POT {what} trains the screening layer, which screening=False switches off (Table 2's rows "
            "without SA are training-free): evaluate them with test/predict and per_image_steps 0"
        )


def per_image_overfit(
    model: nn.Module,
    image: torch.Tensor,
    reference: torch.Tensor | None = None,
    face_mask: torch.Tensor | None = None,
    steps: int = 50,
    lr: float = 1e-4,
    loss: nn.Module | None = None,
    restore: bool = True,
    weight_decay: float = 1e-6,
) -> tuple[torch.Tensor, list[float]]:
    """S3POT per-image overfitting (paper Sec. 4): fit the screening layer to one image.

    Args:
        model: an :class:`~faceparse.models.s3pot.model.S3POT`.
        image: ``1 x 3 x H x W`` normalised image (a batch is processed image by image).
        reference, face_mask: as for ``S3POT.forward``.
        steps: AdamW steps on this image alone (public code: 50).
        lr, weight_decay: AdamW settings (paper: lr 1e-4; public code: weight decay 1e-6).
        loss: the prompt loss (default :class:`PromptLoss` with the paper's alpha, lambda).
        restore: put the screening weights back afterwards (the next image starts afresh).

    Returns:
        ``(logits, losses)``: final ``B x 2 x H x W`` logits and the loss before each step plus
        the final loss (``steps + 1`` values per image, averaged over the batch).
    """
    _require_screening(model, "per-image overfitting")
    loss = loss or PromptLoss()
    outs, curves = [], []
    for i in range(image.shape[0]):
        with torch.inference_mode(False), torch.enable_grad():
            x = image[i : i + 1].clone()
            ref = None if reference is None else reference[i : i + 1].clone()
            fm = None if face_mask is None else face_mask[i : i + 1].clone()
            state = model.prepare(x, ref, fm)
            saved = copy.deepcopy(model.screening.state_dict())
            params = [p for p in model.screening.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
            curve = []
            for _ in range(steps):
                value = loss(model.decode(state))["loss"]
                opt.zero_grad(set_to_none=True)
                value.backward()
                opt.step()
                curve.append(float(value.detach()))
            with torch.no_grad():
                final = model.decode(state)
                curve.append(float(loss(final)["loss"]))
            outs.append(final["logits"].detach())
            if restore:
                model.screening.load_state_dict(saved)
        curves.append(curve)
    mean_curve = np.mean(np.asarray(curves), axis=0).tolist()
    return torch.cat(outs, dim=0), mean_curve


class OcclusionPromptTask(BaseTask):
    """Lightning task for S3POT (standard training, evaluation, per-image overfitting, prediction).

    Args:
        model: a registered S3POT name (``s3pot_vit_b``...) or a model instance.
        model_kwargs: constructor overrides (``checkpoint=`` path of the SAM weights...).
        label_set: label set of the data's parsing ``mask`` (to find the face region ``M_f``).
        alpha, lam: Eq. 3 / Eq. 4 hyper-parameters (paper: 10, 0.5).
        lr, weight_decay: AdamW (paper: lr 1e-4; weight decay 1e-6 as in the public code).
        optimizer: ``adamw``, ``adam`` or ``sgd`` (see :mod:`faceparse.tasks.base`).
        scheduler: ``cosine`` (per epoch over ``trainer.max_epochs``, paper) or ``none``.
        reference: where references come from when a batch has no ``reference``: ``inpaint``
            (OpenCV fallback on the parsing regions) or a folder (:class:`FolderReferences`).
        per_image_steps: > 0 switches ``test``/``predict`` to per-image overfitting with that many
            steps per image at ``per_image_lr``.
        prompt_selection, similarity_threshold, feature_enhancement, screening: the ablation
            switches of the paper's Table 2 (``greedy`` / ``threshold`` / ``otsu`` prompt selection,
            the fixed threshold 0.5, FE on/off, SA on/off), set on the model
            (:meth:`S3POT.set_ablation`); the defaults are the paper's full model (GS + FE + SA).
            ``screening=False`` leaves nothing to train: run ``test``/``predict`` without ``fit``.
    """

    scheduler_interval = "epoch"  # paper: cosine over the epochs

    def __init__(
        self,
        model: str | nn.Module = "s3pot_tiny",
        model_kwargs: dict[str, Any] | None = None,
        label_set: str | LabelSet = "celebamask_hq",
        alpha: float = 10.0,
        lam: float = 0.5,
        lr: float = 1e-4,
        weight_decay: float = 1e-6,
        scheduler: str = "cosine",
        reference: str = "inpaint",
        per_image_steps: int = 0,
        per_image_lr: float = 1e-4,
        optimizer: str = "adamw",
        prompt_selection: str = "greedy",
        similarity_threshold: float = 0.5,
        feature_enhancement: bool = True,
        screening: bool = True,
    ) -> None:
        super().__init__(ignore=["model"] if isinstance(model, nn.Module) else None)
        if isinstance(model, nn.Module):
            self.model = model
        else:
            self.model = MODELS.build(model, **(model_kwargs or {}))
            self.model.registry_name = model
        if not hasattr(self.model, "prepare") or not hasattr(self.model, "screening"):
            raise FaceParseError(f"OcclusionPromptTask needs an S3POT model, got {type(self.model).__name__}")
        self.model.set_ablation(prompt_selection, similarity_threshold, feature_enhancement, screening)
        self.label_set = get_label_set(label_set)
        self.loss = PromptLoss(alpha=alpha, lam=lam)
        self.val_iou = OcclusionIoU()
        self.test_iou = OcclusionIoU()
        self.per_image_curves: list[list[float]] = []
        from faceparse.models.s3pot.references import build_reference_source

        self.reference_source = build_reference_source(reference)

    # ------------------------------------------------------------------ inputs
    def regions_of(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """``B x H x W`` int: 0 outside the face region, parsing id + 1 inside (``face_mask`` wins)."""
        if "face_mask" in batch:
            return batch["face_mask"].long()
        if "mask" not in batch:
            return None
        mask = batch["mask"]
        face = self.model.face_region(mask, self.label_set)
        return torch.where(face, mask.long() + 1, torch.zeros_like(mask.long()))

    def inputs_of(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(image, reference, regions)`` for S3POT from a batch."""
        from faceparse.models.s3pot.references import references_for_batch

        x = batch["image"]
        regions = self.regions_of(batch)
        ref = batch.get("reference")
        if ref is None:
            names = None
            if "meta" in batch:
                names = [m.get("path") or m.get("name") or "" for m in batch["meta"]]
            ref = references_for_batch(
                x, regions, self.model.input_mean, self.model.input_std, self.reference_source, names
            )
        return x, ref, regions

    def forward(
        self, x: torch.Tensor, reference: torch.Tensor | None = None, face_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.model(x, reference, face_mask)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        _require_screening(self.model, "fit")
        x, ref, regions = self.inputs_of(batch)
        parts = self.loss(self.model.forward_train(x, ref, regions), batch)
        named = {k: parts[k] for k in ("recall_occ", "recall_face", "face_penalty")}
        self.log_losses(parts["loss"], named, x.shape[0])
        return parts["loss"]

    def _eval(self, batch: dict[str, Any], metric: OcclusionIoU, prefix: str, per_image: bool) -> torch.Tensor:
        x, ref, regions = self.inputs_of(batch)
        if per_image:
            logits, curve = per_image_overfit(
                self.model, x, ref, regions, self.hparams.per_image_steps, self.hparams.per_image_lr, self.loss
            )
            self.per_image_curves.append(curve)
            loss = torch.tensor(curve[-1], device=logits.device)
        else:
            out = self.model.forward_train(x, ref, regions)
            logits, loss = out["logits"], self.loss(out, batch)["loss"]
        self.log(f"{prefix}/loss", loss, prog_bar=True, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        if "occlusion" in batch:
            metric.update(logits.argmax(1), batch["occlusion"])
        return logits

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval(batch, self.val_iou, "val", per_image=False)

    def on_validation_epoch_end(self) -> None:
        self.log_results("val", {"occlusion_iou": self.val_iou.compute()}, prog_bar="occlusion_iou")
        self.val_iou.reset()

    def on_test_epoch_start(self) -> None:
        self.per_image_curves = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval(batch, self.test_iou, "test", per_image=self.hparams.per_image_steps > 0)

    def on_test_epoch_end(self) -> None:
        self.log_results("test", {"occlusion_iou": self.test_iou.compute()})
        self.test_iou.reset()

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """``B x H x W`` uint8 occlusion masks (1 = occlusion)."""
        x, ref, regions = self.inputs_of(batch)
        if self.hparams.per_image_steps > 0:
            logits, _ = per_image_overfit(
                self.model, x, ref, regions, self.hparams.per_image_steps, self.hparams.per_image_lr, self.loss
            )
        else:
            logits = self.model(x, ref, regions)
        return logits.argmax(1).to(torch.uint8)

    def optimizer_parameters(self) -> Iterable[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]  # the screening layer


# --------------------------------------------------------------------------- prediction
def _read_rgb(path: Path) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise FaceParseError(f"image file '{path}' does not exist")
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FaceParseError(f"cannot read image '{path}' (expected a PNG/JPEG file)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def predict_occlusion(
    model_dir_or_model: str | Path | nn.Module,
    image_paths: Sequence[str | Path],
    out_dir: str | Path | None = None,
    references: str | Path | None = None,
    face_masks: str | Path | None = None,
    per_image_steps: int = 0,
) -> list[Path]:
    """Write S3POT occlusion masks (``<stem>_occlusion.png``, 0 / 255) for image files.

    Args:
        model_dir_or_model: a ``save_pretrained`` folder of an S3POT model, or the model.
        image_paths: image files.
        out_dir: output folder (default: next to each image).
        references: folder of occlusion-free references (``<stem>_ref.png``...); default: the
            OpenCV inpainting fallback.
        face_masks: folder of face-region masks or parsing maps (``<stem>.png``, nonzero = face
            region ``M_f``, values = parsing regions for the fallback); default: the whole image.
        per_image_steps: > 0 runs per-image overfitting with that many steps per image.

    Returns:
        The written mask paths, in the order of ``image_paths``.
    """
    import cv2
    from tqdm import tqdm

    from faceparse.models.base import load_model
    from faceparse.models.s3pot.references import FolderReferences, build_reference_source, references_for_batch

    model = model_dir_or_model if isinstance(model_dir_or_model, nn.Module) else load_model(model_dir_or_model)
    if not hasattr(model, "prepare"):
        raise FaceParseError(f"predict --occlusion needs an S3POT model, got {type(model).__name__}")
    model.eval()
    device = next(model.parameters()).device
    source = build_reference_source(references)
    masks_dir = FolderReferences(face_masks, suffix="") if face_masks is not None else None
    written: list[Path] = []
    mean = torch.tensor(model.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.input_std).view(1, 3, 1, 1)
    for p in tqdm([Path(p) for p in image_paths], desc="occlusion", disable=len(image_paths) < 2):
        rgb = _read_rgb(p)
        h, w = rgb.shape[:2]
        x = ((torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0 - mean) / std).to(device)
        regions = None
        if masks_dir is not None:
            mpath = masks_dir.path_for(p.name)
            m = cv2.imread(str(mpath), cv2.IMREAD_UNCHANGED)
            if m is None:
                raise FaceParseError(f"cannot read face mask '{mpath}'")
            if m.ndim == 3:
                m = m[..., 0]
            if m.shape != (h, w):
                m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
            regions = torch.from_numpy(m.astype(np.int64))[None].to(device)
        ref = references_for_batch(x, regions, model.input_mean, model.input_std, source, [p.name])
        if per_image_steps > 0:
            logits, _ = per_image_overfit(model, x, ref, regions, per_image_steps)
        else:
            with torch.no_grad():
                logits = model(x, ref, regions)
        mask = (logits.argmax(1)[0].cpu().numpy() > 0).astype(np.uint8) * 255
        target = (Path(out_dir) if out_dir is not None else p.parent) / f"{p.stem}_occlusion.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), mask)
        written.append(target)
    return written
