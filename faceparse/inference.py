"""Inference: images in, label maps at the original size out."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .errors import FaceParseError
from .labels import LabelSet
from .models.base import FaceParsingModel, load_model
from .viz import overlay


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8; clear errors for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise FaceParseError(f"image '{path}' does not exist")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise FaceParseError(f"cannot read image '{path}': not a readable image file (expected JPEG, PNG, BMP...)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_rgb_array(image: Any) -> np.ndarray:
    """Accept a path, a numpy array (H x W or H x W x 3/4, RGB) or a PIL image; return RGB uint8."""
    if isinstance(image, (str, Path)):
        return read_image(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise FaceParseError(f"expected an H x W x 3 RGB image, got an array of shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


@dataclass
class Prediction:
    """Result for one image: ``labels`` H x W uint8 at the original size, optional ``probs`` K x H x W."""

    labels: np.ndarray
    image: np.ndarray
    label_set: LabelSet
    probs: np.ndarray | None = None

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        return overlay(self.image, self.labels, self.label_set, alpha)


class Predictor:
    """Parse whole images with a zoo model.

    Each image is resized to the model's input size, parsed, and the logits are resized back to the
    image's original size (bilinear) before the argmax.

    Args:
        model: a model, or the directory of one saved with ``save_pretrained``.
        input_size: square size fed to the model (default: the model's ``default_input_size``).
        flip_tta: average with the mirrored image's prediction (left/right channels swapped).
        device: torch device.
    """

    def __init__(self, model: FaceParsingModel | str | Path, input_size: int | None = None, flip_tta: bool = False, device: str = "cpu") -> None:
        self.model = (load_model(model) if isinstance(model, (str, Path)) else model).to(device).eval()
        self.device = torch.device(device)
        self.input_size = int(input_size or self.model.default_input_size)
        self.flip_tta = flip_tta
        self.label_set = self.model.label_set
        self.mean = torch.tensor(self.model.input_mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.model.input_std, device=self.device).view(1, 3, 1, 1)

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.model(batch)
        if self.flip_tta:
            flipped = self.model(batch.flip(-1)).flip(-1)
            logits = 0.5 * (logits + flipped[:, self.label_set.flip_permutation])
        return logits

    @torch.inference_mode()
    def predict(self, images: Iterable[Any] | Any, return_probs: bool = False) -> list[Prediction]:
        if isinstance(images, (str, Path, np.ndarray)) or hasattr(images, "convert"):
            images = [images]
        arrays = [to_rgb_array(im) for im in images]
        results = []
        for arr in arrays:
            h, w = arr.shape[:2]
            x = cv2.resize(arr, (self.input_size, self.input_size), interpolation=cv2.INTER_LINEAR)
            x = torch.from_numpy(x).to(self.device).permute(2, 0, 1)[None].float() / 255.0
            logits = self._logits((x - self.mean) / self.std)
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.softmax(1)[0]
            results.append(
                Prediction(
                    labels=probs.argmax(0).to(torch.uint8).cpu().numpy(),
                    image=arr,
                    label_set=self.label_set,
                    probs=probs.cpu().numpy() if return_probs else None,
                )
            )
        return results

    __call__ = predict


def write_prediction(pred: Prediction, image_path: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``<stem>_labels.png`` (class indices) and ``<stem>_overlay.png`` next to the image."""
    image_path = Path(image_path)
    folder = Path(out_dir) if out_dir else image_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    labels_path = folder / f"{image_path.stem}_labels.png"
    overlay_path = folder / f"{image_path.stem}_overlay.png"
    _write_png(labels_path, pred.labels)
    _write_png(overlay_path, cv2.cvtColor(pred.overlay(), cv2.COLOR_RGB2BGR))
    return labels_path, overlay_path


def _write_png(path: Path, array: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise FaceParseError(f"could not encode PNG for '{path}'")
    tmp = path.with_name(path.name + ".tmp")
    buf.tofile(str(tmp))
    tmp.replace(path)


def predict_files(model_dir: str | Path, images: Sequence[str | Path], out_dir: str | Path | None = None, flip_tta: bool = False, input_size: int | None = None) -> list[tuple[Path, Path]]:
    """Parse image files and write their label and overlay PNGs.

    Every input is checked before anything is written, so bad input leaves nothing half-done.
    """
    if not images:
        raise FaceParseError("no input images given")
    arrays = [read_image(p) for p in images]  # validates all inputs first
    predictor = Predictor(model_dir, input_size=input_size, flip_tta=flip_tta)
    preds = predictor.predict(arrays)
    return [write_prediction(p, path, out_dir) for p, path in zip(preds, images)]
