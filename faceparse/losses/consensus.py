"""Structure-via-consensus loss (Masi et al., "Towards Learning Structure via Consensus for Face
Segmentation and Parsing", CVPR 2020, Eq. 6-8).

For every blob c of the label map (pixels that must agree), with p_c the mean softmax over the
blob (Eq. 6), Eq. 8 averages over the blobs

    alpha * KL(y || p_c) + beta / |c| * sum_{s in c} KL(p_c || p(s)),

with the paper's alpha = 10 and beta = 5. The first term fits the blob's average prediction to
its label (for a one-hot y it is -log p_c[y]); the second pulls every pixel towards the blob's
consensus. When every pixel is its own blob the loss is alpha times pixel-wise cross-entropy.

Blobs: one per class per image (the official practice on Part Labels and COFW fine-tuning),
every 8-connected component of each class, or given ids (the occlusion pseudo-label blobs of
§3.1, see :mod:`faceparse.data.consensus_pseudo`).

Vectorised over the batch and all blobs with ``index_add`` / ``scatter_reduce``: no Python loop
over blobs. Components are labelled with OpenCV on the CPU outside autograd (one call per class
for the whole batch). Written by hand: no library implements this loss.

Normalisation (``normalization``):

- ``"paper"`` (default): Eq. 8 exactly; every blob has weight 1 / (number of blobs), the
  consensus term of a blob is a mean over its pixels. ``reduction="image"`` applies Eq. 8 per
  image and averages over images (default); ``"blob"`` averages over all blobs of the batch.
- ``"official"``: what the authors' released loss computes (read from their public code; not
  copied): a blob id spans the whole batch (with class blobs, one blob per class per batch); its
  label term is the mean over *all* images of -log p_c (0 for images without that blob), its
  consensus term is the sum of per-pixel KL over the blob's pixels in the whole batch divided by
  K times that pixel count, and the loss averages over the blob ids present in the batch. So
  the label term is damped for classes missing from some images and the consensus term is
  1/K of the paper's. We default to the paper because it is the stated objective, is
  independent of batch composition, and reduces to cross-entropy as §3.3 says; the official
  variant is kept for reproducing released models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceparse.labels import IGNORE_INDEX
from faceparse.losses.standard import logits_of
from faceparse.registry import LOSSES

BLOB_MODES = ("class", "components", "given")


@dataclass
class BlobIndex:
    """Blob membership of the valid pixels of a batch.

    ``pixel`` indexes the flattened ``B*H*W`` grid (valid pixels only; None when every pixel is
    valid), ``blob`` gives each of those pixels its blob id in ``[0, num_blobs)``, ``blob_label``
    the class of every blob and ``blob_image`` the batch index of every blob.
    """

    pixel: torch.Tensor | None
    blob: torch.Tensor
    blob_label: torch.Tensor
    blob_image: torch.Tensor
    num_blobs: int


def _components_per_class(target: np.ndarray, num_classes: int, connectivity: int) -> tuple[np.ndarray, int]:
    """Label the ``connectivity``-connected components of every class of a B x H x W map.

    One OpenCV call per class for the whole batch: the images are stacked vertically with a
    row of zeros between them, so components never cross images. Pixels of classes outside
    ``[0, num_classes)`` (ignore) get -1. Returns ids unique over the batch and their count.
    """
    b, h, w = target.shape
    out = np.full((b, h, w), -1, dtype=np.int64)
    offset = 0
    for k in range(num_classes):
        binary = target == k
        if not binary.any():
            continue
        tall = np.zeros((b, h + 1, w), dtype=np.uint8)
        tall[:, :h] = binary
        n, lab = cv2.connectedComponents(tall.reshape(b * (h + 1), w), connectivity=connectivity, ltype=cv2.CV_32S)
        lab = lab.reshape(b, h + 1, w)[:, :h]
        out[binary] = lab[binary].astype(np.int64) - 1 + offset
        offset += n - 1
    return out, offset


def compute_blobs(
    target: torch.Tensor,
    num_classes: int,
    mode: str = "class",
    blobs: torch.Tensor | None = None,
    connectivity: int = 8,
    ignore_index: int = IGNORE_INDEX,
) -> BlobIndex:
    """Blob ids of a batch of label maps (no gradient; blob extraction runs outside autograd).

    ``mode``: ``"class"`` one blob per class per image (the official practice on Part Labels
    and COFW fine-tuning); ``"components"`` every ``connectivity``-connected component of each
    class in each image is a blob (computed with OpenCV on the CPU); ``"given"`` blob ids from
    ``blobs`` (B x H x W int, e.g. the occlusion pseudo-label blobs of §3.1), split further by
    class so that every blob has one label.
    """
    if mode not in BLOB_MODES:
        raise ValueError(f"blob mode must be one of {BLOB_MODES}, got {mode!r}")
    b, h, w = target.shape
    t = target.reshape(-1)
    valid = (t >= 0) & (t < num_classes) & (t != ignore_index)
    if bool(valid.all()):  # no ignore pixels: skip the gathers
        pixel, labels = None, t.long()
        img = torch.arange(b, device=t.device).repeat_interleave(h * w)
    else:
        pixel = valid.nonzero().squeeze(1)
        labels = t[pixel].long()
        img = pixel // (h * w)
    if mode == "class":
        key = img * num_classes + labels
        key_space = b * num_classes
    elif mode == "components":
        cc, n = _components_per_class(target.detach().cpu().numpy(), num_classes, connectivity)
        key = torch.from_numpy(cc.reshape(-1)).to(target.device)
        key = key if pixel is None else key[pixel]
        key_space = max(n, 1)
    else:
        if blobs is None:
            raise ValueError('blob mode "given" needs a "blobs" tensor (B x H x W) in the batch')
        if blobs.shape != target.shape:
            raise ValueError(f"blobs must have the shape of the mask {tuple(target.shape)}, got {tuple(blobs.shape)}")
        bl = blobs.reshape(-1).long()
        bl = bl if pixel is None else bl[pixel]
        if bl.numel() and bl.min() < 0:
            raise ValueError("blob ids must be >= 0")
        per_img = int(bl.max()) + 1 if bl.numel() else 1
        key = (img * per_img + bl) * num_classes + labels
        key_space = b * per_img * num_classes
    # compact the keys into 0..M-1 (bincount + cumsum: linear time, no sort)
    present = torch.bincount(key, minlength=key_space) > 0
    remap = torch.cumsum(present, 0) - 1
    blob = remap[key]
    m = int(present.sum())
    blob_label = torch.zeros(m, dtype=torch.long, device=t.device).scatter_(0, blob, labels)
    blob_image = torch.zeros(m, dtype=torch.long, device=t.device).scatter_(0, blob, img)
    return BlobIndex(pixel, blob, blob_label, blob_image, m)


def _connected_zero(logits: torch.Tensor) -> torch.Tensor:
    """A float32 0 with a ``grad_fn`` (a batch without any blob: all pixels ignored). Multiplied
    before the sum: ``logits.sum() * 0`` is NaN when fp16 logits of magnitude 1e4 sum past 65504."""
    return (logits.float() * 0.0).sum()


def consensus_loss_terms(
    logits: torch.Tensor, index: BlobIndex, stable: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-blob terms of Eq. 8: ``(label_term, consensus_term, blob_size)``, each of shape M.

    label_term = KL(y || p_c) = -log p_c[y_c]; consensus_term = 1/|c| sum_s KL(p_c || p(s)),
    with p_c = mean of the softmax over the blob (Eq. 6). The consensus term is computed in
    closed form per blob, sum_k p_c,k (log p_c,k - mean_s log p_k(s)), so no per-pixel gather is
    needed: two ``index_add`` of p and log p give every blob's statistics. log p_c is the log of
    that sum; if a blob's probabilities underflow (logit gaps > ~70) a max-shifted scatter
    log-sum-exp is used instead (``stable=None`` decides automatically), so the loss stays finite.
    """
    b, k, h, w = logits.shape
    x = logits if logits.dtype == torch.float64 else logits.float()
    logp = F.log_softmax(x, dim=1).permute(0, 2, 3, 1).reshape(-1, k)
    if index.pixel is not None:
        logp = logp[index.pixel]
    m = index.num_blobs
    ids = index.blob
    count = torch.bincount(ids, minlength=m).to(logp.dtype)
    zeros = torch.zeros((m, k), dtype=logp.dtype, device=logp.device)
    sum_p = zeros.index_add(0, ids, torch.exp(logp))
    sum_logp = zeros.index_add(0, ids, logp)
    tiny = 1e-30 if logp.dtype != torch.float64 else 1e-300
    if stable is None:
        stable = bool((sum_p.detach() < tiny).any())
    if not stable:
        log_mean = torch.log(sum_p) - torch.log(count)[:, None]
    else:  # max shift per blob and class (no gradient needed through the max)
        with torch.no_grad():
            shift = torch.full((m, k), -torch.inf, dtype=logp.dtype, device=logp.device)
            shift = shift.scatter_reduce(0, ids[:, None].expand(-1, k), logp, "amax")
        sum_exp = torch.zeros_like(shift).index_add(0, ids, torch.exp(logp - shift[ids]))
        log_mean = shift + torch.log(sum_exp) - torch.log(count)[:, None]
    label_term = -log_mean.gather(1, index.blob_label[:, None]).squeeze(1)
    mean_logp = sum_logp / count[:, None]
    consensus_term = (torch.exp(log_mean) * (log_mean - mean_logp)).sum(1)
    return label_term, consensus_term, count


