"""Parity of faceparse's RetinaFace against the reference code biubug6/Pytorch_Retinaface (random weights).

For each network (MobileNet-0.25, ResNet-50): build the reference ``RetinaFace`` from a local copy of
the public repository (never committed here; its ImageNet/backbone pretraining is switched off)
with seeded random weights (BatchNorm statistics and affine parameters randomised too), save its
state dict the way the checkpoints are distributed (``module.``-prefixed DataParallel keys, as in
``mobilenet0.25_Final.pth`` / ``Resnet50_Final.pth``; also plain keys as in facexlib's cleaned
files and ``{"state_dict": ...}``), load it with ``build_detector("retinaface", weights=...)`` and
compare on scikit-image's astronaut photo:

1. the raw outputs ``loc``, ``conf`` (softmax) and ``landms``;
2. the detections after the reference's ``detect.py`` pipeline (PriorBox, decode, decode_landm,
   score threshold, top-k, py_cpu_nms, keep-top-k) against ``RetinaFaceDetector.detect_arrays``.

Random weights give near-uniform scores, so the threshold is set to the reference scores'
``--quantile`` (default 0.98: ~200 candidate boxes before NMS) and both sides use it.

    nice -n 10 python benchmarks/retinaface_parity.py --reference-dir /tmp/ref_retinaface \
        --out benchmarks/results/retinaface_parity.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

TOL = 1e-4


def _randomise(net: torch.nn.Module, seed: int, image: torch.Tensor) -> None:
    """Seeded random weights that behave like a trained net's: He-normal convs, random BatchNorm affine
    parameters, BatchNorm statistics calibrated on the image (one train-mode pass), so that features
    are neither dead nor exploding and scores rarely tie."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.momentum = None  # cumulative average: one pass sets the statistics of this image
                m.reset_running_stats()
        net.train()
        net(image)
        net.eval()


def reference_detect(ref, net, cfg, image_rgb: np.ndarray, threshold: float, top_k: int, nms: float, keep: int):
    """The reference's detect.py pipeline (resize 1), using the reference's own functions."""
    img = np.float32(image_rgb[:, :, ::-1].copy())  # cv2.imread gives BGR
    h, w, _ = img.shape
    scale = torch.Tensor([w, h, w, h])
    img -= (104, 117, 123)
    x = torch.from_numpy(img.transpose(2, 0, 1)).unsqueeze(0)
    with torch.no_grad():
        loc, conf, landms = net(x)
    priors = ref.PriorBox(cfg, image_size=(h, w)).forward()
    boxes = (ref.decode(loc.data.squeeze(0), priors.data, cfg["variance"]) * scale).numpy()
    scores = conf.squeeze(0).data.numpy()[:, 1]
    lm = ref.decode_landm(landms.data.squeeze(0), priors.data, cfg["variance"])
    lm = (lm * torch.Tensor([w, h] * 5)).numpy()
    inds = np.where(scores > threshold)[0]
    boxes, lm, scores = boxes[inds], lm[inds], scores[inds]
    order = scores.argsort()[::-1][:top_k]
    boxes, lm, scores = boxes[order], lm[order], scores[order]
    dets = np.hstack((boxes, scores[:, None])).astype(np.float32, copy=False)
    kept = ref.py_cpu_nms(dets, nms)
    dets, lm = dets[kept][:keep], lm[kept][:keep]
    return (loc, conf, landms), dets[:, :4], dets[:, 4], lm


