"""RetinaFace (MobileNet-0.25 and ResNet-50), the face detector of facer and facexlib, from local checkpoints.

Deng et al., "RetinaFace: Single-shot Multi-level Face Localisation in the Wild", CVPR 2020: a
three-level feature pyramid (strides 8, 16, 32), an SSH context module per level (Najibi et al.,
"SSH: Single Stage Headless Face Detector", ICCV 2017) and per-anchor heads for face/background,
box offsets and five landmark offsets. This is faceparse's own implementation of the network as
the widely distributed PyTorch checkpoints define it (biubug6/Pytorch_Retinaface's
``mobilenet0.25_Final.pth`` and ``Resnet50_Final.pth``; facexlib's ``detection_Resnet50_Final.pth``
and ``detection_mobilenet0.25_Final.pth`` use the same key names), with:

- :func:`convert_retinaface_state_dict`: distributed key names -> this module's names (the
  ``module.`` prefix of DataParallel checkpoints is stripped by
  :func:`faceparse.models.weights.read_state_dict`);
- :func:`prior_boxes`, :func:`decode_boxes`, :func:`decode_landmarks`: the SSD-style anchors and the
  offset decoding with variances (0.1, 0.2) of the reference implementation;
- :class:`RetinaFaceDetector`: preprocessing as in the reference (BGR, mean (104, 117, 123)
  subtracted, no scaling, original size), score threshold, top-k, NMS (``torchvision.ops.nms``
  with the reference's inclusive ``+1`` pixel areas), keep-top-k.

Parity with the reference code (random weights, scikit-image's astronaut photo):
``benchmarks/retinaface_parity.py`` -> ``benchmarks/results/retinaface_parity.md``.

Landmark order of the checkpoints: left eye, right eye, nose tip, left mouth corner, right mouth
corner in image left/right (the WIDER FACE landmark annotations), the order of
:data:`faceparse.detection.base.LANDMARK_NAMES`.
"""

from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from faceparse.detection.base import Face, FaceDetector
from faceparse.errors import FaceParseError, MissingWeightsError

