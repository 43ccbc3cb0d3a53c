"""Albumentations pipelines and a face-aware horizontal flip.

A plain horizontal flip turns a left eye into a right eye: ``FaceFlip`` mirrors the image, maps
every label through the LabelSet's left/right lookup table and reorders mirrored landmarks, so
flipping twice is the identity.

Randomness: one call of :class:`FaceTransform` draws everything (flip, affine, colour jitter)
from a single ``numpy`` generator. With ``seed=`` it is ``default_rng(seed)``, so a sample's
augmentation depends only on that seed (the data module passes one per sample and epoch, see
:class:`faceparse.data.datamodule.SeededSampler`); without it the seed is drawn from numpy's
global generator, which ``seed_everything`` and :func:`faceparse.runtime.worker_init` seed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from faceparse.images import IMAGENET_MEAN, IMAGENET_STD
from faceparse.labels import IGNORE_INDEX, LabelSet, get_label_set

if TYPE_CHECKING:
    import albumentations as A

# Keys holding per-pixel integer maps that follow the image geometrically (nearest neighbour).
_MAP_KEYS = ("occlusion", "superpixels", "blobs")
# Keys holding a second RGB image of the same face (``clean``: the occlusion-free face of a synthetic
# occlusion pair, Mask-FPAN's DOM target); it gets every transform of ``image``, colour and
# normalisation included, with the same random draws (colour jitter's contrast step mixes in each
# image's own mean, so there the two differ slightly even where they agreed before).
_IMAGE_KEYS = ("clean",)

FIVE_POINT_FLIP = np.array([1, 0, 2, 4, 3])  # eyes and mouth corners swap, nose stays


def flip_sample(sample: dict[str, Any], label_lut: np.ndarray, landmark_flip: Sequence[int] | None) -> dict[str, Any]:
    """Mirror a raw numpy sample left <-> right, swapping left/right classes and landmarks.

    Landmark x uses the pixel-index convention: ``x' = W - 1 - x``.
    """
    out = dict(sample)
    w = sample["image"].shape[1]
    out["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
    for key in _IMAGE_KEYS:
        if key in sample:
            out[key] = np.ascontiguousarray(sample[key][:, ::-1])
    if "mask" in sample:
        out["mask"] = np.ascontiguousarray(label_lut[sample["mask"][:, ::-1].astype(np.int64)]).astype(
            sample["mask"].dtype
        )
    for key in _MAP_KEYS:
        if key in sample:
            out[key] = np.ascontiguousarray(sample[key][:, ::-1])
    if "landmarks" in sample:
        pts = np.asarray(sample["landmarks"], dtype=np.float32).copy()
        pts[:, 0] = w - 1 - pts[:, 0]
        order = np.asarray(landmark_flip) if landmark_flip is not None else np.arange(len(pts))
        out["landmarks"] = pts[order]
        if "landmark_occluded" in sample:
            out["landmark_occluded"] = np.asarray(sample["landmark_occluded"])[order]
    if "face_box" in sample:
        x0, y0, x1, y1 = np.asarray(sample["face_box"], dtype=np.float32)
        out["face_box"] = np.array([w - 1 - x1, y0, w - 1 - x0, y1], dtype=np.float32)
    return out


class FaceFlip:
    """Random face-aware horizontal flip with probability ``p`` (see :func:`flip_sample`)."""

    def __init__(self, label_set: LabelSet | str, landmark_flip: Sequence[int] | None = None, p: float = 0.5) -> None:
        self.label_set = get_label_set(label_set)
        self.lut = self.label_set.flip_lut
        self.landmark_flip = landmark_flip
        self.p = p

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
        """Flip when ``rng.random() < p``; ``rng`` defaults to numpy's global generator (seedable)."""
        r = rng.random() if rng is not None else np.random.random()
        return flip_sample(sample, self.lut, self.landmark_flip) if r < self.p else sample


