"""Occlusion pseudo-labels by face segmentation transfer (Masi et al., CVPR 2020, §3.1).

The occlusion residual of Eq. 1 is the part of the full face region (convex hull of the face
contour) that a face segmentation network does not call face: rho = [f - f_occ]_+. It is
amplified by morphology (erosion twice with a 25 x 7 rectangle, dilation with a 45 x 45 ellipse)
and split into connected components; Eq. 2 then labels the pixels background (C = 0),
face (C = 1) or occlusion (C >= 2), and C gives the blobs of the consensus loss.

- :func:`factorize_occlusion`: one image (face mask + contour points or full-face mask).
- ``faceparse pseudo-labels occlusion``: runs it over a registered dataset, with the face masks
  of a teacher face-segmentation model (``--model``) or of the dataset's own label maps, and writes
  ``<key>.png`` (labels 0/1/2, label set ``cofw_occlusion``) and ``blobs/<key>.png`` (uint16 C).
- ``occlusion_pseudo`` dataset: a registered dataset whose masks are replaced by those labels and
  which carries the ``blobs`` map, for the consensus loss with ``blobs: given``.

The paper gets the full face from 64 projected 3D contour vertices (jaw line and forehead); here
any contour points work (``contour_indices`` selects them from the dataset's landmarks), and
``hull_scale`` enlarges a hull of inner landmarks (e.g. the 5 points of the synthetic faces).
Hand-written on OpenCV morphology: no library implements this procedure.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceparse.data.base import FaceDataset, build_wrapped_dataset, sample_key
from faceparse.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from faceparse.errors import FaceParseError
from faceparse.labels import LabelSet, get_label_set
from faceparse.registry import DATASETS

BACKGROUND, FACE, OCCLUSION = 0, 1, 2


@dataclass
class OcclusionPseudoLabel:
    """Result of :func:`factorize_occlusion`.

    ``labels``: H x W uint8 in {0 background, 1 face, 2 occlusion} (Eq. 2); ``blobs``: H x W
    int32 C map (0 background, 1 face, 2.. one id per occlusion component); ``full_face``: the
    hull mask f; ``residual``: the refined rho before the component split.
    """

    labels: np.ndarray
    blobs: np.ndarray
    full_face: np.ndarray
    residual: np.ndarray

    @property
    def num_occlusions(self) -> int:
        return int(self.blobs.max()) - 1 if self.blobs.max() >= 2 else 0


def full_face_mask(points: np.ndarray, shape: Sequence[int], scale: float = 1.0) -> np.ndarray:
    """Full-face mask f: the filled convex hull of face-contour points (N x 2, x y pixels).

    ``scale`` > 1 enlarges the hull about the points' centroid (e.g. to reach the forehead
    from jaw-line points, or a whole face from 5 inner landmarks).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(1)]
    mask = np.zeros(tuple(shape[:2]), np.uint8)
    if len(pts) < 3:
        return mask.astype(bool)
    if scale != 1.0:
        c = pts.mean(0)
        pts = c + (pts - c) * scale
    hull = cv2.convexHull(np.round(pts).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    return mask.astype(bool)


def _kernel(shape: int, size: tuple[int, int], scale: float) -> np.ndarray:
    w, h = (max(1, int(round(s * scale))) for s in size)
    return cv2.getStructuringElement(shape, (w, h))


def factorize_occlusion(
    face_mask: np.ndarray,
    full_face: np.ndarray | None = None,
    contour: np.ndarray | None = None,
    hull_scale: float = 1.0,
    erode_size: tuple[int, int] = (25, 7),
    erode_iterations: int = 2,
    dilate_size: tuple[int, int] = (45, 45),
    kernel_scale: float = 1.0,
    connectivity: int = 8,
    min_area: int = 0,
) -> OcclusionPseudoLabel:
    """Occlusion factorisation of §3.1 (Eq. 1 and 2) for one image.

    Args:
        face_mask: H x W bool/0-1, the face segmentation f_occ (the teacher's "face" pixels).
        full_face: H x W full-face mask f; if None it is the convex hull of ``contour``.
        contour: N x 2 face-contour points (x, y) for the hull (the paper projects 64 jaw-line
            and forehead vertices of a 3D face; any contour landmarks work).
        hull_scale: enlarge the hull about its centroid (see :func:`full_face_mask`).
        erode_size, erode_iterations, dilate_size: the paper's morphology, as OpenCV kernel
            sizes (width, height): erosion twice with a 25 x 7 rectangle, dilation with a
            45 x 45 ellipse. ``kernel_scale`` rescales them for images of another resolution.
        connectivity: 8 (default) or 4 for the occlusion components.
        min_area: drop occlusion components smaller than this (0 keeps all).

    Choices where the paper is silent: the dilated residual is clipped to the full-face hull
    (an occlusion is defined relative to the face region); face = f_occ minus occlusion.
    """
    f_occ = np.asarray(face_mask).astype(bool)
    h, w = f_occ.shape
    if full_face is None:
        if contour is None:
            raise ValueError("factorize_occlusion needs full_face or contour points")
        full_face = full_face_mask(contour, (h, w), hull_scale)
    f = np.asarray(full_face).astype(bool)
    if f.shape != f_occ.shape:
        raise ValueError(f"full_face {f.shape} and face_mask {f_occ.shape} differ in shape")
    # Eq. 1: the residual in {-1, 0, 1} truncated to {0, 1}
    rho = (f.astype(np.int8) - f_occ.astype(np.int8)).clip(0, 1).astype(np.uint8)
    rho = cv2.erode(rho, _kernel(cv2.MORPH_RECT, erode_size, kernel_scale), iterations=erode_iterations)
    rho = cv2.dilate(rho, _kernel(cv2.MORPH_ELLIPSE, dilate_size, kernel_scale))
    rho &= f.astype(np.uint8)
    n, cc = cv2.connectedComponents(rho, connectivity=connectivity, ltype=cv2.CV_32S)
    if min_area > 0 and n > 1:
        areas = np.bincount(cc.ravel(), minlength=n)
        keep = areas >= min_area
        keep[0] = False
        remap = np.zeros(n, np.int32)
        remap[keep] = np.arange(1, keep.sum() + 1, dtype=np.int32)
        cc = remap[cc]
    blobs = np.zeros((h, w), np.int32)
    blobs[f_occ] = FACE
    occ = cc > 0
    blobs[occ] = cc[occ] + 1  # occlusion blobs 2, 3, ...
    labels = np.minimum(blobs, OCCLUSION).astype(np.uint8)  # Eq. 2
    return OcclusionPseudoLabel(labels, blobs, f, occ)


META_NAME = "pseudo_labels.json"
BLOB_DIR = "blobs"


def face_class_ids(label_set: LabelSet, face_classes: Sequence[str] | None = None) -> list[int]:
    """Indices of the classes counted as face: ``face_classes`` by name, or every class that maps
    to ``face`` in the ``cofw_occlusion`` set (skin, nose, eyes, brows, ears, mouth, lips, glasses)."""
    if face_classes:
        return [label_set.index(c) for c in face_classes]
    lut = label_set.mapping_to(get_label_set("cofw_occlusion"))
    return [i for i in range(label_set.num_classes) if lut[i] == 1]


def pseudo_labels_occlusion(
    out_dir: str,
    dataset: str = "synthetic",
    root: str | None = None,
    split: str = "train",
    model: str | None = None,
    face_classes: list[str] | None = None,
    contour_indices: list[int] | None = None,
    hull_scale: float = 1.0,
    kernel_scale: float = 1.0,
    min_area: int = 0,
    image_size: int | None = None,
    num_samples: int | None = None,
    limit: int = 0,
    device: str = "cpu",
) -> str:
    """Write occlusion pseudo-labels (consensus paper §3.1) for a dataset.

    The face mask f_occ comes from a teacher model (--model, a save_pretrained folder) or, without
    one, from the dataset's label maps; the full face is the convex hull of the landmarks
    (--contour-indices selects contour points, --hull-scale enlarges the hull). Writes
    OUT_DIR/<key>.png (0 background, 1 face, 2 occlusion), OUT_DIR/blobs/<key>.png (uint16 blob ids:
    0 background, 1 face, 2.. occlusions) and OUT_DIR/pseudo_labels.json, at the original image size.
    """
    import torch
    from tqdm import tqdm

    kw: dict[str, Any] = {"split": split, "augment": False}
    if root is not None:
        kw["root"] = root
    if num_samples is not None:
        kw["num_samples"] = num_samples
    net = None
    if model:
        from faceparse.models.base import load_model

        net = load_model(model, map_location=device).to(device).eval()
        kw.update(mean=tuple(net.input_mean), std=tuple(net.input_std))
        kw["image_size"] = image_size or net.default_input_size
    elif image_size:
        kw["image_size"] = image_size
    ds = build_wrapped_dataset(dataset, **kw)
    src_ls = net.label_set if net is not None else ds.label_set
    face_ids = face_class_ids(src_ls, face_classes)
    if not face_ids:
        raise FaceParseError(f"label set '{src_ls.name}' has no face classes; pass --face-classes")
    out = Path(out_dir)
    (out / BLOB_DIR).mkdir(parents=True, exist_ok=True)
    n = len(ds) if not limit else min(int(limit), len(ds))
    occluded = 0
    for i in tqdm(range(n), desc="pseudo-labels occlusion", unit="face"):
        raw = ds.load_raw(i)
        h, w = raw["image"].shape[:2]
        if net is not None:
            x = ds[i]["image"][None].to(device)
            with torch.no_grad():
                pred = net(x).argmax(1)[0].cpu().numpy().astype(np.uint8)
            pred = cv2.resize(pred, (w, h), interpolation=cv2.INTER_NEAREST)
            face = np.isin(pred, face_ids)
        else:
            face = np.isin(np.asarray(raw["mask"]), face_ids)
        if "landmarks" not in raw:
            raise FaceParseError(f"dataset '{dataset}' gives no landmarks: the full-face hull needs contour points")
        pts = np.asarray(raw["landmarks"], np.float32).reshape(-1, 2)
        if contour_indices:
            pts = pts[list(contour_indices)]
        res = factorize_occlusion(
            face, contour=pts, hull_scale=hull_scale, kernel_scale=kernel_scale, min_area=min_area
        )
        key = sample_key(raw, i)
        cv2.imwrite(str(out / f"{key}.png"), res.labels)
        cv2.imwrite(str(out / BLOB_DIR / f"{key}.png"), res.blobs.astype(np.uint16))
        occluded += res.num_occlusions > 0
    info = {
        "label_set": get_label_set("cofw_occlusion").to_dict(),
        "method": "occlusion factorisation (Masi et al., CVPR 2020, Sec. 3.1)",
        "dataset": dataset,
        "split": split,
        "teacher": model or "dataset masks",
        "face_classes": [src_ls.classes[i] for i in face_ids],
        "hull_scale": hull_scale,
        "kernel_scale": kernel_scale,
        "count": n,
        "with_occlusion": int(occluded),
    }
    (out / META_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return f"wrote {n} occlusion pseudo-labels ({occluded} with occlusions) to {out}"


@DATASETS.register("occlusion_pseudo")
class OcclusionPseudoLabels(FaceDataset):
    """A registered dataset whose masks are the occlusion pseudo-labels written by
    ``faceparse pseudo-labels occlusion`` (label set ``cofw_occlusion``), with their ``blobs`` map.

    Args:
        labels_dir: the command's output folder; ``None`` keeps the wrapped dataset's own masks,
            translated into ``cofw_occlusion`` by class name (for validation / test splits, e.g.
            the COFW test face masks), without a ``blobs`` map.
        dataset, dataset_kwargs, split: the wrapped registered dataset (images and keys).
        image_size, augment, mean, std: as in FaceDataset.
    """

    def __init__(
        self,
        labels_dir: str | None = None,
        dataset: str = "synthetic",
        dataset_kwargs: dict | None = None,
        split: str = "train",
        image_size: int | Sequence[int] | None = 128,
        augment: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(image_size=image_size, augment=augment, mean=mean, std=std)
        self.labels_dir = Path(labels_dir) if labels_dir is not None else None
        if self.labels_dir is not None and not (self.labels_dir / BLOB_DIR).is_dir():
            raise FaceParseError(
                f"'{self.labels_dir}' is not a folder written by `faceparse pseudo-labels occlusion` "
                f"(no '{BLOB_DIR}/' inside)"
            )
        self.base = build_wrapped_dataset(dataset, split=split, **(dataset_kwargs or {}))
        self.label_set = get_label_set("cofw_occlusion")
        self.landmark_flip = self.base.landmark_flip
        self._lut = self.base.label_set.mapping_to(self.label_set).astype(np.uint8)

    def __len__(self) -> int:
        return len(self.base)

    def load_raw(self, index: int) -> dict[str, Any]:
        raw = self.base.load_raw(index)
        out = {k: v for k, v in raw.items() if k not in ("labels", "occlusion", "superpixels")}
        if self.labels_dir is None:
            out["mask"] = self._lut[np.asarray(raw["mask"]).astype(np.int64)]
            return out
        key = sample_key(raw, index)
        h, w = raw["image"].shape[:2]
        for name, path in (
            ("mask", self.labels_dir / f"{key}.png"),
            ("blobs", self.labels_dir / BLOB_DIR / f"{key}.png"),
        ):
            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise FaceParseError(f"pseudo-label file '{path}' is missing or unreadable (sample {index})")
            if arr.shape[:2] != (h, w):
                arr = cv2.resize(arr, (w, h), interpolation=cv2.INTER_NEAREST)
            out[name] = arr
        return out


@DATASETS.register("synthetic_occlusion")
class SyntheticOcclusion(FaceDataset):
    """Synthetic faces as a 3-class occlusion task (label set ``cofw_occlusion``) with the blob map
    C of the consensus paper (Eq. 2) from the ground truth: 0 background, 1 face, 2.. one id per
    8-connected occluder component. CelebAMask-HQ face parts (skin, brows, eyes, ears, nose, mouth,
    lips, glasses) are face; hair, neck, cloth and accessories background; occluder pixels occlusion.

    Args: as ``synthetic`` (``split``, ``num_samples``, ``image_size``, ``seed``, ``occluder_prob``
    -- default 0.7 here -- ``augment``, ``mean``, ``std``).
    """

    def __init__(
        self,
        split: str = "train",
        num_samples: int | None = None,
        image_size: int = 128,
        seed: int = 0,
        occluder_prob: float = 0.7,
        augment: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(image_size=image_size, augment=augment, mean=mean, std=std)
        self.base = build_wrapped_dataset(
            "synthetic", split=split, num_samples=num_samples, image_size=image_size, seed=seed,
            occluder_prob=occluder_prob,
        )  # fmt: skip
        self.label_set = get_label_set("cofw_occlusion")
        self.landmark_flip = self.base.landmark_flip
        self._lut = self.base.label_set.mapping_to(self.label_set).astype(np.uint8)

    def __len__(self) -> int:
        return len(self.base)

    def load_raw(self, index: int) -> dict[str, Any]:
        raw = self.base.load_raw(index)
        mask = self._lut[np.asarray(raw["mask"]).astype(np.int64)]
        occ = np.asarray(raw["occlusion"]) > 0
        _, cc = cv2.connectedComponents(occ.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        blobs = mask.astype(np.uint16)  # 0 background, 1 face
        blobs[occ] = (cc[occ] + 1).astype(np.uint16)
        mask[occ] = OCCLUSION
        out = {k: v for k, v in raw.items() if k != "labels"}
        out.update(mask=mask, blobs=blobs, labels=self.labels_from_mask(mask, 3))
        return out
