"""Occlusion-free reference faces for S3POT (paper Sec. 3.1, "Reference Generation").

S3POT contrasts a face with an occlusion-free version of itself. The paper makes that reference with
E4S regional GAN inversion conditioned on the image and its parsing mask. faceparse does not ship a
face generator; it offers a small interface with two sources:

- :class:`FolderReferences`: references you generated yourself (E4S, any inpainting or
  de-occlusion model), one file per image, found by the image's file name.
- :class:`InpaintReferences`: a built-in OpenCV fallback that needs nothing but the image and its
  face region / parsing map. Inside every parsing region it marks pixels whose colour is far from
  the region's robust (median) colour as suspected occluders and inpaints them from their
  surroundings (``cv2.inpaint``, Telea). It removes occluders whose colour differs from the face
  part they cover (sunglasses on skin, a blue cup, a microphone); it cannot remove skin-coloured
  occluders (hands, fingers) or invent facial structure (an eye hidden by a hand stays skin), and
  with a single face region instead of a parsing map it also flattens eyes, brows and lips. It lets
  the pipeline run end to end; for the paper's accuracy use generator references.

Every source is a callable ``source(image, regions=None, name=None) -> reference`` on ``H x W x 3``
uint8 RGB arrays; ``regions`` is ``H x W`` (0 = outside the face; each nonzero value one parsing
region; a bool mask is one region).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from faceparse.errors import FaceParseError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ReferenceSource(Protocol):
    """Anything that maps an RGB uint8 image (+ optional regions and file name) to its reference."""

    def __call__(self, image: np.ndarray, regions: np.ndarray | None = None, name: str | None = None) -> np.ndarray: ...


class FolderReferences:
    """User-provided references: ``root/<stem><suffix><ext>`` (then ``root/<stem><ext>``).

    Args:
        root: folder of reference images.
        suffix: appended to the image's stem (the public S3POT tooling writes ``<stem>_ref.png``).
        extensions: file extensions tried in order.
    """

    def __init__(self, root: str | Path, suffix: str = "_ref", extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FaceParseError(
                f"reference folder '{self.root}' does not exist (expected a folder of reference images)"
            )
        self.suffix = suffix
        self.extensions = tuple(extensions)

    def path_for(self, name: str) -> Path:
        stem = Path(name).stem
        tried = []
        for base in (stem + self.suffix, stem):
            for ext in self.extensions:
                p = self.root / (base + ext)
                tried.append(p.name)
                if p.is_file():
                    return p
        raise FaceParseError(f"no reference for '{name}' in '{self.root}': tried {', '.join(tried[:4])}, ...")

    def __call__(self, image: np.ndarray, regions: np.ndarray | None = None, name: str | None = None) -> np.ndarray:
        import cv2

        if name is None:
            raise FaceParseError("FolderReferences needs the image's file name to find its reference")
        path = self.path_for(name)
        from faceparse.images import read_image

        ref = read_image(path, expected="an occlusion-free reference image")  # 16-bit/float scaled
        if ref.shape[:2] != image.shape[:2]:
            ref = cv2.resize(ref, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)
        return ref


class InpaintReferences:
    """OpenCV fallback reference: inpaint colour outliers inside each parsing region.

    A pixel of region ``r`` is an outlier when its CIELAB distance ``d`` to the region's median
    colour exceeds ``max(min_distance, median(d) + threshold * 1.4826 * MAD(d))``. Outliers are
    cleaned with a 3 x 3 opening, dilated by ``dilate`` pixels and inpainted with ``cv2.inpaint``.

    Args:
        threshold: robust z-score above which a pixel is an outlier.
        min_distance: smallest Lab distance ever called an outlier.
        radius: inpainting radius in pixels.
        dilate: dilation of the outlier mask in pixels (covers blended occluder borders).
        method: ``"telea"`` or ``"ns"`` (``cv2.INPAINT_TELEA`` / ``cv2.INPAINT_NS``).
    """

    def __init__(
        self,
        threshold: float = 2.5,
        min_distance: float = 15.0,
        radius: int = 5,
        dilate: int = 2,
        method: str = "telea",
    ) -> None:
        if method not in ("telea", "ns"):
            raise FaceParseError(f"InpaintReferences method must be 'telea' or 'ns', got '{method}'")
        self.threshold = threshold
        self.min_distance = min_distance
        self.radius = radius
        self.dilate = dilate
        self.method = method

    def outliers(self, image: np.ndarray, regions: np.ndarray | None = None) -> np.ndarray:
        """Bool ``H x W`` mask of suspected occluder pixels."""
        import cv2

        if regions is None:
            regions = np.ones(image.shape[:2], dtype=np.int64)
        regions = np.asarray(regions).astype(np.int64)
        if regions.shape != image.shape[:2]:
            raise FaceParseError(f"regions must be H x W = {image.shape[:2]} like the image, got {regions.shape}")
        lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB).astype(np.float32)
        # OpenCV stores 8-bit Lab as L*255/100, a+128, b+128: back to CIELAB units.
        lab[..., 0] *= 100.0 / 255.0
        lab[..., 1:] -= 128.0
        out = np.zeros(image.shape[:2], dtype=bool)
        for r in np.unique(regions):
            if r == 0:
                continue
            sel = regions == r
            if sel.sum() < 4:
                continue
            pix = lab[sel]
            med = np.median(pix, axis=0)
            d = np.linalg.norm(pix - med, axis=1)
            md = float(np.median(d))
            mad = float(np.median(np.abs(d - md)))
            cut = max(self.min_distance, md + self.threshold * 1.4826 * mad)
            out[sel] = d > cut
        if out.any():
            u8 = out.astype(np.uint8)
            u8 = cv2.morphologyEx(u8, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
            if self.dilate > 0:
                k = 2 * self.dilate + 1
                u8 = cv2.dilate(u8, np.ones((k, k), np.uint8))
            out = u8.astype(bool) & (regions != 0)
        return out

    def __call__(self, image: np.ndarray, regions: np.ndarray | None = None, name: str | None = None) -> np.ndarray:
        import cv2

        image = np.ascontiguousarray(image, dtype=np.uint8)
        mask = self.outliers(image, regions)
        if not mask.any():
            return image.copy()
        flag = cv2.INPAINT_TELEA if self.method == "telea" else cv2.INPAINT_NS
        return cv2.inpaint(image, mask.astype(np.uint8) * 255, self.radius, flag)


def build_reference_source(spec: str | Path | ReferenceSource | None = None) -> ReferenceSource:
    """``None`` / ``"inpaint"``: the OpenCV fallback; a folder path: :class:`FolderReferences`."""
    if spec is None or spec == "inpaint":
        return InpaintReferences()
    if callable(spec):
        return spec
    return FolderReferences(spec)


def _denormalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    img = ((x.detach().float() * s + m) * 255.0).clamp(0, 255).round()
    return img.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _normalise(imgs: np.ndarray, like: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(imgs)).to(like.device).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean, device=like.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=like.device).view(1, 3, 1, 1)
    return ((t - m) / s).to(like.dtype)


def references_for_batch(
    x: torch.Tensor,
    regions: torch.Tensor | None,
    mean: Sequence[float],
    std: Sequence[float],
    source: ReferenceSource | None = None,
    names: Sequence[str] | None = None,
) -> torch.Tensor:
    """References for a normalised batch ``x`` (``B x 3 x H x W``), normalised the same way.

    ``regions`` is ``B x H x W`` (see the module docstring); ``names`` are the images' file names
    (needed by :class:`FolderReferences`).
    """
    source = source or InpaintReferences()
    imgs = _denormalise(x, mean, std)
    regs = None if regions is None else regions.detach().cpu().numpy()
    refs = np.stack(
        [
            source(imgs[i], None if regs is None else regs[i], None if names is None else str(names[i]))
            for i in range(len(imgs))
        ]
    )
    return _normalise(refs, x, mean, std)


def inpaint_reference_batch(
    x: torch.Tensor, regions: torch.Tensor | None, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """The OpenCV fallback on a normalised batch (used by S3POT when no reference is given)."""
    return references_for_batch(x, regions, mean, std, InpaintReferences())
