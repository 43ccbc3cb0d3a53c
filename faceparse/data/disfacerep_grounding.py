"""Component boxes for DisFaceRep's CCD from Grounding DINO (Wang et al., DisFaceRep, §3.3).

The paper runs the frozen open-set detector Grounding DINO once, before training, to find the boxes
of the components that CCD masks ("nose, left/right eye, left/right eyebrow, left/right ear, and
mouth"), keeps a set of highest-confidence candidates per component and lets Eq. 1 (the position
filter, :func:`faceparse.data.disfacerep_ccd.box_passes`) pick the box on the correct side.

:func:`ground_boxes` (``faceparse boxes ground``) runs a Grounding DINO from a LOCAL transformers
checkpoint folder (``AutoModelForZeroShotObjectDetection`` + ``AutoProcessor``, e.g. a saved
``IDEA-Research/grounding-dino-base``) over a registered dataset and writes the JSON that the ``ccd``
dataset reads: ``{image_key: {component: [{"box": [x0, y0, x1, y1], "score": s}, ...]}}`` in raw
image pixels, best first. Nothing is downloaded.

Where the paper is silent (choices): one prompt phrase per component kind, ``"nose. eye. eyebrow.
ear. mouth."`` (the detector cannot tell a subject's left from right, so every "eye" box is a
candidate for both ``left_eye`` and ``right_eye`` and Eq. 1 decides); Grounding DINO's own demo
thresholds, box 0.35 and text 0.25; at most ``top_k=3`` candidates per component.
Hand-written: the phrase of each query is read from its token probabilities over the prompt's
character spans (the processor's ``post_process_grounded_object_detection`` returns decoded token
strings, not which prompt phrase a box belongs to).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faceparse.errors import FaceParseError, MissingDependencyError, MissingWeightsError

__all__ = ["COMPONENT_PHRASES", "GroundingBoxes", "ground_boxes", "prompt_spans"]

# prompt phrase -> the CCD components its boxes are candidates for
COMPONENT_PHRASES: dict[str, tuple[str, ...]] = {
    "nose": ("nose",),
    "eye": ("left_eye", "right_eye"),
    "eyebrow": ("left_brow", "right_brow"),
    "ear": ("left_ear", "right_ear"),
    "mouth": ("mouth",),
}


def prompt_spans(phrases: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Grounding DINO's prompt (lower case, phrases ended by ``.``) and each phrase's character span."""
    text, spans = "", []
    for p in phrases:
        start = len(text)
        text += p.lower()
        spans.append((start, len(text)))
        text += ". "
    return text.strip(), spans


