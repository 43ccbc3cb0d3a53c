"""Structure-via-consensus encoder-decoder (Masi et al., "Towards Learning Structure via Consensus
for Face Segmentation and Parsing", CVPR 2020, §3.2 and supplementary material).

A light fully convolutional network for 128 x 128 RGB faces scaled to [-1, 1]: Conv-ELU-BatchNorm
blocks with reflection padding, an encoder down to 256 x 32 x 32, a dilated branch (dilation 4
then 3) whose output is concatenated with the encoder's, an optional dropout (p = 0.2, the
paper's "+reg."), and a sub-pixel (PixelShuffle x2, twice) decoder. 4,524,323 parameters with
K = 3. Module names follow the official release so its checkpoints load unchanged
(``faceparse convert consensus``).

Written by hand: no library provides this architecture.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from faceparse.errors import FaceParseError, MissingWeightsError
from faceparse.labels import LabelSet
from faceparse.models.base import FaceParsingModel, resolve_label_set
from faceparse.models.weights import layout_mismatch
from faceparse.registry import ModelCfg, register_model


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1, norm: bool = True) -> list[nn.Module]:
    """Reflection pad, 3x3 convolution (no zero padding), ELU, then BatchNorm (BN after ELU)."""
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(dilation),
        nn.Conv2d(cin, cout, 3, stride=stride, padding=0, dilation=dilation),
        nn.ELU(inplace=True),
    ]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    return layers


def init_consensus_weights(module: nn.Module) -> None:
    """The paper's initialisation: convolutions Xavier-normal with gain sqrt(2) and zero bias;
    BatchNorm weight ~ N(1, 0.02), bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.xavier_normal_(module.weight, gain=math.sqrt(2.0))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, mean=1.0, std=0.02)
        nn.init.zeros_(module.bias)