def consensus_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 10.0,
    beta: float = 5.0,
    blobs: str = "class",
    blob_ids: torch.Tensor | None = None,
    connectivity: int = 8,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "image",
    normalization: str = "paper",
    index: BlobIndex | None = None,
) -> dict[str, torch.Tensor]:
    """Eq. 8 of the paper for a batch; returns ``{"loss", "label_term", "consensus_term"}``.

    ``logits`` B x K x H x W, ``target`` B x H x W (``ignore_index`` pixels belong to no blob).
    ``index`` reuses blobs computed by :func:`compute_blobs` (e.g. to time the loss alone).
    """
    if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"consensus loss expects logits B x K x H x W and target B x H x W of the same size, "
            f"got {tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if reduction not in ("image", "blob"):
        raise ValueError(f"reduction must be 'image' or 'blob', got {reduction!r}")
    if normalization not in ("paper", "official"):
        raise ValueError(f"normalization must be 'paper' or 'official', got {normalization!r}")
    b, k = logits.shape[:2]
    target = target.long()
    if normalization == "official":
        return _official(logits, target, alpha, beta, blobs, blob_ids, connectivity, ignore_index)
    if index is None:
        index = compute_blobs(target, k, blobs, blob_ids, connectivity, ignore_index)
    if index.num_blobs == 0:
        zero = _connected_zero(logits)
        return {"loss": zero, "label_term": zero.detach(), "consensus_term": zero.detach()}
    label_term, consensus_term, _ = consensus_loss_terms(logits, index)
    per_blob = alpha * label_term + beta * consensus_term
    if reduction == "blob":
        weight = torch.full_like(per_blob, 1.0 / index.num_blobs)
    else:
        blobs_per_image = torch.bincount(index.blob_image, minlength=b).to(per_blob.dtype)
        n_images = int((blobs_per_image > 0).sum())
        weight = 1.0 / (blobs_per_image[index.blob_image] * n_images)
    return {
        "loss": (weight * per_blob).sum(),
        "label_term": (weight * label_term).sum().detach(),
        "consensus_term": (weight * consensus_term).sum().detach(),
    }


