"""How consistently the cascade detector's eye search lands on eyes, on scikit-image's LFW subset.

``skimage.data.lfw_subset()`` ships 100 face crops of 25 x 25 pixels (Labeled Faces in the Wild).
Each is enlarged 6x (bicubic) and padded by 50 px (edge replicate) so that the default LBP cascade
can find it; for every face found, the eyes are searched in its box (:func:`find_eyes`, the path
the default detector takes). There are no eye annotations, so the figures are about consistency:
eye positions relative to the box (median and median absolute deviation), and how many pairs have
an eye more than 0.12 box widths from the median position (likely misses). ``--sheet`` writes a
contact sheet with boxes and eyes for looking at.

    nice -n 10 python benchmarks/eye_search_lfw.py --out benchmarks/results/eye_search_lfw.md --sheet /tmp/eyes.png
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import cv2
import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--sheet", type=Path, default=None, help="PNG contact sheet of the first 50 faces")
    ap.add_argument("--far", type=float, default=0.12, help="distance (box widths) counted as a likely miss")
    args = ap.parse_args()
    import skimage.data

    from faceparse.detection.cascade import CascadeDetector, find_eyes

    crops = skimage.data.lfw_subset()[:100]
    det = CascadeDetector(landmarks=False)
    rel, tiles, n_faces = [], [], 0
    for crop in crops:
        gray = cv2.resize((crop * 255).astype(np.uint8), (150, 150), interpolation=cv2.INTER_CUBIC)
        gray = cv2.copyMakeBorder(gray, 50, 50, 50, 50, cv2.BORDER_REPLICATE)
        rgb = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
        faces = det(rgb)
        tile = rgb.copy()
        if faces:
            n_faces += 1
            box = faces[0].box
            eyes = find_eyes(gray, box)
            cv2.rectangle(tile, (int(box[0]), int(box[1])), (int(box[2]), int(box[3])), (0, 255, 0), 1)
            if eyes is not None:
                rel.append((eyes - np.array(box[:2])) / (box[2] - box[0]))
                for x, y in eyes:
                    cv2.circle(tile, (int(round(x)), int(round(y))), 3, (255, 0, 0), -1)
        tiles.append(cv2.resize(tile[30:220, 30:220], (120, 120)))
    r = np.array(rel)
    med = np.median(r, 0)
    mad = np.median(np.abs(r - med), 0)
    far = int((np.linalg.norm(r - med, axis=2) > args.far).any(1).sum())
    lines = [
        "# Eye search of the cascade detector on scikit-image's LFW subset",
        "",
        f"Date: {datetime.date.today()}. Machine: 2-core shared CPU, no GPU.",
        "",
        "Command: `nice -n 10 python benchmarks/eye_search_lfw.py --out benchmarks/results/eye_search_lfw.md`",
        "",
        "100 LFW face crops (25 x 25, enlarged 6x, padded 50 px); default LBP cascade; eyes by `find_eyes` in "
        "the largest box. No eye annotations: the figures measure consistency, not accuracy.",
        "",
        "| faces found | eye pairs found | median left eye (x, y) / box | median right eye (x, y) / box | "
        f"MAD left | MAD right | pairs with an eye > {args.far} box widths from the median |",
        "|---:|---:|---|---|---|---|---:|",
        f"| {n_faces} / {len(crops)} | {len(r)} | ({med[0, 0]:.3f}, {med[0, 1]:.3f}) | ({med[1, 0]:.3f}, "
        f"{med[1, 1]:.3f}) | ({mad[0, 0]:.3f}, {mad[0, 1]:.3f}) | ({mad[1, 0]:.3f}, {mad[1, 1]:.3f}) | {far} |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.sheet:
        rows = [np.hstack(tiles[i : i + 10]) for i in range(0, 50, 10)]
        cv2.imwrite(str(args.sheet), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    main()
