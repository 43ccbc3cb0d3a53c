"""Facial Component Activation Maps (FCAMs) from an MCT-ViT, and pseudo masks from them.

DisFaceRep (ACM MM 2025, Sec. 3.1 and 4.1.2) extracts FCAMs "following MCTformer+" and thresholds
them at theta = 0.5. The recipe (MCTformer+, TPAMI 2024):

1. class-to-patch attention ``A_k`` = attention of class token k to every patch, averaged over
   heads and over the last ``cam_layers`` layers (all 12 by default);
2. fused with the patch CAM ``C_k`` (patch-head output): ``sqrt(A_k * ReLU(C_k))`` (MCTformer+),
   ``A_k * ReLU(C_k)`` (V2), ``A_k`` or ``ReLU(C_k)`` alone;
3. optional refinement with patch-to-patch affinity: ``cam'_i = sum_j R_ij cam_j`` where ``R`` is
   the patch-to-patch block of the attention maps averaged over heads and summed over all layers;
4. multi-scale (default 1.0, 0.75, 1.25) and horizontal flip, summed at the output resolution;
   a flipped pass is mapped back with the label set's left/right swap before summing;
5. zeroed for classes absent from the image-level labels, then per-class min-max normalised.

Pseudo mask: ``argmax`` over ``[theta, cam_1 .. cam_K]`` (background wins where no FCAM reaches
theta), restricted to the image's present classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["fcam", "pseudo_masks", "normalize_cams"]


def normalize_cams(cams: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-image, per-class min-max normalisation of ``B x K x H x W`` maps to [0, 1]."""
    flat = cams.flatten(2)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo + eps)).view_as(cams)


def _fg_flip_perm(model) -> list[int]:
    """Permutation of the K foreground channels that mirrors left/right classes."""
    lut = model.label_set.flip_lut
    pos = {c: i for i, c in enumerate(model.fg_index)}
    return [pos[int(lut[c])] for c in model.fg_index]


def _single_pass(model, x: torch.Tensor, refine: bool, layers: int | None, fusion: str):
    cls, patches, attn = model.forward_features(x, return_attn=True)
    out = model._heads(cls, patches)
    k = model.num_tokens
    b, _, h, w = out["patch_cam"].shape
    maps = torch.stack([a.mean(1) for a in attn])  # L x B x T x T (head average)
    n = layers or model.cam_layers
    cls_att = maps[-n:].mean(0)[:, :k, k:].reshape(b, k, h, w)
    patch_cam = F.relu(out["patch_cam"])
    if fusion == "sqrt":
        cam = torch.sqrt(cls_att * patch_cam)
    elif fusion == "product":
        cam = cls_att * patch_cam
    elif fusion == "attention":
        cam = cls_att
    else:
        cam = patch_cam
    if refine:
        affinity = maps[:, :, k:, k:].sum(0)  # B x N x N, summed over all layers
        cam = (cam.flatten(2) @ affinity.transpose(1, 2)).view(b, k, h, w)
    return cam, out["class_logits"]


def fcam(
    model,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    scales: Sequence[float] = (1.0, 0.75, 1.25),
    flip: bool = True,
    refine: bool = True,
    layers: int | None = None,
    fusion: str | None = None,
    out_size: tuple[int, int] | None = None,
    return_logits: bool = False,
):
    """FCAMs ``B x K x H x W`` in [0, 1] for the K foreground classes of ``model`` (an MCT-ViT).

    Call it under ``torch.no_grad()`` for extraction (it keeps the graph otherwise).

    Args:
        images: normalised images ``B x 3 x H x W``.
        labels: image-level multi-hot ``B x K`` (foreground classes); None uses the model's own
            prediction (``sigmoid(class_logits) > 0.5`` at scale 1).
        scales, flip: multi-scale and flip test-time passes (MCTformer: 1.0, 0.75, 1.25 + flips).
        refine: patch-to-patch affinity refinement.
        layers: number of last layers for the class-to-patch attention (model default 12).
        fusion: ``sqrt`` | ``product`` | ``attention`` | ``patch`` (model default ``sqrt``).
        out_size: output size (default: the input size).
        return_logits: also return the class logits averaged over passes.
    """
    fusion = fusion or model.cam_fusion
    size = tuple(out_size or images.shape[-2:])
    p = model.patch_size
    perm = _fg_flip_perm(model)
    total = None
    logits_sum, n_pass = 0.0, 0
    for s in scales:
        if s == 1.0:
            x = images  # no resize (and no shape arithmetic, so tracing/export works)
        else:
            hs = max(p, round(images.shape[-2] * s / p) * p)
            ws = max(p, round(images.shape[-1] * s / p) * p)
            x = F.interpolate(images, size=(hs, ws), mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            cam, logits = _single_pass(model, xi, refine, layers, fusion)
            cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
            if flipped:
                cam = cam.flip(-1)[:, perm]
                logits = logits[:, perm]
            total = cam if total is None else total + cam
            logits_sum, n_pass = logits_sum + logits, n_pass + 1
    logits = logits_sum / n_pass
    if labels is None:
        labels = (logits.sigmoid() > 0.5).to(total.dtype)
    total = total * labels.to(total.dtype)[:, :, None, None]
    cams = normalize_cams(total)
    return (cams, logits) if return_logits else cams


def pseudo_masks(
    cams: torch.Tensor,
    labels: torch.Tensor | None = None,
    theta: float = 0.5,
    fg_index: Sequence[int] | None = None,
    background: int = 0,
) -> torch.Tensor:
    """Pseudo label maps ``B x H x W`` (int64, label-set indices) from FCAMs ``B x K x H x W``.

    A pixel takes the present class with the largest FCAM if it reaches ``theta`` (DisFaceRep:
    0.5), else ``background``. ``fg_index`` maps FCAM channel k to its label-set index (default
    ``k + 1``, i.e. background 0 first).
    """
    if labels is not None:
        cams = cams * labels.to(cams.dtype)[:, :, None, None]
    b, k, h, w = cams.shape
    scores = torch.cat([cams.new_full((b, 1, h, w), theta), cams], dim=1)
    idx = scores.argmax(1)
    lut = torch.tensor([background, *(fg_index if fg_index is not None else range(1, k + 1))], device=cams.device)
    return lut[idx]