def _official(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    blobs: str,
    blob_ids: torch.Tensor | None,
    connectivity: int,
    ignore_index: int,
) -> dict[str, torch.Tensor]:
    """The released normalisation (see the module docstring), vectorised.

    Batch-wide blob ids (the class, a component id, or given ids) are split per image; the
    per-image statistics are then pooled per batch-wide id.
    """
    b, k, h, w = logits.shape
    if blobs == "class":
        gid = target.clone()
    elif blobs == "given":
        if blob_ids is None:
            raise ValueError('blob mode "given" needs a "blobs" tensor (B x H x W) in the batch')
        gid = blob_ids.long()
    else:
        cc, _ = _components_per_class(target.detach().cpu().numpy(), k, connectivity)
        gid = torch.from_numpy(cc).to(target.device)
    valid = (target >= 0) & (target < k)
    gid = torch.where(valid, gid, torch.full_like(gid, -1))
    # per-image pieces of every batch-wide blob: key = id * B + image
    g = gid.reshape(-1)
    pixel = (g >= 0).nonzero().squeeze(1)
    img = pixel // (h * w)
    ids_global = g[pixel]
    n_ids = int(ids_global.max()) + 1 if ids_global.numel() else 0
    if n_ids == 0:
        zero = _connected_zero(logits)
        return {"loss": zero, "label_term": zero.detach(), "consensus_term": zero.detach()}
    key = ids_global * b + img
    present = torch.bincount(key, minlength=n_ids * b) > 0
    remap = torch.cumsum(present, 0) - 1
    blob = remap[key]
    m = int(present.sum())
    labels = target.reshape(-1)[pixel]
    blob_label = torch.zeros(m, dtype=torch.long, device=g.device).scatter_(0, blob, labels)
    blob_image = torch.zeros(m, dtype=torch.long, device=g.device).scatter_(0, blob, img)
    piece_gid = torch.zeros(m, dtype=torch.long, device=g.device).scatter_(0, blob, ids_global)
    index = BlobIndex(pixel, blob, blob_label, blob_image, m)
    label_term, consensus_term, count = consensus_loss_terms(logits, index)
    # compact the batch-wide ids that occur
    id_present = torch.bincount(piece_gid, minlength=n_ids) > 0
    id_remap = torch.cumsum(id_present, 0) - 1
    pid = id_remap[piece_gid]
    n_present = int(id_present.sum())
    zeros = torch.zeros(n_present, dtype=label_term.dtype, device=label_term.device)
    label_id = zeros.index_add(0, pid, label_term) / b
    kl_sum = zeros.index_add(0, pid, consensus_term * count)
    pix = zeros.index_add(0, pid, count)
    consensus_id = kl_sum / (k * pix)
    return {
        "loss": (alpha * label_id + beta * consensus_id).mean(),
        "label_term": label_id.mean().detach(),
        "consensus_term": consensus_id.mean().detach(),
    }


