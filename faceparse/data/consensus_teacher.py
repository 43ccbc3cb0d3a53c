"""Teacher labels on unlabelled face photos: the transfer data of Masi et al., CVPR 2020 (§3.1, §4).

The paper's "+Transf." models are pre-trained on faces of CASIA-WebFace, VGG Faces and MS-Celeb-1M
labelled by a teacher face segmentation network (Nirkin et al.), the teacher's face mask being
factorised into face and occlusion blobs (§3.1, Eq. 1-2), then fine-tuned on COFW / Part Labels.

- :func:`pseudo_labels_teacher` (``faceparse pseudo-labels teacher``): detects and crops the faces
  of a photo folder (:mod:`faceparse.data.image_folder`), runs a teacher (any faceparse model
  folder) on each crop and writes ``labels/<key>.png`` (hard labels in the teacher's label set) or
  ``labels/<key>.npy`` (``--soft``: K x S x S float16 softmax probabilities), the ``faces.jsonl``
  index (one line per photo, appended after its labels: a rerun resumes after the last complete
  photo) and ``pseudo_labels.json`` (teacher label set, photo folder, crop settings, counts).
- ``teacher_labels`` dataset: the crops with those labels, translated by class name into a target
  label set; ``factorize=True`` applies the occlusion factorisation of §3.1 to the teacher's face
  pixels (full face = hull of the detector's five landmarks enlarged by ``hull_scale``) and adds
  the ``blobs`` map C for the consensus loss (``blobs: given``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from faceparse.data.base import FaceDataset
from faceparse.data.consensus_pseudo import FACE, factorize_occlusion
from faceparse.data.image_folder import (
    INDEX_NAME,
    ImageFolderFaces,
    crop_face,
    detect_folder,
    list_image_files,
    read_index,
)
from faceparse.errors import FaceParseError
from faceparse.images import IMAGENET_MEAN, IMAGENET_STD
from faceparse.labels import LabelSet, get_label_set
from faceparse.registry import DATASETS

__all__ = ["LABEL_DIR", "META_NAME", "TeacherLabels", "pseudo_labels_teacher"]

META_NAME = "pseudo_labels.json"
LABEL_DIR = "labels"


def _teacher_probs(net: Any, crops: Sequence[np.ndarray], size: int, device: str) -> np.ndarray:
    """Softmax of the teacher on a batch of crops (RGB uint8), resized to ``size`` (bilinear):
    N x K x size x size."""
    import torch
    import torch.nn.functional as F

    in_size = net.default_input_size
    in_hw = (in_size, in_size) if isinstance(in_size, int) else tuple(in_size)
    mean, std = np.asarray(net.input_mean, np.float32), np.asarray(net.input_std, np.float32)
    x = np.stack(
        [(cv2.resize(c, (in_hw[1], in_hw[0]), interpolation=cv2.INTER_LINEAR) / 255.0 - mean) / std for c in crops]
    ).astype(np.float32)
    t = torch.from_numpy(x.transpose(0, 3, 1, 2)).to(device)
    with torch.no_grad():
        logits = net(t)
        probs = F.interpolate(logits.float().softmax(1), size=(size, size), mode="bilinear", align_corners=False)
    return probs.cpu().numpy()


def pseudo_labels_teacher(
    out_dir: str,
    model: str,
    images: str,
    soft: bool = False,
    detector: str = "auto",
    detector_weights: str | None = None,
    crop_scale: float = 1.2,
    crop_size: int = 128,
    faces: str = "largest",
    min_score: float = 0.0,
    limit: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
) -> str:
    """Label the faces of a photo folder with a teacher model (see the module docstring).

    The teacher runs on batches of ``batch_size`` crops. Resumes: photos already in
    ``OUT_DIR/faces.jsonl`` are not read again. Returns a summary line.
    """
    from tqdm import tqdm

    from faceparse.models.base import load_model

    net = load_model(model, map_location=device).to(device).eval()
    out = Path(out_dir)
    (out / LABEL_DIR).mkdir(parents=True, exist_ok=True)
    meta_path = out / META_NAME
    settings = {
        "teacher": str(model),
        "images": str(Path(images).resolve()),
        "soft": bool(soft),
        "detector": detector,
        "crop_scale": crop_scale,
        "crop_size": crop_size,
        "faces": faces,
    }
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        changed = [k for k, v in settings.items() if k != "teacher" and old.get(k) != v]
        if changed:
            raise FaceParseError(
                f"'{out}' holds teacher labels made with other settings ({', '.join(changed)}); "
                "use another output folder or the same settings to resume"
            )
    index = out / INDEX_NAME
    done = {r["image"] for r in read_index(index)} if index.is_file() else set()
    files = [f for f in list_image_files(images) if str(f) not in done]
    if limit:
        files = files[: int(limit)]
    records = detect_folder(images, detector, detector_weights, crop_scale, faces, min_score, files=files)
    from faceparse.images import read_image

    n_faces = n_skipped = 0
    bar = tqdm(records, total=len(files), desc="pseudo-labels teacher", unit="photo")
    pending: list[dict[str, Any]] = []  # photos whose labels are not written yet
    crops: list[tuple[str, np.ndarray]] = []

    def flush(fh: Any) -> None:
        if crops:
            probs = _teacher_probs(net, [c for _, c in crops], crop_size, device)
            for (key, _), p in zip(crops, probs):
                if soft:
                    tmp = out / LABEL_DIR / f"{key}.tmp.npy"
                    np.save(tmp, p.astype(np.float16))
                    tmp.replace(out / LABEL_DIR / f"{key}.npy")
                else:
                    cv2.imwrite(str(out / LABEL_DIR / f"{key}.png"), p.argmax(0).astype(np.uint8))
            crops.clear()
        for rec in pending:  # after the labels: a line marks its photo done
            fh.write(json.dumps(rec) + "\n")
        fh.flush()
        pending.clear()

    with open(index, "a") as fh:
        for rec in bar:
            if "faces" in rec:
                photo = read_image(Path(images) / rec["image"], exif=True)
                for face in rec["faces"]:
                    crops.append((face["key"], crop_face(photo, face["crop"], crop_size)[0]))
                    n_faces += 1
            else:
                n_skipped += 1
            pending.append(rec)
            if len(crops) >= batch_size:
                flush(fh)
            bar.set_postfix(faces=n_faces, skipped=n_skipped)
        flush(fh)
    records_all = read_index(index)
    total_faces = sum(len(r.get("faces", [])) for r in records_all)
    total_skipped = sum("skipped" in r for r in records_all)
    info = {
        **settings,
        "label_set": net.label_set.to_dict(),
        "method": "teacher labels on transfer data (Masi et al., CVPR 2020, Sec. 3.1 and 4)",
        "num_photos": len(records_all),
        "num_faces": total_faces,
        "num_skipped": total_skipped,
    }
    meta_path.write_text(json.dumps(info, indent=2) + "\n")
    return (
        f"labelled {n_faces} faces, skipped {n_skipped} photos without a face this run; "
        f"{total_faces} faces from {len(records_all)} photos ({total_skipped} skipped) in {out}"
    )


@DATASETS.register("teacher_labels")
class TeacherLabels(FaceDataset):
    """Face crops with the labels written by ``faceparse pseudo-labels teacher``.

    Args:
        labels_dir: the command's output folder.
        label_set: target label set; the teacher's classes are translated by name
            (``LabelSet.mapping_to``: ``skin``, ``nose``... -> ``face``); None keeps the teacher's.
        images: the photo folder, if it moved since the command ran.
        factorize: split the teacher's face mask into face and occlusion blobs (§3.1, Eq. 1-2) and
            add ``blobs``; needs ``label_set`` with ``face`` (``cofw_occlusion``).
        hull_scale, kernel_scale: as in :func:`~faceparse.data.consensus_pseudo.factorize_occlusion`
            (the five detector landmarks' hull x 2.0 covers a face; kernels x 0.25 suit 128-pixel crops).
        split, val_fraction: subject-disjoint split of the photos (see ``image_folder``).
        image_size, augment, mean, std: as in FaceDataset.

    ``--soft`` files are read as their argmax: the probabilities stay on disk for distillation.
    """

    landmark_flip = (1, 0, 2, 4, 3)

    def __init__(
        self,
        labels_dir: str,
        label_set: str | LabelSet | None = "cofw_occlusion",
        images: str | None = None,
        factorize: bool = False,
        hull_scale: float = 2.0,
        kernel_scale: float = 0.25,
        split: str = "all",
        val_fraction: float = 0.0,
        image_size: int | Sequence[int] | None = 128,
        augment: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(image_size=image_size, augment=augment, mean=mean, std=std)
        self.labels_dir = Path(labels_dir)
        meta_path = self.labels_dir / META_NAME
        if not meta_path.is_file():
            raise FaceParseError(
                f"'{self.labels_dir}' is not a folder written by `faceparse pseudo-labels teacher` (no {META_NAME})"
            )
        self.info = json.loads(meta_path.read_text())
        self.teacher_label_set = LabelSet.from_dict(self.info["label_set"])
        self.label_set = self.teacher_label_set if label_set is None else get_label_set(label_set)
        self._lut = self.teacher_label_set.mapping_to(self.label_set).astype(np.uint8)
        self.factorize = factorize
        if factorize and "face" not in self.label_set:
            raise FaceParseError(f"factorize=True needs a label set with 'face'; '{self.label_set.name}' has none")
        self.hull_scale, self.kernel_scale = hull_scale, kernel_scale
        self.faces = ImageFolderFaces(
            images or self.info["images"],
            index=str(self.labels_dir),
            crop_size=self.info["crop_size"],
            split=split,
            val_fraction=val_fraction,
            label_set=self.label_set,
        )
        self.skipped = self.faces.skipped

    def __len__(self) -> int:
        return len(self.faces)

    def read_teacher(self, key: str) -> np.ndarray:
        """The teacher's hard labels of crop ``key`` (argmax of the soft file)."""
        ext = "npy" if self.info.get("soft") else "png"
        path = self.labels_dir / LABEL_DIR / f"{key}.{ext}"
        if not path.is_file():
            raise FaceParseError(f"teacher label file '{path}' is missing")
        if ext == "npy":
            return np.load(path).argmax(0).astype(np.uint8)
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise FaceParseError(f"teacher label file '{path}' is unreadable")
        return arr

    def load_raw(self, index: int) -> dict[str, Any]:
        raw = self.faces.load_raw(index)
        key = self.faces.entries[index]["key"]
        mask = self._lut[self.read_teacher(key)]
        raw["mask"] = mask
        if self.factorize:
            if "landmarks" not in raw:
                raise FaceParseError(f"crop '{key}' has no landmarks: factorize needs the detector's five points")
            res = factorize_occlusion(
                mask == self.label_set.index("face"),
                contour=raw["landmarks"],
                hull_scale=self.hull_scale,
                kernel_scale=self.kernel_scale,
            )
            raw["mask"] = self._factorized_labels(mask, res.labels)
            raw["blobs"] = res.blobs.astype(np.uint16)
        return raw

    def _factorized_labels(self, mask: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Eq. 2's labels (0 background, 1 face, 2 occlusion) in this dataset's label set."""
        out = np.full_like(mask, self.label_set.background)
        out[labels == FACE] = self.label_set.index("face")
        if "occlusion" in self.label_set:
            out[labels == 2] = self.label_set.index("occlusion")
        return out
