"""SegFormer face parsing from the Hugging Face Hub (``jonathandinu/face-parsing``) and any other
transformers ``SegformerForSemanticSegmentation`` checkpoint.

Paper: "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers",
E. Xie et al., NeurIPS 2021. The Hub model ``jonathandinu/face-parsing`` is a SegFormer with a MiT-b5
encoder fine-tuned on CelebAMask-HQ (19 labels, its config.json ``id2label`` order: faceparse's
``celebamask_hq_official`` label set), stored with transformers key names as ``model.safetensors``.

Architecture (transformers' ``SegformerForSemanticSegmentation``, a port of the official code):

1. Mix Transformer (MiT) encoder: four stages of overlapping patch embedding (conv 7/4, then 3/2),
   blocks of efficient self-attention (keys/values spatially reduced by a strided conv + LayerNorm)
   and Mix-FFN (linear, 3x3 depth-wise conv, GELU, linear), a LayerNorm after each stage; feature maps
   at strides 4, 8, 16, 32. **Reused from segmentation-models-pytorch**
   (``MixVisionTransformerEncoder``, smp's port of the official MiT), built with the checkpoint's
   widths/depths/heads and with LayerNorm eps 1e-5 everywhere, as transformers uses (smp's ``mit_b*``
   presets use 1e-6 for the block norms, as the official code does).
2. All-MLP decode head: a per-stage linear projection to ``decoder_hidden_size``, bilinear upsampling
   to the stage-1 grid (1/4 of the input), concatenation deepest stage first, a bias-free 1x1 conv +
   BatchNorm + ReLU, dropout and a 1x1 classifier. **Reused from smp** (``SegformerDecoder``, the same
   operations; its keys are renamed on conversion). The only difference: smp resizes to
   ``input_size // 4`` while transformers resizes to the stage-1 grid (``ceil(H / 4)``), which differ
   when the input side is not a multiple of 4; :meth:`SegformerHF.forward` hands smp's decoder a
   zero-channel placeholder of 4 x the stage-1 size so that both agree at every input size.
3. Output: transformers returns logits at 1/4 of the input resolution (``B x K x H/4 x W/4``; its
   own loss and the Hub model card's usage upsample them bilinearly, ``align_corners=False``). This
   model returns them upsampled that same way to the input size, as every faceparse model does;
   :meth:`SegformerHF.forward_quarter` returns the 1/4-resolution logits.

Input normalisation: ImageNet mean/std on RGB in [0, 1] at 512 x 512 (``SegformerImageProcessor`` of
the Hub model: resize to 512, rescale 1/255, normalise); a ``preprocessor_config.json`` beside the
weights overrides these on conversion.

Conversion (:func:`convert_segformer_hf`, command ``faceparse convert segformer-hf``): keys in the
names transformers writes (``save_pretrained`` of transformers 4.x and 5.x writes the same legacy
names: ``segformer.encoder.block.{i}.{j}.attention.self.query``...); the in-memory names of
transformers >= 5 (``segformer.stages.{i}.blocks.{j}.attention.q_proj``...) are accepted too. Key and
value projections are concatenated into smp's ``kv``. The MiT shape (widths, depths, spatial-reduction
and MLP ratios, decoder width, number of labels) is read from config.json when given and otherwise
inferred from tensor shapes; the number of attention heads cannot be inferred from shapes, so without
config.json the MiT default ``(1, 2, 5, 8)`` is assumed (the value of every MiT-b0..b5).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceparse.errors import FaceParseError, MissingWeightsError
from faceparse.images import IMAGENET_MEAN, IMAGENET_STD
from faceparse.labels import LabelSet, generic_label_set, get_label_set
from faceparse.models.base import FaceParsingModel, resolve_label_set
from faceparse.models.weights import layout_mismatch
from faceparse.registry import ModelCfg, register_model

PAPER = "SegFormer (NeurIPS 2021), transformers SegformerForSemanticSegmentation"
HUB_MODEL = "jonathandinu/face-parsing"
DEFAULT_LABEL_SET = "celebamask_hq_official"

# transformers' fixed MiT patch embeddings (smp's MixVisionTransformer hard-codes the same).
PATCH_SIZES = (7, 3, 3, 3)
STRIDES = (4, 2, 2, 2)
MIT_HEADS = (1, 2, 5, 8)


class SegformerHF(FaceParsingModel):
    """SegFormer (MiT encoder + all-MLP head) with transformers' semantics; see the module docstring.

    Args:
        label_set: label set (default ``celebamask_hq_official``, the Hub face parser's order).
        hidden_sizes / depths / num_attention_heads / sr_ratios / mlp_ratios: the four MiT stages
            (transformers' ``SegformerConfig`` names; defaults: MiT-b5).
        decoder_hidden_size: width of the decode head (768 for b2..b5, 256 for b0/b1).
        drop_path_rate: stochastic depth of the encoder blocks (training only; transformers' 0.1).
        classifier_dropout_prob: dropout before the classifier (training only; 0.1).
        input_size: default square input size (512).
        input_mean / input_std: input normalisation (default ImageNet, as the Hub model's processor).
    """

    __annotations__ = {"default_input_size": int}

    def __init__(
        self,
        label_set: str | LabelSet = DEFAULT_LABEL_SET,
        hidden_sizes: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 6, 40, 3),
        num_attention_heads: Sequence[int] = MIT_HEADS,
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        mlp_ratios: Sequence[int] = (4, 4, 4, 4),
        decoder_hidden_size: int = 768,
        drop_path_rate: float = 0.1,
        classifier_dropout_prob: float = 0.1,
        input_size: int = 512,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        stages = {
            "hidden_sizes": hidden_sizes,
            "depths": depths,
            "num_attention_heads": num_attention_heads,
            "sr_ratios": sr_ratios,
            "mlp_ratios": mlp_ratios,
        }
        for key, value in stages.items():
            if len(value) != 4:
                raise FaceParseError(f"SegformerHF: {key} needs 4 values (one per MiT stage), got {list(value)}")
        for c, h in zip(hidden_sizes, num_attention_heads):
            if c % h:
                raise FaceParseError(f"SegformerHF: hidden size {c} is not divisible by {h} attention heads")
        self.label_set = resolve_label_set(label_set, default=DEFAULT_LABEL_SET)
        self.default_input_size = int(input_size)
        self.input_mean = tuple(float(v) for v in (input_mean or IMAGENET_MEAN))
        self.input_std = tuple(float(v) for v in (input_std or IMAGENET_STD))
        self.encoder = _build_mit(hidden_sizes, depths, num_attention_heads, sr_ratios, mlp_ratios, drop_path_rate)
        from segmentation_models_pytorch.decoders.segformer.decoder import SegformerDecoder

        self.decoder = SegformerDecoder(
            encoder_channels=[3, *hidden_sizes], encoder_depth=5, segmentation_channels=decoder_hidden_size
        )
        self.dropout = nn.Dropout(classifier_dropout_prob)
        self.classifier = nn.Conv2d(decoder_hidden_size, self.label_set.num_classes, kernel_size=1)

    def _checkpoint_roots(self) -> tuple[tuple[nn.Module, ...], tuple[nn.Module, ...]]:
        """Activation checkpointing (``set_grad_checkpointing``) of each MiT block, patch embedding and
        decode-head MLP (smp's modules)."""
        return (self.encoder, self.decoder), ()

    def forward_quarter(self, x: Tensor) -> Tensor:
        """Logits at the stage-1 grid (``ceil(H/4) x ceil(W/4)``), what transformers returns."""
        feats = self.encoder(x)[2:]  # smp returns [input, zero-channel stride-2 placeholder, stage 1..4]
        h, w = feats[0].shape[-2:]
        # smp's decoder resizes to features[0]'s size // 4 (see the module docstring): a zero-channel
        # placeholder of 4 x the stage-1 size makes that the stage-1 grid, as in transformers.
        anchor = feats[0].new_empty((feats[0].shape[0], 0, 4 * h, 4 * w))
        fused = self.decoder([anchor, *feats])
        return self.classifier(self.dropout(fused))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.forward_quarter(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _build_mit(
    hidden_sizes: Sequence[int],
    depths: Sequence[int],
    heads: Sequence[int],
    sr_ratios: Sequence[int],
    mlp_ratios: Sequence[int],
    drop_path_rate: float,
) -> nn.Module:
    """smp's MiT encoder with the given shape and transformers' LayerNorm eps (1e-5)."""
    from functools import partial

    from segmentation_models_pytorch.encoders.mix_transformer import LayerNorm, MixVisionTransformerEncoder

    kwargs = dict(
        out_channels=[3, 0, *hidden_sizes],
        depth=5,
        embed_dims=list(hidden_sizes),
        num_heads=list(heads),
        mlp_ratios=list(mlp_ratios),
        qkv_bias=True,
        norm_layer=partial(LayerNorm, eps=1e-5),
        depths=list(depths),
        sr_ratios=list(sr_ratios),
        drop_rate=0.0,
        drop_path_rate=float(drop_path_rate),
    )
    with _LinspaceOnCPU():
        return MixVisionTransformerEncoder(**kwargs)


class _LinspaceOnCPU(torch.overrides.TorchFunctionMode):
    """Create ``torch.linspace`` tensors on the CPU: smp's MiT constructor calls ``.item()`` on its
    drop-path linspace, which a meta tensor refuses (``model_info`` builds on the meta device).
    Hand-written: a one-function override; every other tensor keeps the default device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = dict(kwargs or {})
        if func is torch.linspace:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


# --------------------------------------------------------------------------- registry
# b0..b5 follow the MiT variants of the paper (Table 1 / Sec. 3.1) as transformers' nvidia/mit-b* configs.
VARIANTS: dict[str, dict[str, Any]] = {
    "b0": {"hidden_sizes": (32, 64, 160, 256), "depths": (2, 2, 2, 2), "decoder_hidden_size": 256},
    "b1": {"hidden_sizes": (64, 128, 320, 512), "depths": (2, 2, 2, 2), "decoder_hidden_size": 256},
    "b2": {"hidden_sizes": (64, 128, 320, 512), "depths": (3, 4, 6, 3), "decoder_hidden_size": 768},
    "b3": {"hidden_sizes": (64, 128, 320, 512), "depths": (3, 4, 18, 3), "decoder_hidden_size": 768},
    "b4": {"hidden_sizes": (64, 128, 320, 512), "depths": (3, 8, 27, 3), "decoder_hidden_size": 768},
    "b5": {"hidden_sizes": (64, 128, 320, 512), "depths": (3, 6, 40, 3), "decoder_hidden_size": 768},
}
_TINY = {
    "hidden_sizes": (8, 16, 24, 32),
    "depths": (1, 1, 1, 1),
    "num_attention_heads": (1, 2, 2, 4),
    "decoder_hidden_size": 16,
    "input_size": 64,
}


def _cfg(variant: str) -> ModelCfg:
    return ModelCfg(
        paper=PAPER, input_size=512, label_set=DEFAULT_LABEL_SET, tiny=_TINY, extra={"encoder": f"mit_{variant}"}
    )


def _build(variant: str, kwargs: dict[str, Any]) -> SegformerHF:
    model = SegformerHF(**{**VARIANTS[variant], **kwargs})
    model.registry_name = f"segformer_hf_{variant}"
    return model


@register_model(_cfg("b0"))
def segformer_hf_b0(**kwargs: Any) -> SegformerHF:
    """SegFormer-B0 (MiT-b0 widths 32..256, decoder 256); keyword arguments override :class:`SegformerHF`'s."""
    return _build("b0", kwargs)


@register_model(_cfg("b1"))
def segformer_hf_b1(**kwargs: Any) -> SegformerHF:
    """SegFormer-B1 (MiT-b1, decoder 256); keyword arguments override :class:`SegformerHF`'s."""
    return _build("b1", kwargs)


@register_model(_cfg("b2"))
def segformer_hf_b2(**kwargs: Any) -> SegformerHF:
    """SegFormer-B2 (MiT-b2, decoder 768); keyword arguments override :class:`SegformerHF`'s."""
    return _build("b2", kwargs)


@register_model(_cfg("b3"))
def segformer_hf_b3(**kwargs: Any) -> SegformerHF:
    """SegFormer-B3 (MiT-b3, decoder 768); keyword arguments override :class:`SegformerHF`'s."""
    return _build("b3", kwargs)


@register_model(_cfg("b4"))
def segformer_hf_b4(**kwargs: Any) -> SegformerHF:
    """SegFormer-B4 (MiT-b4, decoder 768); keyword arguments override :class:`SegformerHF`'s."""
    return _build("b4", kwargs)


@register_model(_cfg("b5"))
def segformer_hf_b5(**kwargs: Any) -> SegformerHF:
    """SegFormer-B5 (MiT-b5, decoder 768): the architecture of ``jonathandinu/face-parsing``;
    keyword arguments override :class:`SegformerHF`'s."""
    return _build("b5", kwargs)


# --------------------------------------------------------------------------- transformers checkpoints
# transformers >= 5 in-memory names -> the names its save_pretrained writes (and the Hub files hold).
# Applied in order to each key (transformers' own conversion mapping, reversed).
_V5_TO_LEGACY = (
    (re.compile(r"^segformer\.stages\.(\d+)\.patch_embeddings\."), r"segformer.encoder.patch_embeddings.\1."),
    (re.compile(r"^segformer\.stages\.(\d+)\.blocks\."), r"segformer.encoder.block.\1."),
    (re.compile(r"^segformer\.stages\.(\d+)\.layer_norm\."), r"segformer.encoder.layer_norm.\1."),
    (re.compile(r"\.attention\.q_proj\."), ".attention.self.query."),
    (re.compile(r"\.attention\.k_proj\."), ".attention.self.key."),
    (re.compile(r"\.attention\.v_proj\."), ".attention.self.value."),
    (re.compile(r"\.attention\.sequence_reduction\.sequence_reduction\."), ".attention.self.sr."),
    (re.compile(r"\.attention\.sequence_reduction\.layer_norm\."), ".attention.self.layer_norm."),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.mlp\.fc1\."), ".mlp.dense1."),
    (re.compile(r"\.mlp\.fc2\."), ".mlp.dense2."),
    (re.compile(r"\.layernorm_before\."), ".layer_norm_1."),
    (re.compile(r"\.layernorm_after\."), ".layer_norm_2."),
    (re.compile(r"^decode_head\.linear_projections\."), "decode_head.linear_c."),
)

# legacy transformers block keys -> smp MiT block keys (key/value handled separately: smp's ``kv``).
_BLOCK_KEYS = {
    "layer_norm_1": "norm1",
    "attention.self.query": "attn.q",
    "attention.self.sr": "attn.sr",
    "attention.self.layer_norm": "attn.norm",
    "attention.output.dense": "attn.proj",
    "layer_norm_2": "norm2",
    "mlp.dense1": "mlp.fc1",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
    "mlp.dense2": "mlp.fc2",
}
_BLOCK_RE = re.compile(r"^segformer\.encoder\.block\.(\d+)\.(\d+)\.(.+)\.(weight|bias)$")


def to_legacy_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename transformers >= 5 in-memory keys to the names transformers saves (others unchanged)."""
    out = {}
    for key, value in state.items():
        for pattern, repl in _V5_TO_LEGACY:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def infer_config(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """``SegformerHF`` keyword arguments (shape only) read from a legacy-named state dict's shapes.

    ``num_attention_heads`` cannot be read from shapes and is the MiT default ``(1, 2, 5, 8)``.
    Raises ``FaceParseError`` naming the first missing or inconsistent tensor.
    """

    def need(key: str) -> Tensor:
        if key not in state:
            raise FaceParseError(f"no tensor '{key}'")
        return state[key]

    n_stages = len({k.split(".")[3] for k in state if k.startswith("segformer.encoder.patch_embeddings.")})
    if n_stages != 4:
        raise FaceParseError(f"{n_stages} patch-embedding stages, expected 4 (MiT)")
    hidden, depths, srs, mlps = [], [], [], []
    for i in range(4):
        proj = need(f"segformer.encoder.patch_embeddings.{i}.proj.weight")
        if proj.ndim != 4 or proj.shape[-1] != PATCH_SIZES[i]:
            raise FaceParseError(
                f"stage {i} patch embedding has kernel {tuple(proj.shape[2:])}, expected {PATCH_SIZES[i]} "
                "(the MiT patch sizes 7, 3, 3, 3)"
            )
        c = int(proj.shape[0])
        hidden.append(c)
        blocks = {int(k.split(".")[4]) for k in state if k.startswith(f"segformer.encoder.block.{i}.")}
        if not blocks or blocks != set(range(len(blocks))):
            raise FaceParseError(f"stage {i} has blocks {sorted(blocks)}, expected 0..n-1")
        depths.append(len(blocks))
        sr = state.get(f"segformer.encoder.block.{i}.0.attention.self.sr.weight")
        srs.append(int(sr.shape[-1]) if sr is not None else 1)
        fc1 = need(f"segformer.encoder.block.{i}.0.mlp.dense1.weight")
        if fc1.shape[0] % c:
            raise FaceParseError(f"stage {i} Mix-FFN width {fc1.shape[0]} is not a multiple of {c}")
        mlps.append(int(fc1.shape[0]) // c)
    fuse = need("decode_head.linear_fuse.weight")
    classifier = need("decode_head.classifier.weight")
    return {
        "hidden_sizes": hidden,
        "depths": depths,
        "num_attention_heads": list(MIT_HEADS),
        "sr_ratios": srs,
        "mlp_ratios": mlps,
        "decoder_hidden_size": int(fuse.shape[0]),
        "num_labels": int(classifier.shape[0]),
    }


def convert_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a transformers ``SegformerForSemanticSegmentation`` state dict to :class:`SegformerHF` keys."""
    state = to_legacy_keys(state)
    out: dict[str, Tensor] = {}
    kv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if m := re.match(r"^segformer\.encoder\.patch_embeddings\.(\d+)\.(proj|layer_norm)\.(.+)$", key):
            i, part, param = m.groups()
            out[f"encoder.patch_embed{int(i) + 1}.{'proj' if part == 'proj' else 'norm'}.{param}"] = value
        elif m := re.match(r"^segformer\.encoder\.layer_norm\.(\d+)\.(.+)$", key):
            out[f"encoder.norm{int(m.group(1)) + 1}.{m.group(2)}"] = value
        elif m := _BLOCK_RE.match(key):
            i, j, name, param = m.groups()
            prefix = f"encoder.block{int(i) + 1}.{j}."
            if name in ("attention.self.key", "attention.self.value"):
                kv.setdefault((prefix, param), {})[name.rsplit(".", 1)[1]] = value
            elif name in _BLOCK_KEYS:
                out[prefix + _BLOCK_KEYS[name] + "." + param] = value
            else:
                out["unmapped:" + key] = value
        elif m := re.match(r"^decode_head\.linear_c\.(\d+)\.proj\.(.+)$", key):
            # transformers projects stage i with linear_c.i; smp's mlp_stage runs deepest stage first
            out[f"decoder.mlp_stage.{3 - int(m.group(1))}.linear.{m.group(2)}"] = value
        elif key.startswith("decode_head.linear_fuse."):
            out["decoder.fuse_stage.0." + key.removeprefix("decode_head.linear_fuse.")] = value
        elif key.startswith("decode_head.batch_norm."):
            out["decoder.fuse_stage.1." + key.removeprefix("decode_head.batch_norm.")] = value
        elif key.startswith("decode_head.classifier."):
            out["classifier." + key.removeprefix("decode_head.classifier.")] = value
        else:
            out["unmapped:" + key] = value
    for (prefix, param), pair in kv.items():
        if set(pair) != {"key", "value"}:
            raise FaceParseError(f"'{prefix}' has a key projection without a value projection or vice versa")
        out[f"{prefix}attn.kv.{param}"] = torch.cat([pair["key"], pair["value"]], dim=0)
    return out


def _check_fits(model: SegformerHF, mapped: Mapping[str, Tensor]) -> None:
    """Raise when converted tensors ``mapped`` do not have exactly ``model``'s keys and shapes."""
    unmapped = sorted(k.removeprefix("unmapped:") for k in mapped if k.startswith("unmapped:"))
    known = {k: v for k, v in mapped.items() if not k.startswith("unmapped:")}
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    parts = [f"{len(unmapped)} tensor(s) of no known SegFormer layer, e.g. {unmapped[:3]}"] if unmapped else []
    mismatch = layout_mismatch(known, own, optional_suffixes=())
    if mismatch:
        parts.append(mismatch)
    if parts:
        raise FaceParseError("; ".join(parts))


def match_segformer_hf(state: Mapping[str, Tensor]) -> tuple[bool, str]:
    """Whether ``state`` is a transformers ``SegformerForSemanticSegmentation`` state dict (key names
    and shapes), with the reason either way. Reads shapes only (a meta-device model is built)."""
    keys = set(state)
    legacy = "segformer.encoder.patch_embeddings.0.proj.weight" in keys
    v5 = "segformer.stages.0.patch_embeddings.proj.weight" in keys
    if not (legacy or v5):
        return False, "no 'segformer.encoder.patch_embeddings.0.proj.weight' (transformers SegFormer encoder keys)"
    if not any(k.startswith("decode_head.") for k in keys):
        return False, "a transformers SegFormer encoder without 'decode_head.*': not a semantic segmentation model"
    try:
        legacy_state = to_legacy_keys(state)
        shape = infer_config(legacy_state)
        num_labels = shape.pop("num_labels")
        with torch.device("meta"):
            model = SegformerHF(label_set=generic_label_set(max(num_labels, 1)), **_heads_for(shape))
        _check_fits(model, convert_state_dict(legacy_state))
    except FaceParseError as exc:
        return False, f"transformers SegFormer key names, but the tensors do not form a SegFormer: {exc}"
    names = "transformers >= 5 in-memory" if v5 and not legacy else "transformers"
    return True, (
        f"{names} SegformerForSemanticSegmentation state dict: MiT widths {shape['hidden_sizes']}, depths "
        f"{shape['depths']}, decoder {shape['decoder_hidden_size']}, {num_labels} labels"
    )


def _heads_for(shape: dict[str, Any]) -> dict[str, Any]:
    """``shape`` with head counts that divide the widths (the MiT default, else one head per stage)."""
    heads = shape.get("num_attention_heads") or MIT_HEADS
    if any(c % h for c, h in zip(shape["hidden_sizes"], heads)):
        heads = [1, 1, 1, 1]
    return {**shape, "num_attention_heads": list(heads)}


# config.json id2label names -> canonical class names (CelebAMask-HQ part file names and a few spellings).
def _canonical(name: str) -> str | None:
    from faceparse.labels import LABEL_SETS

    key = name.strip().lower()
    for ls in LABEL_SETS.values():
        for canon, source in zip(ls.classes, ls.source_names):
            if key in (canon, source.lower()):
                return canon
    return None


def label_set_from_id2label(id2label: Mapping[Any, str]) -> LabelSet:
    """The label set of a transformers config's ``id2label``.

    The Hub face parser's labels give ``celebamask_hq_official``; other names are mapped to canonical
    class names where faceparse knows them (``l_eye`` -> ``left_eye``) and kept as given otherwise;
    transformers' placeholder names (``LABEL_0``...) give ``generic_<n>``.
    """
    try:
        names = [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]
    except (TypeError, ValueError) as exc:
        raise FaceParseError(f"id2label keys must be class indices, got {list(id2label)[:5]}") from exc
    if sorted(int(k) for k in id2label) != list(range(len(names))):
        raise FaceParseError(f"id2label must number the classes 0..n-1, got {sorted(id2label, key=int)}")
    official = get_label_set(DEFAULT_LABEL_SET)
    if tuple(names) == official.source_names:
        return official
    if all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        return generic_label_set(len(names))
    classes = [_canonical(n) or n for n in names]
    if len(set(classes)) != len(classes):
        classes = names
    background = classes.index("background") if "background" in classes else 0
    return LabelSet(
        name=f"segformer_hf_{len(names)}", classes=tuple(classes), source_names=tuple(names), background=background
    )


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FaceParseError(f"cannot read {what} '{path}': {exc}") from exc
    if not isinstance(data, dict):
        raise FaceParseError(f"{what} '{path}' is not a JSON object")
    return data


def _locate(src: str | Path, config: str | Path | None) -> tuple[Path, Path | None, Path | None]:
    """(weights file, config.json or None, preprocessor_config.json or None) of a file or snapshot folder."""
    p = Path(src)
    if p.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (p / name).is_file():
                weights = p / name
                break
        else:
            if (p / "model.safetensors.index.json").is_file():
                raise FaceParseError(f"'{p}' holds a sharded checkpoint; merge it into one model.safetensors first")
            raise MissingWeightsError(
                f"'{p}' has neither model.safetensors nor pytorch_model.bin (expected a transformers model folder)"
            )
        folder = p
    elif p.is_file():
        weights, folder = p, p.parent
    else:
        raise MissingWeightsError(
            f"SegFormer checkpoint '{p}' not found (a model.safetensors / pytorch_model.bin file or its folder)"
        )
    cfg_path = Path(config) if config is not None else folder / "config.json"
    if config is not None and not cfg_path.is_file():
        raise MissingWeightsError(f"config file '{cfg_path}' not found")
    if not cfg_path.is_file():
        cfg_path = None
    elif config is None and _read_json(cfg_path, "config").get("model_type") != "segformer":
        cfg_path = None  # a config.json of something else beside the weights file: not ours to read
    pre = folder / "preprocessor_config.json"
    return weights, cfg_path, pre if pre.is_file() else None


def _shape_from_config(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    def get(key: str, default: Any) -> Any:
        return cfg.get(key, default)

    if get("num_encoder_blocks", 4) != 4:
        raise FaceParseError(f"'{path}': num_encoder_blocks={cfg['num_encoder_blocks']}, only 4 (MiT) is supported")
    if list(get("patch_sizes", PATCH_SIZES)) != list(PATCH_SIZES) or list(get("strides", STRIDES)) != list(STRIDES):
        raise FaceParseError(
            f"'{path}': patch_sizes {get('patch_sizes', None)} / strides {get('strides', None)} differ from MiT's "
            f"{list(PATCH_SIZES)} / {list(STRIDES)}, which the smp MiT encoder implements"
        )
    if get("hidden_act", "gelu") != "gelu":
        raise FaceParseError(f"'{path}': hidden_act={cfg['hidden_act']!r}, only 'gelu' is supported")
    if get("reshape_last_stage", True) is not True:
        raise FaceParseError(f"'{path}': reshape_last_stage=false is not supported")
    return {
        "hidden_sizes": list(get("hidden_sizes", (32, 64, 160, 256))),
        "depths": list(get("depths", (2, 2, 2, 2))),
        "num_attention_heads": list(get("num_attention_heads", MIT_HEADS)),
        "sr_ratios": list(get("sr_ratios", (8, 4, 2, 1))),
        "mlp_ratios": [int(r) for r in get("mlp_ratios", (4, 4, 4, 4))],
        "decoder_hidden_size": int(get("decoder_hidden_size", 256)),
        "drop_path_rate": float(get("drop_path_rate", 0.1)),
        "classifier_dropout_prob": float(get("classifier_dropout_prob", 0.1)),
    }


def _preprocessing(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    pre = _read_json(path, "preprocessor config")
    out: dict[str, Any] = {}
    if pre.get("do_normalize", True) and "image_mean" in pre and "image_std" in pre:
        out["input_mean"], out["input_std"] = list(pre["image_mean"]), list(pre["image_std"])
    size = pre.get("size")
    if isinstance(size, dict) and size.get("height") and size.get("height") == size.get("width"):
        out["input_size"] = int(size["height"])
    elif isinstance(size, int):
        out["input_size"] = size
    if pre.get("do_rescale", True) and abs(float(pre.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise FaceParseError(f"'{path}': rescale_factor {pre['rescale_factor']} is not 1/255")
    return out


def convert_segformer_hf_model(
    src: str | Path,
    label_set: str | LabelSet | None = None,
    config: str | Path | None = None,
    input_size: int | None = None,
) -> SegformerHF:
    """Build a :class:`SegformerHF` holding a transformers SegFormer checkpoint (see :func:`convert_segformer_hf`)."""
    from faceparse.models.weights import read_state_dict

    weights, cfg_path, pre_path = _locate(src, config)
    state = to_legacy_keys(
        read_state_dict(weights, what="SegFormer checkpoint", hint="pass a local model.safetensors or its folder")
    )
    ok, reason = match_segformer_hf(state)
    if not ok:
        raise FaceParseError(f"'{weights}' is not a transformers SegformerForSemanticSegmentation checkpoint: {reason}")
    inferred = infer_config(state)
    num_labels = inferred.pop("num_labels")
    if cfg_path is not None:
        cfg = _read_json(cfg_path, "config")
        shape = _shape_from_config(cfg, cfg_path)
        differ = [k for k in inferred if k != "num_attention_heads" and _as_list(inferred[k]) != _as_list(shape[k])]
        if differ:
            k = differ[0]
            raise FaceParseError(
                f"'{cfg_path}' says {k}={shape[k]} but the tensors in '{weights}' have {inferred[k]} "
                "(is config.json from another model?)"
            )
        labels = label_set
        if labels is None and "id2label" in cfg:
            labels = label_set_from_id2label(cfg["id2label"])
    else:
        shape = _heads_for(inferred)
        labels = label_set
    if labels is None:  # no config.json: 19 labels are taken to be the Hub face parser's
        official = get_label_set(DEFAULT_LABEL_SET)
        labels = official if num_labels == official.num_classes else generic_label_set(num_labels)
    labels = get_label_set(labels)
    if labels.num_classes != num_labels:
        raise FaceParseError(
            f"label set '{labels.name}' has {labels.num_classes} classes but '{weights}' predicts {num_labels}"
        )
    extra = _preprocessing(pre_path)
    if input_size is not None:
        extra["input_size"] = int(input_size)
    model = SegformerHF(label_set=labels, **shape, **extra)
    mapped = convert_state_dict(state)
    try:
        _check_fits(model, mapped)
    except FaceParseError as exc:
        raise FaceParseError(f"'{weights}' does not fit the SegFormer its config describes: {exc}") from None
    model.load_state_dict(mapped, strict=True)
    variant = _variant_of(shape)
    if variant is not None:
        model.registry_name = f"segformer_hf_{variant}"
    return model.eval()


def _as_list(v: Any) -> list:
    return [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)]


def _variant_of(shape: Mapping[str, Any]) -> str | None:
    """The registered variant (``b0``..``b5``) whose architecture ``shape`` is, if any."""
    standard = {"num_attention_heads": MIT_HEADS, "sr_ratios": (8, 4, 2, 1), "mlp_ratios": (4, 4, 4, 4)}
    for variant, kw in VARIANTS.items():
        if all(_as_list(shape[k]) == _as_list(v) for k, v in {**standard, **kw}.items()):
            return variant
    return None


def convert_segformer_hf(
    src: str | Path,
    out_dir: str | Path,
    label_set: str | LabelSet | None = None,
    config: str | Path | None = None,
    input_size: int | None = None,
) -> SegformerHF:
    """Convert a transformers ``SegformerForSemanticSegmentation`` checkpoint into a faceparse model folder.

    Args:
        src: a ``model.safetensors`` / ``pytorch_model.bin`` file, or the model folder (a Hub snapshot
            of ``jonathandinu/face-parsing``) holding it. Read safely (safetensors, or
            ``torch.load(weights_only=True)``); nothing is downloaded.
        out_dir: the faceparse model folder to write (config.json + model.safetensors).
        label_set: override the label set (default: config.json's ``id2label``; without config.json,
            ``celebamask_hq_official`` for 19 labels, else ``generic_<n>``).
        config: a transformers config.json (default: the one in the folder / beside the file, if its
            ``model_type`` is ``segformer``); without one the shape is inferred from the tensors.
        input_size: override the default input size (default: preprocessor_config.json's, else 512).

    Returns the model written to ``out_dir`` (command line: ``faceparse convert segformer-hf SRC OUT_DIR``).
    """
    model = convert_segformer_hf_model(src, label_set=label_set, config=config, input_size=input_size)
    model.save_pretrained(out_dir)
    return model
