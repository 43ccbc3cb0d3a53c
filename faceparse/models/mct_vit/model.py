"""MCT-ViT: the multi-class-token vision transformer of MCTformer / DisFaceRep.

DisFaceRep (Wang et al., ACM MM 2025, Sec. 3.2-3.4) follows MCTformer+ (Xu et al., TPAMI 2024): a
DeiT whose single class token is replaced by K class tokens, one per foreground component.

- class scores: the mean over the embedding dimension of each class token's output;
- patch head: ``Conv2d(D, K, 3, padding=1)`` on the patch grid (Eq. 4 uses ``sigmoid`` of it as the
  patch attention map ``P_k``), pooled into a second set of class scores (global weighted rank
  pooling with decay 0.996, MCTformer+; ``patch_pool="gap"`` gives MCTformer-V2's average);
- projector: an MLP from the class tokens into the vision-language embedding space (Eq. 3) used by
  the TCD losses (:mod:`faceparse.losses.disfacerep`);
- FCAM (:mod:`faceparse.models.mct_vit.cam`): class-to-patch attention of the last layers fused with the patch CAM.

The transformer blocks and the patch embedding are timm's (``timm.models.vision_transformer.Block``,
``timm.layers.PatchEmbed``), so the state-dict keys are those of timm / DeiT checkpoints. timm's
blocks use fused ``scaled_dot_product_attention``, which never materialises the attention map; when
the map is requested (``forward_features(x, return_attn=True)``) each block is run through
:func:`block_forward_with_attn`, a hand-written explicit-softmax forward that reuses the block's own
weights (timm has no public API that returns the map). Training never pays for it.

Parameter count (DeiT-S, K = 18, 448 px): 21.97M without the projector, which is the 22,042,386 of
MCTformer+ less the unused 224-px position embedding that MCTformer keeps (0.35 %), and 22.43M with
the 384-512-512 projector (DisFaceRep Table 5: 22.5M trainable).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.errors import FaceParseError
from faceparse.labels import LabelSet
from faceparse.models.base import FaceParsingModel, resolve_label_set
from faceparse.registry import ModelCfg, register_model

__all__ = ["MCTViT", "block_forward_with_attn", "mct_vit_small", "mct_vit_tiny"]


def attention_with_map(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a ``timm.layers.Attention`` explicitly and also return its softmax map ``B x h x N x N``.

    Written by hand because timm's fused path (``scaled_dot_product_attention``) hides the map; the
    module's own projections, norms and gate are reused so the output equals ``attn(x)``.
    """
    b, n, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = attn.attn_drop(weights) @ v
    out = out.transpose(1, 2).reshape(b, n, attn.num_heads * attn.head_dim)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out)), weights


