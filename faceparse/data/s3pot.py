"""S3POT's training and evaluation data: faces paired with occlusion-free references, and the
protocol's folder layout (paper Sec. 3.1 and 4.1). Reference sources live in
:mod:`faceparse.models.s3pot.references`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from faceparse.errors import FaceParseError
from faceparse.images import IMAGENET_MEAN, IMAGENET_STD
from faceparse.labels import S3POT_FACE_CLASSES, get_label_set
from faceparse.models.s3pot.references import (
    IMAGE_EXTENSIONS,
    FolderReferences,
    InpaintReferences,
    ReferenceSource,
    _denormalise,
    _normalise,
)
from faceparse.registry import DATASETS


# --------------------------------------------------------------------------- dataset wrapper
@DATASETS.register("reference_pairs")
class ReferencePairs(torch.utils.data.Dataset):
    """A face dataset whose items also carry an occlusion-free ``reference`` (S3POT training data).

    Each item is the base item plus ``reference`` (``3 x H x W``, normalised like ``image``).

    Args:
        base: a registered dataset name or a dataset instance; default ``"occluded"`` with
            ``label_mode="none"`` (labels under the occluders stay face parts, as a face parser that
            mistakes occluders for face would give; the true ``occlusion`` mask is kept for scoring).
        base_kwargs: keyword arguments for building ``base`` by name.
        reference: ``"oracle"``: the occlusion-free face under an ``occluded`` dataset's occluders
            (stands in for a perfect face generator; only for such datasets); ``"inpaint"``: the
            OpenCV fallback on the parsing regions; any other string: a folder for
            :class:`FolderReferences` (matched by ``meta["name"]`` / ``meta["path"]``).
        face_classes: parsing classes whose regions the inpainting fallback treats separately.
        augment: ignored with a warning (no augmentation: the pair must stay aligned).
        **kwargs: passed to the base dataset's constructor (``split``, ``image_size``...).
    """

    def __init__(
        self,
        base: str | torch.utils.data.Dataset = "occluded",
        base_kwargs: dict | None = None,
        reference: str = "oracle",
        face_classes: Sequence[str] | None = None,
        augment: bool = False,
        **kwargs,
    ) -> None:
        from faceparse.registry import DATASETS

        if augment:
            import warnings

            warnings.warn(
                "reference_pairs: augmentation is off (the reference must stay pixel-aligned with "
                "the image; S3POT trains without augmentation)",
                stacklevel=2,
            )
        if isinstance(base, str):
            bkw = {**kwargs, **(base_kwargs or {})}
            if base == "occluded":
                bkw.setdefault("label_mode", "none")
            base = DATASETS.build(base, **bkw)
        self.base = base
        self.label_set = base.label_set
        self.reference = reference
        if face_classes is None:
            face_classes = S3POT_FACE_CLASSES
        self.face_ids = [self.label_set.index(c) for c in face_classes if c in self.label_set]
        if reference == "oracle" and not hasattr(base, "base"):
            raise FaceParseError(
                "reference='oracle' needs an 'occluded' dataset (it uses the face under the pasted "
                f"occluders); got {type(base).__name__}. Use reference='inpaint' or a folder."
            )
        self.source: ReferenceSource | None = None
        if reference == "inpaint":
            self.source = InpaintReferences()
        elif reference != "oracle":
            self.source = FolderReferences(reference)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:

        sample = self.base[index]
        img = sample["image"]
        h, w = img.shape[-2:]
        mean, std = getattr(self.base, "mean", None), getattr(self.base, "std", None)
        mean = mean or IMAGENET_MEAN
        std = std or IMAGENET_STD
        if self.reference == "oracle":
            clean = self.base.base.load_raw(index)["image"]
            if clean.shape[:2] != (h, w):
                clean = cv2.resize(clean, (w, h), interpolation=cv2.INTER_LINEAR)
            ref = clean
        else:
            rgb = _denormalise(img[None], mean, std)[0]
            mask = sample["mask"].numpy()
            regions = np.where(np.isin(mask, self.face_ids), mask.astype(np.int64) + 1, 0)
            meta = sample.get("meta", {})
            name = meta.get("path") or meta.get("name") or meta.get("file")
            ref = self.source(rgb, regions, None if name is None else str(name))
        sample["reference"] = _normalise(ref[None], img[None], mean, std)[0]
        return sample


@DATASETS.register("occlusion_folder")
class OcclusionFolder(torch.utils.data.Dataset):
    """Occluded faces with references, parsing maps and (optional) occlusion masks in folders.

    The layout of the S3POT protocol (the paper's own data set is not public)::

        root/[split/]images/<stem>.jpg|png        occluded faces
        root/[split/]references/<stem>[_ref].png  occlusion-free references (E4S or any generator)
        root/[split/]parsing/<stem>.png           parsing label map in ``label_set`` ids (optional;
                                                  the face region M_f; without it: whole image)
        root/[split/]occlusion/<stem>.png         ground-truth occlusion, nonzero = occluded
                                                  (optional; only for the occlusion IoU)

    ``root/<split>`` is used when it exists, else ``root``. Items are resized to ``image_size``
    (bilinear image / reference, nearest masks) and normalised; without references the OpenCV
    fallback is used. No augmentation (the pair must stay aligned).

    Args:
        root: data folder.
        split: sub-folder name (``train``, ``val``, ``test``).
        image_size: square size of the items (the paper resizes to 1024).
        label_set: label set of the parsing maps.
        mean, std: normalisation.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 1024,
        label_set: str = "celebamask_hq",
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        **unused,
    ) -> None:

        root = Path(root)
        base = root / split if (root / split).is_dir() else root
        self.images_dir = base / "images"
        if not self.images_dir.is_dir():
            raise FaceParseError(
                f"occlusion_folder: '{self.images_dir}' does not exist (expected root/[split/]images/ "
                "with references/, parsing/ and occlusion/ beside it)"
            )
        self.files = sorted(p for p in self.images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not self.files:
            raise FaceParseError(f"occlusion_folder: no images in '{self.images_dir}'")
        self.refs = FolderReferences(base / "references") if (base / "references").is_dir() else None
        self.parsing = FolderReferences(base / "parsing", suffix="") if (base / "parsing").is_dir() else None
        self.occlusion = FolderReferences(base / "occlusion", suffix="") if (base / "occlusion").is_dir() else None
        self.image_size = int(image_size)
        self.label_set = get_label_set(label_set)
        self.mean, self.std = tuple(mean), tuple(std)
        self.fallback = InpaintReferences()

    def __len__(self) -> int:
        return len(self.files)

    def _read_map(self, source: FolderReferences, name: str) -> np.ndarray:

        path = source.path_for(name)
        m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if m is None:
            raise FaceParseError(f"cannot read '{path}'")
        return m[..., 0] if m.ndim == 3 else m

    def __getitem__(self, index: int) -> dict:

        path = self.files[index]
        from faceparse.images import read_image

        img = read_image(path, expected="an occluded face image")  # 16-bit/float scaled, names the file
        h0, w0 = img.shape[:2]
        s = self.image_size

        def fit(a: np.ndarray, nearest: bool) -> np.ndarray:
            if a.shape[:2] == (s, s):
                return a
            return cv2.resize(a, (s, s), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)

        img = fit(img, False)
        sample: dict = {"meta": {"index": index, "name": path.name, "path": str(path), "orig_size": (h0, w0)}}
        if self.parsing is not None:
            sample["mask"] = torch.from_numpy(fit(self._read_map(self.parsing, path.name), True).astype(np.int64))
        else:
            sample["face_mask"] = torch.ones(s, s, dtype=torch.long)
        if self.refs is not None:
            ref = fit(self.refs(img, None, path.name), False)
        else:
            regions = None
            if "mask" in sample:
                ids = [self.label_set.index(c) for c in S3POT_FACE_CLASSES if c in self.label_set]
                m = sample["mask"].numpy()
                regions = np.where(np.isin(m, ids), m + 1, 0)
            ref = self.fallback(img, regions, path.name)
        if self.occlusion is not None:
            occ = fit(self._read_map(self.occlusion, path.name), True)
            sample["occlusion"] = torch.from_numpy((occ > 0).astype(np.int64))
        like = torch.zeros(1)
        sample["image"] = _normalise(img[None], like, self.mean, self.std)[0]
        sample["reference"] = _normalise(ref[None], like, self.mean, self.std)[0]
        return sample
