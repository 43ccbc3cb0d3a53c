"""Tiny dataset trees in the real on-disk layouts (LaPa, Helen, COFW, Part Labels), for tests and benchmarks.

Every face is drawn from the same simple geometry (:func:`draw_face`): known regions at known places,
the face shifted to the left of the image and hair on the left only, so a flip that forgets to swap
left/right is visible. Each writer returns a dict with what a test needs to check the adapters
(names per split, landmark coordinates...). CelebAMask-HQ trees come from
``faceparse.data.synthetic`` (``SyntheticFaces.write_celebamask_hq``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

# 11-class LaPa / Helen indices
BG, SKIN, LBROW, RBROW, LEYE, REYE, NOSE, ULIP, MOUTH, LLIP, HAIR = range(11)

_COLOURS = np.array(
    [
        (30, 40, 50), (220, 180, 150), (60, 40, 20), (70, 45, 25), (250, 250, 250), (240, 240, 245),
        (200, 150, 120), (180, 60, 70), (90, 20, 30), (170, 50, 60), (40, 30, 20),
    ],
    dtype=np.uint8,
)  # fmt: skip

# LaPa 106-point mirror permutation (see faceparse.data.lapa.LAPA_FLIP_106), repeated here so that the
# fixture writer does not import the adapter under test.


def draw_face(size: int, shift: float = -0.05, seed: int = 0) -> dict[str, Any]:
    """An 11-class label map, an RGB image, and the 5 key points (image left/right).

    Returns dict(mask HxW uint8, image HxWx3 uint8, points5 5x2 float (x, y), centre (cx, cy),
    box (x0, y0, x1, y1) of the face parts).
    """
    s = size
    cx, cy = (0.5 + shift) * s, 0.5 * s
    mask = np.zeros((s, s), np.uint8)
    # hair: top band and a strip on the image-left side only (asymmetric on purpose)
    mask[: int(0.2 * s), :] = HAIR
    mask[:, : int(0.12 * s)] = HAIR

    def ell(c, axes, label):
        cv2.ellipse(
            mask,
            (round(c[0]), round(c[1])),
            (max(1, round(axes[0])), max(1, round(axes[1]))),
            0,
            0,
            360,
            int(label),
            -1,
        )

    def rect(c, half, label):
        x0, y0 = round(c[0] - half[0]), round(c[1] - half[1])
        x1, y1 = round(c[0] + half[0]), round(c[1] + half[1])
        mask[y0 : y1 + 1, x0 : x1 + 1] = label

    ell((cx, cy), (0.28 * s, 0.34 * s), SKIN)
    ex, ey = 0.11 * s, cy - 0.07 * s
    rect((cx - ex, cy - 0.16 * s), (0.06 * s, 0.02 * s), LBROW)
    rect((cx + ex, cy - 0.16 * s), (0.06 * s, 0.02 * s), RBROW)
    ell((cx - ex, ey), (0.06 * s, 0.035 * s), LEYE)
    ell((cx + ex, ey), (0.06 * s, 0.035 * s), REYE)
    ell((cx, cy + 0.04 * s), (0.04 * s, 0.07 * s), NOSE)
    my = cy + 0.2 * s
    rect((cx, my - 0.035 * s), (0.1 * s, 0.015 * s), ULIP)
    rect((cx, my), (0.1 * s, 0.02 * s), MOUTH)
    rect((cx, my + 0.035 * s), (0.1 * s, 0.015 * s), LLIP)
    rng = np.random.default_rng(seed)
    image = _COLOURS[mask].astype(np.int16) + rng.integers(-8, 9, size=(s, s, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    points5 = np.array([[cx - ex, ey], [cx + ex, ey], [cx, cy + 0.04 * s], [cx - 0.08 * s, my], [cx + 0.08 * s, my]])
    ys, xs = np.nonzero((mask != BG) & (mask != HAIR))
    box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
    return {"mask": mask, "image": image, "points5": points5, "centre": (cx, cy), "box": box}


def _write_rgb(path: Path, image: np.ndarray, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]), params):
        raise OSError(f"could not write {path}")


def _write_gray(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(arr)):
        raise OSError(f"could not write {path}")


def symmetric_landmarks(
    points5: np.ndarray, centre: tuple[float, float], perm: np.ndarray, size: int, seed: int = 0
) -> np.ndarray:
    """N landmarks mirror-symmetric about the face's vertical axis under ``perm``; the lower index of
    each pair lies on the image left. Used to fill the 106 LaPa points around the key ones."""
    n = len(perm)
    rng = np.random.default_rng(seed)
    cx, cy = centre
    pts = np.zeros((n, 2))
    for i in range(n):
        j = int(perm[i])
        if j < i:
            continue
        y = cy + rng.uniform(-0.3, 0.3) * size
        if j == i:
            pts[i] = (cx, y)
        else:
            d = rng.uniform(0.02, 0.25) * size
            pts[i] = (cx - d, y)
            pts[j] = (cx + d, y)
    return pts


def write_lapa(root: str | os.PathLike, counts: dict[str, int] | None = None, size: int = 96) -> dict[str, Any]:
    """Write ``root/LaPa/{train,val,test}/{images,labels,landmarks}`` and return names + landmarks."""
    from faceparse.data.lapa import LAPA_FLIP_106  # the permutation is data, not behaviour under test

    counts = counts or {"train": 3, "val": 2, "test": 2}
    base = Path(root) / "LaPa"
    info: dict[str, Any] = {"root": str(base), "names": {}, "landmarks": {}, "faces": {}}
    k = 0
    for split, n in counts.items():
        names = []
        for i in range(n):
            name = f"{1000 + k}_{split}{i}"
            face = draw_face(size, shift=-0.05 + 0.02 * (k % 3), seed=k)
            lmk = symmetric_landmarks(face["points5"], face["centre"], LAPA_FLIP_106, size, seed=k)
            p5 = face["points5"]
            lmk[74] = lmk[104] = p5[0]
            lmk[83] = lmk[105] = p5[1]
            lmk[54] = p5[2]
            lmk[84] = p5[3]
            lmk[90] = p5[4]
            d = base / split
            _write_rgb(d / "images" / f"{name}.jpg", face["image"])
            _write_gray(d / "labels" / f"{name}.png", face["mask"])
            (d / "landmarks").mkdir(parents=True, exist_ok=True)
            (d / "landmarks" / f"{name}.txt").write_text("106\n" + "".join(f"{x:.3f} {y:.3f}\n" for x, y in lmk))
            names.append(name)
            info["landmarks"][name] = lmk
            info["faces"][name] = face
            k += 1
        info["names"][split] = names
    return info


def write_helen_smith(root: str | os.PathLike, counts: dict[str, int] | None = None, size: int = 96) -> dict[str, Any]:
    """Write the SmithCVPR2013_dataset_resized layout: images/, labels/<name>/<name>_lbl00..10.png,
    exemplars.txt / tuning.txt / testing.txt (lines ``index , name``)."""
    counts = counts or {"train": 3, "val": 2, "test": 2}
    files = {"train": "exemplars.txt", "val": "tuning.txt", "test": "testing.txt"}
    base = Path(root) / "SmithCVPR2013_dataset_resized"
    info: dict[str, Any] = {"root": str(base), "names": {}, "faces": {}}
    k = 0
    for split, n in counts.items():
        lines, names = [], []
        for i in range(n):
            name = f"{2000000 + 17 * k}_{i + 1}"
            face = draw_face(size, shift=-0.04, seed=100 + k)
            _write_rgb(base / "images" / f"{name}.jpg", face["image"])
            for c in range(11):
                # soft per-class maps as shipped: the class is the channel argmax
                soft = np.where(face["mask"] == c, 230, 10).astype(np.uint8)
                _write_gray(base / "labels" / name / f"{name}_lbl{c:02d}.png", soft)
            lines.append(f"{i + 1} , {name}")
            names.append(name)
            info["faces"][name] = face
            k += 1
        (base / files[split]).write_text("\n".join(lines) + "\n")
        info["names"][split] = names
    return info


def write_helen_star(root: str | os.PathLike, counts: dict[str, int] | None = None, size: int = 96) -> dict[str, Any]:
    """Write the relabeled HELEN* layout: helen/{train,test}/<name>_image.jpg + <name>_label.png and
    helen/landmarks.txt (136 numbers = 68 (x, y) at twice the image scale, then the name)."""
    from faceparse.data.helen import FLIP_68

    counts = counts or {"train": 3, "test": 2}
    base = Path(root) / "helen"
    info: dict[str, Any] = {"root": str(base), "names": {}, "faces": {}, "landmarks": {}}
    lines = []
    k = 0
    for split, n in counts.items():
        names = []
        for i in range(n):
            name = f"{3000000 + 13 * k}_{i + 1}"
            face = draw_face(size, shift=-0.04, seed=200 + k)
            lmk = symmetric_landmarks(face["points5"], face["centre"], FLIP_68, size, seed=k)
            p5 = face["points5"]
            lmk[36:42] = p5[0]
            lmk[42:48] = p5[1]
            lmk[30] = p5[2]
            lmk[48] = p5[3]
            lmk[54] = p5[4]
            lmk = np.clip(lmk, 2, size - 3)
            _write_rgb(base / split / f"{name}_image.jpg", face["image"])
            _write_gray(base / split / f"{name}_label.png", face["mask"])
            lines.append(" ".join(f"{v:.2f}" for v in (lmk * 2.0).ravel()) + f" {name}")
            names.append(name)
            info["faces"][name] = face
            info["landmarks"][name] = lmk
            k += 1
        info["names"][split] = names
    (base / "landmarks.txt").write_text("\n".join(lines) + "\n")
    return info


def _cofw_faces(n: int, size: int, seed: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[np.ndarray]]:
    from faceparse.data.cofw import COFW_FLIP_29

    images, phis, boxes, masks = [], [], [], []
    for k in range(n):
        face = draw_face(size, shift=-0.05, seed=seed + k)
        img = face["image"]
        if k % 2 == 1:  # some COFW images are grayscale 2-D arrays
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        images.append(img)
        lmk = symmetric_landmarks(face["points5"], face["centre"], COFW_FLIP_29, size, seed=seed + k)
        p5 = face["points5"]
        lmk[16], lmk[17], lmk[20], lmk[22], lmk[23] = p5
        occ = (np.arange(29) + k) % 5 == 0
        # MATLAB 1-based pixel coordinates
        phis.append(np.concatenate([lmk[:, 0] + 1, lmk[:, 1] + 1, occ.astype(np.float64)]))
        x0, y0, x1, y1 = face["box"]
        boxes.append([x0 + 1, y0 + 1, x1 - x0, y1 - y0])
        m = ((face["mask"] != BG) & (face["mask"] != HAIR)).astype(np.uint8) * 255
        masks.append(m)
    return images, np.array(phis), np.array(boxes, dtype=np.float64), masks


def _write_mat73(path: Path, img_key: str, phis_key: str, box_key: str, images, phis, boxes) -> None:
    """A MATLAB v7.3 file: HDF5 with the 512-byte MATLAB header, column-major (transposed) arrays and
    a cell array stored as object references into ``#refs#``."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as f:
        refs = f.create_group("#refs#")
        ref_list = []
        for i, img in enumerate(images):
            ds = refs.create_dataset(f"img{i}", data=np.ascontiguousarray(np.asarray(img).T))
            ds.attrs["MATLAB_class"] = np.bytes_("uint8")
            ref_list.append(ds.ref)
        cell = f.create_dataset(img_key, (1, len(ref_list)), dtype=h5py.ref_dtype)
        for i, r in enumerate(ref_list):
            cell[0, i] = r
        cell.attrs["MATLAB_class"] = np.bytes_("cell")
        for key, arr in ((phis_key, phis), (box_key, boxes)):
            ds = f.create_dataset(key, data=np.ascontiguousarray(np.asarray(arr, dtype=np.float64).T))
            ds.attrs["MATLAB_class"] = np.bytes_("double")
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Sun Nov 22 00:00:00 2026 HDF5 schema 1.00 ."
    with open(path, "r+b") as fh:
        fh.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