class GroundingBoxes:
    """A Grounding DINO loaded from a local transformers folder, answering component boxes per image.

    Args:
        checkpoint: folder with ``config.json``, the weights and the processor / tokenizer files.
        phrases: prompt phrase -> components (default :data:`COMPONENT_PHRASES`).
        box_threshold: keep a query whose best token probability reaches this (0.35).
        text_threshold: the query's phrase must have a token at least this probable (0.25).
        top_k: candidates kept per component, best first.
        device: torch device.
    """

    def __init__(
        self,
        checkpoint: str | Path | None,
        phrases: Mapping[str, Sequence[str]] | None = None,
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        top_k: int = 3,
        device: str = "cpu",
    ) -> None:
        if checkpoint is None or not Path(checkpoint).is_dir() or not (Path(checkpoint) / "config.json").is_file():
            raise MissingWeightsError(
                f"--checkpoint '{checkpoint}' is not a local Grounding DINO folder (config.json, weights, "
                "processor files); save one with save_pretrained, e.g. from IDEA-Research/grounding-dino-base "
                "on a machine with internet access, and pass its path"
            )
        try:
            from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor
        except ImportError as exc:
            raise MissingDependencyError("faceparse boxes ground needs transformers: pip install transformers") from exc
        self.processor = AutoProcessor.from_pretrained(str(checkpoint), local_files_only=True)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(str(checkpoint), local_files_only=True)
        self.model.to(device).eval()
        self.device = device
        self.phrases = {k: tuple(v) for k, v in (phrases or COMPONENT_PHRASES).items()}
        self.prompt, self.spans = prompt_spans(list(self.phrases))
        self.box_threshold, self.text_threshold, self.top_k = box_threshold, text_threshold, top_k
        enc = self.processor.tokenizer(self.prompt, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        # token index -> phrase index (-1: special tokens and the '.' separators)
        self.token_phrase = np.full(len(offsets), -1, np.int64)
        for t, (a, b) in enumerate(offsets):
            for j, (s, e) in enumerate(self.spans):
                if b > a and a >= s and b <= e:
                    self.token_phrase[t] = j

    def __call__(self, image: np.ndarray) -> dict[str, list[dict[str, Any]]]:
        """Candidate boxes per component for one RGB uint8 image, in its pixels, best first."""
        import torch

        h, w = image.shape[:2]
        inputs = self.processor(images=image, text=self.prompt, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model(**inputs)
        prob = out.logits[0].sigmoid().cpu().numpy()  # queries x text tokens
        n_tok = min(prob.shape[1], len(self.token_phrase))
        prob, tok_phrase = prob[:, :n_tok], self.token_phrase[:n_tok]
        cx, cy, bw, bh = out.pred_boxes[0].cpu().numpy().T
        boxes = np.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1)
        boxes = boxes.clip(0, [w, h, w, h])
        result: dict[str, list[dict[str, Any]]] = {}
        names = list(self.phrases)
        for q in range(prob.shape[0]):
            score = float(prob[q].max())
            if score < self.box_threshold:
                continue
            per_phrase = [prob[q, tok_phrase == j].max(initial=0.0) for j in range(len(names))]
            j = int(np.argmax(per_phrase))
            if per_phrase[j] < self.text_threshold:
                continue
            cand = {"box": [round(float(v), 2) for v in boxes[q]], "score": round(score, 4)}
            for comp in self.phrases[names[j]]:
                result.setdefault(comp, []).append(cand)
        return {c: sorted(v, key=lambda d: -d["score"])[: self.top_k] for c, v in result.items()}


def ground_boxes(
    out: str,
    checkpoint: str | None,
    dataset: str = "synthetic",
    root: str | None = None,
    split: str = "train",
    num_samples: int | None = None,
    box_threshold: float = 0.35,
    text_threshold: float = 0.25,
    top_k: int = 3,
    limit: int = 0,
    resume: bool = True,
    device: str = "cpu",
) -> str:
    """Write the CCD box JSON for a registered dataset (see the module docstring); returns a summary.

    With ``resume`` an existing ``out`` file is read and its images are not run again; the file is
    rewritten atomically every 200 images and at the end.
    """
    from tqdm import tqdm

    from faceparse.data.base import build_wrapped_dataset, sample_key

    detector = GroundingBoxes(checkpoint, None, box_threshold, text_threshold, top_k, device)
    kw: dict[str, Any] = {"split": split, "augment": False}
    if root is not None:
        kw["root"] = root
    if num_samples is not None:
        kw["num_samples"] = num_samples
    ds = build_wrapped_dataset(dataset, **kw)
    path = Path(out)
    boxes: dict[str, Any] = {}
    if resume and path.is_file():
        try:
            boxes = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise FaceParseError(
                f"'{path}' exists but is not a box JSON ({exc}); remove it or pass --no-resume"
            ) from exc
    path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(boxes, indent=1) + "\n")
        tmp.replace(path)

    n = len(ds) if not limit else min(int(limit), len(ds))
    new = 0
    for i in tqdm(range(n), desc="boxes ground", unit="image"):
        raw = ds.load_raw(i)
        key = sample_key(raw, i)
        if key in boxes:
            continue
        boxes[key] = detector(np.asarray(raw["image"]))
        new += 1
        if new % 200 == 0:
            save()
    save()
    with_box = sum(bool(v) for v in boxes.values())
    return f"wrote boxes of {len(boxes)} images ({new} new, {with_box} with a component box) to {path}"
