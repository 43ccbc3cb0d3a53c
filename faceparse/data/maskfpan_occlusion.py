"""Occlusion synthesis: procedural and user-supplied occluders pasted on faces.

Mask-FPAN (Li et al., 2023, Sec. IV-A) builds CelebAMaskOcc-HQ by pasting hands, masks and
microphones on CelebAMask-HQ faces; the public practice it follows (Voo et al., 2022) scales
occluders to the face box, jitters them with an affine transform and alpha-pastes them with a
soft (eroded / blurred) alpha. No library provides this, so it is written here with numpy + OpenCV:

* :func:`make_occluder` draws an RGBA occluder: ``blob`` (textured random closed Bezier curve),
  ``hand`` (palm, four fingers and a thumb in a skin tone), ``bar`` (a textured rod),
  ``mask`` (a surgical-mask-like band for the lower face), ``microphone`` (handle + meshed head);
  ``folder`` draws one of the user's RGBA cut-outs (``occluder_dir``).
* :class:`OcclusionSynthesis` pastes occluders on a raw numpy sample and returns the occlusion
  mask, which is exactly the combined pasted alpha > 0.5; labels under it change according to
  ``label_mode``: ``"class"`` writes an ``occlusion`` class (CelebAMaskOcc-HQ style; the label set
  grows by one class unless it already has one), ``"remove"`` writes background (or ignore, with
  ``remove_to="ignore"``), ``"none"`` leaves the labels (occlusion present but unlabelled, the
  semi-supervised case of Mask-FPAN); landmarks under an occluder are flagged occluded.
* :class:`OccludedFaces` (registered dataset ``"occluded"``) wraps any dataset (name or instance)
  and applies the synthesis deterministically per (seed, index, epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceparse.data.base import FaceDataset
from faceparse.errors import FaceParseError
from faceparse.images import IMAGENET_MEAN, IMAGENET_STD
from faceparse.labels import IGNORE_INDEX, LabelSet, get_label_set
from faceparse.registry import DATASETS

PROCEDURAL_KINDS = ("blob", "hand", "bar", "mask", "microphone")
# Classes that make up the face box when a sample has no ``face_box``.
_FACE_CLASSES = (
    "skin",
    "face",
    "nose",
    "left_eye",
    "right_eye",
    "left_brow",
    "right_brow",
    "mouth",
    "upper_lip",
    "lower_lip",
    "left_ear",
    "right_ear",
)
_IMAGE_SUFFIXES = (".png", ".webp", ".tif", ".tiff")


# --------------------------------------------------------------------------- label sets
def occlusion_label_set(label_set: str | LabelSet) -> LabelSet:
    """``label_set`` with an ``occlusion`` class appended (unchanged if it already has one).

    ``celebamask_hq`` becomes the ``celebamask_hq_occ`` preset (CelebAMaskOcc-HQ style).
    """
    ls = get_label_set(label_set)
    if "occlusion" in ls:
        return ls
    if ls.name == "celebamask_hq":
        return get_label_set("celebamask_hq_occ")
    return LabelSet(
        name=f"{ls.name}_occ",
        classes=(*ls.classes, "occlusion"),
        palette=(*ls.palette, (128, 0, 255)),
        flip_pairs=ls.flip_pairs,
        background=ls.background,
        source_names=(*ls.source_names, "occlusion"),
    )


# --------------------------------------------------------------------------- occluder drawing
def _texture(rng: np.random.Generator, size: int, base: np.ndarray, amount: float = 40.0) -> np.ndarray:
    """Low-frequency noise + optional stripes around a base colour (size x size x 3 uint8)."""
    cells = int(rng.integers(2, 6))
    noise = rng.normal(0.0, 1.0, (cells, cells, 3)).astype(np.float32)
    noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    tex = base[None, None, :].astype(np.float32) + amount * noise
    if rng.random() < 0.5:
        freq = rng.uniform(4, 14) * 2 * np.pi / size
        ang = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        stripes = np.sin(freq * (xx * np.cos(ang) + yy * np.sin(ang)))
        tex += rng.uniform(10, 40) * stripes[..., None]
    return np.clip(tex, 0, 255).astype(np.uint8)


def _closed_bezier(points: np.ndarray, steps: int = 24) -> np.ndarray:
    """Smooth closed curve through midpoints of ``points`` (quadratic Bezier segments)."""
    n = len(points)
    out = []
    t = np.linspace(0.0, 1.0, steps, endpoint=False)[:, None]
    for i in range(n):
        p0 = (points[i - 1] + points[i]) / 2
        p1 = points[i]
        p2 = (points[i] + points[(i + 1) % n]) / 2
        out.append((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2)
    return np.concatenate(out)


def _capsule(alpha: np.ndarray, p0: Sequence[float], p1: Sequence[float], width: float) -> None:
    """Draw a rounded segment (line with round caps) into an 8-bit alpha."""
    a = tuple(int(round(v)) for v in p0)
    b = tuple(int(round(v)) for v in p1)
    w = max(1, int(round(width)))
    cv2.line(alpha, a, b, 255, w, cv2.LINE_8)
    cv2.circle(alpha, a, w // 2, 255, -1)
    cv2.circle(alpha, b, w // 2, 255, -1)


def _skin(rng: np.random.Generator) -> np.ndarray:
    tones = np.array([[235, 200, 170], [210, 160, 120], [170, 120, 80], [120, 80, 55], [90, 60, 40]], np.float32)
    return tones[rng.integers(len(tones))] + rng.normal(0, 8, 3)


def make_occluder(kind: str, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """An RGBA (``size x size x 4`` uint8) procedural occluder of the given ``kind``.

    The alpha is binary (0/255); softening happens when pasting.
    """
    s = size
    alpha = np.zeros((s, s), np.uint8)
    if kind == "blob":
        n = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(0.25, 0.48, n) * s
        pts = np.stack([s / 2 + rad * np.cos(ang), s / 2 + rad * np.sin(ang)], 1)
        curve = _closed_bezier(pts)
        cv2.fillPoly(alpha, [np.round(curve).astype(np.int32)], 255)
        rgb = _texture(rng, s, rng.uniform(20, 235, 3), amount=rng.uniform(15, 50))
    elif kind == "hand":
        # Palm (ellipse) in the lower half, four fingers fanning upwards, thumb to one side.
        cx, cy = s * 0.5, s * 0.68
        pw, ph = s * rng.uniform(0.17, 0.22), s * rng.uniform(0.2, 0.26)
        cv2.ellipse(alpha, (int(cx), int(cy)), (int(pw), int(ph)), 0, 0, 360, 255, -1)
        fw = s * rng.uniform(0.07, 0.09)
        for k, dx in enumerate(np.linspace(-0.75, 0.75, 4)):
            base = (cx + dx * pw, cy - ph * 0.6)
            length = s * rng.uniform(0.22, 0.32) * (0.85 if k in (0, 3) else 1.0)
            tilt = np.deg2rad(dx * 12 + rng.normal(0, 4))
            tip = (base[0] + length * np.sin(tilt), base[1] - length * np.cos(tilt))
            _capsule(alpha, base, tip, fw)
        side = 1 if rng.random() < 0.5 else -1
        tb = (cx + side * pw * 0.8, cy)
        tt = (cx + side * pw * 1.8, cy - ph * 0.7)
        _capsule(alpha, tb, tt, fw * 1.1)
        rgb = _texture(rng, s, _skin(rng), amount=12)
    elif kind == "bar":
        w = s * rng.uniform(0.1, 0.22)
        _capsule(alpha, (s * 0.5, s * 0.06), (s * 0.5, s * 0.94), w)
        rgb = _texture(rng, s, rng.uniform(20, 235, 3), amount=25)
    elif kind == "mask":
        x0, x1 = s * 0.08, s * 0.92
        y0, y1 = s * 0.3, s * 0.75
        rect = np.array([[x0, y0], [x1, y0], [x1 - s * 0.05, y1], [x0 + s * 0.05, y1]], np.float32)
        cv2.fillPoly(alpha, [np.round(_closed_bezier(rect, 12)).astype(np.int32)], 255)
        cv2.fillConvexPoly(alpha, np.round(rect).astype(np.int32), 255)
        colours = np.array([[220, 230, 240], [120, 170, 220], [40, 40, 45], [235, 235, 235]], np.float32)
        rgb = _texture(rng, s, colours[rng.integers(len(colours))], amount=8)
        for y in np.linspace(y0 + 0.1 * (y1 - y0), y1 - 0.1 * (y1 - y0), 3):  # pleats
            cv2.line(rgb, (int(x0), int(y)), (int(x1), int(y)), (150, 150, 160), max(1, s // 64))
    elif kind == "microphone":
        head_r = s * rng.uniform(0.14, 0.19)
        hc = (s * 0.5, s * 0.08 + head_r)
        _capsule(alpha, (hc[0], hc[1] + head_r * 0.5), (s * 0.5, s * 0.96), s * rng.uniform(0.09, 0.13))
        cv2.circle(alpha, (int(hc[0]), int(hc[1])), int(head_r), 255, -1)
        rgb = _texture(rng, s, np.array([30.0, 30.0, 35.0]), amount=10)
        mesh = np.zeros((s, s), np.uint8)
        cv2.circle(mesh, (int(hc[0]), int(hc[1])), int(head_r), 255, -1)
        grid = np.zeros((s, s), bool)
        step = max(2, s // 24)
        grid[::step, :] = grid[:, ::step] = True
        rgb[(mesh > 0) & ~grid] = (140, 140, 145)
    else:
        raise FaceParseError(f"unknown occluder kind '{kind}'; expected one of {PROCEDURAL_KINDS + ('folder',)}")
    return np.dstack([rgb, alpha])


def load_occluder_folder(folder: str | Path) -> list[np.ndarray]:
    """Read every RGBA cut-out (PNG/WebP/TIFF with an alpha channel) in ``folder``, as RGBA."""
    root = Path(folder)
    if not root.is_dir():
        raise FaceParseError(f"occluder_dir '{folder}' is not a directory (expected a folder of RGBA PNG cut-outs)")
    out = []
    for path in sorted(p for p in root.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None or img.ndim != 3 or img.shape[2] != 4:
            found = "unreadable" if img is None else f"shape {img.shape}"
            raise FaceParseError(f"occluder '{path}' must be an RGBA image with an alpha channel; found {found}")
        if img.dtype != np.uint8:  # 16-bit / float cut-outs: scale colour and alpha by their range
            from faceparse.images import array_to_rgb

            rgb = array_to_rgb(img[..., 2::-1], where=f"occluder '{path}'")
            alpha = array_to_rgb(img[..., 3], where=f"occluder '{path}' alpha")[..., 0]
            out.append(np.dstack([rgb, alpha]))
            continue
        out.append(cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA))
    if not out:
        raise FaceParseError(f"occluder_dir '{folder}' holds no RGBA images ({', '.join(_IMAGE_SUFFIXES)})")
    return out


# --------------------------------------------------------------------------- synthesis
class OcclusionSynthesis:
    """Paste occluders on a raw numpy face sample (a transform for ``FaceDataset.load_raw`` output).

    Each occluder is scaled to ``scale`` x the longer side of the face box, rotated by up to
    ``rotate`` degrees, stretched by ``aspect`` jitter, centred at a random point of the face box
    (``mask`` occluders at the lower face, ``microphone`` near the mouth), its alpha eroded by
    ``erode`` px and blurred with a Gaussian of ``blur`` x occluder size, then alpha-blended:
    ``image = (1 - a) image + a occluder``. Several occluders combine as ``a = 1 - prod(1 - a_k)``.

    Args:
        label_set: label set of the incoming masks.
        label_mode: ``"class"`` | ``"remove"`` | ``"none"`` (see the module docstring).
        kinds: occluder kinds to draw from (``PROCEDURAL_KINDS`` and/or ``"folder"``).
        kind_weights: sampling weights of ``kinds`` (uniform by default).
        occluder_dir: folder of RGBA cut-outs (enables kind ``"folder"``; added to ``kinds``).
        num_occluders: inclusive (min, max) number of occluders per face.
        p: probability that a face gets any occluder.
        scale: (min, max) occluder size relative to the face box's longer side.
        rotate: maximum absolute rotation in degrees.
        aspect: (min, max) horizontal stretch.
        erode: alpha erosion in pixels (at output resolution) before blurring.
        blur: Gaussian sigma of the alpha as a fraction of the occluder size (0 = hard edge).
        remove_to: ``"background"`` or ``"ignore"`` for ``label_mode="remove"``.
        return_alpha: also return the float alpha as ``occluder_alpha`` (H x W, for inspection).
    """

    def __init__(
        self,
        label_set: str | LabelSet = "celebamask_hq",
        label_mode: str = "class",
        kinds: Sequence[str] = PROCEDURAL_KINDS,
        kind_weights: Sequence[float] | None = None,
        occluder_dir: str | None = None,
        num_occluders: Sequence[int] = (1, 2),
        p: float = 1.0,
        scale: Sequence[float] = (0.4, 0.8),
        rotate: float = 30.0,
        aspect: Sequence[float] = (0.8, 1.25),
        erode: int = 0,
        blur: float = 0.02,
        remove_to: str = "background",
        return_alpha: bool = False,
    ) -> None:
        if label_mode not in ("class", "remove", "none"):
            raise FaceParseError(f"label_mode must be 'class', 'remove' or 'none'; got {label_mode!r}")
        if remove_to not in ("background", "ignore"):
            raise FaceParseError(f"remove_to must be 'background' or 'ignore'; got {remove_to!r}")
        self.in_label_set = get_label_set(label_set)
        self.label_mode = label_mode
        self.label_set = occlusion_label_set(self.in_label_set) if label_mode == "class" else self.in_label_set
        kinds = list(kinds)
        self.cutouts: list[np.ndarray] = []
        if occluder_dir is not None:
            self.cutouts = load_occluder_folder(occluder_dir)
            if "folder" not in kinds:
                kinds.append("folder")
        elif "folder" in kinds:
            raise FaceParseError("occluder kind 'folder' needs occluder_dir (a folder of RGBA cut-outs)")
        for k in kinds:
            if k not in PROCEDURAL_KINDS + ("folder",):
                raise FaceParseError(f"unknown occluder kind '{k}'; expected one of {PROCEDURAL_KINDS + ('folder',)}")
        self.kinds = kinds
        w = np.ones(len(kinds)) if kind_weights is None else np.asarray(kind_weights, np.float64)
        if len(w) != len(kinds) or (w < 0).any() or w.sum() <= 0:
            raise FaceParseError(f"kind_weights {list(w)} must be {len(kinds)} non-negative numbers, not all 0")
        self.kind_p = w / w.sum()
        self.num_occluders = (int(num_occluders[0]), int(num_occluders[1]))
        self.p, self.scale, self.rotate, self.aspect = p, tuple(scale), rotate, tuple(aspect)
        self.erode, self.blur, self.return_alpha = erode, blur, return_alpha
        self.remove_to = remove_to
        if label_mode == "class":
            self.target = self.label_set.index("occlusion")
        elif label_mode == "remove":
            self.target = self.label_set.background if remove_to == "background" else IGNORE_INDEX
        else:
            self.target = None
        mapping = self.in_label_set.mapping_to(self.label_set) if label_mode == "class" else None
        self._lut = mapping

    # -- geometry
    def face_box(self, sample: dict[str, Any]) -> np.ndarray:
        """The sample's ``face_box``, else the box of face classes in ``mask``, else the image."""
        h, w = sample["image"].shape[:2]
        if sample.get("face_box") is not None:
            return np.asarray(sample["face_box"], np.float32)
        mask = sample.get("mask")
        if mask is not None:
            ids = [self.in_label_set.index(c) for c in _FACE_CLASSES if c in self.in_label_set]
            ys, xs = np.nonzero(np.isin(mask, ids))
            if len(xs):
                return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)
        return np.array([0, 0, w - 1, h - 1], np.float32)

    def _paste_one(self, kind: str, rng: np.random.Generator, box: np.ndarray, hw: tuple[int, int]):
        h, w = hw
        bw, bh = max(2.0, box[2] - box[0]), max(2.0, box[3] - box[1])
        side = max(bw, bh) * rng.uniform(*self.scale)
        if kind == "folder":
            rgba = self.cutouts[int(rng.integers(len(self.cutouts)))]
        else:
            rgba = make_occluder(kind, rng, size=int(np.clip(round(side), 32, 256)))
        ph, pw = rgba.shape[:2]
        if kind == "mask":
            centre = (box[0] + bw * rng.uniform(0.45, 0.55), box[1] + bh * rng.uniform(0.7, 0.8))
            side = max(bw, bh) * rng.uniform(0.8, 1.0)
        elif kind == "microphone":
            centre = (box[0] + bw * rng.uniform(0.35, 0.65), box[1] + bh * rng.uniform(0.85, 1.1))
        else:
            centre = (box[0] + bw * rng.uniform(0.1, 0.9), box[1] + bh * rng.uniform(0.1, 0.9))
        zoom = side / max(ph, pw)
        sx = zoom * rng.uniform(*self.aspect)
        angle = np.deg2rad(rng.uniform(-self.rotate, self.rotate))
        c, s = np.cos(angle), np.sin(angle)
        lin = np.array([[c * sx, -s * zoom], [s * sx, c * zoom]], np.float64)
        t = np.asarray(centre, np.float64) - lin @ np.array([pw / 2.0, ph / 2.0])
        m = np.hstack([lin, t[:, None]])
        rgb = cv2.warpAffine(rgba[..., :3], m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
        a = cv2.warpAffine(rgba[..., 3], m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
        a = a.astype(np.float32) / 255.0
        if self.erode > 0:
            a = cv2.erode(a, np.ones((2 * self.erode + 1,) * 2, np.uint8))
        if self.blur > 0:
            sigma = max(0.3, self.blur * side)
            a = cv2.GaussianBlur(a, (0, 0), sigma)
        return rgb.astype(np.float32), np.clip(a, 0.0, 1.0)

    def __call__(self, sample: dict[str, Any], rng: np.random.Generator | int | None = None) -> dict[str, Any]:
        """Occlude a raw sample; returns a new dict with ``occlusion`` (uint8 0/1) and updated
        ``image``, ``mask`` and ``landmark_occluded``."""
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        out = dict(sample)
        image = np.asarray(sample["image"])
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        h, w = image.shape[:2]
        alpha = np.zeros((h, w), np.float32)
        img = image.astype(np.float32)
        if rng.random() < self.p:
            box = self.face_box(sample)
            n = int(rng.integers(self.num_occluders[0], self.num_occluders[1] + 1))
            for _ in range(n):
                kind = self.kinds[int(rng.choice(len(self.kinds), p=self.kind_p))]
                rgb, a = self._paste_one(kind, rng, box, (h, w))
                img = img * (1.0 - a[..., None]) + rgb * a[..., None]
                alpha = 1.0 - (1.0 - alpha) * (1.0 - a)
        occ = alpha > 0.5
        out["image"] = np.clip(np.round(img), 0, 255).astype(np.uint8)
        prev = sample.get("occlusion")
        out["occlusion"] = (occ | (np.asarray(prev) > 0) if prev is not None else occ).astype(np.uint8)
        if sample.get("mask") is not None:
            mask = np.asarray(sample["mask"]).astype(np.int64)
            if self._lut is not None:
                mask = self._lut[mask]
            if self.target is not None:
                mask = np.where(occ, self.target, mask)
            out["mask"] = mask.astype(np.uint8)
        if sample.get("landmarks") is not None:
            pts = np.asarray(sample["landmarks"], np.float32).reshape(-1, 2)
            xi = np.round(pts[:, 0]).astype(np.int64)
            yi = np.round(pts[:, 1]).astype(np.int64)
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            flags = np.zeros(len(pts), bool)
            flags[inside] = occ[yi[inside], xi[inside]]
            if sample.get("landmark_occluded") is not None:
                flags |= np.asarray(sample["landmark_occluded"], bool)
            out["landmark_occluded"] = flags
        if self.return_alpha:
            out["occluder_alpha"] = alpha
        return out


# --------------------------------------------------------------------------- dataset wrapper
@DATASETS.register("occluded")
class OccludedFaces(FaceDataset):
    """Any face dataset with synthetic occluders pasted on (``build_dataset("occluded", ...)``).

    The occluders of item ``i`` are drawn from ``np.random.default_rng([seed, i, epoch])``, so a
    dataset is deterministic for a seed; call ``set_epoch`` for fresh occluders each epoch.
    ``unlabelled_fraction`` of the items (chosen by seed) keep their original labels under the
    occluder (``label_mode="none"`` for them; ``meta["occlusion_labelled"]`` is False) while the
    sample still carries the true ``occlusion`` mask for evaluation: Mask-FPAN's "occluded
    faces without occlusion labels", which its DOM relabels.

    Args:
        base: a registered dataset name or a ``FaceDataset`` instance.
        base_kwargs: keyword arguments for building ``base`` by name.
        image_size, augment, transform, mean, std: as for :class:`FaceDataset`; ``image_size``
            (and ``split``/extra keyword arguments) are also passed to ``base`` when built by name.
        seed: occlusion seed.
        unlabelled_fraction: fraction of items whose occlusion is left unlabelled.
        return_clean: also return the face before the occluders were pasted as ``clean`` (3 x H x W,
            transformed and normalised exactly like ``image``): the (occluded, clean) pairs that
            train Mask-FPAN's de-occlusion module (Eq. 1).
        label_mode, kinds, kind_weights, occluder_dir, num_occluders, p, scale, rotate, aspect,
            erode, blur, remove_to: see :class:`OcclusionSynthesis`.
        **kwargs: any other keyword is passed to the base dataset's constructor.
    """

    def __init__(
        self,
        base: str | FaceDataset = "synthetic",
        base_kwargs: dict | None = None,
        image_size: int | Sequence[int] | None = 512,
        augment: bool = False,
        transform: Any = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
        unlabelled_fraction: float = 0.0,
        return_clean: bool = False,
        label_mode: str = "class",
        kinds: Sequence[str] = PROCEDURAL_KINDS,
        kind_weights: Sequence[float] | None = None,
        occluder_dir: str | None = None,
        num_occluders: Sequence[int] = (1, 2),
        p: float = 1.0,
        scale: Sequence[float] = (0.4, 0.8),
        rotate: float = 30.0,
        aspect: Sequence[float] = (0.8, 1.25),
        erode: int = 0,
        blur: float = 0.02,
        remove_to: str = "background",
        **kwargs: Any,
    ) -> None:
        super().__init__(image_size=image_size, augment=augment, transform=transform, mean=mean, std=std)
        if isinstance(base, str):
            bkw = {**kwargs, **(base_kwargs or {})}
            bkw.setdefault("image_size", image_size)
            if base == "synthetic":
                bkw.setdefault("occluders", False)  # this wrapper draws the occluders
            base = DATASETS.build(base, **bkw)
        elif not isinstance(base, FaceDataset):
            raise FaceParseError(f"base must be a dataset name or a FaceDataset; got {type(base).__name__}")
        self.base = base
        self.seed, self.epoch = int(seed), 0
        self.unlabelled_fraction = float(unlabelled_fraction)
        self.return_clean = bool(return_clean)
        synth = {
            "label_mode": label_mode,
            "kinds": kinds,
            "kind_weights": kind_weights,
            "occluder_dir": occluder_dir,
            "num_occluders": num_occluders,
            "p": p,
            "scale": scale,
            "rotate": rotate,
            "aspect": aspect,
            "erode": erode,
            "blur": blur,
            "remove_to": remove_to,
        }
        self.synth = OcclusionSynthesis(label_set=base.label_set, **synth)
        self.synth_unlabelled = OcclusionSynthesis(label_set=base.label_set, **{**synth, "label_mode": "none"})
        self.label_set = self.synth.label_set
        self.landmark_flip = getattr(base, "landmark_flip", None)
        self._lut = base.label_set.mapping_to(self.label_set) if self.label_set is not base.label_set else None

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        """Draw new occluders (deterministically) for another epoch."""
        self.epoch = int(epoch)

    def is_labelled(self, index: int) -> bool:
        """Whether item ``index`` has its occlusion labelled (fixed per seed, not per epoch)."""
        if self.unlabelled_fraction <= 0:
            return True
        return bool(np.random.default_rng([self.seed, index, 7919]).random() >= self.unlabelled_fraction)

    def load_raw(self, index: int) -> dict[str, Any]:
        raw = self.base.load_raw(index)
        rng = np.random.default_rng([self.seed, index, self.epoch])
        labelled = self.is_labelled(index)
        if labelled:
            out = self.synth(raw, rng)
        else:
            out = self.synth_unlabelled(raw, rng)
            if self._lut is not None and out.get("mask") is not None:
                out["mask"] = self._lut[out["mask"].astype(np.int64)].astype(np.uint8)
        if "labels" in out and out.get("mask") is not None:
            out["labels"] = self.labels_from_mask(out["mask"], self.label_set.num_classes)
        if self.return_clean:
            clean = np.asarray(raw["image"])
            out["clean"] = np.repeat(clean[..., None], 3, axis=2) if clean.ndim == 2 else clean
        meta = dict(out.get("meta", {}))
        meta["occlusion_labelled"] = labelled
        out["meta"] = meta
        return out