def write_cofw(
    root: str | os.PathLike,
    n_train: int = 3,
    n_test: int = 3,
    size: int = 96,
    version: str = "7.3",
    mask_dir: str = "COFW_test_masks",
    mask_pattern: str = "{index1}.png",
) -> dict[str, Any]:
    """Write COFW_train_color.mat / COFW_test_color.mat (``version`` "7.3" with h5py or "5" with scipy)
    and binary face masks of the test faces in ``root/mask_dir``."""
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"root": str(base)}
    for split, n, keys, fname, seed in (
        ("train", n_train, ("IsTr", "phisTr", "bboxesTr"), "COFW_train_color.mat", 300),
        ("test", n_test, ("IsT", "phisT", "bboxesT"), "COFW_test_color.mat", 400),
    ):
        images, phis, boxes, masks = _cofw_faces(n, size, seed)
        path = base / fname
        if version == "7.3":
            _write_mat73(path, *keys, images, phis, boxes)
        else:
            import scipy.io

            cell = np.empty((n, 1), dtype=object)
            for i, img in enumerate(images):
                cell[i, 0] = img
            scipy.io.savemat(str(path), {keys[0]: cell, keys[1]: phis, keys[2]: boxes}, format="5")
        info[split] = {"images": images, "phis": phis, "boxes": boxes, "masks": masks}
        if split == "test":
            for i, m in enumerate(masks):
                _write_gray(base / mask_dir / mask_pattern.format(index=i, index1=i + 1), m)
    return info