NETWORKS = ("mobilenet0.25", "resnet50")
#: other spellings of the networks (the reference's ``--network mobile0.25``, its config names)
NETWORK_ALIASES = {"mobile0.25": "mobilenet0.25", "mobilenet": "mobilenet0.25", "Resnet50": "resnet50"}
#: anchor sizes (pixels) per pyramid level and the levels' strides, as in the reference config
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCES = (0.1, 0.2)
#: BGR mean subtracted from 0-255 pixels (no scaling), as in the reference
BGR_MEAN = (104.0, 117.0, 123.0)


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1, leaky: float | None = 0.0, groups: int = 1) -> nn.Module:
    """Conv (no bias) + BatchNorm (+ LeakyReLU with slope ``leaky``; None: no activation)."""
    from torchvision.ops import Conv2dNormActivation

    act = None if leaky is None else partial(nn.LeakyReLU, negative_slope=leaky)
    return Conv2dNormActivation(cin, cout, k, stride, padding=k // 2, groups=groups, activation_layer=act)


class _DepthwiseSeparable(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int, leaky: float = 0.1) -> None:
        super().__init__()
        self.dw = _cbr(cin, cin, 3, stride, leaky, groups=cin)
        self.pw = _cbr(cin, cout, 1, 1, leaky)


class MobileNetV1x025(nn.Module):
    """MobileNetV1 at width 0.25 (Howard et al., 2017) as RetinaFace's light body, returning the
    stride-8/16/32 features (64, 128, 256 channels). Written here: timm/torchvision have no
    MobileNetV1 with this layout (first conv 8 channels, LeakyReLU 0.1, three stages)."""

    def __init__(self) -> None:
        super().__init__()
        dw = _DepthwiseSeparable
        self.stage1 = nn.Sequential(
            _cbr(3, 8, 3, 2, 0.1), dw(8, 16, 1), dw(16, 32, 2), dw(32, 32, 1), dw(32, 64, 2), dw(64, 64, 1)
        )
        self.stage2 = nn.Sequential(dw(64, 128, 2), *[dw(128, 128, 1) for _ in range(5)])
        self.stage3 = nn.Sequential(dw(128, 256, 2), dw(256, 256, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage1(x)
        c4 = self.stage2(c3)
        return [c3, c4, self.stage3(c4)]


class _ResNet50Body(nn.Module):
    """torchvision's ResNet-50 (no pretrained weights) returning layer2/3/4 (512, 1024, 2048 channels)."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50
        from torchvision.models._utils import IntermediateLayerGetter

        self.body = IntermediateLayerGetter(resnet50(weights=None), {"layer2": "0", "layer3": "1", "layer4": "2"})

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x).values())


class _FPN(nn.Module):
    """Top-down feature pyramid: 1x1 laterals, nearest upsampling + add, 3x3 smoothing of levels 0-1."""

    def __init__(self, in_channels: tuple[int, int, int], out: int, leaky: float) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(_cbr(c, out, 1, 1, leaky) for c in in_channels)
        self.smooth = nn.ModuleList(_cbr(out, out, 3, 1, leaky) for _ in range(2))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p = [lat(f) for lat, f in zip(self.lateral, feats)]
        for i in (1, 0):
            p[i] = self.smooth[i](p[i] + F.interpolate(p[i + 1], size=p[i].shape[-2:], mode="nearest"))
        return p


class _SSH(nn.Module):
    """SSH context module (Najibi et al., ICCV 2017, Fig. 4): 3x3, stacked 5x5-equivalent and
    7x7-equivalent branches (out/2, out/4, out/4 channels), concatenated, ReLU."""

    def __init__(self, cin: int, out: int, leaky: float) -> None:
        super().__init__()
        self.branch3 = _cbr(cin, out // 2, 3, 1, None)
        self.branch5a = _cbr(cin, out // 4, 3, 1, leaky)
        self.branch5b = _cbr(out // 4, out // 4, 3, 1, None)
        self.branch7a = _cbr(out // 4, out // 4, 3, 1, leaky)
        self.branch7b = _cbr(out // 4, out // 4, 3, 1, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a5 = self.branch5a(x)
        return F.relu(torch.cat([self.branch3(x), self.branch5b(a5), self.branch7b(self.branch7a(a5))], 1))


class RetinaFaceNet(nn.Module):
    """RetinaFace network. ``forward`` returns ``(loc B x N x 4, scores B x N x 2 (softmax), landmarks
    B x N x 10)`` for the N priors of :func:`prior_boxes` (level, row, column, anchor order).

    Args:
        network: ``"mobilenet0.25"`` (64-channel pyramid) or ``"resnet50"`` (256-channel pyramid).
    """

    def __init__(self, network: str = "mobilenet0.25", anchors: int = 2) -> None:
        super().__init__()
        network = NETWORK_ALIASES.get(network, network)
        if network not in NETWORKS:
            raise FaceParseError(f"RetinaFace network '{network}'; expected one of {', '.join(NETWORKS)}")
        self.network = network
        if network == "mobilenet0.25":
            self.body: nn.Module = MobileNetV1x025()
            in_channels, out = (64, 128, 256), 64
        else:
            self.body = _ResNet50Body()
            in_channels, out = (512, 1024, 2048), 256
        leaky = 0.1 if out <= 64 else 0.0  # the reference's rule for the pyramid and context modules
        self.fpn = _FPN(in_channels, out, leaky)
        self.context = nn.ModuleList(_SSH(out, out, leaky) for _ in range(3))
        self.cls_head = nn.ModuleList(nn.Conv2d(out, anchors * 2, 1) for _ in range(3))
        self.box_head = nn.ModuleList(nn.Conv2d(out, anchors * 4, 1) for _ in range(3))
        self.landmark_head = nn.ModuleList(nn.Conv2d(out, anchors * 10, 1) for _ in range(3))

    @staticmethod
    def _flat(x: torch.Tensor, k: int) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, k)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = [ctx(p) for ctx, p in zip(self.context, self.fpn(self.body(x)))]
        loc = torch.cat([self._flat(h(f), 4) for h, f in zip(self.box_head, feats)], 1)
        cls = torch.cat([self._flat(h(f), 2) for h, f in zip(self.cls_head, feats)], 1)
        lm = torch.cat([self._flat(h(f), 10) for h, f in zip(self.landmark_head, feats)], 1)
        return loc, cls.softmax(-1), lm


# ---------------------------------------------------------------------------- checkpoint conversion
def _minus1(m: re.Match[str]) -> str:
    return str(int(m.group(1)) - 1)


#: (pattern on distributed keys, replacement); the first match wins; keys matching none (already
#: converted ones included) pass through unchanged.
_RENAMES: list[tuple[re.Pattern[str], Any]] = [
    # MobileNet-0.25: stage1.0 is a plain conv-bn-act (kept); the other blocks are flat Sequentials
    # (0 dw conv, 1 bn, 2 act, 3 pw conv, 4 bn, 5 act) -> .dw.{0,1} / .pw.{0,1}
    (re.compile(r"^body\.stage1\.0\.(\d+\..+)$"), lambda m: f"body.stage1.0.{m.group(1)}"),
    (
        re.compile(r"^body\.(stage[123])\.(\d+)\.([0134])\.(.+)$"),
        lambda m: (
            f"body.{m.group(1)}.{m.group(2)}.{'dw' if m.group(3) in '01' else 'pw'}.{int(m.group(3)) % 3}.{m.group(4)}"
        ),
    ),
    # ResNet-50: torchvision names under IntermediateLayerGetter, one level deeper here
    (re.compile(r"^body\.((?:conv1|bn1|layer[1-4])\..+)$"), lambda m: f"body.body.{m.group(1)}"),
    (re.compile(r"^fpn\.output([123])\.(.+)$"), lambda m: f"fpn.lateral.{_minus1(m)}.{m.group(2)}"),
    (re.compile(r"^fpn\.merge([12])\.(.+)$"), lambda m: f"fpn.smooth.{_minus1(m)}.{m.group(2)}"),
]
_SSH_BRANCHES = {"conv3X3": "branch3", "conv5X5_1": "branch5a", "conv5X5_2": "branch5b"}
_SSH_BRANCHES |= {"conv7X7_2": "branch7a", "conv7x7_3": "branch7b"}
_RENAMES.append(
    (
        re.compile(r"^ssh([123])\.(conv3X3|conv5X5_1|conv5X5_2|conv7X7_2|conv7x7_3)\.(.+)$"),
        lambda m: f"context.{_minus1(m)}.{_SSH_BRANCHES[m.group(2)]}.{m.group(3)}",
    )
)
_HEADS = {"ClassHead": "cls_head", "BboxHead": "box_head", "LandmarkHead": "landmark_head"}
_RENAMES.append(
    (
        re.compile(r"^(ClassHead|BboxHead|LandmarkHead)\.(\d)\.conv1x1\.(.+)$"),
        lambda m: f"{_HEADS[m.group(1)]}.{m.group(2)}.{m.group(3)}",
    )
)


def convert_retinaface_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Distributed RetinaFace keys (biubug6 and facexlib use the same names) -> :class:`RetinaFaceNet`'s.

    A ``module.`` prefix (DataParallel) is stripped. Keys that already have this module's names pass
    through unchanged (a converted file loads too); unknown keys are kept so that
    :func:`~faceparse.models.weights.load_weights` reports them.
    """
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        for pat, rep in _RENAMES:
            m = pat.match(key)
            if m:
                key = rep(m)
                break
        out[key] = value
    return out


def guess_network(state: dict[str, torch.Tensor]) -> str:
    """``"mobilenet0.25"`` or ``"resnet50"`` from the keys of a (distributed or converted) state dict."""
    keys = [k.removeprefix("module.") for k in state]
    if any(k.startswith("body.stage1.") for k in keys):
        return "mobilenet0.25"
    if any(k.startswith(("body.layer1.", "body.body.layer1.")) for k in keys):
        return "resnet50"
    raise FaceParseError(
        "cannot tell the RetinaFace network from this state dict (no body.stage1.* or body.layer1.* keys); "
        "pass network='mobilenet0.25' or 'resnet50'"
    )


def load_retinaface(path: str | Path, network: str | None = None) -> RetinaFaceNet:
    """Build :class:`RetinaFaceNet` and load a local checkpoint (distributed or converted names).

    Strict: every key must fit (BatchNorm ``num_batches_tracked`` counters may be absent).
    """
    from faceparse.models.weights import load_weights, read_state_dict

    what = "RetinaFace weights file"
    hint = (
        "pass the path of a local mobilenet0.25_Final.pth / Resnet50_Final.pth (biubug6/Pytorch_Retinaface) or "
        "facexlib's detection_Resnet50_Final.pth; nothing is downloaded"
    )
    state = read_state_dict(path, what=what, hint=hint)
    network = network or guess_network(state)
    net = RetinaFaceNet(network)
    load_weights(net, convert_retinaface_state_dict(state), path, what=what, allow_missing=("*.num_batches_tracked",))
    return net.eval()


# ---------------------------------------------------------------------------- priors and decoding
def prior_boxes(height: int, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Anchors ``N x 4`` ``(cx, cy, w, h)`` normalised by the image size, in the network's output order.

    Per level (stride 8, 16, 32; feature map ``ceil(H / s) x ceil(W / s)``), per row, per column, per
    anchor size: centre ``((j + 0.5) s / W, (i + 0.5) s / H)``, size ``(m / W, m / H)`` for ``m`` in
    :data:`MIN_SIZES` (RetinaFace, Deng et al. 2020, Sec. 4.2: anchors of 16-512 px on P2-P6, here
    the three-level layout of the distributed checkpoints). Computed in float64 then cast, like the
    reference's Python floats.
    """
    out = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        cy = (torch.arange(fh, dtype=torch.float64) + 0.5) * step / height
        cx = (torch.arange(fw, dtype=torch.float64) + 0.5) * step / width
        gy, gx = torch.meshgrid(cy, cx, indexing="ij")
        per_size = [
            torch.stack([gx, gy, torch.full_like(gx, m / width), torch.full_like(gx, m / height)], -1) for m in sizes
        ]
        out.append(torch.stack(per_size, 2).reshape(-1, 4))
    return torch.cat(out).to(dtype)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float] = VARIANCES) -> torch.Tensor:
    """Box offsets -> ``(x0, y0, x1, y1)`` (normalised): centre ``c_p + l_xy v_0 s_p``, size
    ``s_p exp(l_wh v_1)`` (the SSD encoding, Liu et al., "SSD", ECCV 2016, Sec. 2.2, with variances)."""
    centre = priors[:, :2] + loc[:, :2] * variances[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[:, 2:] * variances[1])
    x0y0 = centre - size / 2
    return torch.cat([x0y0, x0y0 + size], 1)


def decode_landmarks(
    offsets: torch.Tensor, priors: torch.Tensor, variances: tuple[float, float] = VARIANCES
) -> torch.Tensor:
    """Landmark offsets ``N x 10`` -> points ``N x 10`` (normalised): ``c_p + o v_0 s_p`` per point."""
    o = offsets.reshape(-1, 5, 2)
    pts = priors[:, None, :2] + o * variances[0] * priors[:, None, 2:]
    return pts.reshape(-1, 10)


def nms_inclusive(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``torchvision.ops.nms`` with the reference's inclusive pixel areas ``(x1 - x0 + 1)(y1 - y0 + 1)``
    (shifting ``x1, y1`` by one pixel gives exactly those areas and intersections).

    ``boxes`` must already be sorted by decreasing score; ties keep that order (torchvision is given
    ranks, so its own sort cannot reorder equal scores). Returns indices into ``boxes``.
    """
    from torchvision.ops import nms

    shifted = boxes.clone()
    shifted[:, 2:] += 1.0
    ranks = torch.arange(len(boxes), 0, -1, dtype=torch.float32, device=boxes.device)
    return nms(shifted.float(), ranks, iou_threshold)


# ---------------------------------------------------------------------------- detector
class RetinaFaceDetector(FaceDetector):
    """RetinaFace on RGB images, returning :class:`~faceparse.detection.base.Face` records with
    measured landmarks (``landmarks_estimated=False``), best score first.

    Args:
        weights: local checkpoint (``mobilenet0.25_Final.pth``, ``Resnet50_Final.pth``, facexlib's
            ``detection_Resnet50_Final.pth``); required, nothing is downloaded.
        network: ``"mobilenet0.25"`` or ``"resnet50"``; guessed from the file's keys when None.
        score_threshold: minimum face score (facer and facexlib use 0.8; the reference's evaluation 0.02).
        nms_threshold: IoU above which the lower-scored of two boxes is dropped (reference: 0.4).
        top_k: boxes kept by score before NMS (reference: 5000); keep_top_k: after NMS (750).
        max_side: when set, images whose longer side exceeds it are downscaled (bilinear) before
            the network and the results scaled back; None (default) runs at the original size
            like the reference's ``detect.py``.
        device: torch device.
    """

    name = "retinaface"

    def __init__(
        self,
        weights: str | Path | None = None,
        network: str | None = None,
        score_threshold: float = 0.8,
        nms_threshold: float = 0.4,
        top_k: int = 5000,
        keep_top_k: int = 750,
        max_side: int | None = None,
        device: str = "cpu",
    ) -> None:
        if weights is None:
            raise MissingWeightsError(
                "the RetinaFace detector needs weights=PATH, a local mobilenet0.25_Final.pth or "
                "Resnet50_Final.pth (biubug6/Pytorch_Retinaface) or facexlib's detection_Resnet50_Final.pth; "
                "nothing is downloaded"
            )
        self.device = torch.device(device)
        self.net = load_retinaface(weights, network).to(self.device)
        self.network = self.net.network
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        self.keep_top_k = keep_top_k
        self.max_side = max_side

    @staticmethod
    def preprocess(image: np.ndarray) -> torch.Tensor:
        """RGB uint8 ``H x W x 3`` -> ``1 x 3 x H x W`` float BGR minus :data:`BGR_MEAN` (no scaling)."""
        bgr = np.ascontiguousarray(image[:, :, ::-1], dtype=np.float32) - np.array(BGR_MEAN, np.float32)
        return torch.from_numpy(bgr.transpose(2, 0, 1).copy())[None]

    @torch.inference_mode()
    def raw(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Network outputs ``(loc, scores, landmark offsets)`` for one RGB image (batch of 1)."""
        return self.net(self.preprocess(image).to(self.device))

    @torch.inference_mode()
    def detect_arrays(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(boxes K x 4, scores K, landmarks K x 10)`` in pixels, best first (the reference's pipeline)."""
        image = self.check_image(image)
        h, w = image.shape[:2]
        resize = 1.0
        if self.max_side and max(h, w) > self.max_side:
            import cv2

            resize = self.max_side / max(h, w)
            image = cv2.resize(image, (round(w * resize), round(h * resize)), interpolation=cv2.INTER_LINEAR)
        ih, iw = image.shape[:2]
        loc, conf, lm = self.raw(image)
        priors = prior_boxes(ih, iw).to(self.device)
        scale = torch.tensor([iw, ih], dtype=torch.float32, device=self.device)
        boxes = decode_boxes(loc[0], priors) * scale.repeat(2) / resize
        points = decode_landmarks(lm[0], priors) * scale.repeat(5) / resize
        scores = conf[0, :, 1]
        keep = torch.nonzero(scores > self.score_threshold).flatten()
        order = keep[scores[keep].argsort(descending=True, stable=True)][: self.top_k]
        boxes, points, scores = boxes[order], points[order], scores[order]
        kept = nms_inclusive(boxes, scores, self.nms_threshold)[: self.keep_top_k]
        return boxes[kept].cpu().numpy(), scores[kept].cpu().numpy(), points[kept].cpu().numpy()

    def detect(self, image: np.ndarray) -> list[Face]:
        boxes, scores, points = self.detect_arrays(image)
        return [
            Face(tuple(b.tolist()), float(s), p.reshape(5, 2), False)  # type: ignore[arg-type]
            for b, s, p in zip(boxes, scores, points)
        ]

    def __repr__(self) -> str:
        return f"RetinaFaceDetector(network={self.network!r}, score_threshold={self.score_threshold})"
