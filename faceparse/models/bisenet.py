"""BiSeNet face parsing, as distributed by face-parsing.PyTorch (``79999_iter.pth``) and facexlib
(``parsing_bisenet.pth``).

Paper: C. Yu, J. Wang, C. Peng, C. Gao, G. Yu, N. Sang, "BiSeNet: Bilateral Segmentation Network for
Real-time Semantic Segmentation", ECCV 2018. The face-parsing release (github.com/zllrunning/
face-parsing.PyTorch, trained on CelebAMask-HQ) and facexlib's copy of it were read for facts only:
module layout, key names, shapes and the order of operations.

Network (shapes for a 512 x 512 input, 19 classes):

1. Context path: a ResNet-18 (torchvision's, whose key names equal the release's) gives features at
   strides 8 / 16 / 32 (128 / 256 / 512 channels).
2. Global context: the stride-32 map is averaged over space and projected by a 1x1 ConvBNReLU to 128
   channels, then added to every position of the refined stride-32 map.
3. Attention refinement modules (paper Sec. 3.2, Fig. 2(b)) on the stride-32 and stride-16 maps:
   ``f = ConvBNReLU3x3(x)``; ``f * sigmoid(BN(Conv1x1(avgpool(f))))`` (both to 128 channels). Each
   refined map is upsampled (nearest) to the next finer grid and passed through a 3x3 ConvBNReLU;
   the stride-16 branch adds the upsampled stride-32 branch first.
4. Spatial path: as in the face-parsing release, the paper's three-convolution spatial path is
   replaced by the ResNet's stride-8 features (``layer2`` output, 128 channels).
5. Feature fusion module (paper Fig. 2(c)): ``f = ConvBNReLU1x1(cat(spatial, context))`` (256
   channels); ``f + f * sigmoid(Conv1x1(ReLU(Conv1x1(avgpool(f)))))`` with a 4x channel reduction.
6. Heads: ``ConvBNReLU3x3 -> Conv1x1`` to K classes on the fused map (main, 256 mid channels) and on
   the two context maps (auxiliary, 64 mid channels; used in training only), each upsampled
   bilinearly (``align_corners=True``) to the input size.

Module and parameter names equal the release's (``cp.resnet.*``, ``cp.arm16.*``, ``ffm.*``,
``conv_out.*``, ``conv_out16.*``, ``conv_out32.*``), so its checkpoints load without renaming
(:func:`convert_bisenet`). Written by hand apart from the ResNet-18: no library provides the
attention refinement, fusion or head modules with these key names (torchvision's
``Conv2dNormActivation`` stores its layers as ``0``/``1``, not ``conv``/``bn``).

Inputs: RGB, ImageNet mean/std, 512 x 512 in the release (any size works). Classes: the
``celebamask_hq_bisenet`` order (the release's ``prepropess_data.py``: background, skin, l_brow,
r_brow, l_eye, r_eye, eye_g, l_ear, r_ear, ear_r, nose, mouth, u_lip, l_lip, neck, neck_l, cloth,
hair, hat).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceparse.labels import LabelSet
from faceparse.models.base import FaceParsingModel, checkpoint_label_set, resolve_label_set
from faceparse.models.weights import layout_mismatch
from faceparse.registry import ModelCfg, register_model

PAPER = "BiSeNet (ECCV 2018); face-parsing.PyTorch / facexlib release"
DEFAULT_LABEL_SET = "celebamask_hq_bisenet"


class ConvBNReLU(nn.Module):
    """Bias-free convolution, BatchNorm, ReLU (keys ``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _global_avg(x: Tensor) -> Tensor:
    return x.mean(dim=(2, 3), keepdim=True)


class AttentionRefinement(nn.Module):
    """Attention refinement module (BiSeNet, Sec. 3.2 and Fig. 2(b)): channel attention from the
    global average of a 3x3 ConvBNReLU's output."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout, 3)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(_global_avg(feat))))


class FeatureFusion(nn.Module):
    """Feature fusion module (BiSeNet, Sec. 3.3 and Fig. 2(c)): concatenation, 1x1 ConvBNReLU, then a
    squeeze-excitation style reweighting added back to its input."""

    def __init__(self, cin: int, cout: int, reduction: int = 4) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, 1)
        self.conv1 = nn.Conv2d(cout, cout // reduction, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // reduction, cout, 1, bias=False)

    def forward(self, spatial: Tensor, context: Tensor) -> Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(_global_avg(feat)))))
        return feat + feat * atten


class SegHead(nn.Module):
    """``ConvBNReLU3x3 -> Conv1x1`` classifier (keys ``conv``, ``conv_out``)."""

    def __init__(self, cin: int, mid: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid, 3)
        self.conv_out = nn.Conv2d(mid, num_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.conv(x))


def resnet18_trunk() -> nn.Module:
    """torchvision's ResNet-18 without ``avgpool``/``fc`` (random weights; nothing is downloaded)."""
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    del net.avgpool, net.fc
    return net


class ContextPath(nn.Module):
    """ResNet-18 features, global context and the two attention refinement branches.

    Returns the stride-8 ResNet features (the spatial path's stand-in) and the refined context maps
    at strides 8 and 16.
    """

    def __init__(self) -> None:
        super().__init__()
        self.resnet = resnet18_trunk()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128, 3)
        self.conv_head16 = ConvBNReLU(128, 128, 3)
        self.conv_avg = ConvBNReLU(512, 128, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        feat8 = r.layer2(r.layer1(x))
        feat16 = r.layer3(feat8)
        feat32 = r.layer4(feat16)
        context = self.conv_avg(_global_avg(feat32))  # 1 x 1, broadcast over the stride-32 grid
        up32 = F.interpolate(self.arm32(feat32) + context, size=feat16.shape[-2:], mode="nearest")
        up32 = self.conv_head32(up32)
        up16 = F.interpolate(self.arm16(feat16) + up32, size=feat8.shape[-2:], mode="nearest")
        up16 = self.conv_head16(up16)
        return feat8, up16, up32


def _init_kaiming(module: nn.Module) -> None:
    # The release's initialisation of its own convolutions: Kaiming normal with a = 1.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=1)


class BiSeNet(FaceParsingModel):
    """BiSeNet face parser with a ResNet-18 context path (the face-parsing.PyTorch / facexlib network).

    Args:
        label_set: output classes (default ``celebamask_hq_bisenet``, 19 classes in the release's order).
        input_size: default square input size (512, as released).
        backbone_weights: optional local torchvision ResNet-18 ImageNet file (e.g.
            ``resnet18-5c106cde.pth``, how the release starts training); its ``fc.*`` is ignored.
        pretrained: optional local BiSeNet checkpoint in the release's format (``79999_iter.pth``),
            loaded strictly.
        pretrained_strict: ``False`` opts in to a partial load of ``pretrained`` (warned).

    ``forward(x)`` returns the main head's logits ``B x K x H x W``; ``forward_train(x)`` adds the two
    auxiliary heads as ``aux_logits16`` (on the stride-8 context map, the release's ``conv_out16``)
    and ``aux_logits32`` (on the stride-16 map, ``conv_out32``), all at the input size.
    """

    def __init__(
        self,
        label_set: str | LabelSet = DEFAULT_LABEL_SET,
        input_size: int = 512,
        backbone_weights: str | None = None,
        pretrained: str | None = None,
        pretrained_strict: bool = True,
    ) -> None:
        super().__init__()
        self.label_set = resolve_label_set(label_set, default=DEFAULT_LABEL_SET)
        self.default_input_size = input_size
        k = self.label_set.num_classes
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = SegHead(256, 256, k)
        self.conv_out16 = SegHead(128, 64, k)
        self.conv_out32 = SegHead(128, 64, k)
        for part in (self.cp.arm16, self.cp.arm32, self.cp.conv_head32, self.cp.conv_head16, self.cp.conv_avg):
            _init_kaiming(part)
        for part in (self.ffm, self.conv_out, self.conv_out16, self.conv_out32):
            _init_kaiming(part)
        from faceparse.models.weights import load_weights, read_state_dict

        if backbone_weights is not None:
            state = read_state_dict(backbone_weights, what="ResNet-18 weights (backbone_weights=)")
            load_weights(
                self.cp.resnet,
                state,
                backbone_weights,
                what="ResNet-18 weights (backbone_weights=)",
                allow_unexpected=("fc.*",),
            )
        if pretrained is not None:
            state = read_state_dict(pretrained, what="BiSeNet checkpoint (pretrained=)")
            load_weights(
                self,
                state,
                pretrained,
                what="BiSeNet checkpoint (pretrained=)",
                strict=pretrained_strict,
                allow_missing=("*.num_batches_tracked",),
            )

    def _checkpoint_roots(self) -> tuple[tuple[nn.Module, ...], tuple[nn.Module, ...]]:
        """Activation checkpointing (``set_grad_checkpointing``) of each ResNet-18 basic block, the
        fusion module and the three heads."""
        return (self.cp.resnet,), (self.ffm, self.conv_out, self.conv_out16, self.conv_out32)

    def _heads(self, x: Tensor, aux: bool) -> dict[str, Tensor]:
        size = x.shape[-2:]
        feat8, cp8, cp16 = self.cp(x)
        up = lambda t: F.interpolate(t, size=size, mode="bilinear", align_corners=True)
        out = {"logits": up(self.conv_out(self.ffm(feat8, cp8)))}
        if aux:
            out["aux_logits16"] = up(self.conv_out16(cp8))
            out["aux_logits32"] = up(self.conv_out32(cp16))
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self._heads(x, aux=False)["logits"]

    def forward_train(self, x: Tensor) -> dict[str, Tensor]:
        return self._heads(x, aux=True)


@register_model(
    ModelCfg(
        paper=PAPER,
        input_size=512,
        label_set=DEFAULT_LABEL_SET,
        tiny={"input_size": 64},
        extra={"backbone": "resnet18", "checkpoints": "79999_iter.pth, parsing_bisenet.pth"},
    )
)
def bisenet(**kwargs) -> BiSeNet:
    """BiSeNet (ResNet-18) face parser of face-parsing.PyTorch / facexlib (13.3M parameters)."""
    return BiSeNet(**kwargs)


# ------------------------------------------------------------------------------------ conversion
def _expected_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = BiSeNet(label_set=f"generic_{num_classes}")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _num_classes_of(state: Mapping[str, Tensor]) -> int | None:
    w = state.get("conv_out.conv_out.weight")
    return int(w.shape[0]) if isinstance(w, Tensor) and w.dim() == 4 else None


def match_bisenet(state: Mapping[str, Tensor]) -> tuple[bool, str]:
    """Whether ``state`` (already unwrapped by ``read_state_dict``) is a distributed BiSeNet
    face-parsing checkpoint (face-parsing.PyTorch ``79999_iter.pth`` or facexlib
    ``parsing_bisenet.pth``), judged from its key names and shapes; the string says why (not)."""
    keys = set(state)
    markers = ("cp.resnet.conv1.weight", "ffm.convblk.conv.weight", "conv_out.conv_out.weight")
    absent = [m for m in markers if m not in keys]
    if absent:
        return False, f"no BiSeNet keys ({', '.join(absent)} missing)"
    k = _num_classes_of(state)
    if k is None or k < 1:
        return False, "conv_out.conv_out.weight is not a 1x1 convolution weight"
    mismatch = layout_mismatch(state, _expected_shapes(k))
    if mismatch:
        return False, "has cp.resnet.*/ffm.*/conv_out.* keys but not the BiSeNet layout: " + mismatch
    return True, f"has cp.resnet.*, cp.arm16/32.*, ffm.* and conv_out/16/32.* keys; conv_out.conv_out {k} classes"


def convert_bisenet(src: str | Path, out_dir: str | Path, label_set: str | LabelSet | None = None) -> BiSeNet:
    """Convert a distributed BiSeNet face-parsing checkpoint into a faceparse model folder.

    ``src``: ``79999_iter.pth`` (face-parsing.PyTorch) or ``parsing_bisenet.pth`` (facexlib), read with
    ``weights_only=True``. ``label_set``: default ``celebamask_hq_bisenet`` for 19 classes, else
    ``generic_<K>``. Keys load unchanged (the model uses the release's names), strictly; a file
    without BatchNorm ``num_batches_tracked`` counters (older PyTorch) is accepted. Writes
    ``out_dir`` (config.json + model.safetensors) and returns the model in eval mode.
    """
    from faceparse.errors import FaceParseError
    from faceparse.models.weights import load_weights, read_state_dict

    what = "BiSeNet checkpoint"
    state = read_state_dict(src, what=what, hint="pass the local 79999_iter.pth or parsing_bisenet.pth")
    ok, why = match_bisenet(state)
    if not ok:
        raise FaceParseError(f"{what} '{src}' is not a BiSeNet face-parsing checkpoint: {why}")
    labels = checkpoint_label_set(label_set, _num_classes_of(state), DEFAULT_LABEL_SET, what, src)
    model = BiSeNet(label_set=labels)
    load_weights(model, state, src, what=what, allow_missing=("*.num_batches_tracked",))
    model.registry_name = "bisenet"
    model.eval()
    model.save_pretrained(out_dir)
    return model
