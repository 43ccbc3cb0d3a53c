"""Text-guided component disentanglement (TCD) losses of DisFaceRep (ACM MM 2025, Eq. 3-16).

With ``sim`` the cosine similarity, ``y`` the (CCD-updated) image-level labels, ``v_cls^k`` the
projected class token k (Eq. 3), ``P_k = sigmoid(conv(F_pat))`` the patch attention map (Eq. 4),
``v_ffc^k = E_v(x * P_k)`` and ``v_bfc^k = E_v(x * (1 - P_k))`` (Eq. 5-6) and
``v_txt^k = E_t('a photo of a face with {component_k}')`` (Eq. 7):

- Eq. 8   ``L_pos^cls = -sum_k y_k log sim(v_cls^k, v_txt^k)``
- Eq. 9   ``L_pos^ffc = -sum_k y_k log sim(v_ffc^k, v_txt^k)``
- Eq. 11  ``L_neg^cls = -sum_k sum_{l != k} y_k log(1 - sim(v_cls^k, v_txt^l))``
- Eq. 12  ``L_neg^ffc = -sum_k sum_{l != k} y_k log(1 - sim(v_ffc^k, v_txt^l))``
- Eq. 13  ``L_neg^bfc = -sum_k y_k log(1 - sim(v_bfc^k, v_txt^k))``
- Eq. 15  ``L_reg = 1/K sum_k mean_{h,w} P_k(h, w)``
- Eq. 16  ``L = a0 L_pos^cls + a1 L_pos^ffc + b0 L_neg^cls + b1 L_neg^ffc + b2 L_neg^bfc + lambda L_reg``
  with the paper's ``[a0, a1, b0, b1, b2, lambda] = [1.2, 0.2, 2.1, 0.1, 0.017, 0.05]``.

Choices where the paper is silent: the "non-corresponding" texts of Eq. 11-12 are the texts of all
other components (l != k); similarities are clamped to ``[eps, 1 - eps]`` before the logs (CLIMS
practice, eps = 1e-4) so no term is ever infinite or NaN; ``reduction="mean"`` (default) divides
each summed term by its number of active summands (sum of y for Eq. 8, 9, 13; (K-1) sum of y for
Eq. 11-12), ``reduction="sum"`` keeps the per-image sums of the equations; both average over the
batch. Foreground/background images are formed in [0, 1] pixel space (a masked pixel is black),
then resized and normalised for the frozen encoder; only present (image, class) pairs are encoded.

Edge inputs: every term is computed in float32 (float64 stays float64) whatever the dtype of the
model outputs (fp16/bf16 under autocast) and of the image; a term without a single active summand
(no present class, or a one-component label set such as ``cofw`` where Eq. 11-12 have no "other"
text) is 0 instead of 0/0, and stays connected to the model outputs so ``backward()`` works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.errors import FaceParseError
from faceparse.images import IMAGENET_MEAN, IMAGENET_STD
from faceparse.labels import LabelSet, get_label_set
from faceparse.losses.standard import as_float32
from faceparse.registry import LOSSES

__all__ = ["TCDLoss", "tcd_terms", "component_prompt", "PAPER_WEIGHTS"]

# [alpha0, alpha1, beta0, beta1, beta2, lambda] (DisFaceRep Sec. 4.1.2)
PAPER_WEIGHTS = (1.2, 0.2, 2.1, 0.1, 0.017, 0.05)
TERM_NAMES = ("pos_cls", "pos_ffc", "neg_cls", "neg_ffc", "neg_bfc", "reg")
DEFAULT_PROMPT = "a photo of a face with {component}"

_READABLE = {"brow": "eyebrow", "eye_g": "eyeglasses", "ear_r": "earring", "neck_l": "necklace"}


def component_prompt(class_name: str, template: str = DEFAULT_PROMPT) -> str:
    """Prompt text for a canonical class name (``left_brow`` -> '... with left eyebrow')."""
    words = [_READABLE.get(w, w) for w in class_name.split("_")]
    return template.format(component=" ".join(words))


def _sims(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``B x K x E`` vs ``K x E`` -> ``B x K x K`` (row k = v^k vs every text)."""
    return F.normalize(a, dim=-1) @ F.normalize(t, dim=-1).t()


