"""RTFormer (Wang et al., "RTFormer: Efficient Design for Real-Time Semantic Segmentation with
Transformer", NeurIPS 2022), the segmentation module (SEGM) of Mask-FPAN (Li et al., 2023, Sec. III-E).

Written by hand in PyTorch (no library provides RTFormer). Layer shapes follow the paper and the
public PaddleSeg implementation (facts only: channel widths, pooling sizes, where normalisations
sit), so that the parameter counts match the official model:

* stem: two 3x3 stride-2 conv + BN + ReLU (c channels, 1/4);
* BasicBlock stages c@1/4, 2c@1/8, 4c@1/16 and a high-resolution BasicBlock stage 2c@1/8 fed by
  the 1/8 features plus the compressed 1/16 features;
* two RTFormer blocks (``RTFormerBlock``): low-resolution branch with GPU-friendly attention
  (external attention with learnable key/value memories and grouped double normalisation,
  paper Eq. 3-4), high-resolution branch with cross-resolution attention whose keys/values come
  from the low branch pooled to 12x12 (paper Eq. 5); the first block takes the low branch from
  4c@1/16 to 8c@1/32;
* DAPPM (8c -> 128 -> 2c) with average pools 5/2/2, 9/4/4, 17/8/8 and a global pool;
* segmentation head BN-ReLU-3x3 conv-BN-ReLU-1x1 conv at 1/8 on concat(high, DAPPM);
* auxiliary head on the high-resolution 1/8 features of stage 3 (training only; loss weight 0.4).

Variants (19 classes): Slim c=32, head 64, injection in both blocks: 5.40M params (5.37M without
the auxiliary head); Base c=64, head 128, injection in the first block only: 17.92M (17.77M).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from faceparse.labels import LabelSet
from faceparse.models.base import FaceParsingModel, resolve_label_set
from faceparse.registry import ModelCfg, register_model


def _bn(c: int, eps: float = 1e-5) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=eps)


def _conv(cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, bias: bool = False):
    return nn.Conv2d(cin, cout, k, stride, padding, bias=bias)


def _up(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class BasicBlock(nn.Module):
    """ResNet basic block; ``no_relu`` drops the final ReLU (last block of an RTFormer stage)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, no_relu: bool = False):
        super().__init__()
        self.conv1 = _conv(cin, cout, 3, stride, 1)
        self.bn1 = _bn(cout)
        self.conv2 = _conv(cout, cout, 3, 1, 1)
        self.bn2 = _bn(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(_conv(cin, cout, 1, stride), _bn(cout))
        self.no_relu = no_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out = out + (x if self.downsample is None else self.downsample(x))
        return out if self.no_relu else F.relu(out)


def _stage(cin: int, cout: int, blocks: int, stride: int = 1) -> nn.Sequential:
    layers = [BasicBlock(cin, cout, stride, no_relu=False)]
    for i in range(1, blocks):
        layers.append(BasicBlock(cout, cout, 1, no_relu=i == blocks - 1))
    return nn.Sequential(*layers)


class ConvMLP(nn.Module):
    """Feed-forward part of an RTFormer block: BN, 3x3 conv, GELU, 3x3 conv."""

    def __init__(self, channels: int, drop: float = 0.0):
        super().__init__()
        self.norm = _bn(channels, eps=1e-6)
        self.conv1 = _conv(channels, channels, 3, 1, 1, bias=True)
        self.conv2 = _conv(channels, channels, 3, 1, 1, bias=True)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(F.gelu(self.conv1(self.norm(x))))
        return self.drop(self.conv2(x))


class GPUFriendlyAttention(nn.Module):
    """External attention with learnable key/value memories (RTFormer paper, Eq. 3-4).

    ``attn = GDN(x K^T)``, ``out = attn V`` where K (M x C_in) and V (C_out x M) are learnable
    1x1 "memories" of M = ``memory`` slots. Grouped double normalisation (GDN) splits the M slots
    into ``num_heads`` groups, applies a softmax over the spatial positions and then an L1
    normalisation over the slots of each group. When input and output widths differ the key
    projection has stride 2 (the first block takes the low branch from 1/16 to 1/32).
    """

    def __init__(self, cin: int, cout: int, memory: int, num_heads: int = 8):
        super().__init__()
        if memory % num_heads:
            raise ValueError(f"memory ({memory}) must be divisible by num_heads ({num_heads})")
        self.memory, self.num_heads = memory, num_heads
        self.stride = 1 if cin == cout else 2
        self.norm = _bn(cin)
        self.k = nn.Parameter(torch.randn(memory, cin, 1, 1) * 1e-3)
        self.v = nn.Parameter(torch.randn(cout, memory, 1, 1) * 1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(self.norm(x), self.k, stride=self.stride)
        b, m, h, w = x.shape
        a = x.reshape(b, self.num_heads, m // self.num_heads, h * w).softmax(dim=-1)
        a = a / (a.sum(dim=2, keepdim=True) + 1e-6)
        return F.conv2d(a.reshape(b, m, h, w), self.v)


class CrossResolutionAttention(nn.Module):
    """Cross-resolution attention (RTFormer paper, Eq. 5): per-sample keys/values computed from
    the low-resolution branch (pooled to ``cross_size`` x ``cross_size``) attend the
    high-resolution features; softmax over the ``cross_size**2`` tokens, scaled by 1/sqrt(M)."""

    def __init__(self, channels: int, tokens: int):
        super().__init__()
        self.tokens = tokens
        self.norm = _bn(channels)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # x: B x C x H x W; k: B x T x C; v: B x C x T
        b, c, h, w = x.shape
        q = self.norm(x).flatten(2)  # B x C x HW
        a = torch.bmm(k, q) * self.tokens**-0.5  # B x T x HW
        a = a.softmax(dim=1)
        return torch.bmm(v, a).reshape(b, c, h, w)


class AdaptiveMaxPool(nn.Module):
    """``adaptive_max_pool2d`` to ``size`` x ``size``; while tracing/exporting it is computed as
    separable max over the same row and column bins (start ``floor(i n / s)``, end
    ``ceil((i + 1) n / s)``), which ONNX supports for any input size, unlike the native op."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            return F.adaptive_max_pool2d(x, self.size)
        s = self.size

        def bins(n: int) -> list[tuple[int, int]]:
            return [((i * n) // s, -((-(i + 1) * n) // s)) for i in range(s)]

        h, w = int(x.shape[-2]), int(x.shape[-1])
        rows = torch.stack([x[:, :, a:b].amax(dim=2) for a, b in bins(h)], dim=2)
        return torch.stack([rows[..., a:b].amax(dim=3) for a, b in bins(w)], dim=3)


class RTFormerBlock(nn.Module):
    """Dual-resolution RTFormer block: low branch (GPU-friendly attention + MLP), compression of
    the low branch into the high one, high branch (cross-resolution attention + MLP), and an
    optional injection of the high branch back into the low one."""

    def __init__(
        self,
        c_high: int,
        c_low_in: int,
        c_low_out: int,
        num_heads: int = 8,
        drop: float = 0.0,
        drop_path: float = 0.0,
        injection: bool = True,
        cross_size: int = 12,
    ):
        super().__init__()
        self.cross_size = cross_size
        self.shortcut_low = None
        if c_low_in != c_low_out:
            self.shortcut_low = nn.Sequential(_bn(c_low_in), _conv(c_low_in, c_low_out, 1, 2))
        self.attn_low = GPUFriendlyAttention(c_low_in, c_low_out, c_low_out, num_heads)
        self.mlp_low = ConvMLP(c_low_out, drop)
        from timm.layers import DropPath  # imported here: listing the zoo must not import timm

        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.compression = nn.Sequential(_bn(c_low_out), nn.ReLU(), _conv(c_low_out, c_high, 1))
        self.attn_high = CrossResolutionAttention(c_high, cross_size * cross_size)
        self.mlp_high = ConvMLP(c_high, drop)
        self.cross_kv = nn.Sequential(
            _bn(c_low_out),
            AdaptiveMaxPool(cross_size),
            _conv(c_low_out, 2 * c_high, 1),
        )
        self.down = None
        if injection:
            self.down = nn.Sequential(
                _bn(c_high),
                nn.ReLU(),
                _conv(c_high, c_low_out // 2, 3, 2, 1),
                _bn(c_low_out // 2),
                nn.ReLU(),
                _conv(c_low_out // 2, c_low_out, 3, 2, 1),
            )

    def forward(self, x_h: torch.Tensor, x_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        res = x_l if self.shortcut_low is None else self.shortcut_low(x_l)
        x_l = res + self.drop_path(self.attn_low(x_l))
        x_l = x_l + self.drop_path(self.mlp_low(x_l))
        x_h = x_h + _up(self.compression(x_l), x_h.shape[2:])
        k, v = self.cross_kv(x_l).flatten(2).chunk(2, dim=1)  # B x C x T each
        x_h = x_h + self.drop_path(self.attn_high(x_h, k.transpose(1, 2), v))
        x_h = x_h + self.drop_path(self.mlp_high(x_h))
        if self.down is not None:
            x_l = x_l + self.down(x_h)
        return x_h, x_l


class DAPPM(nn.Module):
    """Deep aggregation pyramid pooling module (DDRNet) as used by RTFormer: average pools
    (5, 2, 2), (9, 4, 4), (17, 8, 8) and a global pool, hierarchical 3x3 fusion."""

    def __init__(self, cin: int, mid: int, cout: int):
        super().__init__()

        def bn_relu_conv(ci: int, co: int, k: int = 1) -> list[nn.Module]:
            return [_bn(ci), nn.ReLU(), _conv(ci, co, k, 1, k // 2)]

        self.scale0 = nn.Sequential(*bn_relu_conv(cin, mid))
        self.scales = nn.ModuleList(
            [
                nn.Sequential(nn.AvgPool2d(k, s, p), *bn_relu_conv(cin, mid))
                for k, s, p in ((5, 2, 2), (9, 4, 4), (17, 8, 8))
            ]
            + [nn.Sequential(nn.AdaptiveAvgPool2d(1), *bn_relu_conv(cin, mid))]
        )
        self.process = nn.ModuleList([nn.Sequential(*bn_relu_conv(mid, mid, 3)) for _ in range(4)])
        self.compression = nn.Sequential(*bn_relu_conv(mid * 5, cout))
        self.shortcut = nn.Sequential(*bn_relu_conv(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        feats = [self.scale0(x)]
        for scale, proc in zip(self.scales, self.process):
            feats.append(proc(_up(scale(x), size) + feats[-1]))
        return self.compression(torch.cat(feats, dim=1)) + self.shortcut(x)


class SegHead(nn.Module):
    """BN-ReLU-3x3 conv-BN-ReLU-1x1 conv (with bias) head."""

    def __init__(self, cin: int, mid: int, num_classes: int):
        super().__init__()
        self.head = nn.Sequential(
            _bn(cin),
            nn.ReLU(),
            _conv(cin, mid, 3, 1, 1),
            _bn(mid),
            nn.ReLU(),
            _conv(mid, num_classes, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


class RTFormerNet(nn.Module):
    """The RTFormer network; returns (main logits, aux logits or None) at 1/8 resolution."""

    def __init__(
        self,
        num_classes: int,
        base_channels: int = 64,
        head_channels: int = 128,
        spp_channels: int = 128,
        num_heads: int = 8,
        layer_nums: Sequence[int] = (2, 2, 2, 2),
        use_injection: Sequence[bool] = (True, True),
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        cross_size: int = 12,
        use_aux_head: bool = True,
        in_channels: int = 3,
    ):
        super().__init__()
        c = base_channels
        self.stem = nn.Sequential(
            _conv(in_channels, c, 3, 2, 1, bias=True),
            _bn(c),
            nn.ReLU(),
            _conv(c, c, 3, 2, 1, bias=True),
            _bn(c),
            nn.ReLU(),
        )
        self.layer1 = _stage(c, c, layer_nums[0])
        self.layer2 = _stage(c, 2 * c, layer_nums[1], stride=2)
        self.layer3 = _stage(2 * c, 4 * c, layer_nums[2], stride=2)
        self.layer3_high = _stage(2 * c, 2 * c, 1)
        self.compression3 = nn.Sequential(_bn(4 * c), nn.ReLU(), _conv(4 * c, 2 * c, 1))
        kw = {"num_heads": num_heads, "drop": drop_rate, "drop_path": drop_path_rate}
        self.layer4 = RTFormerBlock(2 * c, 4 * c, 8 * c, injection=use_injection[0], cross_size=cross_size, **kw)
        self.layer5 = RTFormerBlock(2 * c, 8 * c, 8 * c, injection=use_injection[1], cross_size=cross_size, **kw)
        self.spp = DAPPM(8 * c, spp_channels, 2 * c)
        self.seghead = SegHead(4 * c, 2 * head_channels, num_classes)
        self.aux_head = SegHead(2 * c, head_channels, num_classes) if use_aux_head else None
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming-normal convs, unit BN, small-normal attention memories (as in the paper's code).
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                if ".cross_kv." in f".{name}.":
                    nn.init.trunc_normal_(m.weight, std=0.02)
                else:
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(
        self, x: torch.Tensor, run: Callable[..., Any] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``run(fn, *args)`` calls each stage (``RTFormer`` passes its ``_maybe_checkpoint``)."""
        run = run or _call
        x1 = run(lambda t: self.layer1(self.stem(t)), x)  # c, 1/4
        x2 = run(self.layer2, F.relu(x1))  # 2c, 1/8
        x3 = run(self.layer3, F.relu(x2))  # 4c, 1/16
        x3h = x2 + _up(self.compression3(x3), x2.shape[2:])
        x3h = run(self.layer3_high, F.relu(x3h))  # 2c, 1/8
        x4h, x4l = run(self.layer4, F.relu(x3h), F.relu(x3))  # 2c 1/8, 8c 1/32
        x5h, x5l = run(self.layer5, F.relu(x4h), F.relu(x4l))  # 2c 1/8, 8c 1/32
        x6 = _up(run(self.spp, x5l), x5h.shape[2:])
        out = run(lambda a, b: self.seghead(torch.cat([a, b], dim=1)), x5h, x6)
        aux = self.aux_head(x3h) if (self.aux_head is not None and self.training) else None
        return out, aux


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


_VARIANTS = {
    "slim": {"base_channels": 32, "head_channels": 64, "use_injection": (True, True)},
    "base": {"base_channels": 64, "head_channels": 128, "use_injection": (True, False)},
}


class RTFormer(FaceParsingModel):
    """RTFormer as a faceparse model (Mask-FPAN's segmentation module).

    ``model(x)`` returns the main head's logits upsampled (bilinear) to the input size;
    ``forward_train(x)`` adds ``aux_logits`` (the auxiliary head on the 1/8 high-resolution
    features, which the official recipe weights 0.4) when ``use_aux_head`` is true.

    Args:
        variant: ``slim`` or ``base``; sets ``base_channels``, ``head_channels`` and
            ``use_injection`` unless given explicitly.
        label_set: label set (name or LabelSet); its size sets the number of output classes.
        base_channels: c, the width of the 1/4 stage (32 slim, 64 base).
        head_channels: width of the auxiliary head (the main head uses twice that).
        spp_channels: DAPPM inner width (128).
        num_heads: groups of the grouped double normalisation (8).
        layer_nums: BasicBlocks in the three convolutional stages (+ one unused entry, as in
            the official configuration).
        use_injection: whether each RTFormer block injects the high branch into the low one.
        drop_rate, drop_path_rate: dropout in the MLPs and stochastic depth (0.0, 0.2).
        cross_size: the low branch is pooled to cross_size x cross_size keys/values (12).
        use_aux_head: build the auxiliary head (training only; not used by ``forward``).
        input_size: default square input size.
        pretrained: optional local file with a (PyTorch or safetensors) state dict for this model,
            loaded strictly (a file saved without the auxiliary head may lack ``net.aux_head.*``);
            any other missing, unexpected or wrongly shaped key is an error naming the file.
        pretrained_strict: ``False`` opts in to a partial load (warned; under half the keys fitting
            is still an error).
    """

    def __init__(
        self,
        variant: str = "slim",
        label_set: str | LabelSet = "celebamask_hq",
        base_channels: int | None = None,
        head_channels: int | None = None,
        spp_channels: int = 128,
        num_heads: int = 8,
        layer_nums: Sequence[int] = (2, 2, 2, 2),
        use_injection: Sequence[bool] | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        cross_size: int = 12,
        use_aux_head: bool = True,
        input_size: int = 512,
        pretrained: str | None = None,
        pretrained_strict: bool = True,
    ) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"unknown RTFormer variant '{variant}'; expected one of {sorted(_VARIANTS)}")
        v = _VARIANTS[variant]
        self.label_set = resolve_label_set(label_set)
        self.default_input_size = input_size
        self.net = RTFormerNet(
            self.label_set.num_classes,
            base_channels=base_channels or v["base_channels"],
            head_channels=head_channels or v["head_channels"],
            spp_channels=spp_channels,
            num_heads=num_heads,
            layer_nums=layer_nums,
            use_injection=use_injection if use_injection is not None else v["use_injection"],
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
            cross_size=cross_size,
            use_aux_head=use_aux_head,
        )
        if pretrained is not None:
            self.load_weights(pretrained, strict=pretrained_strict)

    def load_weights(self, path: str, strict: bool = True) -> None:
        """Load a local state dict (``.safetensors`` or a torch file) into this model (strict by default)."""
        from faceparse.models.weights import load_weights_file

        load_weights_file(
            self,
            path,
            what="RTFormer weights file (pretrained=)",
            hint="pass a local state-dict file (nothing is downloaded)",
            strict=strict,
            allow_missing=("net.aux_head.*",),  # training-only head: a deployment file may omit it
            allow_unexpected=("net.aux_head.*",),  # and a model built with use_aux_head=False ignores it
        )

    def _supports_grad_checkpointing(self) -> bool:
        return True  # every stage of RTFormerNet.forward is a checkpointed segment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.net(x, self._maybe_checkpoint)
        return _up(out, x.shape[-2:])

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out, aux = self.net(x, self._maybe_checkpoint)
        result = {"logits": _up(out, x.shape[-2:])}
        if aux is not None:
            result["aux_logits"] = _up(aux, x.shape[-2:])
        return result


_RTFORMER_CFG = ModelCfg(
    paper="RTFormer (NeurIPS 2022); Mask-FPAN SEGM",
    input_size=512,
    label_set="celebamask_hq",
    tiny={"input_size": 64},
)


@register_model(_RTFORMER_CFG)
def rtformer_slim(**kwargs) -> RTFormer:
    """RTFormer-Slim (c=32, head 64): 5.40M parameters at 19 classes (5.37M without aux head)."""
    return RTFormer(variant="slim", **kwargs)


@register_model(_RTFORMER_CFG)
def rtformer_base(**kwargs) -> RTFormer:
    """RTFormer-Base (c=64, head 128): 17.92M parameters at 19 classes (17.77M without aux head)."""
    return RTFormer(variant="base", **kwargs)
