"""segmentation-models-pytorch baselines (U-Net, FPN, DeepLabV3+, SegFormer) as zoo models.

Any smp encoder name works, as does any timm encoder through smp's ``tu-`` prefix
(``encoder="tu-convnext_tiny"``). Encoder weights are never downloaded: pass ``pretrained`` as the
path of a local state-dict file for the encoder.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from faceparse.errors import FaceParseError
from faceparse.labels import LabelSet
from faceparse.models.base import FaceParsingModel, resolve_label_set
from faceparse.registry import ModelCfg, register_model

# Classifier heads of ImageNet checkpoints, which smp encoders drop: present in the file, not an error.
_IMAGENET_HEAD_KEYS = (
    "fc.*",
    "classifier.*",
    "last_linear.*",
    "head.*",
    "model.head.*",
    "model.fc.*",
    "model.classifier.*",
)
_ARCHS = {"unet": "Unet", "fpn": "FPN", "deeplabv3plus": "DeepLabV3Plus", "segformer": "Segformer"}


class SMPModel(FaceParsingModel):
    """Wrapper giving an smp architecture the faceparse model contract.

    Args:
        arch: one of ``unet``, ``fpn``, ``deeplabv3plus``, ``segformer``.
        encoder: smp encoder name or ``tu-<timm name>``.
        label_set: label set (name or LabelSet); its size sets the number of output classes.
        input_size: default square input size.
        pretrained: optional local file with encoder weights (state dict). Loaded strictly: every
            encoder key must be in the file (an ImageNet classifier ``fc.*`` / ``classifier.*`` /
            ``head.*`` / ``last_linear.*`` may be there too); anything else is an error naming the file.
        pretrained_strict: ``False`` opts in to a partial load (what fits loads, the rest is warned
            about; a file fitting under half the keys is still an error).
        arch_kwargs: extra keyword arguments for the smp constructor (e.g. ``decoder_channels``).
    """

    def __init__(
        self,
        arch: str = "unet",
        encoder: str = "resnet34",
        label_set: str | LabelSet = "celebamask_hq",
        input_size: int = 512,
        pretrained: str | None = None,
        arch_kwargs: dict | None = None,
        pretrained_strict: bool = True,
    ) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        if arch not in _ARCHS:
            raise FaceParseError(f"unknown smp architecture '{arch}'; expected one of {sorted(_ARCHS)}")
        self.label_set = resolve_label_set(label_set)
        self.default_input_size = input_size
        self.arch = arch
        try:
            self.net = getattr(smp, _ARCHS[arch])(
                encoder_name=encoder, encoder_weights=None, classes=self.label_set.num_classes, **(arch_kwargs or {})
            )
        except KeyError as exc:
            raise FaceParseError(f"unknown encoder '{encoder}' for smp {arch}: {exc}") from exc
        if pretrained is not None:
            from faceparse.models.weights import load_weights, read_state_dict

            what = f"smp {arch} encoder '{encoder}' weights file (pretrained=)"
            state = read_state_dict(
                pretrained, what=what, hint="pass a local state-dict file of the encoder (nothing is downloaded)"
            )
            own = self.net.encoder.state_dict()
            if encoder.startswith("tu-") and not any(k in own for k in state):
                # a plain timm checkpoint for a ``tu-`` encoder, which holds the timm model as ``model``
                state = {f"model.{k}": v for k, v in state.items()}
            load_weights(
                self.net.encoder,
                state,
                pretrained,
                what=what,
                strict=pretrained_strict,
                allow_unexpected=_IMAGENET_HEAD_KEYS,
            )

    def _supports_grad_checkpointing(self) -> bool:
        return True

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of smp's encoder stages and decoder blocks (see the base class).

        smp has no checkpointing of its own, so the blocks of the encoder and of the decoder
        (ResNet's basic blocks, U-Net's decoder blocks, DeepLabV3+'s ASPP...; see
        :func:`wrap_checkpoint_segments`) get a forward that runs through :meth:`_maybe_checkpoint`;
        single layers (the stem's conv / BN) run as they are.
        """
        super().set_grad_checkpointing(enable)
        if enable:
            wrap_checkpoint_segments(self, self.net.encoder, self.net.decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def _checkpoint_segments(*roots: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks to checkpoint under ``roots`` (an smp encoder and decoder): each composite child;
    a Sequential / ModuleList of composite blocks (ResNet's ``layer1``, MiT's ``block1``, U-Net's
    ``blocks``) gives its blocks instead, so that only each block's input is kept."""

    def composite(m: torch.nn.Module) -> bool:
        return next(m.children(), None) is not None

    out = []
    for root in roots:
        for child in root.children():
            if isinstance(child, (torch.nn.Sequential, torch.nn.ModuleList)):
                items = [m for m in child if composite(m)]
                if items:
                    out += items
                    continue
                if isinstance(child, torch.nn.ModuleList):  # not callable itself
                    continue
            if composite(child):
                out.append(child)
    return out


def wrap_checkpoint_segments(
    owner: FaceParsingModel, *roots: torch.nn.Module, blocks: Sequence[torch.nn.Module] = ()
) -> None:
    """Give the blocks of :func:`_checkpoint_segments` under ``roots``, and ``blocks``, a forward
    through ``owner._maybe_checkpoint`` (once; inert while ``owner``'s checkpointing is off). For
    models built from smp's or torchvision's modules, which have no checkpointing of their own."""
    if getattr(owner, "_segments_wrapped", False):
        return
    for block in [*_checkpoint_segments(*roots), *blocks]:
        block.forward = _CheckpointedForward(owner, block)
    owner._segments_wrapped = True


class _CheckpointedForward:
    """``module``'s own forward run through ``owner._maybe_checkpoint`` (an instance attribute, so
    ``copy.deepcopy`` and pickling keep it pointing at the copied modules)."""

    def __init__(self, owner: FaceParsingModel, module: torch.nn.Module) -> None:
        self.owner, self.module = owner, module

    def __call__(self, *args, **kwargs):
        fn = type(self.module).forward.__get__(self.module)
        return self.owner._maybe_checkpoint(functools.partial(fn, **kwargs) if kwargs else fn, *args)


# --------------------------------------------------------------------------- registry
_SMP_PAPER = "segmentation-models-pytorch baseline"
_SMP_TINY = {"encoder": "resnet18", "input_size": 64}


@register_model(ModelCfg(paper=_SMP_PAPER, tiny=_SMP_TINY))
def unet(**kwargs) -> SMPModel:
    """smp Unet baseline (encoder default 'resnet34')."""
    return SMPModel(arch="unet", **{"encoder": "resnet34", **kwargs})


@register_model(ModelCfg(paper=_SMP_PAPER, tiny=_SMP_TINY))
def fpn(**kwargs) -> SMPModel:
    """smp FPN baseline (encoder default 'resnet34')."""
    return SMPModel(arch="fpn", **{"encoder": "resnet34", **kwargs})


@register_model(ModelCfg(paper=_SMP_PAPER, tiny=_SMP_TINY))
def deeplabv3plus(**kwargs) -> SMPModel:
    """smp DeepLabV3Plus baseline (encoder default 'resnet34')."""
    return SMPModel(arch="deeplabv3plus", **{"encoder": "resnet34", **kwargs})


@register_model(ModelCfg(paper=_SMP_PAPER, tiny=_SMP_TINY))
def segformer(**kwargs) -> SMPModel:
    """smp Segformer baseline (encoder default 'mit_b0')."""
    return SMPModel(arch="segformer", **{"encoder": "mit_b0", **kwargs})