def tcd_terms(
    v_cls: torch.Tensor,
    v_ffc: torch.Tensor | None,
    v_bfc: torch.Tensor | None,
    v_txt: torch.Tensor,
    labels: torch.Tensor,
    attn_maps: torch.Tensor | None = None,
    eps: float = 1e-4,
    reduction: str = "mean",
    pair_labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The six TCD terms (Eq. 8, 9, 11, 12, 13, 15) from embeddings.

    Args:
        v_cls, v_ffc, v_bfc: ``B x K x E`` (ffc/bfc may be None: those terms are 0); rows of absent
            classes are ignored.
        v_txt: ``K x E`` text embeddings, row k for component k.
        labels: ``B x K`` multi-hot image-level labels.
        attn_maps: ``B x K x H x W`` patch attention maps ``P_k`` in [0, 1] (Eq. 15), or None.
        pair_labels: labels used for the ffc/bfc terms when only some present pairs were encoded
            (default: ``labels``).
    """
    if reduction not in ("mean", "sum"):
        raise FaceParseError(f"reduction must be 'mean' or 'sum', got '{reduction}'")
    # one compute dtype (float32, or float64 if the class tokens are float64) for every input
    v_cls = as_float32(v_cls)
    dtype = v_cls.dtype
    v_ffc = None if v_ffc is None else v_ffc.to(dtype)
    v_bfc = None if v_bfc is None else v_bfc.to(dtype)
    v_txt = v_txt.to(dtype)
    y_all = labels.to(dtype)
    y_pair = pair_labels.to(dtype) if pair_labels is not None else y_all
    b, k = y_all.shape
    off = 1.0 - torch.eye(k, device=y_all.device, dtype=y_all.dtype)
    zero = (v_cls * 0.0).sum()  # a 0 connected to the class tokens (backward works on every term)

    def per_term(per: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        # mean: divide by the number of active summands (an integer; 0 only when per is all 0)
        return per.sum() / (active.clamp_min(1.0) if reduction == "mean" else b)

    def pos(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = torch.diagonal(_sims(v, v_txt), dim1=-2, dim2=-1).clamp(eps, 1 - eps)
        return per_term(-(y * s.log()), y.sum())

    def neg_other(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = _sims(v, v_txt).clamp(eps, 1 - eps)
        w = y[:, :, None] * off  # all 0 with one component (K = 1): no other text, the term is 0
        return per_term(-(w * (1 - s).log()), w.sum())

    def neg_same(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = torch.diagonal(_sims(v, v_txt), dim1=-2, dim2=-1).clamp(eps, 1 - eps)
        return per_term(-(y * (1 - s).log()), y.sum())

    no_cls = y_all.sum() == 0
    no_pair = y_pair.sum() == 0 or v_ffc is None
    terms = {
        "pos_cls": zero if no_cls else pos(v_cls, y_all),
        "pos_ffc": zero if no_pair else pos(v_ffc, y_pair),
        "neg_cls": zero if no_cls else neg_other(v_cls, y_all),
        "neg_ffc": zero if no_pair else neg_other(v_ffc, y_pair),
        "neg_bfc": zero if no_pair or v_bfc is None else neg_same(v_bfc, y_pair),
    }
    terms["reg"] = as_float32(attn_maps).mean() if attn_maps is not None else zero  # Eq. 15 averaged over batch
    return terms


def combine_terms(terms: dict[str, torch.Tensor], weights: Sequence[float] = PAPER_WEIGHTS) -> torch.Tensor:
    """Eq. 16: ``a0 L_pos^cls + a1 L_pos^ffc + b0 L_neg^cls + b1 L_neg^ffc + b2 L_neg^bfc + lambda L_reg``."""
    return sum(w * terms[n] for w, n in zip(weights, TERM_NAMES))


@LOSSES.register("tcd")
class TCDLoss(nn.Module):
    """DisFaceRep's TCD objective (Eq. 16) against a frozen vision-language encoder.

    ``loss(outputs, batch)`` with ``outputs`` the MCT-ViT ``forward_train`` dict (``vl_embed`` =
    projected class tokens, ``patch_cam`` = pre-sigmoid patch maps) and ``batch`` holding the
    normalised ``image`` and the foreground image-level labels under ``labels_key``
    (``B x K``, set by :class:`faceparse.tasks.weakly.WeaklySupervisedTask`).

    Args:
        encoder: a :class:`faceparse.models.mct_vit.text.VisionLanguageEncoder` module, a dict of
            ``OpenCLIPEncoder`` kwargs such as ``{"model_name": "ViT-B-16", "checkpoint": "/path/flip.pt"}``,
            or ``"tiny_clip"`` (a random 32-d CLIP for tests and demos). Without a checkpoint (the
            default ``"open_clip"``, or a dict without ``checkpoint``) the encoder raises
            :class:`~faceparse.errors.MissingWeightsError`; ``{"random_init": True}`` opts in to
            random weights.
        label_set: label set of the model; its non-background classes are the K components.
        prompt: text template (paper: 'a photo of a face with {component}').
        weights: ``[a0, a1, b0, b1, b2, lambda]`` (paper: [1.2, 0.2, 2.1, 0.1, 0.017, 0.05]).
        eps: similarity clamp before the logs.
        reduction: ``mean`` or ``sum`` (see module docstring).
        image_mean, image_std: normalisation of ``batch["image"]`` (undone before masking).
        max_pairs: cap on encoded (image, class) pairs per step (random subset; None = all).
    """

    def __init__(
        self,
        encoder: nn.Module | str | dict | None = "open_clip",
        label_set: str | LabelSet = "celebamask_hq",
        prompt: str = DEFAULT_PROMPT,
        weights: Sequence[float] = PAPER_WEIGHTS,
        eps: float = 1e-4,
        reduction: str = "mean",
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        labels_key: str = "fg_labels",
        max_pairs: int | None = None,
    ) -> None:
        super().__init__()
        from faceparse.models.mct_vit.text import build_vl_encoder

        if len(weights) != 6:
            raise FaceParseError(f"TCD weights must be [a0, a1, b0, b1, b2, lambda] (6 numbers), got {list(weights)}")
        self.encoder = build_vl_encoder(encoder)
        self.label_set = get_label_set(label_set)
        bg = self.label_set.background
        self.components = [c for i, c in enumerate(self.label_set.classes) if i != bg]
        self.prompts = [component_prompt(c, prompt) for c in self.components]
        self.weights = tuple(float(w) for w in weights)
        self.eps, self.reduction, self.labels_key, self.max_pairs = eps, reduction, labels_key, max_pairs
        self.register_buffer("in_mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("vl_mean", torch.tensor(self.encoder.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("vl_std", torch.tensor(self.encoder.image_std).view(1, 3, 1, 1), persistent=False)
        self._text: torch.Tensor | None = None

    def text_embeddings(self) -> torch.Tensor:
        """``K x E`` prompt embeddings (Eq. 7), computed once with the frozen text encoder."""
        if self._text is None or self._text.device != self.in_mean.device:
            with torch.no_grad():
                tokens = self.encoder.tokenize(self.prompts).to(self.in_mean.device)
                self._text = self.encoder.encode_text(tokens).float()
        return self._text

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        s = self.encoder.image_size
        x = F.interpolate(pixels, size=(s, s), mode="bilinear", align_corners=False)
        return self.encoder.encode_image((x - self.vl_mean) / self.vl_std).float()

    def component_embeddings(
        self, images: torch.Tensor, attn_maps: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``v_ffc``, ``v_bfc`` (``B x K x E``, Eq. 5-6) for present pairs (zeros elsewhere) and
        the ``B x K`` mask of the pairs actually encoded.

        Computed in float32 whatever the dtype of ``images`` and ``attn_maps`` (the encoder and its
        normalisation buffers are float32); the embeddings are float32."""
        images, attn_maps, labels = images.float(), attn_maps.float(), labels.float()
        pixels = (images * self.in_std + self.in_mean).clamp(0, 1)
        p = F.interpolate(attn_maps, size=images.shape[-2:], mode="bilinear", align_corners=False)
        bi, ki = labels.nonzero(as_tuple=True)
        if self.max_pairs is not None and len(bi) > self.max_pairs:
            keep = torch.randperm(len(bi), device=bi.device)[: self.max_pairs]
            bi, ki = bi[keep], ki[keep]
        b, k = labels.shape
        e = self.text_embeddings().shape[-1]
        v_ffc = images.new_zeros(b, k, e)
        v_bfc = images.new_zeros(b, k, e)
        encoded = labels.new_zeros(b, k)
        encoded[bi, ki] = 1
        if len(bi):
            pk = p[bi, ki].unsqueeze(1)
            emb = self._encode(torch.cat([pixels[bi] * pk, pixels[bi] * (1 - pk)]))
            v_ffc = v_ffc.index_put((bi, ki), emb[: len(bi)])
            v_bfc = v_bfc.index_put((bi, ki), emb[len(bi) :])
        return v_ffc, v_bfc, encoded

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
        if not isinstance(outputs, dict) or "vl_embed" not in outputs or "patch_cam" not in outputs:
            raise FaceParseError(
                "TCD needs the MCT-ViT forward_train outputs 'vl_embed' and 'patch_cam' "
                "(build the model with projector_dim equal to the encoder's embedding size)"
            )
        labels = batch[self.labels_key] if self.labels_key in batch else batch["labels"]
        labels = (labels > 0.5).float()
        v_txt = self.text_embeddings()
        if outputs["vl_embed"].shape[-1] != v_txt.shape[-1]:
            raise FaceParseError(
                f"projector output size {outputs['vl_embed'].shape[-1]} != encoder embedding size "
                f"{v_txt.shape[-1]}; set the model's projector_dim={v_txt.shape[-1]}"
            )
        attn_maps = as_float32(outputs["patch_cam"]).sigmoid()  # Eq. 4, in float32
        v_ffc, v_bfc, encoded = self.component_embeddings(batch["image"], attn_maps, labels)
        terms = tcd_terms(
            outputs["vl_embed"], v_ffc, v_bfc, v_txt, labels, attn_maps, self.eps, self.reduction, encoded
        )
        return {"loss": combine_terms(terms, self.weights), **terms}