class _Ref:
    def __init__(self, repo: Path) -> None:
        sys.path.insert(0, str(repo))
        from data.config import cfg_mnet, cfg_re50
        from layers.functions.prior_box import PriorBox
        from models.retinaface import RetinaFace
        from utils.box_utils import decode, decode_landm
        from utils.nms.py_cpu_nms import py_cpu_nms

        self.cfgs = {"mobilenet0.25": dict(cfg_mnet, pretrain=False), "resnet50": dict(cfg_re50, pretrain=False)}
        self.RetinaFace, self.PriorBox = RetinaFace, PriorBox
        self.decode, self.decode_landm, self.py_cpu_nms = decode, decode_landm, py_cpu_nms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", required=True, type=Path, help="local copy of biubug6/Pytorch_Retinaface")
    ap.add_argument("--networks", nargs="+", default=["mobilenet0.25", "resnet50"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quantile", type=float, default=0.98)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument(
        "--reference-commit", default=None, help="commit of the copy (default: git rev-parse in --reference-dir)"
    )
    args = ap.parse_args()
    torch.set_num_threads(2)
    import skimage.data

    from faceparse.detection import build_detector
    from faceparse.detection.retinaface import NETWORKS

    ref = _Ref(args.reference_dir)
    image = skimage.data.astronaut()
    commit = (
        args.reference_commit
        or subprocess.run(
            ["git", "-C", str(args.reference_dir), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    rows, ok_all = [], True
    for network in args.networks:
        assert network in NETWORKS
        cfg = ref.cfgs[network]
        net = ref.RetinaFace(cfg=cfg, phase="test").eval()
        x = torch.from_numpy((np.float32(image[:, :, ::-1]) - np.float32([104, 117, 123])).transpose(2, 0, 1).copy())
        _randomise(net, args.seed, x[None])
        with torch.no_grad():
            _, conf0, _ = net(x[None])
        thr = float(np.quantile(conf0[0, :, 1].numpy(), args.quantile))
        (loc_r, conf_r, lm_r), boxes_r, scores_r, points_r = reference_detect(ref, net, cfg, image, thr, 5000, 0.4, 750)
        state = net.state_dict()
        for fmt in ("module.", "plain", "state_dict"):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{network}_Final.pth"
                if fmt == "module.":
                    torch.save({f"module.{k}": v for k, v in state.items()}, path)
                elif fmt == "plain":
                    torch.save(dict(state), path)
                else:
                    torch.save({"state_dict": dict(state)}, path)
                det = build_detector(
                    "retinaface", weights=path, score_threshold=thr, nms_threshold=0.4, top_k=5000, keep_top_k=750
                )
            assert det.network == network, (det.network, network)
            loc, conf, lm = det.raw(image)
            boxes, scores, points = det.detect_arrays(image)
            d_raw = max(
                float((loc - loc_r).abs().max()), float((conf - conf_r).abs().max()), float((lm - lm_r).abs().max())
            )
            same_n = len(boxes) == len(boxes_r)
            d_det = (
                max(
                    float(np.abs(boxes - boxes_r).max()),
                    float(np.abs(scores - scores_r).max()),
                    float(np.abs(points - points_r).max()),
                )
                if same_n and len(boxes)
                else float("nan")
            )
            ok = same_n and len(boxes) > 0 and d_raw <= TOL and d_det <= TOL
            ok_all &= ok
            rows.append(
                f"| {network} | {fmt} | {loc.shape[1]} | {thr:.4f} | {len(boxes_r)} / {len(boxes)} | "
                f"{d_raw:.2e} | {d_det:.2e} | {float(np.abs(boxes_r).max()):.1f} | "
                f"{'ok' if ok else 'FAIL'} |"
            )
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# RetinaFace parity with the reference code (random weights)",
            "",
            f"Date: {datetime.date.today()}. Machine: 2-core shared CPU, no GPU ({platform.machine()}). "
            f"torch {torch.__version__}.",
            f"Reference: github.com/biubug6/Pytorch_Retinaface @ {commit or 'unknown'} (local copy, not committed).",
            "",
            "Command: `nice -n 10 python benchmarks/retinaface_parity.py --reference-dir /tmp/ref_retinaface "
            f"--reference-commit {commit} --out benchmarks/results/retinaface_parity.md` (the reference copied "
            "to /tmp/ref_retinaface with `git archive`)",
            "",
            f"Input: scikit-image's astronaut photo (512 x 512, RGB -> the reference's BGR); seed {args.seed}; "
            f"score threshold = the {args.quantile:.2f} quantile of the reference scores, top-k 5000, "
            f"NMS 0.4, keep-top-k 750; tolerance max abs diff <= {TOL:g}.",
            "Checkpoint formats: `module.` = DataParallel keys as in the distributed `*_Final.pth`; `plain` = "
            "keys without prefix (facexlib's loader strips it; same names); `state_dict` = wrapped.",
            "raw = max |diff| over loc, conf (softmax) and landms for all priors; dets = max |diff| over boxes "
            "(pixels), scores and landmarks (pixels) of the detections after NMS.",
            "",
            "| network | format | priors | threshold | detections ref / ours | raw max diff | dets max diff | "
            "max abs box coord | status |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|",
            *rows,
            "",
        ]
    )
    if args.out:
        args.out.write_text(text)
    print("ALL OK" if ok_all else "PARITY FAILED")
    sys.exit(0 if ok_all else 1)


if __name__ == "__main__":
    main()