@LOSSES.register("consensus")
class ConsensusLoss(nn.Module):
    """Structure-via-consensus loss (CVPR 2020, Eq. 8), alpha = 10, beta = 5 as in the paper.

    Args:
        alpha: weight of the label term KL(y || p_c).
        beta: weight of the consensus term 1/|c| sum_s KL(p_c || p(s)).
        blobs: ``"class"`` (one blob per class per image, official practice), ``"components"``
            (8-connected components of each class), or ``"given"`` (``batch[blob_key]``).
        missing_blobs: with ``"given"``, what a batch without ``blob_key`` does: ``"error"``
            (default) or ``"components"`` (fall back to components, e.g. on validation data).
        connectivity: 8 or 4, for ``"components"``.
        reduction: ``"image"`` (Eq. 8 per image, mean over images) or ``"blob"``.
        normalization: ``"paper"`` (Eq. 8) or ``"official"`` (the released code's).
        blob_key: batch key holding blob ids for ``blobs="given"``.
        ignore_index: label of pixels outside every blob.

    ``forward(outputs, batch)`` returns ``{"loss", "label_term", "consensus_term"}``.
    """

    def __init__(
        self,
        alpha: float = 10.0,
        beta: float = 5.0,
        blobs: str = "class",
        connectivity: int = 8,
        reduction: str = "image",
        normalization: str = "paper",
        blob_key: str = "blobs",
        ignore_index: int = IGNORE_INDEX,
        missing_blobs: str = "error",
    ) -> None:
        super().__init__()
        if missing_blobs not in ("error", "components"):
            raise ValueError(f"missing_blobs must be 'error' or 'components', got {missing_blobs!r}")
        self.missing_blobs = missing_blobs
        if blobs not in BLOB_MODES:
            raise ValueError(f"blobs must be one of {BLOB_MODES}, got {blobs!r}")
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
        self.alpha, self.beta = alpha, beta
        self.blobs, self.connectivity = blobs, connectivity
        self.reduction, self.normalization = reduction, normalization
        self.blob_key, self.ignore_index = blob_key, ignore_index

    def forward(self, outputs: torch.Tensor | dict[str, Any], batch: dict[str, Any]) -> dict:
        blobs, blob_ids = self.blobs, None
        if blobs == "given":
            blob_ids = batch.get(self.blob_key)
            if blob_ids is None and self.missing_blobs == "components":
                blobs = "components"
        return consensus_loss(
            logits_of(outputs),
            batch["mask"],
            alpha=self.alpha,
            beta=self.beta,
            blobs=blobs,
            blob_ids=blob_ids,
            connectivity=self.connectivity,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            normalization=self.normalization,
        )
