"""Seconds per image of the face detectors on this CPU (scikit-image's astronaut photo, 512 x 512).

The cascade is timed as shipped (boxes + eye search); RetinaFace with seeded random weights of
the real architectures (speed does not depend on the weight values; a high score threshold keeps
NMS small, as trained weights would). Median of ``--repeats`` runs after one warm-up, two torch threads.
YuNet needs the user's ONNX file (``--yunet PATH`` to include it).

    nice -n 10 python benchmarks/detector_speed.py --out benchmarks/results/detector_speed.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def timed(fn, image, repeats: int) -> tuple[float, float]:
    """Median wall-clock and median process CPU seconds of ``fn(image)``."""
    fn(image)
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(image)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--yunet", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import skimage.data

    from faceparse.detection import build_detector
    from faceparse.detection.retinaface import RetinaFaceNet

    image = skimage.data.astronaut()
    load_before = os.getloadavg()[0]
    rows = []
    det = build_detector("auto")
    rows.append(("auto (LBP cascade + eye search)", timed(det, image, args.repeats)))
    for network in ("mobilenet0.25", "resnet50"):
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{network}.pth"
            torch.save(RetinaFaceNet(network).state_dict(), path)
            det = build_detector("retinaface", weights=path, score_threshold=0.999)
        rows.append((f"retinaface {network} (random weights)", timed(det, image, args.repeats)))
    if args.yunet:
        rows.append(("yunet", timed(build_detector("yunet", weights=args.yunet), image, args.repeats)))
    lines = [
        "# Face detector speed",
        "",
        f"Date: {datetime.date.today()}. Machine: 2-core shared CPU, no GPU, shared with other jobs (load "
        f"average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after: wall times are upper bounds). "
        f"torch {torch.__version__}, {args.threads} threads.",
        "",
        "Command: `nice -n 10 python benchmarks/detector_speed.py --out benchmarks/results/detector_speed.md`",
        "",
        f"Input: scikit-image's astronaut photo, 512 x 512 RGB; median of {args.repeats} runs after a warm-up.",
        "",
        "| detector | wall s / image | images / s (wall) | CPU s / image (all threads) |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {wall:.3f} | {1 / wall:.2f} | {cpu:.3f} |" for name, (wall, cpu) in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
