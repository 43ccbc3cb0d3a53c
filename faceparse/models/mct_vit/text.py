"""Frozen vision-language encoders for text-guided training (DisFaceRep TCD).

Any CLIP-like model fits behind :class:`VisionLanguageEncoder`: it embeds images (already resized to
``image_size`` and normalised with ``image_mean``/``image_std``) and tokenised text into one space.
:class:`OpenCLIPEncoder` adapts open_clip (extra ``clip``: ``pip install faceparse[clip]``): it builds
any open_clip architecture with random weights (``pretrained=None``: nothing is downloaded) and
optionally loads a local checkpoint file, e.g. a FLIP checkpoint (DisFaceRep's choice, a CLIP
ViT-B/16 fine-tuned on face image-text pairs) or an OpenAI/LAION CLIP file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from faceparse.errors import FaceParseError, MissingWeightsError

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
            a training checkpoint with ``state_dict``; ``module.`` prefixes are handled). None keeps
            random weights.
        model_cfg: an explicit open_clip CLIP config (``embed_dim``, ``vision_cfg``, ``text_cfg``)
            used instead of ``model_name`` (e.g. :data:`TINY_CLIP_CONFIG`).
        freeze: freeze the parameters and keep the model in eval mode (default).
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        checkpoint: str | None = None,
        model_cfg: dict[str, Any] | None = None,
        freeze: bool = True,
    ) -> None:
        super().__init__()
        try:
            import open_clip
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("OpenCLIPEncoder needs open_clip: pip install faceparse[clip]") from exc
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        if model_cfg is not None:
            cfg = dict(model_cfg)
            self.model = open_clip.CLIP(**cfg)
            ctx = int(cfg.get("text_cfg", {}).get("context_length", 77))
            self._tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
        else:
            try:
                self.model = open_clip.create_model(model_name, pretrained=None)
            except RuntimeError as exc:
                raise FaceParseError(f"open_clip has no architecture '{model_name}': {exc}") from exc
            self._tokenizer = open_clip.get_tokenizer(model_name)
        if checkpoint is not None:
            path = Path(checkpoint)
            if not path.is_file():
                raise MissingWeightsError(
                    f"vision-language checkpoint '{path}' not found; pass a local FLIP/CLIP weights file "
                    f"matching the '{model_name}' architecture (nothing is downloaded)"
                )
            try:
                open_clip.load_checkpoint(self.model, str(path))
            except RuntimeError as exc:
                raise FaceParseError(f"'{path}' does not fit open_clip '{model_name}': {exc}") from exc
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

    def train(self, mode: bool = True) -> OpenCLIPEncoder:
        return super().train(mode and not self.frozen)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self._tokenizer(list(texts))


def build_vl_encoder(spec: str | dict | nn.Module | None) -> nn.Module:
    """An encoder from a spec: an instance, ``"open_clip"`` / ``"tiny_clip"``, or a dict of
    :class:`OpenCLIPEncoder` kwargs (``{"model_name": "ViT-B-16", "checkpoint": "flip.pt"}``)."""
    if isinstance(spec, nn.Module):
        return spec
    if spec is None or spec == "open_clip":
        return OpenCLIPEncoder()
    if spec == "tiny_clip":
        return OpenCLIPEncoder(model_cfg=TINY_CLIP_CONFIG)
    if isinstance(spec, dict):
        return OpenCLIPEncoder(**spec)
    raise FaceParseError(
        f"vision-language encoder spec must be a module, 'open_clip', 'tiny_clip' or a dict of "
        f"OpenCLIPEncoder arguments; got {spec!r}"
    )
