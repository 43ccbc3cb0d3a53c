"""segmentation-models-pytorch baselines (U-Net, FPN, DeepLabV3+, SegFormer) as zoo models.

Any smp encoder name works, as does any timm encoder through smp's ``tu-`` prefix
(``encoder="tu-convnext_tiny"``). Encoder weights are never downloaded: pass ``pretrained`` as the
path of a local state-dict file for the encoder.
"""

from __future__ import annotations

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

    def _checkpoint_roots(self) -> tuple[tuple[torch.nn.Module, ...], tuple[torch.nn.Module, ...]]:
        """Activation checkpointing (``set_grad_checkpointing``) of smp's encoder stages and decoder
        blocks (ResNet's basic blocks, U-Net's decoder blocks, DeepLabV3+'s ASPP...); single layers
        (the stem's conv / BN) run as they are."""
        return (self.net.encoder, self.net.decoder), ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


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