def block_forward_with_attn(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``timm`` ViT ``Block`` forward that also returns the attention map (see above)."""
    y, weights = attention_with_map(block.attn, block.norm1(x))
    x = x + block.drop_path1(block.ls1(y))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, weights


def rank_pool(scores: torch.Tensor, decay: float) -> torch.Tensor:
    """Global weighted rank pooling ``B x K x N -> B x K`` (MCTformer+): sorted scores weighted by
    ``decay**rank`` and normalised by the weight sum. ``decay=1`` is average pooling."""
    ranked = scores.sort(dim=-1, descending=True).values
    w = decay ** torch.arange(scores.shape[-1], device=scores.device, dtype=scores.dtype)
    return (ranked * w).sum(-1) / w.sum()


class MCTViT(FaceParsingModel):
    """Multi-class-token ViT classifier for weakly supervised face parsing.

    Args:
        label_set: label set whose non-background classes get one class token each (K = 18 for
            ``celebamask_hq``).
        img_size: training input size; sets the patch position-embedding grid (resampled
            bicubically for other sizes).
        patch_size, embed_dim, depth, num_heads, mlp_ratio: DeiT layout (DeiT-S: 16, 384, 12, 6, 4).
        drop_path_rate: stochastic depth (DeiT default 0.1).
        projector_dim: output size of the class-token projector (the vision-language embedding
            size, 512 for CLIP ViT-B/16); 0 or None removes the projector.
        projector_hidden_dim: hidden width of the two-layer projector MLP.
        patch_pool: ``"gwrp"`` (MCTformer+ ranked pooling, decay ``pool_decay``) or ``"gap"``.
        cam_layers: number of last layers whose class-to-patch attention forms the FCAM (12).
        cam_fusion: ``"sqrt"`` (MCTformer+: sqrt(attention x ReLU(patch CAM))), ``"product"``
            (MCTformer-V2), ``"attention"`` or ``"patch"``.
        theta: FCAM threshold used by ``forward`` for the background channel (DisFaceRep: 0.5).
        pretrained: local DeiT / timm ViT checkpoint (``.pth`` / ``.safetensors``); its class token
            and class position embedding are repeated K times and the patch position embedding is
            resampled to the grid (MCTformer's initialisation). Never downloaded. Loaded strictly:
            every ViT key (patch embedding, tokens, position embedding, blocks) must be in the file;
            only the ImageNet classifier/final norm may be extra and only the patch head/projector
            (new in MCT-ViT) may be absent -- anything else is an error naming the file.
        pretrained_strict: ``False`` opts in to a partial load (warned; under half the keys
            fitting is still an error).
    """

    default_input_size = 448

    def __init__(
        self,
        label_set: str | LabelSet = "celebamask_hq",
        img_size: int = 448,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        projector_dim: int | None = 512,
        projector_hidden_dim: int = 512,
        patch_pool: str = "gwrp",
        pool_decay: float = 0.996,
        cam_layers: int = 12,
        cam_fusion: str = "sqrt",
        theta: float = 0.5,
        pretrained: str | None = None,
        pretrained_strict: bool = True,
    ) -> None:
        super().__init__()
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import Block

        if patch_pool not in ("gwrp", "gap"):
            raise FaceParseError(f"patch_pool must be 'gwrp' or 'gap', got '{patch_pool}'")
        if cam_fusion not in ("sqrt", "product", "attention", "patch"):
            raise FaceParseError(f"cam_fusion must be sqrt|product|attention|patch, got '{cam_fusion}'")
        self.label_set = resolve_label_set(label_set)
        self.default_input_size = img_size
        bg = self.label_set.background
        self.fg_index = [i for i in range(self.label_set.num_classes) if i != bg]
        self.fg_classes = [self.label_set.classes[i] for i in self.fg_index]
        k = self.num_tokens = len(self.fg_index)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.patch_pool, self.pool_decay = patch_pool, pool_decay
        self.cam_layers, self.cam_fusion, self.theta = cam_layers, cam_fusion, theta

        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=3,
            embed_dim=embed_dim,
            strict_img_size=False,
            dynamic_img_pad=True,
        )
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, k, embed_dim))
        self.pos_embed_cls = nn.Parameter(torch.zeros(1, k, embed_dim))
        self.pos_embed_pat = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], embed_dim))
        dpr = [drop_path_rate * i / max(1, depth - 1) for i in range(depth)]
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i], norm_layer=norm)
            for i in range(depth)
        )
        # MCTformer reads class scores from the un-normalised tokens (a LayerNorm would make the
        # per-token mean a constant), so there is no final norm.
        self.head = nn.Conv2d(embed_dim, k, kernel_size=3, padding=1)
        self.projector = (
            nn.Sequential(
                nn.Linear(embed_dim, projector_hidden_dim),
                nn.GELU(),
                nn.Linear(projector_hidden_dim, projector_dim),
            )
            if projector_dim
            else None
        )
        self._init_weights()
        if pretrained is not None:
            self.load_vit_checkpoint(pretrained, strict=pretrained_strict)

    # ------------------------------------------------------------------ init / weights
    def _init_weights(self) -> None:
        for p in (self.cls_token, self.pos_embed_cls, self.pos_embed_pat):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def load_vit_checkpoint(self, path: str | Path, strict: bool = True) -> tuple[list[str], list[str]]:
        """Initialise from a local DeiT / timm ViT state dict (MCTformer's recipe).

        ``cls_token`` (1 x 1 x D) is repeated K times; ``pos_embed`` (1 x (1+N) x D) is split into
        the class part (repeated K times) and the patch part (resampled to this grid). Classifier
        and final-norm weights are ignored. Returns (missing, unexpected) keys.
        """
        from timm.layers import resample_abs_pos_embed

        from faceparse.models.weights import load_weights, read_state_dict

        path = Path(path)
        what = "ViT checkpoint (pretrained=)"
        state = read_state_dict(
            path,
            what=what,
            hint="pass the path of a local DeiT/timm ViT state dict (e.g. deit_small_patch16_224 .pth or "
            ".safetensors) - nothing is downloaded",
            unwrap=("model", "state_dict"),
        )
        k = self.num_tokens
        if "cls_token" in state:
            state["cls_token"] = state["cls_token"][:, :1].repeat(1, k, 1)
        if "pos_embed" in state:
            pe = state.pop("pos_embed")
            n_tok = pe.shape[1]
            n_prefix = next((p for p in (1, 2, 0) if n_tok > p and math.isqrt(n_tok - p) ** 2 == n_tok - p), None)
            if n_prefix is None:
                raise FaceParseError(
                    f"'{path}': pos_embed with {n_tok} tokens is not 0-2 prefix tokens + a square grid"
                )
            cls_pe = pe[:, :1] if n_prefix else torch.zeros_like(pe[:, :1])
            state["pos_embed_cls"] = cls_pe.repeat(1, k, 1)
            state["pos_embed_pat"] = resample_abs_pos_embed(pe[:, n_prefix:], list(self.grid), num_prefix_tokens=0)
        report = load_weights(
            self,
            state,
            path,
            what=what,
            strict=strict,
            # the ImageNet classifier / final norm / distillation token of DeiT are not used
            allow_unexpected=("head.*", "head_dist.*", "norm.*", "fc_norm.*", "dist_token", "pre_logits.*"),
            # the patch head and projector are new in MCT-ViT
            allow_missing=("head.*", "projector.*"),
        )
        return report.missing, report.unexpected + [m.split(":")[0] for m in report.mismatched]

    # ------------------------------------------------------------------ features
    def _pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid == self.grid:
            return self.pos_embed_pat
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(self.pos_embed_pat, list(grid), old_size=list(self.grid), num_prefix_tokens=0)

    def forward_features(
        self, x: torch.Tensor, return_attn: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Class tokens ``B x K x D``, patch tokens ``B x D x h x w`` and (when ``return_attn``) the
        per-layer attention maps ``B x heads x (K+N) x (K+N)`` (class tokens first)."""
        b = x.shape[0]
        grid = (math.ceil(x.shape[-2] / self.patch_size), math.ceil(x.shape[-1] / self.patch_size))
        tokens = self.patch_embed(x) + self._pos_embed_for(grid)
        cls = (self.cls_token + self.pos_embed_cls).expand(b, -1, -1)
        h = torch.cat([cls, tokens], dim=1)
        attn: list[torch.Tensor] = []
        for blk in self.blocks:
            if return_attn:
                h, a = block_forward_with_attn(blk, h)
                attn.append(a)
            else:
                h = self._maybe_checkpoint(blk, h)
        k = self.num_tokens
        patches = h[:, k:].transpose(1, 2).reshape(b, self.embed_dim, grid[0], grid[1])
        return h[:, :k], patches, attn

    def _heads(self, cls: torch.Tensor, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        patch_cam = self.head(patches)  # B x K x h x w, Eq. 4 before the sigmoid
        flat = patch_cam.flatten(2)
        patch_logits = flat.mean(-1) if self.patch_pool == "gap" else rank_pool(flat, self.pool_decay)
        cls_logits = cls.mean(-1)
        out = {
            "cls_logits": cls_logits,
            "patch_logits": patch_logits,
            "class_logits": (cls_logits + patch_logits) / 2,
            "patch_cam": patch_cam,
            "class_tokens": cls,
        }
        if self.projector is not None:
            out["vl_embed"] = self.projector(cls)  # Eq. 3
        return out

    def _supports_grad_checkpointing(self) -> bool:
        return True  # each transformer block of forward_features (not the attention-map path of the CAMs)

    def classify(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image-level outputs only (class/patch logits, patch CAM, class tokens, projection)."""
        cls, patches, _ = self.forward_features(x)
        return self._heads(cls, patches)

    def _to_label_set(self, fg_scores: torch.Tensor, bg_score: float) -> torch.Tensor:
        b, _, h, w = fg_scores.shape
        bg = torch.full((b, 1, h, w), float(bg_score), dtype=fg_scores.dtype, device=fg_scores.device)
        # channel order [bg, fg...] -> label-set order (export-friendly: no in-place scatter)
        order = [0] * self.label_set.num_classes
        for j, c in enumerate(self.fg_index):
            order[c] = j + 1
        return torch.cat([bg, fg_scores], dim=1)[:, order]

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image-level outputs plus a cheap dense ``logits``: the patch CAM upsampled with a zero
        background logit, so ``argmax`` is the ``sigmoid(P_k) > 0.5`` pseudo mask of Eq. 4."""
        out = self.classify(x)
        dense = F.interpolate(out["patch_cam"], size=x.shape[-2:], mode="bilinear", align_corners=False)
        out["logits"] = self._to_label_set(dense, 0.0)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense scores ``B x C x H x W`` over the label set: single-scale FCAM (per-class min-max
        normalised, zeroed for classes predicted absent) with ``theta`` as the background score, so
        ``argmax`` is the pseudo mask. Multi-scale + flip FCAMs: :func:`faceparse.models.mct_vit.cam.fcam`."""
        from faceparse.models.mct_vit.cam import fcam

        cams, logits = fcam(self, x, labels=None, scales=(1.0,), flip=False, return_logits=True)
        return self._to_label_set(cams, self.theta)


def _variant(defaults: dict, kw: dict) -> MCTViT:
    return MCTViT(**{**defaults, **kw})


# Exportability checked with torch 2.15 / onnx 1.23 / onnxruntime 1.31 by benchmarks/onnx_export.py.
_NOT_EXPORTABLE = (
    "forward computes class activation maps (faceparse.models.mct_vit.cam.fcam): TorchScript tracing fails on "
    "round() of traced shapes, and the torch.export graph gives NaN where PyTorch zeroes classes "
    "predicted absent (parity check fails)"
)
# ``tiny``: a 2-block, 32-wide ViT on 32 px inputs (4 x 4 patches of 8 px) for cheap test builds.
_TINY = dict(
    img_size=32,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    projector_dim=32,
    projector_hidden_dim=32,
    cam_layers=2,
)
_MCT_CFG = ModelCfg(
    paper="DisFaceRep (ACM MM 2025) / MCTformer+ (TPAMI 2024)",
    input_size=448,
    label_set="celebamask_hq",
    exportable=False,
    not_exportable_reason=_NOT_EXPORTABLE,
    tiny=_TINY,
    tiny_input_size=32,
)


@register_model(_MCT_CFG)
def mct_vit_small(**kw) -> MCTViT:
    """DeiT-S with K class tokens (K = 18 for celebamask_hq) and the 384-512-512 projector."""
    return _variant(dict(embed_dim=384, depth=12, num_heads=6), kw)


@register_model(_MCT_CFG)
def mct_vit_tiny(**kw) -> MCTViT:
    """DeiT-Ti layout (192 wide, 12 deep, 3 heads) with K class tokens; for tests and CPU runs."""
    return _variant(dict(embed_dim=192, depth=12, num_heads=3, projector_hidden_dim=256), kw)
