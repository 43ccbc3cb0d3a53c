"""S3POT: self-supervised face occlusion segmentation with SAM prompts.

Paper: Wang et al., "S3POT: Contrast-Driven Face Occlusion Segmentation via Self-Supervised Prompt
Learning" (``../shared/seeds/003_6ddb126b2bb8e55f.txt``). Public code: github.com/Bh-Johnny/S3SPOT
(read for facts only; nothing is copied).

Pipeline (paper Fig. 3), everything but the screening layer is a frozen SAM:

1. **Reference** ``I_r``: an occlusion-free version of the face (paper: E4S regional GAN inversion;
   here a local diffusers inpainting pipeline (:mod:`faceparse.models.s3pot.generation`), a folder of
   user references or the OpenCV fallback of :mod:`faceparse.models.s3pot.references`).
2. **Feature enhancement (FE, Sec. 3.2)**: SAM's image encoder gives tokens ``Z`` and ``Z_r``; the
   initial point ``p_i`` is the token of highest cosine similarity between them inside the face
   region; SAM's prompt encoder embeds ``p_i`` and SAM's mask-decoder two-way transformer runs with
   it on ``Z`` and ``Z_r`` separately, giving enhanced tokens ``Z_e`` and ``Z_re``.
3. **Prompt selection (PS, Sec. 3.3, Algorithm 1)**: greedy one-to-one matching (:func:`greedy_match`)
   between the reference face tokens ``Z_re^{M_f}`` and all image tokens ``Z_e``; image face tokens
   that get matched are non-occlusion (face) prompts ``P_N``, the other face tokens are occlusion
   prompts ``P_O``. Both sets go through SAM's prompt encoder (occlusion = positive label 1, face =
   negative label 0), then through the trainable self-attention screening layer (256-d, 4 heads,
   residual + LayerNorm), and SAM's mask decoder predicts the occlusion mask from ``Z``.

API: ``model(x, reference=None, face_mask=None)`` returns ``B x 2 x H x W`` logits (background,
occlusion) at the input resolution; softmax of the two logits equals ``sigmoid`` of SAM's mask
logit. ``reference`` is a normalised ``B x 3 x H x W`` image (same normalisation as ``x``); when
``None`` the OpenCV fallback builds it from ``x`` and ``face_mask``. ``face_mask`` is ``B x H x W``
(nonzero = face region ``M_f``, which should *include* occluded face parts, as a face parser that
mistakes occluders for face would give); ``None`` means the whole image. ``forward_train`` returns
the logits plus the prompt locations the losses of :mod:`faceparse.losses.s3pot` need.

Choices where the paper is silent (marked in the code): images are resized to SAM's square input
(as the public code does; no padding); prompt points are put at token centres; the initial point is
a positive (label 1) point, as in the public code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.errors import FaceParseError, MissingWeightsError, require
from faceparse.labels import OCCLUSION, S3POT_FACE_CLASSES, LabelSet
from faceparse.models.base import FaceParsingModel
from faceparse.registry import ModelCfg, register_model

OCCLUSION_LABEL_SET = OCCLUSION
FACE_CLASSES = S3POT_FACE_CLASSES

# SAM image encoders (segment_anything.build_sam facts) plus a tiny random one for tests.
SAM_VARIANTS: dict[str, dict[str, Any]] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
    "tiny": dict(
        embed_dim=32,
        depth=2,
        num_heads=2,
        global_attn_indexes=(1,),
        image_size=64,
        patch_size=4,
        window_size=4,
        decoder_mlp_dim=256,
    ),
}
SAM_DEFAULTS: dict[str, Any] = dict(
    image_size=1024, patch_size=16, window_size=14, decoder_mlp_dim=2048, decoder_depth=2
)
PROMPT_DIM = 256  # SAM's prompt / mask-decoder width (kept for every variant)


# --------------------------------------------------------------------------- greedy matching
def greedy_match(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy one-to-one matching of paper Algorithm 1 (S3POT Sec. 3.3).

    Repeatedly takes the largest similarity ``sim[i, j]`` whose row ``i`` and column ``j`` are both
    still free, ``min(N, M)`` times. Ties are broken by the smaller flat index ``i * M + j`` (the
    order of a stable descending sort of all entries). Returns ``(rows, cols)`` int64 tensors in the
    order the pairs are taken.

    Written by hand (no library provides it): instead of ``min(N, M)`` arg-max passes over the
    whole matrix, each round takes every *mutually best* pair (``j`` is the best free column of
    ``i`` and ``i`` the best free row of ``j``). Every such pair is taken by the sequential greedy
    (any entry the greedy takes earlier beats it, so it cannot use row ``i`` or column ``j``), and
    no other entry of those rows or columns is ever taken, so removing them leaves the same greedy
    problem on the remaining sub-matrix. A few vectorised rounds replace thousands of passes.
    """
    if sim.dim() != 2:
        raise FaceParseError(f"greedy_match expects a 2-D similarity matrix, got shape {tuple(sim.shape)}")
    n, m = sim.shape
    k = min(n, m)
    dev = sim.device
    if k == 0:
        empty = torch.empty(0, dtype=torch.long, device=dev)
        return empty, empty
    sub = sim.detach().float()
    if torch.isnan(sub.sum()):  # one cheap pass; NaN entries never win a match
        sub = torch.nan_to_num(sub, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    row_ids = torch.arange(n, device=dev)
    col_ids = torch.arange(m, device=dev)
    rows_out, cols_out = [], []
    taken = 0
    while taken < k:
        best_col, best_row = _row_and_column_argmax(sub)
        local = torch.arange(sub.shape[0], device=dev)
        mutual = best_row[best_col] == local
        r, c = local[mutual], best_col[mutual]
        rows_out.append(row_ids[r])
        cols_out.append(col_ids[c])
        taken += int(r.numel())
        if taken < k:
            keep_r = torch.ones(sub.shape[0], dtype=torch.bool, device=dev)
            keep_c = torch.ones(sub.shape[1], dtype=torch.bool, device=dev)
            keep_r[r] = False
            keep_c[c] = False
            row_ids, col_ids = row_ids[keep_r], col_ids[keep_c]
            sub = sub[keep_r].index_select(1, torch.nonzero(keep_c).flatten())
    rows, cols = torch.cat(rows_out), torch.cat(cols_out)
    # Report pairs in the sequential greedy's order: value descending, then flat index ascending.
    flat = rows * m + cols
    order = torch.argsort(flat)
    rows, cols = rows[order], cols[order]
    vals = sim.detach().float()[rows, cols]
    order = torch.sort(vals, descending=True, stable=True).indices
    return rows[order], cols[order]


def _row_and_column_argmax(s: torch.Tensor, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """First arg-max of every row and of every column, in one cache-friendly pass over row blocks.

    (``s.argmax(dim=0)`` walks memory with a stride and is several times slower on CPU.)
    ``torch.max(dim)`` returns the first maximal index, and a later block replaces the running
    column maximum only when strictly larger, so ties go to the smaller index on both axes.
    """
    n = s.shape[0]
    if s.device.type != "cpu" or n <= block:
        return s.argmax(dim=1), s.argmax(dim=0)
    best_col = torch.empty(n, dtype=torch.long, device=s.device)
    col_val, col_idx = s[:block].max(dim=0)
    best_col[:block] = s[:block].max(dim=1).indices
    for i in range(block, n, block):
        blk = s[i : i + block]
        best_col[i : i + block] = blk.max(dim=1).indices
        v, idx = blk.max(dim=0)
        better = v > col_val
        col_val = torch.where(better, v, col_val)
        col_idx = torch.where(better, idx + i, col_idx)
    return best_col, col_idx


def select_prompts(
    image_tokens: torch.Tensor, reference_tokens: torch.Tensor, face: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt selection of S3POT Algorithm 1 for one image.

    Args:
        image_tokens: enhanced image tokens ``Z_e``, ``N x C``.
        reference_tokens: enhanced reference tokens ``Z_re``, ``N x C`` (same grid).
        face: bool ``N``, the face region ``M_f`` on the token grid.

    Returns:
        ``(occlusion_idx, face_idx)``: token indices of ``P_O`` and ``P_N``. ``S = Z_e Z_re^{M_f}^T``
        (cosine); every reference face token is matched greedily to a distinct image token; matched
        image tokens inside ``M_f`` are face prompts, the other ``M_f`` tokens occlusion prompts.
    """
    face_ids = torch.nonzero(face, as_tuple=False).flatten()
    if face_ids.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=image_tokens.device)
        return empty, empty
    z = F.normalize(image_tokens.float(), dim=-1)
    zr = F.normalize(reference_tokens[face_ids].float(), dim=-1)
    rows, _ = greedy_match(z @ zr.T)
    matched = torch.zeros_like(face)
    matched[rows] = True
    face_idx = torch.nonzero(matched & face, as_tuple=False).flatten()
    occ_idx = torch.nonzero(face & ~matched, as_tuple=False).flatten()
    return occ_idx, face_idx


PROMPT_SELECTIONS = ("greedy", "threshold", "otsu")


def otsu_threshold(values: torch.Tensor) -> float:
    """Otsu's threshold (Otsu 1979, the paper's ref. [17]) of 1-D values, exact over their sorted order.

    Returns the midpoint of the cut between consecutive sorted values that maximises the
    between-class variance ``w0 w1 (mu0 - mu1)^2`` (first maximum; ``-inf`` when all values are equal,
    so nothing lies below it). Written by hand: :func:`skimage.filters.threshold_otsu` works on a
    256-bin histogram and returns a bin centre, which puts the values of that bin above the centre
    on the wrong side of a clear gap; a few thousand tokens sort exactly at no cost.
    """
    v = torch.sort(values.detach().double().flatten()).values
    n = v.numel()
    if n < 2 or bool(v[0] == v[-1]):
        return float("-inf")
    k = torch.arange(1, n, dtype=torch.float64, device=v.device)  # size of the lower class
    csum = torch.cumsum(v, 0)[:-1]
    mu0 = csum / k
    mu1 = (v.sum() - csum) / (n - k)
    between = (k / n) * ((n - k) / n) * (mu0 - mu1) ** 2
    between = torch.where(v[1:] > v[:-1], between, torch.full_like(between, -1.0))  # cut only between distinct values
    i = int(torch.argmax(between))
    return float((v[i] + v[i + 1]) / 2)


def select_prompts_by_threshold(
    image_tokens: torch.Tensor, reference_tokens: torch.Tensor, face: torch.Tensor, threshold: float | None = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """The TH and Otsu prompt selections of S3POT Table 2 (Sec. 4.2, "Effect of Prompt Selection").

    The similarity of a face token is the cosine similarity of ``Z_e`` and ``Z_re`` at the same
    place (the similarity map of the paper's Fig. 9a); face tokens below the threshold are occlusion
    prompts, the others face prompts. ``threshold=None`` takes Otsu's threshold of the face tokens'
    similarities (:func:`otsu_threshold`; all equal: no occlusion prompts).

    Returns ``(occlusion_idx, face_idx)`` as :func:`select_prompts`.
    """
    face_ids = torch.nonzero(face, as_tuple=False).flatten()
    if face_ids.numel() == 0:
        empty = torch.empty(0, dtype=torch.long, device=image_tokens.device)
        return empty, empty
    sim = F.cosine_similarity(image_tokens[face_ids].float(), reference_tokens[face_ids].float(), dim=-1)
    if threshold is None:
        threshold = otsu_threshold(sim)
    occluded = sim < threshold
    return face_ids[occluded], face_ids[~occluded]


# --------------------------------------------------------------------------- layers
class PromptScreening(nn.Module):
    """Self-attention screening layer of S3POT Sec. 3.3: ``P' = LayerNorm(P + SelfAttn(P))``.

    256-d, 4 heads, residual then LayerNorm (paper; the public code uses one such post-norm layer
    with Xavier-uniform init of the matrices, which is also used here).
    """

    def __init__(self, dim: int = PROMPT_DIM, num_heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        for p in self.attn.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        if prompts.shape[1] == 0:
            return prompts
        out, _ = self.attn(prompts, prompts, prompts, need_weights=False)
        return self.norm(prompts + out)


@dataclass
class PromptState:
    """Everything the frozen part of S3POT computes for a batch (reused by per-image overfitting)."""

    embeddings: torch.Tensor  # Z, B x C x h x w
    enhanced: torch.Tensor  # Z_e, B x C x h x w
    enhanced_reference: torch.Tensor  # Z_re, B x C x h x w
    initial_point: torch.Tensor  # B x 2 token (row, col) of p_i
    occlusion_idx: list[torch.Tensor]  # token indices of P_O per image
    face_idx: list[torch.Tensor]  # token indices of P_N per image
    out_size: tuple[int, int]  # (H, W) of the input


# --------------------------------------------------------------------------- model
class S3POT(FaceParsingModel):
    """S3POT occlusion segmentation on a frozen SAM (see the module docstring for the pipeline).

    Args:
        encoder: SAM image encoder: ``vit_b``, ``vit_l``, ``vit_h`` or ``tiny`` (random, for tests).
        checkpoint: a local official SAM checkpoint (``sam_vit_b_01ec64.pth``...) loaded into the
            frozen SAM. Never downloaded; not stored in config.json (``save_pretrained`` stores the
            weights themselves). Required for the SAM variants (``vit_b``/``vit_l``/``vit_h``): a
            random frozen SAM trains a screening layer on noise, so without it the constructor
            raises :class:`~faceparse.errors.MissingWeightsError` naming the file to pass.
        random_init: keep the frozen SAM random when no ``checkpoint`` is given (tests, demos,
            speed benchmarks). Default False, except for ``encoder="tiny"``, which has no published
            weights and is random by definition (None = that default). Builds on the ``meta``
            device (parameter counting, e.g. :func:`faceparse.model_info`) allocate no values and
            need neither.
        screening_heads: heads of the screening layer (paper: 4).
        face_classes: label names of the face region ``M_f`` (paper Sec. 3.3 set ``F``); used by
            :meth:`face_region` to turn a parsing map into ``face_mask``.
        image_size, patch_size, window_size, embed_dim, depth, num_heads, global_attn_indexes,
            decoder_mlp_dim, decoder_depth: override the variant's SAM configuration.
        label_set: output label set (default: background / occlusion).
        prompt_selection: Table 2's prompt-selection column (S3POT Sec. 4.2): ``"greedy"`` (GS,
            Algorithm 1, the paper's model), ``"threshold"`` (TH: face tokens whose cosine
            similarity to the reference token at the same place is below ``similarity_threshold``
            are occlusion prompts, the others face prompts) or ``"otsu"`` (the same with Otsu's
            threshold of the face tokens' similarities, :func:`otsu_threshold`).
        similarity_threshold: the fixed threshold of ``"threshold"`` (paper: 0.5).
        feature_enhancement: Table 2's FE column; False selects prompts on SAM's raw tokens
            ``Z``, ``Z_r`` instead of the enhanced ``Z_e``, ``Z_re`` (the initial point is still found).
        screening: Table 2's SA column; False feeds the prompt embeddings to the mask decoder
            without the self-attention screening layer (nothing is left to train: those rows of
            Table 2 are training-free).
    """

    default_input_size = 1024

    def __init__(
        self,
        encoder: str = "vit_b",
        checkpoint: str | None = None,
        screening_heads: int = 4,
        face_classes: Sequence[str] = FACE_CLASSES,
        image_size: int | None = None,
        patch_size: int | None = None,
        window_size: int | None = None,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        global_attn_indexes: Sequence[int] | None = None,
        decoder_mlp_dim: int | None = None,
        decoder_depth: int | None = None,
        label_set: str | LabelSet | None = None,
        random_init: bool | None = None,
        prompt_selection: str = "greedy",
        similarity_threshold: float = 0.5,
        feature_enhancement: bool = True,
        screening: bool = True,
    ) -> None:
        super().__init__()
        self.set_ablation(prompt_selection, similarity_threshold, feature_enhancement, screening)
        if encoder not in SAM_VARIANTS:
            raise FaceParseError(f"S3POT encoder must be one of {sorted(SAM_VARIANTS)}, got '{encoder}'")
        cfg = {**SAM_DEFAULTS, **SAM_VARIANTS[encoder]}
        overrides = dict(
            image_size=image_size,
            patch_size=patch_size,
            window_size=window_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            global_attn_indexes=global_attn_indexes,
            decoder_mlp_dim=decoder_mlp_dim,
            decoder_depth=decoder_depth,
        )
        cfg.update({k: v for k, v in overrides.items() if v is not None})
        if cfg["image_size"] % cfg["patch_size"]:
            raise FaceParseError(
                f"S3POT image_size ({cfg['image_size']}) must be a multiple of patch_size ({cfg['patch_size']})"
            )
        self.sam_config = cfg
        self.encoder_name = encoder
        self.default_input_size = int(cfg["image_size"])
        if random_init is None:
            random_init = encoder == "tiny"  # no published weights exist for the tiny test variant
        if checkpoint is None and not random_init and torch.empty(0).device.type != "meta":
            files = {"vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"}
            file = files.get(encoder, f"the SAM {encoder} checkpoint")
            raise MissingWeightsError(
                f"S3POT '{encoder}' needs the frozen SAM weights and no checkpoint was given: pass "
                f"checkpoint='<local path of {file}>', the official segment-anything checkpoint file (never "
                f"downloaded), e.g. build_model('s3pot_{encoder}', checkpoint='weights/{file}') or "
                "--model.init_args.model_kwargs.checkpoint in a config. A random frozen SAM trains the screening "
                "layer on noise; pass random_init=True only for tests, demos or speed measurements"
            )
        self.sam = _build_sam(cfg)
        if checkpoint is not None:
            self.load_sam_checkpoint(checkpoint)
        for p in self.sam.parameters():
            p.requires_grad_(False)
        self.sam.eval()
        self.screening = PromptScreening(PROMPT_DIM, screening_heads)
        self.face_classes = tuple(face_classes)
        if label_set is None:
            self.label_set = OCCLUSION_LABEL_SET
        else:
            from faceparse.models.base import resolve_label_set

            self.label_set = resolve_label_set(label_set, num_classes=2)

    def set_ablation(
        self,
        prompt_selection: str = "greedy",
        similarity_threshold: float = 0.5,
        feature_enhancement: bool = True,
        screening: bool = True,
    ) -> None:
        """Switch Table 2's ablation settings (see the constructor); ``save_pretrained`` records them."""
        if prompt_selection not in PROMPT_SELECTIONS:
            raise FaceParseError(
                f"S3POT prompt_selection must be one of {list(PROMPT_SELECTIONS)} (Table 2: GS, TH, Otsu), "
                f"got '{prompt_selection}'"
            )
        self.prompt_selection = prompt_selection
        self.similarity_threshold = float(similarity_threshold)
        self.feature_enhancement = bool(feature_enhancement)
        self.use_screening = bool(screening)
        init = self.__dict__.get("_fp_init_args")
        if init is not None:  # keep config.json in step with switches changed after construction
            init[1].update(
                prompt_selection=prompt_selection,
                similarity_threshold=self.similarity_threshold,
                feature_enhancement=self.feature_enhancement,
                screening=self.use_screening,
            )

    # ------------------------------------------------------------------ weights
    def load_sam_checkpoint(self, checkpoint: str | Path) -> None:
        """Load an official SAM state dict (``sam_vit_*.pth``) into the frozen SAM."""
        path = Path(checkpoint)
        if not path.is_file():
            raise MissingWeightsError(
                f"SAM checkpoint '{path}' does not exist; download sam_vit_b_01ec64.pth / "
                "sam_vit_l_0b3195.pth / sam_vit_h_4b8939.pth from the segment-anything release page "
                "yourself and pass its local path as checkpoint="
            )
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        try:
            self.sam.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise FaceParseError(
                f"SAM checkpoint '{path}' does not fit the '{self.encoder_name}' encoder "
                f"(pick the S3POT variant matching the file): {str(exc)[:300]}"
            ) from exc

    def get_config(self) -> dict[str, Any]:
        """As :meth:`FaceParsingModel.get_config`, with ``random_init=True``: ``checkpoint`` is never
        saved, and ``load_model`` fills the SAM from ``model.safetensors`` right after building it,
        so the rebuild must not ask for the SAM checkpoint file again."""
        config = super().get_config()
        config["kwargs"]["random_init"] = True
        return config

    def train(self, mode: bool = True) -> S3POT:
        super().train(mode)
        self.sam.eval()  # frozen foundation model
        return self

    # ------------------------------------------------------------------ geometry helpers
    @property
    def token_grid(self) -> tuple[int, int]:
        return tuple(self.sam.prompt_encoder.image_embedding_size)  # type: ignore[return-value]

    def _token_centres(self, idx: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(x, y) of token centres in a ``size = (H, W)`` frame, float."""
        h, w = self.token_grid
        r, c = (idx // w).float(), (idx % w).float()
        return torch.stack([(c + 0.5) * size[1] / w, (r + 0.5) * size[0] / h], dim=-1)

    def _sam_points(self, idx: torch.Tensor) -> torch.Tensor:
        # SAM's prompt encoder adds 0.5 (pixel centre); subtract it so the point lands on the
        # geometric token centre (choice: the public code uses c*16+8 / c*16).
        s = self.sam_config["image_size"]
        return self._token_centres(idx, (s, s)) - 0.5

    def face_region(self, parsing: torch.Tensor, label_set: str | LabelSet) -> torch.Tensor:
        """Face region ``M_f`` (bool ``B x H x W``) from a parsing map labelled in ``label_set``."""
        from faceparse.labels import get_label_set

        ls = get_label_set(label_set)
        ids = [ls.index(c) for c in self.face_classes if c in ls]
        if not ids:
            raise FaceParseError(f"label set '{ls.name}' has none of the S3POT face classes {self.face_classes}")
        return torch.isin(parsing, torch.tensor(ids, device=parsing.device))

    # ------------------------------------------------------------------ frozen stages
    def _to_sam(self, x: torch.Tensor) -> torch.Tensor:
        # x is normalised with ImageNet mean/std, which equals SAM's pixel_mean/std / 255.
        s = self.sam_config["image_size"]
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen SAM image tokens ``Z``: ``B x 256 x h x w``."""
        return self.sam.image_encoder(self._to_sam(x))

    def _enhance(self, z: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Feature enhancement (Sec. 3.2): SAM's two-way transformer run with one prompt point."""
        pe_mod, dec = self.sam.prompt_encoder, self.sam.mask_decoder
        b = z.shape[0]
        labels = torch.ones(b, 1, device=z.device)  # p_i as a positive point (public code)
        sparse, dense = pe_mod(points=(points[:, None, :], labels), boxes=None, masks=None)
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens[None].expand(b, -1, -1), sparse], dim=1)
        pos = pe_mod.get_dense_pe().expand(b, -1, -1, -1)
        _, src = dec.transformer(z + dense, pos, tokens)
        h, w = z.shape[-2:]
        return src.transpose(1, 2).reshape(b, -1, h, w)

    @torch.no_grad()
    def prepare(
        self,
        x: torch.Tensor,
        reference: torch.Tensor | None = None,
        face_mask: torch.Tensor | None = None,
    ) -> PromptState:
        """Run the frozen stages (encoder, FE, greedy prompt selection) for a batch."""
        b, _, hgt, wid = x.shape
        if face_mask is None:
            face_mask = torch.ones(b, hgt, wid, dtype=torch.bool, device=x.device)
        face_mask = face_mask.to(x.device)
        if face_mask.shape != (b, hgt, wid):
            raise FaceParseError(
                f"face_mask must be B x H x W = {(b, hgt, wid)} like the image, got {tuple(face_mask.shape)}"
            )
        if reference is None:
            from faceparse.models.s3pot.references import inpaint_reference_batch

            reference = inpaint_reference_batch(x, face_mask, self.input_mean, self.input_std)
        if reference.shape != x.shape:
            raise FaceParseError(
                f"reference must have the image's shape {tuple(x.shape)}, got {tuple(reference.shape)}"
            )
        both = self.encode(torch.cat([x, reference.to(x)], dim=0))
        z, zr = both[:b], both[b:]
        h, w = z.shape[-2:]
        face_tok = F.interpolate(face_mask[:, None].float(), size=(h, w), mode="nearest-exact")
        face_tok = face_tok[:, 0].flatten(1) > 0.5  # B x N
        # Initial point p_i: highest cosine similarity of Z and Z_r inside the face region.
        sim = F.cosine_similarity(z, zr, dim=1).flatten(1)
        region = torch.where(face_tok.any(dim=1, keepdim=True), face_tok, torch.ones_like(face_tok))
        sim = sim.masked_fill(~region, float("-inf"))
        first = sim.argmax(dim=1)
        points = self._sam_points(first)
        if self.feature_enhancement:
            enhanced = self._enhance(torch.cat([z, zr]), torch.cat([points, points]))
            ze, zre = enhanced[:b], enhanced[b:]
        else:  # Table 2, rows without FE: prompts from SAM's raw tokens
            ze, zre = z, zr
        occ, face = [], []
        for i in range(b):
            zi, zri = ze[i].flatten(1).T, zre[i].flatten(1).T
            if self.prompt_selection == "greedy":
                o, f = select_prompts(zi, zri, face_tok[i])
            else:
                t = self.similarity_threshold if self.prompt_selection == "threshold" else None
                o, f = select_prompts_by_threshold(zi, zri, face_tok[i], t)
            occ.append(o)
            face.append(f)
        initial = torch.stack([first // w, first % w], dim=1)
        return PromptState(z, ze, zre, initial, occ, face, (hgt, wid))

    # ------------------------------------------------------------------ trainable stage
    def decode(self, state: PromptState) -> dict[str, torch.Tensor]:
        """Screening layer + SAM mask decoder on the selected prompts (gradients reach the former)."""
        pe_mod, dec = self.sam.prompt_encoder, self.sam.mask_decoder
        image_pe = pe_mod.get_dense_pe()
        size = state.out_size
        logits = []
        for i in range(state.embeddings.shape[0]):
            occ, face = state.occlusion_idx[i], state.face_idx[i]
            idx = torch.cat([occ, face])
            if idx.numel():
                labels = torch.cat([torch.ones_like(occ), torch.zeros_like(face)]).float()
                pts = (self._sam_points(idx)[None], labels[None])
            else:
                pts = None
            sparse, dense = pe_mod(points=pts, boxes=None, masks=None)
            if pts is None:
                dense = dense[:1]
            if self.use_screening:
                sparse = self.screening(sparse)
            low, _ = dec(
                image_embeddings=state.embeddings[i : i + 1],
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            logits.append(F.interpolate(low, size=size, mode="bilinear", align_corners=False))
        occ_logits = torch.cat(logits, dim=0)
        out = {
            "logits": torch.cat([-0.5 * occ_logits, 0.5 * occ_logits], dim=1),
            "occlusion_logits": occ_logits,
        }
        out.update(self._points_for_loss(state))
        return out

    def _points_for_loss(self, state: PromptState) -> dict[str, torch.Tensor]:
        """Prompt locations as integer (x, y) pixels of the output, padded, with validity masks."""
        hgt, wid = state.out_size
        dev = state.embeddings.device
        out: dict[str, torch.Tensor] = {}
        for key, lists in (("occlusion", state.occlusion_idx), ("face", state.face_idx)):
            n = max([int(t.numel()) for t in lists] + [1])
            pts = torch.zeros(len(lists), n, 2, dtype=torch.long, device=dev)
            valid = torch.zeros(len(lists), n, dtype=torch.bool, device=dev)
            for i, idx in enumerate(lists):
                if idx.numel():
                    xy = self._token_centres(idx, (hgt, wid)).floor().long()
                    xy[:, 0].clamp_(0, wid - 1)
                    xy[:, 1].clamp_(0, hgt - 1)
                    pts[i, : idx.numel()] = xy
                    valid[i, : idx.numel()] = True
            out[f"{key}_points"] = pts
            out[f"{key}_valid"] = valid
        init = state.initial_point.float()
        h, w = self.token_grid
        out["initial_point"] = (
            torch.stack([(init[:, 1] + 0.5) * wid / w, (init[:, 0] + 0.5) * hgt / h], dim=1).floor().long()
        )
        return out

    # ------------------------------------------------------------------ contract
    def forward_train(
        self,
        x: torch.Tensor,
        reference: torch.Tensor | None = None,
        face_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Logits plus ``occlusion_logits`` (``B x 1 x H x W``), prompt points and validity masks."""
        return self.decode(self.prepare(x, reference, face_mask))

    def forward(
        self,
        x: torch.Tensor,
        reference: torch.Tensor | None = None,
        face_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``B x 2 x H x W`` logits (background, occlusion) at the input resolution."""
        return self.forward_train(x, reference, face_mask)["logits"]


def _build_sam(cfg: dict[str, Any]) -> nn.Module:
    """A randomly initialised ``segment_anything.modeling.Sam`` of the given configuration."""
    from functools import partial

    require("segment_anything", "sam")
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    size, patch = int(cfg["image_size"]), int(cfg["patch_size"])
    grid = size // patch
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=int(cfg["depth"]),
            embed_dim=int(cfg["embed_dim"]),
            img_size=size,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            num_heads=int(cfg["num_heads"]),
            patch_size=patch,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(cfg["global_attn_indexes"]),
            window_size=int(cfg["window_size"]),
            out_chans=PROMPT_DIM,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=PROMPT_DIM,
            image_embedding_size=(grid, grid),
            input_image_size=(size, size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=int(cfg["decoder_depth"]),
                embedding_dim=PROMPT_DIM,
                mlp_dim=int(cfg["decoder_mlp_dim"]),
                num_heads=8,
            ),
            transformer_dim=PROMPT_DIM,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


# --------------------------------------------------------------------------- registry
# ``tiny``: constructor overrides for cheap zoo-wide test builds of any variant (random weights).
_TINY = dict(
    image_size=64,
    patch_size=4,
    window_size=4,
    embed_dim=32,
    depth=2,
    num_heads=2,
    global_attn_indexes=[1],
    decoder_mlp_dim=256,
)
# Exportability checked with torch 2.15 / onnx 1.23 / onnxruntime 1.31 by benchmarks/onnx_export.py.
_NOT_EXPORTABLE = (
    "frozen SAM prompt pipeline: aten::_upsample_nearest_exact2d is not in opset 17 (TorchScript) "
    "and torch.export fails on the data-dependent prompt selection"
)
# Binary by design: ``num_classes=2`` is the only count build_model accepts.
_S3POT_CFG = ModelCfg(
    paper="S3POT (2025)",
    input_size=1024,
    label_set="occlusion",
    exportable=False,
    not_exportable_reason=_NOT_EXPORTABLE,
    tiny={**_TINY, "random_init": True},  # a tiny random SAM: no checkpoint needed
    tiny_input_size=64,
    num_classes=2,
)


@register_model(_S3POT_CFG)
def s3pot_vit_b(**kw: Any) -> S3POT:
    """S3POT on SAM ViT-B (93.74M frozen) + screening layer; pass ``checkpoint=sam_vit_b_01ec64.pth``."""
    return S3POT(encoder="vit_b", **kw)


@register_model(_S3POT_CFG)
def s3pot_vit_l(**kw: Any) -> S3POT:
    """S3POT on SAM ViT-L (312.34M frozen); pass ``checkpoint=sam_vit_l_0b3195.pth``."""
    return S3POT(encoder="vit_l", **kw)


@register_model(_S3POT_CFG)
def s3pot_vit_h(**kw: Any) -> S3POT:
    """S3POT on SAM ViT-H (641.09M frozen, the paper's public code default); ``checkpoint=sam_vit_h_4b8939.pth``."""
    return S3POT(encoder="vit_h", **kw)


@register_model(_S3POT_CFG.replace(input_size=64))
def s3pot_tiny(**kw: Any) -> S3POT:
    """Tiny random SAM (32-d, 2-layer encoder, 64 px input, 16 x 16 tokens) for tests and demos."""
    return S3POT(encoder="tiny", **kw)
