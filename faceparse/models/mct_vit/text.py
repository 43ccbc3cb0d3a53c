"""Frozen vision-language encoders for text-guided training (DisFaceRep TCD).

Any CLIP-like model fits behind :class:`VisionLanguageEncoder`: it embeds images (already resized to
``image_size`` and normalised with ``image_mean``/``image_std``) and tokenised text into one space.
:class:`OpenCLIPEncoder` adapts open_clip (extra ``clip``: ``pip install faceparse[clip]``): it builds
any open_clip architecture with random weights (``pretrained=None``: nothing is downloaded) and
optionally loads a local checkpoint file, e.g. a FLIP checkpoint (DisFaceRep's choice, a CLIP
ViT-B/16 fine-tuned on face image-text pairs) or an OpenAI/LAION CLIP file.

A frozen encoder with random weights makes the TCD loss (DisFaceRep Eq. 8-13) meaningless while
training still runs, so it is never built by accident: without ``checkpoint`` the constructor
raises :class:`~faceparse.errors.MissingWeightsError` unless ``random_init=True`` is passed
explicitly (unit tests, CPU demos). The ``"tiny_clip"`` spec of :func:`build_vl_encoder` is random
by definition (no weights of that size exist), so it implies ``random_init=True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from faceparse.errors import FaceParseError

__all__ = ["VisionLanguageEncoder", "OpenCLIPEncoder", "build_vl_encoder", "TINY_CLIP_CONFIG"]

# A CLIP small enough for unit tests and CPU demos (random weights only).
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@runtime_checkable
class VisionLanguageEncoder(Protocol):
    """What TCD needs from a vision-language model."""

    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    embed_dim: int

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``B x 3 x image_size x image_size`` normalised images -> ``B x embed_dim``."""
        ...

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens from :meth:`tokenize` -> ``N x embed_dim``."""
        ...

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor: ...


class OpenCLIPEncoder(nn.Module):
    """open_clip model behind the :class:`VisionLanguageEncoder` protocol, frozen.

    Args:
        model_name: open_clip architecture name (``ViT-B-16`` for FLIP / CLIP ViT-B/16).
        checkpoint: local weights file loaded with ``open_clip.load_checkpoint`` (a plain state dict or
            a training checkpoint with ``state_dict``; ``module.`` prefixes are handled). Required
            unless ``random_init=True``. Loaded strictly (a missing, unexpected or wrongly shaped key is an error
            naming the file); ``checkpoint_strict=False`` opts in to a partial load (warned; under
            half the keys fitting is still an error).
        model_cfg: an explicit open_clip CLIP config (``embed_dim``, ``vision_cfg``, ``text_cfg``)
            used instead of ``model_name`` (e.g. :data:`TINY_CLIP_CONFIG`), or the path of such a
            JSON file (open_clip's ``model_configs/*.json`` format, e.g. the config shipped with a
            FLIP checkpoint; a ``model_cfg`` key inside, as in open_clip's ``open_clip_config.json``,
            is read too).
        freeze: freeze the parameters and keep the model in eval mode (default).
        random_init: keep random weights when no ``checkpoint`` is given (tests and demos only);
            without it a missing ``checkpoint`` raises :class:`~faceparse.errors.MissingWeightsError`.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        checkpoint: str | None = None,
        model_cfg: dict[str, Any] | str | Path | None = None,
        freeze: bool = True,
        checkpoint_strict: bool = True,
        random_init: bool = False,
    ) -> None:
        super().__init__()
        if checkpoint is None and not random_init:
            from faceparse.errors import MissingWeightsError

            arch = "the model_cfg architecture" if model_cfg is not None else f"open_clip '{model_name}'"
            raise MissingWeightsError(
                f"the frozen vision-language encoder ({arch}) has no weights: pass checkpoint='<local file>', "
                f"a FLIP or CLIP weights file of {arch} (DisFaceRep uses FLIP ViT-B-16, e.g. "
                "weights/flip_vit_b16.pt; nothing is downloaded), e.g. TCDLoss(encoder={'model_name': "
                f"'{model_name}', 'checkpoint': 'weights/flip_vit_b16.pt'}}); random weights make the TCD loss "
                "meaningless, so they need an explicit random_init=True (tests and demos only)"
            )
        try:
            import open_clip
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("OpenCLIPEncoder needs open_clip: pip install faceparse[clip]") from exc
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        if isinstance(model_cfg, (str, Path)):
            model_cfg = _read_model_cfg(model_cfg)
        if model_cfg is not None:
            cfg = dict(model_cfg)
            cls = open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP
            self.model = cls(**cfg)
            ctx = int(cfg.get("text_cfg", {}).get("context_length", 77))
            self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
        else:
            try:
                self.model = open_clip.create_model(model_name, pretrained=None)
            except RuntimeError as exc:
                raise FaceParseError(f"open_clip has no architecture '{model_name}': {exc}") from exc
            self._tokenizer = open_clip.get_tokenizer(model_name)
        if checkpoint is not None:
            self._load_checkpoint(checkpoint, model_name, checkpoint_strict)
        size = self.model.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        pp = getattr(self.model.visual, "preprocess_cfg", None) or {}
        self.image_mean = tuple(pp.get("mean", OPENAI_DATASET_MEAN))
        self.image_std = tuple(pp.get("std", OPENAI_DATASET_STD))
        self.embed_dim = int(self.model.text_projection.shape[-1]) if hasattr(self.model, "text_projection") else None
        self.frozen = freeze
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    def _load_checkpoint(self, checkpoint: str, model_name: str, strict: bool) -> None:
        """``open_clip.load_checkpoint`` (it converts third-party and old-format state dicts and resizes
        position embeddings), with every failure turned into an error that names the file, and the
        partial load of ``strict=False`` still refused when under half the keys fit."""
        import open_clip

        from faceparse.errors import MissingWeightsError
        from faceparse.models.weights import DEFAULT_MIN_MATCH

        path = Path(checkpoint)
        what = f"vision-language checkpoint (open_clip '{model_name}', checkpoint=)"
        if not path.is_file():
            raise MissingWeightsError(
                f"{what} '{path}' not found; pass a local FLIP/CLIP weights file matching the '{model_name}' "
                "architecture (nothing is downloaded)"
            )
        try:
            result = open_clip.load_checkpoint(self.model, str(path), strict=strict)
        except Exception as exc:
            msg = str(exc)
            msg = msg if len(msg) < 800 else msg[:800] + " ..."
            raise FaceParseError(
                f"{what} '{path}' cannot be loaded (unreadable, or it does not fit the model): {type(exc).__name__}: {msg}"
            ) from None
        missing = list(getattr(result, "missing_keys", []) or [])
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        total = len(self.model.state_dict())
        if missing or unexpected:
            detail = (
                f"{len(missing)} missing key(s) {missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}"
            )
            if total and total - len(missing) < DEFAULT_MIN_MATCH * total:
                raise FaceParseError(
                    f"{what} '{path}' does not fit open_clip '{model_name}': only {total - len(missing)} of {total} "
                    f"keys fit, so it is probably a file for another model; {detail}"
                )
            import warnings

            warnings.warn(f"partial load (checkpoint_strict=False) of {what} '{path}': {detail}", stacklevel=3)

    def train(self, mode: bool = True) -> OpenCLIPEncoder:
        return super().train(mode and not self.frozen)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))


