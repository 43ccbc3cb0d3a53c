"""Procedural synthetic faces with masks for all 19 CelebAMask-HQ classes (no download needed).

Each sample is drawn with OpenCV from a random generator seeded by ``(seed, split, index)``, so the
same index always gives the same face. Accessories are rare, as in real data (long tail):
eyeglasses 12 %, hat 7 %, earrings 8 %, necklace 6 % of faces. With ``occluders=True`` about 30 %
of faces carry an occluder (a hand-like blob or a bar such as a microphone); pixels under it are
labelled background and marked in the ``occlusion`` mask, as CelebAMask-HQ leaves occluders
unlabelled. Every sample has 5 landmarks (eye centres, nose tip, mouth corners; image-left first),
image-level labels and a face box.

Hand-written: no library generates labelled synthetic faces.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceparse.data.base import FaceDataset
from faceparse.data.transforms import FIVE_POINT_FLIP, IMAGENET_MEAN, IMAGENET_STD
from faceparse.labels import CELEBAMASK_HQ, LabelSet, get_label_set
from faceparse.registry import DATASETS

C = {name: i for i, name in enumerate(CELEBAMASK_HQ.classes)}
DEFAULT_SIZES = {"train": 2000, "val": 200, "test": 200}
RARE = {"eyeglasses": 0.12, "hat": 0.07, "earring": 0.08, "necklace": 0.06}

_SKIN_TONES = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 135], [198, 134, 98], [141, 85, 56], [92, 58, 40]])
_HAIR = np.array([[20, 16, 14], [60, 40, 25], [110, 75, 40], [190, 150, 90], [140, 60, 30], [150, 150, 150]])


def _jitter(rng: np.random.Generator, color: Sequence[float], amount: float = 18) -> tuple[int, int, int]:
    c = np.asarray(color, np.float64) + rng.normal(0, amount, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


class _Painter:
    """Draws shapes into an RGB canvas and the label map together (later shapes overwrite)."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.rng = rng
        self.image = np.zeros((size, size, 3), np.uint8)
        self.label = np.zeros((size, size), np.uint8)

    def region(self, draw) -> np.ndarray:
        m = np.zeros((self.size, self.size), np.uint8)
        draw(m, 1)
        return m.astype(bool)

    def paint(self, region: np.ndarray, label: int | None, color, texture: float = 6.0, alpha: float = 1.0) -> None:
        n = int(region.sum())
        if n == 0:
            return
        col = np.asarray(color, np.float32)[None] + self.rng.normal(0, texture, (n, 3)).astype(np.float32)
        old = self.image[region].astype(np.float32)
        self.image[region] = np.clip(alpha * col + (1 - alpha) * old, 0, 255).astype(np.uint8)
        if label is not None:
            self.label[region] = label


def _ellipse(c, axes, angle=0.0, start=0, end=360, thickness=-1):
    center = (int(round(c[0])), int(round(c[1])))
    ax = (max(1, int(round(axes[0]))), max(1, int(round(axes[1]))))
    return lambda m, v: cv2.ellipse(m, center, ax, angle, start, end, v, thickness)


def _poly(points):
    pts = np.round(np.asarray(points)).astype(np.int32)
    return lambda m, v: cv2.fillPoly(m, [pts], v)


