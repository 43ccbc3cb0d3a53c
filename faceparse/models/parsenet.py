"""ParseNet: the face parser of PSFRGAN, as distributed by facexlib (``parsing_parsenet.pth``).

Paper: C. Chen, X. Li, L. Yang, X. Lin, L. Zhang, K.-Y. K. Wong, "Progressive Semantic-Aware Style
Transformation for Blind Face Restoration", CVPR 2021 (PSFRGAN; ParseNet is its parsing network,
trained on degraded CelebAMask-HQ faces). facexlib (github.com/xinntao/facexlib,
``facexlib/parsing/parsenet.py``) and the PSFRGAN repository (``models/networks.py``,
``models/blocks.py``) were read for facts only: layout, key names, shapes, order of operations.

Network (released settings: 512 input, base width 64, channels clipped to [32, 256], 4 down / up
steps, 10 body blocks):

* every convolution is 3x3 with reflection padding 1;
* stem: one convolution 3 -> 64 with bias;
* encoder: ``depth`` residual blocks that halve the resolution (second convolution of the residual
  branch has stride 2; the shortcut is one strided biased convolution);
* body: ``num_blocks`` residual blocks at stride ``2**depth`` whose sum is added to its input
  (a long skip connection);
* decoder: ``depth`` residual blocks that double the resolution (nearest upsampling before the first
  convolution of the residual branch and before the shortcut convolution);
* two heads on the last decoder map: 19 parsing logits and a 3-channel restored image.

Residual branch: ``Conv -> BN -> LeakyReLU(0.2) -> Conv -> BN``; block output ``shortcut + branch``
with no activation after the sum. Convolutions followed by BatchNorm have no bias.

Parameter names differ from the release only in the wrapper modules: the release's
``ConvLayer.conv2d`` / ``ConvLayer.norm.norm`` / ``ResidualBlock.shortcut_func`` are ``conv`` / ``bn``
/ ``shortcut`` here (:func:`release_to_faceparse_keys`). Written by hand: no library provides this
network.

Inputs: RGB in [0, 1] normalised with mean 0.5 and std 0.5 (facexlib's inference script and PSFRGAN's
data loader), 512 x 512; any size divisible by ``2**depth`` works. Classes: ``celebamask_hq_official``
(the CelebAMask-HQ ``g_mask.py`` order: background, skin, nose, eye_g, l_eye, r_eye, l_brow, r_brow,
l_ear, r_ear, mouth, u_lip, l_lip, hair, hat, ear_r, neck_l, neck, cloth).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceparse.errors import FaceParseError
from faceparse.labels import LabelSet
from faceparse.models.base import FaceParsingModel, checkpoint_label_set, resolve_label_set
from faceparse.models.weights import layout_mismatch
from faceparse.registry import ModelCfg, register_model

PAPER = "PSFRGAN ParseNet (CVPR 2021); facexlib release"
DEFAULT_LABEL_SET = "celebamask_hq_official"


class PadConv(nn.Module):
    """Optional nearest 2x upsampling, reflection pad 1, 3x3 convolution (stride 1 or 2), optional
    BatchNorm (then no bias) and optional LeakyReLU(0.2). Keys ``conv`` and ``bn``."""

    def __init__(
        self, cin: int, cout: int, stride: int = 1, upsample: bool = False, norm: bool = False, act: bool = False
    ) -> None:
        super().__init__()
        self.upsample = upsample
        self.conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, padding_mode="reflect", bias=not norm)
        self.bn = nn.BatchNorm2d(cout) if norm else nn.Identity()
        self.act = nn.LeakyReLU(0.2) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.act(self.bn(self.conv(x)))


class ResBlock(nn.Module):
    """Residual block ``shortcut(x) + BN(Conv(LeakyReLU(BN(Conv(x)))))``; ``scale`` is ``none``,
    ``down`` (stride 2 in the second convolution and in the shortcut) or ``up`` (nearest 2x before the
    first convolution and the shortcut). The shortcut is the identity for ``none`` with equal widths,
    else one biased convolution."""

    def __init__(self, cin: int, cout: int, scale: str = "none") -> None:
        super().__init__()
        if scale not in ("none", "down", "up"):
            raise ValueError(f"scale must be none, down or up, got {scale!r}")
        up, stride = scale == "up", 2 if scale == "down" else 1
        if scale == "none" and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = PadConv(cin, cout, stride=stride, upsample=up)
        self.conv1 = PadConv(cin, cout, upsample=up, norm=True, act=True)
        self.conv2 = PadConv(cout, cout, stride=stride, norm=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.conv2(self.conv1(x))


class ParseNet(FaceParsingModel):
    """PSFRGAN's ParseNet (facexlib ``parsing_parsenet.pth``).

    Args:
        label_set: output classes (default ``celebamask_hq_official``, the release's 19-class order).
        input_size: default square input size (512 as released).
        base_channels: stem width (64). Block widths are ``base_channels * 2**i`` clipped to
            ``[min_channels, max_channels]`` (32, 256 as released).
        depth: number of down (and up) sampling blocks (4 as released: 512 -> 32 -> 512).
        num_blocks: residual blocks in the body (10).
        pretrained: optional local ParseNet checkpoint in the release's format, loaded strictly.
        pretrained_strict: ``False`` opts in to a partial load (warned).

    ``forward(x)`` returns the parsing logits ``B x K x H x W``; ``forward_train(x)`` adds the
    restored-image head as ``restored_image`` (``B x 3 x H x W``, in the input's [-1, 1] scale; PSFRGAN
    trains it with a pixel loss against the high-quality image, which no faceparse loss uses).
    """

    input_mean = (0.5, 0.5, 0.5)
    input_std = (0.5, 0.5, 0.5)

    def __init__(
        self,
        label_set: str | LabelSet = DEFAULT_LABEL_SET,
        input_size: int = 512,
        base_channels: int = 64,
        min_channels: int = 32,
        max_channels: int = 256,
        depth: int = 4,
        num_blocks: int = 10,
        pretrained: str | None = None,
        pretrained_strict: bool = True,
    ) -> None:
        super().__init__()
        if depth < 0 or num_blocks < 0 or min(base_channels, min_channels, max_channels) < 1:
            raise FaceParseError("parsenet: depth and num_blocks must be >= 0 and channel widths >= 1")
        self.label_set = resolve_label_set(label_set, default=DEFAULT_LABEL_SET)
        self.default_input_size = input_size
        self.depth = depth

        def clip(c: int) -> int:
            return max(min_channels, min(c, max_channels))

        width = base_channels
        encoder: list[nn.Module] = [PadConv(3, base_channels)]
        for _ in range(depth):
            encoder.append(ResBlock(clip(width), clip(width * 2), scale="down"))
            width *= 2
        self.encoder = nn.Sequential(*encoder)
        self.body = nn.Sequential(*(ResBlock(clip(width), clip(width)) for _ in range(num_blocks)))
        decoder = []
        for _ in range(depth):
            decoder.append(ResBlock(clip(width), clip(width // 2), scale="up"))
            width //= 2
        self.decoder = nn.Sequential(*decoder)
        self.out_img_conv = PadConv(clip(width), 3)
        self.out_mask_conv = PadConv(clip(width), self.label_set.num_classes)
        if pretrained is not None:
            from faceparse.models.weights import load_weights, read_state_dict

            what = "ParseNet checkpoint (pretrained=)"
            state = release_to_faceparse_keys(read_state_dict(pretrained, what=what))
            load_weights(
                self, state, pretrained, what=what, strict=pretrained_strict, allow_missing=("*.num_batches_tracked",)
            )

    def _decode(self, x: Tensor) -> Tensor:
        step = 2**self.depth
        if x.shape[-1] % step or x.shape[-2] % step:
            raise FaceParseError(
                f"parsenet with depth {self.depth} needs an input size divisible by {step}, got {tuple(x.shape[-2:])}"
            )
        feat = self.encoder(x)
        return self.decoder(feat + self.body(feat))

    def forward(self, x: Tensor) -> Tensor:
        return self.out_mask_conv(self._decode(x))

    def forward_train(self, x: Tensor) -> dict[str, Tensor]:
        feat = self._decode(x)
        return {"logits": self.out_mask_conv(feat), "restored_image": self.out_img_conv(feat)}


@register_model(
    ModelCfg(
        paper=PAPER,
        input_size=512,
        label_set=DEFAULT_LABEL_SET,
        tiny={"base_channels": 8, "min_channels": 8, "max_channels": 16, "depth": 2, "num_blocks": 1, "input_size": 32},
        extra={"checkpoints": "parsing_parsenet.pth"},
    )
)
def parsenet(**kwargs) -> ParseNet:
    """PSFRGAN / facexlib ParseNet face parser (21.3M parameters)."""
    return ParseNet(**kwargs)


# ------------------------------------------------------------------------------------ conversion
# release wrapper names -> ours (applied to every key segment)
_RENAMES = {"conv2d": "conv", "shortcut_func": "shortcut"}


def release_to_faceparse_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map release keys (facexlib / PSFRGAN) to :class:`ParseNet` keys: ``.conv2d.`` -> ``.conv.``,
    ``.norm.norm.`` -> ``.bn.``, ``.shortcut_func.`` -> ``.shortcut.``; other keys are kept."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[-3:-1] == ["norm", "norm"]:
            parts = [*parts[:-3], "bn", parts[-1]]
        out[".".join(_RENAMES.get(p, p) for p in parts)] = value
    return out


def _num_classes_of(state: Mapping[str, Tensor]) -> int | None:
    w = state.get("out_mask_conv.conv2d.weight")
    return int(w.shape[0]) if isinstance(w, Tensor) and w.dim() == 4 else None


def _release_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the released network (512 input) in the release's names."""
    with torch.device("meta"):
        model = ParseNet(label_set=f"generic_{num_classes}")
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    inverse = {}
    for key in ours:
        parts = key.split(".")
        if parts[-2] == "bn":
            parts = [*parts[:-2], "norm", "norm", parts[-1]]
        inverse[".".join({"conv": "conv2d", "shortcut": "shortcut_func"}.get(p, p) for p in parts)] = ours[key]
    return inverse


def match_parsenet(state: Mapping[str, Tensor]) -> tuple[bool, str]:
    """Whether ``state`` (already unwrapped by ``read_state_dict``) is a distributed ParseNet checkpoint
    (facexlib ``parsing_parsenet.pth``, PSFRGAN's parse model), judged from key names and shapes; the
    string says why (not)."""
    keys = set(state)
    markers = ("encoder.0.conv2d.weight", "out_mask_conv.conv2d.weight", "out_img_conv.conv2d.weight")
    absent = [m for m in markers if m not in keys]
    if absent:
        return False, f"no ParseNet keys ({', '.join(absent)} missing)"
    k = _num_classes_of(state)
    if k is None or k < 1:
        return False, "out_mask_conv.conv2d.weight is not a convolution weight"
    mismatch = layout_mismatch(state, _release_shapes(k))
    if mismatch:
        return False, (
            "has encoder.*/out_mask_conv.* keys but not the released ParseNet layout (512 input, 4 down/up "
            "steps, 10 body blocks): " + mismatch
        )
    n_body = len({key.split(".")[1] for key in keys if key.startswith("body.")})
    return True, (
        f"has encoder.*.conv2d, body.* ({n_body} blocks), decoder.*, out_img_conv and out_mask_conv keys; "
        f"out_mask_conv {k} classes"
    )


def convert_parsenet(src: str | Path, out_dir: str | Path, label_set: str | LabelSet | None = None) -> ParseNet:
    """Convert a distributed ParseNet checkpoint (facexlib ``parsing_parsenet.pth``; PSFRGAN's
    ``parse_multi_iter_90000.pth`` has the same keys) into a faceparse model folder.

    Read with ``weights_only=True``; keys renamed by :func:`release_to_faceparse_keys` and loaded
    strictly (BatchNorm ``num_batches_tracked`` may be absent). ``label_set``: default
    ``celebamask_hq_official`` for 19 classes, else ``generic_<K>``. Writes ``out_dir`` (config.json +
    model.safetensors) and returns the model in eval mode.
    """
    from faceparse.models.weights import load_weights, read_state_dict

    what = "ParseNet checkpoint"
    state = read_state_dict(src, what=what, hint="pass the local parsing_parsenet.pth")
    ok, why = match_parsenet(state)
    if not ok:
        raise FaceParseError(f"{what} '{src}' is not a ParseNet checkpoint: {why}")
    labels = checkpoint_label_set(label_set, _num_classes_of(state), DEFAULT_LABEL_SET, what, src)
    model = ParseNet(label_set=labels)
    load_weights(model, release_to_faceparse_keys(state), src, what=what, allow_missing=("*.num_batches_tracked",))
    model.registry_name = "parsenet"
    model.eval()
    model.save_pretrained(out_dir)
    return model