def _read_model_cfg(path: str | Path) -> dict[str, Any]:
    """An open_clip model config from a JSON file (``{"embed_dim", "vision_cfg", "text_cfg"}`` or
    ``{"model_cfg": {...}}``), with errors naming the file."""
    import json

    p = Path(path)
    if not p.is_file():
        raise FaceParseError(f"open_clip model config '{p}' not found (model_cfg=: a JSON file or a dict)")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise FaceParseError(f"open_clip model config '{p}' is not valid JSON: {exc}") from None
    cfg = cfg.get("model_cfg", cfg) if isinstance(cfg, dict) else cfg
    if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        raise FaceParseError(f"open_clip model config '{p}' needs embed_dim, vision_cfg and text_cfg")
    return cfg


def build_vl_encoder(spec: str | dict | nn.Module | None) -> nn.Module:
    """An encoder from a spec: an instance, ``"open_clip"`` / ``"tiny_clip"``, or a dict of
    :class:`OpenCLIPEncoder` kwargs (``{"model_name": "ViT-B-16", "checkpoint": "flip.pt"}``).

    ``"open_clip"`` (and None) is ViT-B-16 without a checkpoint, so it raises
    :class:`~faceparse.errors.MissingWeightsError`; pass a dict with ``checkpoint`` (or, for tests,
    ``random_init=True``). ``"tiny_clip"`` is the random :data:`TINY_CLIP_CONFIG` encoder (no
    published weights exist for it, so it is random by definition: ``random_init=True``)."""
    if isinstance(spec, nn.Module):
        return spec
    if spec is None or spec == "open_clip":
        return OpenCLIPEncoder()
    if spec == "tiny_clip":
        return OpenCLIPEncoder(model_cfg=TINY_CLIP_CONFIG, random_init=True)
    if isinstance(spec, dict):
        return OpenCLIPEncoder(**spec)
    raise FaceParseError(
        f"vision-language encoder spec must be a module, 'open_clip', 'tiny_clip' or a dict of "
        f"OpenCLIPEncoder arguments; got {spec!r}"
    )