class FaceTransform:
    """Face flip + an albumentations pipeline over a raw numpy sample dict.

    Geometric transforms move ``mask`` (nearest, pad = ignore), ``occlusion``/``superpixels``
    (nearest), ``landmarks`` and the corners of ``face_box`` together with the image.
    """

    # Transforms that draw nothing at random: an eval pipeline of only these never touches numpy's
    # global generator (prediction does not shift a user's random stream).
    _DETERMINISTIC = ("Resize", "Normalize", "PadIfNeeded", "LongestMaxSize", "SmallestMaxSize", "CenterCrop")

    def __init__(self, pipeline: A.Compose, flip: FaceFlip | None = None) -> None:
        self.pipeline = pipeline
        self.flip = flip
        self.random = flip is not None or any(
            type(t).__name__ not in self._DETERMINISTIC for t in getattr(pipeline, "transforms", [])
        )

    def __call__(self, sample: dict[str, Any], seed: int | None = None) -> dict[str, Any]:
        """Transform a raw sample; ``seed`` fixes its random draws (default: from numpy's global generator)."""
        if seed is None and self.random:
            seed = int(np.random.randint(0, 2**32, dtype=np.uint64))
        rng = np.random.default_rng(seed if seed is not None else 0)
        # albumentations 2 draws from the generators of the Compose (set_random_state hands them to
        # every transform): the same seed gives the same affine and colour jitter.
        self.pipeline.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        if self.flip is not None:
            sample = self.flip(sample, rng)
        image = sample["image"]
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        h, w = image.shape[:2]
        mask = sample.get("mask")
        args: dict[str, Any] = {"image": image, "mask": mask if mask is not None else np.zeros((h, w), np.uint8)}
        for key in _MAP_KEYS:
            if key in sample:
                args[key] = sample[key]
        for key in _IMAGE_KEYS:
            if key in sample:
                args[key] = sample[key] if sample[key].ndim == 3 else np.repeat(sample[key][..., None], 3, axis=2)
        points = np.zeros((0, 2), np.float32)
        n_lmk = 0
        if "landmarks" in sample:
            points = np.asarray(sample["landmarks"], np.float32).reshape(-1, 2)
            n_lmk = len(points)
        if "face_box" in sample:
            x0, y0, x1, y1 = np.asarray(sample["face_box"], np.float32)
            points = np.concatenate([points, np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], np.float32)])
        args["keypoints"] = points
        res = self.pipeline(**args)
        out = dict(sample)
        out["image"] = res["image"]
        if mask is not None:
            out["mask"] = res["mask"]
        for key in _MAP_KEYS + _IMAGE_KEYS:
            if key in sample:
                out[key] = res[key]
        kp = np.asarray(res["keypoints"], np.float32).reshape(-1, 2)
        if n_lmk:
            out["landmarks"] = kp[:n_lmk]
        if "face_box" in sample:
            c = kp[n_lmk : n_lmk + 4]
            out["face_box"] = np.array([c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()], np.float32)
        return out


def build_transforms(
    image_size: int | Sequence[int] | None,
    train: bool = False,
    label_set: LabelSet | str = "celebamask_hq",
    landmark_flip: Sequence[int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    flip: bool = True,
    scale: tuple[float, float] = (0.9, 1.1),
    rotate: float = 15.0,
    translate: float = 0.05,
    color_jitter: float = 0.2,
) -> FaceTransform:
    """Train or eval pipeline: (flip, affine jitter, colour jitter when ``train``), resize, normalise.

    ``image_size=None`` keeps each image's own size (evaluation at original resolution).
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A  # here, not at the top: listing datasets must not import albumentations

    ops: list[A.BasicTransform] = []
    if train and (rotate or translate or scale != (1.0, 1.0)):
        ops.append(
            A.Affine(
                scale=scale,
                rotate=(-rotate, rotate),
                translate_percent=(-translate, translate),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=IGNORE_INDEX,
                p=0.7,
            )
        )
    if image_size is not None:
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        ops.append(A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST))
    if train and color_jitter:
        ops.append(A.ColorJitter(color_jitter, color_jitter, color_jitter, color_jitter / 4, p=0.8))
    ops.append(A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0))
    pipeline = A.Compose(
        ops,
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
        additional_targets={**{k: "mask" for k in _MAP_KEYS}, **{k: "image" for k in _IMAGE_KEYS}},
    )
    face_flip = FaceFlip(label_set, landmark_flip, p=0.5) if train and flip else None
    return FaceTransform(pipeline, face_flip)
