"""`faceparse boxes ground` (DisFaceRep CCD boxes) with a tiny random Grounding DINO saved by the test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_grounding_dino import save_tiny_grounding_dino

transformers = pytest.importorskip("transformers")

from faceparse.cli import main  # noqa: E402
from faceparse.data.base import build_wrapped_dataset, sample_key  # noqa: E402
from faceparse.data.disfacerep_ccd import CCDDataset, select_boxes  # noqa: E402
from faceparse.data.disfacerep_grounding import GroundingBoxes, prompt_spans  # noqa: E402
from faceparse.errors import MissingWeightsError  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random Grounding DINO with a WordPiece tokenizer (tests/tiny_grounding_dino.py)."""
    return save_tiny_grounding_dino(tmp_path_factory.mktemp("gdino"))


def test_prompt_spans():
    text, spans = prompt_spans(["nose", "eye"])
    assert text == "nose. eye." and [text[a:b] for a, b in spans] == ["nose", "eye"]


def test_boxes_ground_writes_the_ccd_json(checkpoint, tmp_path):
    out = tmp_path / "boxes.json"
    argv = ["boxes", "ground", "--checkpoint", str(checkpoint), "--dataset", "synthetic", "--num-samples", "2"]
    argv += ["--out", str(out), "--box-threshold", "0.3", "--text-threshold", "0", "--top-k", "50"]
    assert main(argv) in (0, None)
    boxes = json.loads(out.read_text())
    ds = build_wrapped_dataset("synthetic", split="train", num_samples=2, augment=False)
    raws = [ds.load_raw(i) for i in range(2)]
    assert set(boxes) == {sample_key(r, i) for i, r in enumerate(raws)}
    key, raw = sample_key(raws[0], 0), raws[0]
    entry = boxes[key]
    h, w = raw["image"].shape[:2]
    for cands in entry.values():
        scores = [c["score"] for c in cands]
        assert scores == sorted(scores, reverse=True) and min(scores) >= 0.3
        for c in cands:
            x0, y0, x1, y1 = c["box"]
            assert 0 <= x0 <= x1 <= w and 0 <= y0 <= y1 <= h
    for a, b in (("left_eye", "right_eye"), ("left_brow", "right_brow"), ("left_ear", "right_ear")):
        assert entry.get(a) == entry.get(b)  # one phrase, both sides: Eq. 1 picks later

    # reference: transformers' own post-processing (box score = best token probability) over the same image
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    proc = AutoProcessor.from_pretrained(str(checkpoint))
    model = AutoModelForZeroShotObjectDetection.from_pretrained(str(checkpoint)).eval()
    inputs = proc(images=raw["image"], text="nose. eye. eyebrow. ear. mouth.", return_tensors="pt")
    with torch.no_grad():
        res = proc.post_process_grounded_object_detection(
            model(**inputs), inputs["input_ids"], threshold=0.3, text_threshold=0.0, target_sizes=[(h, w)]
        )[0]
    ref = sorted(
        (round(float(s), 3), *np.clip(b.numpy(), 0, [w, h, w, h]).round(1)) for s, b in zip(res["scores"], res["boxes"])
    )
    ours = sorted({(round(c["score"], 3), *np.round(c["box"], 1)) for cands in entry.values() for c in cands})
    assert len(ref) == len(ours) >= 1
    np.testing.assert_allclose(np.array(ours), np.array(ref), atol=0.06)

    # the ccd dataset reads the file (same image size as the boxes): every accepted component present is masked
    size = raw["image"].shape[0]
    ccd = CCDDataset("synthetic", {"num_samples": 2, "image_size": size}, boxes=str(out), split="train", prob=1.0)
    masked = {m for m in ccd[0]["meta"]["ccd_masked"].split(",") if m}
    present = {ccd.label_set.classes[i] for i in np.flatnonzero(raw["labels"])}
    expected = {c for c in select_boxes(entry, w) if c in present}
    assert masked == expected and masked <= set(entry)

    # resume: an image already in the file is not run again
    boxes[key] = {"nose": [{"box": [1, 2, 3, 4], "score": 0.99}]}
    out.write_text(json.dumps(boxes))
    assert main(argv) in (0, None)
    assert json.loads(out.read_text())[key] == boxes[key]


def test_missing_checkpoint_names_the_argument(tmp_path):
    with pytest.raises(MissingWeightsError, match="--checkpoint"):
        GroundingBoxes(None)
    with pytest.raises(MissingWeightsError, match="--checkpoint"):
        main(["--debug", "boxes", "ground", "--checkpoint", str(tmp_path), "--dataset", "synthetic", "--out", "x.json"])