class ConsensusNet(FaceParsingModel):
    """Encoder-decoder of Structure via Consensus (CVPR 2020).

    Args:
        label_set: output classes (default ``cofw_occlusion``: background, face, occlusion;
            ``part_labels`` for background, face, hair). K is the label set's size.
        dropout: dropout probability on the concatenated encoder features; the paper's
            regularised models ("+reg.") use 0.2, the plain ones 0.
        in_channels: input channels (3).
        input_size: default square input size (128, as published).
        width: channels of the first layer (64 as published; the others scale with it: 2w, 4w,
            8w before the first pixel shuffle, w/2 at the end). Smaller widths are for quick
            CPU experiments only; official checkpoints need 64.
        pretrained: optional weights to load, strictly (a missing, unexpected or wrongly shaped key
            is an error naming the file): an official checkpoint file, a ``.safetensors`` file or a
            faceparse model folder (its ``model.safetensors``; e.g. the "+Transf." pre-trained model
            that fine-tuning starts from).
        pretrained_strict: ``False`` opts in to a partial load (warned; under half the keys fitting
            is still an error).

    Input: RGB normalised with mean = std = 0.5 (values in [-1, 1]); any size divisible by 4.
    Output: logits ``B x K x H x W`` at the input resolution.
    """

    input_mean = (0.5, 0.5, 0.5)
    input_std = (0.5, 0.5, 0.5)
    default_input_size = 128

    def __init__(
        self,
        label_set: str | LabelSet = "cofw_occlusion",
        dropout: float = 0.0,
        in_channels: int = 3,
        input_size: int = 128,
        width: int = 64,
        pretrained: str | None = None,
        pretrained_strict: bool = True,
    ) -> None:
        super().__init__()
        if width < 2 or width % 2:
            raise FaceParseError(f"consensus_net width must be an even number >= 2 (published: 64), got {width}")
        self.label_set = resolve_label_set(label_set)
        self.default_input_size = input_size
        k, w = self.label_set.num_classes, width
        self.model_enc = nn.Sequential(
            *_block(in_channels, w, norm=False),
            *_block(w, 2 * w, stride=2),
            *_block(2 * w, 2 * w),
            *_block(2 * w, 2 * w),
            *_block(2 * w, 4 * w, stride=2),
        )
        self.model_dilation = nn.Sequential(
            *_block(4 * w, 4 * w, dilation=4),
            *_block(4 * w, 4 * w, dilation=3),
        )
        self.model_dec = nn.Sequential(
            *_block(8 * w, 8 * w),
            nn.PixelShuffle(2),
            *_block(2 * w, 2 * w),
            *_block(2 * w, 2 * w),
            nn.PixelShuffle(2),
            *_block(w // 2, w // 2, norm=False),
            *_block(w // 2, w // 2, norm=False),
        )
        self.model_class = nn.Conv2d(w // 2, k, 3, padding=1)
        self.drop = nn.Dropout(p=dropout)
        self.apply(init_consensus_weights)
        if pretrained is not None:
            from faceparse.models.weights import load_weights

            path = Path(pretrained)
            if path.is_dir():
                path = path / "model.safetensors"
            if path.suffix == ".safetensors":
                from faceparse.models.weights import read_state_dict

                state = read_state_dict(path, what="consensus weights (pretrained=)")
            else:
                state = official_state_dict(pretrained)
            load_weights(
                self, state, str(pretrained), what="consensus checkpoint (pretrained=)", strict=pretrained_strict
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise FaceParseError(f"consensus_net needs an input size divisible by 4, got {tuple(x.shape[-2:])}")
        feats = self.model_enc(x)
        feats = torch.cat([feats, self.model_dilation(feats)], dim=1)
        return self.model_class(self.model_dec(self.drop(feats)))


@register_model(
    ModelCfg(
        paper="Towards Learning Structure via Consensus for Face Segmentation and Parsing (CVPR 2020)",
        input_size=128,
        label_set="cofw_occlusion",
        tiny={"width": 8, "input_size": 32},
    )
)
def consensus_net(**kwargs) -> ConsensusNet:
    """Structure-via-consensus encoder-decoder (4.52M parameters with 3 classes)."""
    return ConsensusNet(**kwargs)


def official_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read an official checkpoint (``torch.save`` of ``{"state_dict": ..., ...}``, possibly with a
    ``module.`` prefix from DataParallel) and return the bare state dict."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(
            f"checkpoint '{path}' not found; pass the local .pth file of the official release "
            "(e.g. ptlabel_best_model.pth)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:
        raise FaceParseError(
            f"cannot read '{path}' as a weights-only torch checkpoint ({exc}); if you trust the "
            "file, pass --trust-pickle to unpickle it fully"
        ) from exc
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise FaceParseError(f"'{path}' holds no state dict: expected a dict of tensors or {{'state_dict': ...}}")
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def convert_consensus(
    src: str,
    out_dir: str,
    label_set: str = "part_labels",
    dropout: float = 0.2,
    trust_pickle: bool = False,
) -> ConsensusNet:
    """Convert an official Structure-via-Consensus checkpoint into a faceparse model directory; returns the model.

    ``label_set``: ``part_labels`` (background, face, hair: ptlabel_best_model.pth) or
    ``cofw_occlusion`` (background, face, occlusion). ``dropout``: 0.2 for the regularised
    release (only affects training).
    """
    state = official_state_dict(src, trust_pickle=trust_pickle)
    model = ConsensusNet(label_set=label_set, dropout=dropout)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise FaceParseError(
            f"'{src}' does not have the official consensus_net layout: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}"
        )
    w = state["model_class.weight"]
    if w.shape[0] != model.num_classes:
        raise FaceParseError(
            f"'{src}' predicts {w.shape[0]} classes but label set '{label_set}' has "
            f"{model.num_classes}; pass --label-set with a {w.shape[0]}-class set"
        )
    model.load_state_dict(state, strict=True)
    model.registry_name = "consensus_net"
    model.save_pretrained(out_dir)
    return model


def match_consensus(state: dict[str, torch.Tensor]) -> tuple[bool, str]:
    """Whether ``state`` (already unwrapped from ``{"state_dict": ...}``, ``module.`` stripped) is an
    official consensus_net checkpoint: exactly the release's keys and shapes (width 64); the string
    says why (not)."""
    w = state.get("model_class.weight")
    if not any(k.startswith("model_enc.") for k in state) or w is None:
        return False, "no consensus_net keys (model_enc.*, model_dilation.*, model_dec.*, model_class.*)"
    if w.dim() != 4:
        return False, f"model_class.weight is {tuple(w.shape)}, not a convolution weight"
    k = int(w.shape[0])
    if k < 1:
        return False, "model_class.weight has no output channels"
    with torch.device("meta"):
        ref = ConsensusNet(label_set=f"generic_{k}")
    expected = {name: tuple(t.shape) for name, t in ref.state_dict().items()}
    mismatch = layout_mismatch(state, expected, optional_suffixes=())
    if mismatch:
        return False, f"model_enc/model_class keys, but not the official width-64 layout: {mismatch}"
    return True, f"model_enc/model_dilation/model_dec/model_class keys of the official consensus_net; {k} classes"