PART_COLOURS = {0: (0, 0, 255), 1: (0, 255, 0), 2: (255, 0, 0)}  # background blue, face green, hair red


def write_part_labels(root: str | os.PathLike, counts: dict[str, int] | None = None, size: int = 250) -> dict[str, Any]:
    """Write lfw_funneled/, parts_lfw_funneled_gt_images/*.ppm, parts_lfw_funneled_superpixels_mat/*.dat
    and parts_train.txt / parts_validation.txt / parts_test.txt (lines ``Name_Surname 4``)."""
    counts = counts or {"train": 3, "val": 2, "test": 2}
    files = {"train": "parts_train.txt", "val": "parts_validation.txt", "test": "parts_test.txt"}
    base = Path(root)
    info: dict[str, Any] = {"root": str(base), "names": {}, "faces": {}}
    k = 0
    for split, n in counts.items():
        lines, names = [], []
        for i in range(n):
            person = f"Person_{chr(65 + k)}_Example"
            num = i + 1
            stem = f"{person}_{num:04d}"
            face = draw_face(size, shift=-0.04, seed=500 + k)
            m = face["mask"]
            parts = np.where(m == HAIR, 2, np.where(m == BG, 0, 1)).astype(np.uint8)
            _write_rgb(base / "lfw_funneled" / person / f"{stem}.jpg", face["image"])
            rgb = np.zeros((size, size, 3), np.uint8)
            for c, col in PART_COLOURS.items():
                rgb[parts == c] = col
            _write_rgb(base / "parts_lfw_funneled_gt_images" / f"{stem}.ppm", rgb)
            sp = (np.arange(size)[:, None] // 10) * ((size + 9) // 10) + np.arange(size)[None, :] // 10
            spf = base / "parts_lfw_funneled_superpixels_mat" / person / f"{stem}.dat"
            spf.parent.mkdir(parents=True, exist_ok=True)
            np.savetxt(spf, sp, fmt="%d")
            lines.append(f"{person} {num}")
            names.append(stem)
            info["faces"][stem] = {"parts": parts, "superpixels": sp, **face}
            k += 1
        (base / files[split]).write_text("\n".join(lines) + "\n")
        info["names"][split] = names
    return info