def render_face(rng: np.random.Generator, size: int = 128, occluder_prob: float = 0.3) -> dict[str, Any]:
    """Draw one synthetic face. Returns image, mask (CelebAMask-HQ order), occlusion, landmarks, face_box."""
    S = size
    p = _Painter(S, rng)
    # background: two-colour gradient with noise
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, S)[:, None, None] if rng.random() < 0.5 else np.linspace(0, 1, S)[None, :, None]
    p.image[:] = np.clip(c0 * (1 - t) + c1 * t + rng.normal(0, 8, (S, S, 3)), 0, 255).astype(np.uint8)

    cx, cy = S * (0.5 + rng.uniform(-0.05, 0.05)), S * (0.46 + rng.uniform(-0.04, 0.04))
    a = S * rng.uniform(0.19, 0.25)
    b = a * rng.uniform(1.2, 1.4)
    skin = _jitter(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 10)
    hair_col = _jitter(rng, _HAIR[rng.integers(len(_HAIR))], 10)

    if rng.random() < 0.45:  # long hair behind the head
        p.paint(p.region(_ellipse((cx, cy + 0.25 * b), (1.3 * a, 1.25 * b))), C["hair"], hair_col, 10)
    # neck, then clothes covering its lower part
    p.paint(
        p.region(
            _poly(
                [
                    (cx - 0.5 * a, cy + 0.5 * b),
                    (cx + 0.5 * a, cy + 0.5 * b),
                    (cx + 0.55 * a, cy + 1.45 * b),
                    (cx - 0.55 * a, cy + 1.45 * b),
                ]
            )
        ),
        C["neck"],
        np.asarray(skin) * 0.9,
        5,
    )
    if rng.random() < 0.93:
        top = cy + b * rng.uniform(1.15, 1.3)
        p.paint(p.region(_ellipse((cx, top + 0.9 * S), (2.2 * a, 0.9 * S))), C["cloth"], rng.integers(0, 256, 3), 12)
    if rng.random() < RARE["necklace"]:
        th = max(2, S // 36)
        p.paint(
            p.region(_ellipse((cx, cy + 1.0 * b), (0.55 * a, 0.3 * b), 0, 20, 160, th)),
            C["necklace"],
            _jitter(rng, (230, 190, 60), 20),
            8,
        )
    # ears, earrings
    ear_y = cy + 0.02 * b
    ear_visible = rng.random() < 0.85
    for side, name in ((-1, "left_ear"), (1, "right_ear")):
        if ear_visible:
            p.paint(
                p.region(_ellipse((cx + side * 0.97 * a, ear_y), (0.17 * a, 0.3 * b))),
                C[name],
                np.asarray(skin) * 0.95,
                5,
            )
    if ear_visible and rng.random() < RARE["earring"]:
        r = max(2.0, 0.11 * a)
        for side in (-1, 1):
            p.paint(
                p.region(_ellipse((cx + side * 1.0 * a, ear_y + 0.34 * b), (r, r * 1.3))),
                C["earring"],
                _jitter(rng, (240, 210, 80), 25),
                6,
            )
    # face
    p.paint(p.region(_ellipse((cx, cy), (a, b))), C["skin"], skin, 5)
    # hair on top: crown minus forehead
    if rng.random() < 0.9:
        crown = p.region(_ellipse((cx, cy - 0.12 * b), (1.08 * a, 1.02 * b)))
        face_free = p.region(_ellipse((cx, cy + rng.uniform(0.08, 0.22) * b), (0.93 * a, 0.95 * b)))
        p.paint(crown & ~face_free, C["hair"], hair_col, 10)
    # brows and eyes
    eye_y = cy - 0.12 * b
    brow_col = np.asarray(hair_col) * 0.8
    eyes = []
    for side, brow, eye in ((-1, "left_brow", "left_eye"), (1, "right_brow", "right_eye")):
        ex = cx + side * 0.4 * a
        p.paint(p.region(_ellipse((ex, eye_y - 0.17 * b), (0.24 * a, 0.05 * b), -side * 8)), C[brow], brow_col, 6)
        p.paint(p.region(_ellipse((ex, eye_y), (0.19 * a, 0.08 * b))), C[eye], (235, 235, 230), 6)
        iris = p.region(_ellipse((ex, eye_y), (0.075 * a, 0.075 * a))) & (p.label == C[eye])
        p.paint(iris, None, _jitter(rng, (60, 40, 30), 25), 4)
        eyes.append((ex, eye_y))
    # nose
    nose_tip = (cx, cy + 0.2 * b)
    p.paint(
        p.region(_poly([(cx, cy - 0.06 * b), (cx - 0.14 * a, cy + 0.22 * b), (cx + 0.14 * a, cy + 0.22 * b)])),
        C["nose"],
        np.asarray(skin) * 0.85,
        5,
    )
    # mouth: upper lip, lower lip, open inner mouth
    my, mw = cy + 0.47 * b, 0.38 * a * rng.uniform(0.85, 1.15)
    gap = rng.uniform(0.03, 0.08) * b if rng.random() < 0.4 else 0.0
    lip = _jitter(rng, (190, 70, 80), 20)
    p.paint(p.region(_ellipse((cx, my - gap / 2), (mw, 0.09 * b), 0, 180, 360)), C["upper_lip"], lip, 6)
    p.paint(
        p.region(_ellipse((cx, my + gap / 2), (mw * 0.92, 0.11 * b), 0, 0, 180)),
        C["lower_lip"],
        np.asarray(lip) * 0.92,
        6,
    )
    if gap > 0:
        p.paint(p.region(_ellipse((cx, my), (mw * 0.8, gap / 2 + 1))), C["mouth"], (60, 20, 25), 6)
    # eyeglasses: tinted lenses + frame, labelled as a whole
    if rng.random() < RARE["eyeglasses"]:
        r = 0.3 * a
        frame = _jitter(rng, (30, 30, 30), 30)
        for ex, ey in eyes:
            lens = p.region(_ellipse((ex, ey), (r, r * 0.8)))
            p.paint(lens, C["eyeglasses"], (200, 220, 240), 4, alpha=0.35)
            p.paint(p.region(_ellipse((ex, ey), (r, r * 0.8), thickness=max(1, S // 64))), C["eyeglasses"], frame, 4)
        th = max(1, S // 64)
        p.paint(
            p.region(
                lambda m, v: cv2.line(m, (int(eyes[0][0] + r), int(eye_y)), (int(eyes[1][0] - r), int(eye_y)), v, th)
            ),
            C["eyeglasses"],
            frame,
            4,
        )
    # hat
    if rng.random() < RARE["hat"]:
        hat_col = rng.integers(0, 256, 3)
        p.paint(p.region(_ellipse((cx, cy - 0.62 * b), (1.05 * a, 0.55 * b), 0, 180, 360)), C["hat"], hat_col, 8)
        p.paint(p.region(_ellipse((cx, cy - 0.62 * b), (1.45 * a, 0.12 * b))), C["hat"], np.asarray(hat_col) * 0.85, 8)
    # occluder
    occlusion = np.zeros((S, S), np.uint8)
    if rng.random() < occluder_prob:
        ox, oy = cx + rng.uniform(-0.6, 0.6) * a, cy + rng.uniform(-0.3, 0.7) * b
        if rng.random() < 0.6:  # hand: palm + fingers
            ang = rng.uniform(-60, 60)
            palm = p.region(_ellipse((ox, oy), (0.38 * a, 0.3 * a), ang))
            fingers = np.zeros_like(palm)
            for k in range(4):
                fa = np.deg2rad(ang - 90 + (k - 1.5) * 16)
                fx, fy = ox + np.cos(fa) * 0.55 * a, oy + np.sin(fa) * 0.55 * a
                fingers |= p.region(
                    lambda m, v, fx=fx, fy=fy: cv2.line(
                        m, (int(ox), int(oy)), (int(fx), int(fy)), v, max(2, int(0.11 * a))
                    )
                )
            occ = palm | fingers
            col = _jitter(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 20)
        else:  # bar: microphone, pen, strap
            ang = np.deg2rad(rng.uniform(0, 180))
            dx, dy = np.cos(ang) * 0.9 * a, np.sin(ang) * 0.9 * a
            occ = p.region(
                lambda m, v: cv2.line(
                    m, (int(ox - dx), int(oy - dy)), (int(ox + dx), int(oy + dy)), v, max(3, int(0.18 * a))
                )
            )
            col = rng.integers(0, 256, 3)
        p.paint(occ, C["background"], col, 10)
        occlusion[occ] = 1

    landmarks = np.array([eyes[0], eyes[1], nose_tip, (cx - mw, my), (cx + mw, my)], np.float32)
    face_box = np.array([cx - a, cy - b, cx + a, cy + b], np.float32)
    # global in-plane rotation about the face centre
    angle = rng.uniform(-12, 12)
    M = cv2.getRotationMatrix2D((float(cx), float(cy)), angle, 1.0)
    image = cv2.warpAffine(p.image, M, (S, S), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(p.label, M, (S, S), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
    occlusion = cv2.warpAffine(occlusion, M, (S, S), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    landmarks = (np.c_[landmarks, np.ones(len(landmarks))] @ M.T).astype(np.float32)
    corners = (
        np.array(
            [
                [face_box[0], face_box[1], 1],
                [face_box[2], face_box[1], 1],
                [face_box[0], face_box[3], 1],
                [face_box[2], face_box[3], 1],
            ]
        )
        @ M.T
    )
    face_box = np.array([*corners.min(0), *corners.max(0)], np.float32).clip(0, S - 1)
    # lighting gradient, blur and sensor noise
    shade = 1 + rng.uniform(-0.25, 0.25) * (np.linspace(-1, 1, S)[None, :, None])
    image = cv2.GaussianBlur(image.astype(np.float32) * shade, (3, 3), 0.6)
    image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    return {"image": image, "mask": mask, "occlusion": occlusion, "landmarks": landmarks, "face_box": face_box}


@DATASETS.register("synthetic")
class SyntheticFaces(FaceDataset):
    """Deterministic procedural faces in the CelebAMask-HQ label set (the embedded default dataset).

    Args:
        split: ``train``, ``val`` or ``test`` (independent streams of faces).
        num_samples: faces in the split (default 2000 / 200 / 200).
        image_size: size the faces are drawn at and returned at (square).
        seed: global seed; the same ``(seed, split, index)`` always gives the same face.
        occluders: draw occluders on about ``occluder_prob`` of the faces.
        augment: apply the training augmentation pipeline.
        cache: keep drawn faces in memory (about 70 KB each at 128 px) so later epochs skip drawing.
    """

    def __init__(
        self,
        split: str = "train",
        num_samples: int | None = None,
        image_size: int = 128,
        seed: int = 0,
        occluders: bool = True,
        occluder_prob: float = 0.3,
        augment: bool = False,
        transform=None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        render_size: int | None = None,
        cache: bool = False,
    ) -> None:
        super().__init__(image_size=image_size, augment=augment, transform=transform, mean=mean, std=std)
        if split not in DEFAULT_SIZES:
            from faceparse.errors import FaceParseError

            raise FaceParseError(f"synthetic split must be one of {list(DEFAULT_SIZES)}, got '{split}'")
        self.split = split
        self.num_samples = DEFAULT_SIZES[split] if num_samples is None else int(num_samples)
        self.seed = seed
        self.render_size = int(render_size or image_size)
        self.occluder_prob = occluder_prob if occluders else 0.0
        self.label_set: LabelSet = get_label_set("celebamask_hq")
        self.landmark_flip = FIVE_POINT_FLIP
        self._cache: dict[int, dict[str, Any]] | None = {} if cache else None

    def __len__(self) -> int:
        return self.num_samples

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(self.split.encode()), index])

    def load_raw(self, index: int) -> dict[str, Any]:
        if self._cache is not None and index in self._cache:
            return {k: (v.copy() if isinstance(v, (np.ndarray, dict)) else v) for k, v in self._cache[index].items()}
        sample = self._render(index)
        if self._cache is not None:
            self._cache[index] = {k: (v.copy() if isinstance(v, (np.ndarray, dict)) else v) for k, v in sample.items()}
        return sample

    def _render(self, index: int) -> dict[str, Any]:
        sample = render_face(self.rng(index), self.render_size, self.occluder_prob)
        sample["labels"] = self.labels_from_mask(sample["mask"], self.label_set.num_classes)
        sample["meta"] = {"index": index, "split": self.split, "name": f"synthetic_{self.split}_{index:06d}"}
        return sample

    def write_celebamask_hq(self, root: str | Path, num_faces: int | None = None, mask_size: int | None = None) -> Path:
        """Write faces to disk in the real CelebAMask-HQ layout (see REFERENCE.md §1).

        ``CelebA-HQ-img/<id>.jpg`` at twice the mask size (as 1024 vs 512 in the real data),
        ``CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<part>.png`` (0/255, only present parts) and
        ``CelebA-HQ-to-CelebA-mapping.txt`` whose ``orig_idx`` puts the first 80 % of ids in train,
        the next 10 % in val and the rest in test. Faces come from this dataset's split stream.
        """
        root = Path(root)
        n = len(self) if num_faces is None else int(num_faces)
        size = int(mask_size or self.render_size)
        (root / "CelebA-HQ-img").mkdir(parents=True, exist_ok=True)
        n_train, n_val = int(round(0.8 * n)), int(round(0.1 * n))
        lines = ["idx orig_idx orig_file"]
        for i in range(n):
            s = render_face(self.rng(i), size, self.occluder_prob)
            big = cv2.resize(s["image"], (2 * size, 2 * size), interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(
                str(root / "CelebA-HQ-img" / f"{i}.jpg"),
                cv2.cvtColor(big, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 95],
            )
            folder = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
            folder.mkdir(parents=True, exist_ok=True)
            for cls in range(1, CELEBAMASK_HQ.num_classes):
                part = s["mask"] == cls
                if part.any():
                    name = CELEBAMASK_HQ.source_names[cls]
                    cv2.imwrite(str(folder / f"{i:05d}_{name}.png"), part.astype(np.uint8) * 255)
            if i < n_train:
                orig = 1000 + i
            elif i < n_train + n_val:
                orig = 162771 + (i - n_train)
            else:
                orig = 182638 + (i - n_train - n_val)
            lines.append(f"{i} {orig} {orig + 1:06d}.jpg")
        (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(lines) + "\n")
        return root
