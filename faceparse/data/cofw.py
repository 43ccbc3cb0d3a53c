"""COFW (Burgos-Artizzu et al., "Robust face landmark estimation under occlusion", ICCV 2013).

Files (as released)::

    COFW_train_color.mat   IsTr (cell of images), phisTr (N x 87), bboxesTr (N x 4); 1,345 faces
    COFW_test_color.mat    IsT, phisT, bboxesT; 507 faces
    <mask_dir>/<mask_pattern>   binary face masks of the test faces (255 or 1 = face), a separate release

Both MATLAB v7.3 (HDF5, read with h5py: arrays are stored transposed, the image cell is an array of
object references, some images are 2-D grayscale) and older v5 files (scipy.io) are read. Images are
scaled by their real range (uint16 by 255/65535, float [0, 1] by 255; ``faceparse.images``). ``phis``
rows hold x[0:29], y[29:58], occlusion flag[58:87]; boxes are x, y, w, h. MATLAB coordinates are
1-based: faceparse subtracts 1 from landmarks and boxes (0-based pixel indices, ``face_box`` is
x0, y0, x1, y1 with x1 = x0 + w).

Label set ``cofw``: 0 non-face (background and occluders, merged as in the consensus paper's
protocol), 1 face. Faces without a mask (the train split) get an all-ignore (255) label map.
``ignore_outside_box=True`` sets pixels outside the face box to ignore (metrics inside the box, as in
Masi et al., CVPR 2020).

The mask file name is not standard across releases: ``mask_pattern`` is a ``str.format`` pattern with
``{index}`` (0-based position in the .mat file) and ``{index1}`` (1-based).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceparse.data.align import FLIP_5, maybe_align
from faceparse.data.base import FaceDataset
from faceparse.data.io import (
    IGNORE_INDEX,
    check_has_labels,
    check_same_size,
    int_size,
    pairs_to_permutation,
    raise_if_problems,
    read_binary_mask,
    require_dir,
    require_file,
)
from faceparse.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from faceparse.errors import FaceParseError
from faceparse.images import array_to_rgb
from faceparse.labels import get_label_set
from faceparse.registry import DATASETS

# 29-point COFW (LFPW) layout mirror pairs: brow corners 0<->1, 2<->3, brow tops 4<->6, 5<->7,
# eye corners 8<->9, 10<->11, lids 12<->14, 13<->15, pupils 16<->17, nose wings 18<->19,
# mouth corners 22<->23; nose tip 20, 21 and lips / chin 24..28 on the axis.
# Source: the COFW keypoint metadata of MMPose (configs/_base_/datasets/cofw.py, "swap" fields).
COFW_FLIP_29 = pairs_to_permutation(
    29, [(0, 1), (2, 3), (4, 6), (5, 7), (8, 9), (10, 11), (12, 14), (13, 15), (16, 17), (18, 19), (22, 23)]
)

FILES = {
    "train": ("COFW_train_color.mat", "IsTr", "phisTr", "bboxesTr"),
    "test": ("COFW_test_color.mat", "IsT", "phisT", "bboxesT"),
}


def cofw_five_points(lmk29: np.ndarray) -> np.ndarray:
    """Pupils 16, 17, nose tip 20, mouth corners 22, 23 (reordered by x so index 0 is image left)."""
    p = np.asarray(lmk29, dtype=np.float32)
    eyes = p[[16, 17]] if p[16, 0] <= p[17, 0] else p[[17, 16]]
    mouth = p[[22, 23]] if p[22, 0] <= p[23, 0] else p[[23, 22]]
    return np.stack([eyes[0], eyes[1], p[20], mouth[0], mouth[1]])


class _Mat:
    """Lazy reader of one COFW .mat file (v7.3 via h5py, images read on demand; v5 via scipy)."""

    def __init__(self, path: Path, keys: tuple[str, str, str]) -> None:
        self.path = path
        self.keys = keys
        self._h5 = None
        self._pid = None
        try:
            n_img = self._read_header(path, keys)
        except FaceParseError:
            raise
        except Exception as exc:
            raise FaceParseError(
                f"cannot read '{path}' as a COFW MATLAB file (v7.3 HDF5 or v5; truncated or corrupt?): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        n = len(self.phis)
        if self.phis.ndim != 2 or self.phis.shape[1] != 87:
            raise FaceParseError(
                f"'{path}': '{keys[1]}' has shape {self.phis.shape}, expected N x 87 (x 29, y 29, occlusion 29)"
            )
        if self.boxes.shape != (n, 4):
            raise FaceParseError(f"'{path}': '{keys[2]}' has shape {self.boxes.shape}, expected {n} x 4 (x, y, w, h)")
        if n_img != n:
            raise FaceParseError(f"'{path}': '{keys[0]}' holds {n_img} images but '{keys[1]}' {n} faces")
        self.n = n

    def _read_header(self, path: Path, keys: tuple[str, str, str]) -> int:
        import h5py

        self.v73 = h5py.is_hdf5(str(path))
        if self.v73:
            with h5py.File(path, "r") as f:
                for k in keys:
                    if k not in f:
                        raise FaceParseError(f"'{path}': expected the variable '{k}', found {sorted(f.keys())}")
                self.phis = np.asarray(f[keys[1]], dtype=np.float64).T  # MATLAB column-major
                self.boxes = np.asarray(f[keys[2]], dtype=np.float64).T
                n_img = int(np.prod(f[keys[0]].shape))
            self._images = None
            return n_img
        import scipy.io

        try:
            data = scipy.io.loadmat(str(path))
        except Exception as exc:  # scipy raises several types for malformed files
            raise FaceParseError(f"cannot read '{path}' as a MATLAB file (v5 or v7.3): {exc}") from None
        for k in keys:
            if k not in data:
                found = sorted(x for x in data if not x.startswith("__"))
                raise FaceParseError(f"'{path}': expected the variable '{k}', found {found}")
        self._images = [np.asarray(x) for x in np.asarray(data[keys[0]], dtype=object).ravel()]
        self.phis = np.asarray(data[keys[1]], dtype=np.float64)
        self.boxes = np.asarray(data[keys[2]], dtype=np.float64)
        return len(self._images)

    def face_problem(self, i: int) -> str | None:
        """Why face ``i`` (0-based) cannot be used, or None: NaN/inf landmarks or box."""
        for key, row in ((self.keys[1], self.phis[i]), (self.keys[2], self.boxes[i])):
            bad = np.nonzero(~np.isfinite(row))[0]
            if bad.size:
                return (
                    f"'{self.path}': face {i + 1} (index {i}) of '{key}' holds NaN or infinite values "
                    f"at column(s) {bad[:6].tolist()}"
                )
        return None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_h5"] = None  # h5py handles do not cross process boundaries (DataLoader workers)
        return state

    def image(self, i: int) -> np.ndarray:
        if not self.v73:
            img = self._images[i]
        else:
            import h5py

            try:
                if self._h5 is None or self._pid != os.getpid():
                    self._h5 = h5py.File(self.path, "r")
                    self._pid = os.getpid()
                f = self._h5
                ref = f[self.keys[0]][()].ravel()[i] if f[self.keys[0]].ndim else f[self.keys[0]][()]
                img = np.asarray(f[ref]).T  # (3, W, H) -> (H, W, 3); (W, H) -> (H, W)
            except Exception as exc:
                raise FaceParseError(
                    f"'{self.path}': cannot read image {i + 1} of '{self.keys[0]}': {type(exc).__name__}: {exc}"
                ) from None
        img = np.asarray(img)
        if img.dtype == object or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
            raise FaceParseError(
                f"'{self.path}': image {i + 1} of '{self.keys[0]}' has shape {img.shape} ({img.dtype}), "
                "expected H x W (grayscale) or H x W x 3"
            )
        # uint16 / float / grayscale images are scaled by their real range (faceparse.images)
        return array_to_rgb(img, where=f"'{self.path}' image {i + 1} of '{self.keys[0]}'")


@DATASETS.register("cofw")
class COFWDataset(FaceDataset):
    """COFW faces with 29 landmarks, occlusion flags, face boxes and (test) face masks.

    Args:
        root: folder holding ``COFW_train_color.mat`` / ``COFW_test_color.mat``.
        split: ``train`` or ``test``.
        mask_dir: folder of test face masks, relative to ``root`` (or absolute); ``None`` = no masks.
        mask_pattern: file name pattern of a mask, ``{index}`` 0-based / ``{index1}`` 1-based.
        ignore_outside_box: label pixels outside the face box as ignore (255).
        landmarks: ``"29"`` or ``"5"``.
        align, align_size, align_scale: 5-point alignment, see ``faceparse.data.align``.
        strict: raise on indexing problems (missing masks, NaN/infinite landmarks or boxes) or record
            them in ``self.problems`` and leave those faces out.
    """

    def __init__(
        self,
        root: str,
        split: str = "test",
        image_size: int | None = 128,
        augment: bool = False,
        transform: Any = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        mask_dir: str | None = "COFW_test_masks",
        mask_pattern: str = "{index1}.png",
        ignore_outside_box: bool = False,
        landmarks: str = "29",
        align: bool = False,
        align_size: int | None = None,
        align_scale: float = 1.0,
        strict: bool = True,
    ) -> None:
        super().__init__(image_size=image_size, augment=augment, transform=transform, mean=mean, std=std)
        if split not in FILES:
            raise FaceParseError(f"COFW split must be 'train' or 'test', got {split!r}")
        if str(landmarks) not in ("29", "5"):
            raise FaceParseError(f"COFW landmarks must be '29' or '5', got {landmarks!r}")
        self.root = require_dir(root, "COFW root")
        self.split = split
        fname, *keys = FILES[split]
        self.mat = _Mat(require_file(self.root / fname, f"COFW {split} file"), tuple(keys))
        self.label_set = get_label_set("cofw")
        self.landmark_mode = str(landmarks)
        self.landmark_flip = COFW_FLIP_29 if self.landmark_mode == "29" else FLIP_5
        self.ignore_outside_box = ignore_outside_box
        self.align, self.align_size, self.align_scale = align, align_size, align_scale
        self.problems: list[str] = []
        self.mask_files: list[Path | None] = [None] * self.mat.n
        self.indices = []
        for i in range(self.mat.n):
            why = self.mat.face_problem(i)
            if why is None:
                self.indices.append(i)
            else:
                self.problems.append(why)
        if mask_dir is not None and split == "test":
            mdir = Path(mask_dir) if Path(mask_dir).is_absolute() else self.root / mask_dir
            require_dir(mdir, "COFW test face masks (pass mask_dir=None to load without masks)")
            present = {e.name for e in os.scandir(mdir)}
            keep = []
            for i in self.indices:
                try:
                    name = mask_pattern.format(index=i, index1=i + 1)
                except (KeyError, IndexError, ValueError) as exc:
                    raise FaceParseError(
                        f"mask_pattern {mask_pattern!r}: use the fields {{index}} / {{index1}} ({exc})"
                    ) from None
                if name in present:
                    self.mask_files[i] = mdir / name
                    keep.append(i)
                else:
                    self.problems.append(
                        f"missing face mask '{mdir / name}' for test face {i + 1} (pattern {mask_pattern!r})"
                    )
            self.indices = keep
        raise_if_problems(self.problems, f"COFW {split} at '{self.root}'", strict)

    def __len__(self) -> int:
        return len(self.indices)

    def load_raw(self, index: int) -> dict[str, Any]:
        i = self.indices[index]
        image = self.mat.image(i)
        h, w = image.shape[:2]
        phis = self.mat.phis[i]
        lmk = np.stack([phis[0:29], phis[29:58]], 1).astype(np.float32) - 1.0
        occluded = phis[58:87] > 0
        bx, by, bw, bh = self.mat.boxes[i]
        box = np.array([bx - 1, by - 1, bx - 1 + bw, by - 1 + bh], np.float32)
        mfile = self.mask_files[i]
        why = self.mat.face_problem(i)
        if why is not None:
            raise FaceParseError(why)
        if mfile is not None:
            mask = read_binary_mask(mfile, "a binary face mask (0 / 255, or 0 / 1)")
            check_same_size(mask, (h, w), mfile, "face mask")
            check_has_labels(mask, mfile, what="face mask")
        else:
            mask = np.full((h, w), IGNORE_INDEX, np.uint8)
        if self.ignore_outside_box:
            ys, xs = np.mgrid[0:h, 0:w]
            outside = (xs < box[0]) | (xs > box[2]) | (ys < box[1]) | (ys > box[3])
            mask[outside] = IGNORE_INDEX
        five = cofw_five_points(lmk)
        raw: dict[str, Any] = {
            "image": image,
            "mask": mask,
            "landmarks": lmk if self.landmark_mode == "29" else five,
            "landmark_occluded": occluded if self.landmark_mode == "29" else np.zeros(5, bool),
            "face_box": box,
            "meta": {
                "name": f"{self.split}_{i + 1:04d}",
                "mat_file": str(self.mat.path),
                "mat_index": i,
                "mask_file": str(mfile) if mfile else "",
            },
        }
        return maybe_align(
            raw,
            five,
            self.align,
            self.align_size or int_size(self.image_size),
            self.align_scale,
            f"{self.mat.path} #{i + 1}",
        )
