"""CCD (DisFaceRep Eq. 1-2): position filter, masking, label updates, box sources."""

from __future__ import annotations

import json

import numpy as np
import pytest

import faceparse
from faceparse.data.disfacerep_ccd import (
    CCDDataset,
    apply_ccd,
    box_passes,
    boxes_from_mask,
    mask_boxes,
    select_boxes,
)
from faceparse.errors import FaceParseError
from faceparse.labels import get_label_set

LS = get_label_set("celebamask_hq")
W = 40


def test_eq1_position_filter():
    left_half, right_half = [2, 5, 12, 9], [25, 5, 35, 9]  # centres 7 and 30 in a 40-wide image
    # Eq. 1: right components need centre < W/2, left components centre > W/2, others always pass
    assert box_passes("right_eye", left_half, W) and not box_passes("right_eye", right_half, W)
    assert box_passes("left_brow", right_half, W) and not box_passes("left_brow", left_half, W)
    assert box_passes("nose", left_half, W) and box_passes("mouth", right_half, W)
    # exactly on the centre line fails the strict inequality
    assert not box_passes("left_ear", [15, 0, 25, 3], W) and not box_passes("right_ear", [15, 0, 25, 3], W)
    # viewer-side naming swaps the sides
    assert box_passes("right_eye", right_half, W, "mirrored") and not box_passes("right_eye", left_half, W, "mirrored")
    with pytest.raises(FaceParseError):
        box_passes("left_eye", left_half, W, "sideways")


def test_select_boxes_rejects_wrong_side_and_keeps_best_valid():
    boxes = {
        "right_eye": [{"box": [25, 5, 35, 9], "score": 0.9}, {"box": [3, 5, 13, 9], "score": 0.6}],
        "left_eye": [{"box": [3, 5, 13, 9], "score": 0.8}],  # only candidate on the wrong side
        "nose": [[15, 10, 25, 20]],
        "mouth": {"box": [12, 25, 28, 30], "score": 0.2},
    }
    sel = select_boxes(boxes, W)
    assert sel["right_eye"] == [3, 5, 13, 9]  # the higher-scoring box was on the wrong side
    assert "left_eye" not in sel
    assert sel["nose"] == [15, 10, 25, 20]
    assert "mouth" not in select_boxes(boxes, W, min_score=0.3)


def test_mask_boxes_eq2():
    img = np.full((10, 12, 3), 7, np.uint8)
    out = mask_boxes(img, [[2, 1, 5, 4], [10.5, 8, 20, 20]])
    assert (out[1:4, 2:5] == 0).all() and (out[8:, 10:] == 0).all()
    keep = np.ones((10, 12), bool)
    keep[1:4, 2:5] = False
    keep[8:, 10:] = False
    assert (out[keep] == 7).all() and (img == 7).all()  # input untouched


def _toy_raw():
    mask = np.zeros((20, W), np.uint8)
    mask[2:18, 5:35] = LS.index("skin")
    mask[4:7, 6:12] = LS.index("right_eye")  # image-left: paper convention
    mask[4:7, 28:34] = LS.index("left_eye")
    mask[9:12, 18:22] = LS.index("nose")
    mask[14:15, 15:25] = LS.index("upper_lip")
    mask[15:16, 15:25] = LS.index("mouth")
    mask[16:17, 15:25] = LS.index("lower_lip")
    img = np.full((20, W, 3), 200, np.uint8)
    return {"image": img, "mask": mask, "labels": faceparse.data.base.FaceDataset.labels_from_mask(mask, 19)}


def test_apply_ccd_masks_pixels_and_updates_labels():
    raw = _toy_raw()
    boxes = boxes_from_mask(raw["mask"], LS)
    assert boxes["mouth"] == [15.0, 14.0, 25.0, 17.0]  # mouth box spans the lips
    boxes["left_eye"] = [[6, 4, 12, 7]]  # a wrong-side detection: rejected, so never masked
    out, chosen = apply_ccd(raw, boxes, LS, np.random.default_rng(0), prob=1.0)
    assert set(chosen) == {"right_eye", "nose", "mouth"}
    for name in chosen:
        x0, y0, x1, y1 = (int(v) for v in boxes[name])
        assert (out["image"][y0:y1, x0:x1] == 0).all()
    untouched = np.ones((20, W), bool)
    for name in chosen:
        x0, y0, x1, y1 = (int(v) for v in boxes[name])
        untouched[y0:y1, x0:x1] = False
    assert (out["image"][untouched] == 200).all()
    for c in ("right_eye", "nose", "mouth", "upper_lip", "lower_lip"):
        assert out["labels"][LS.index(c)] == 0 and raw["labels"][LS.index(c)] == 1
        assert not (out["mask"] == LS.index(c)).any()
    for c in ("skin", "left_eye"):
        assert out["labels"][LS.index(c)] == 1
    # prob = 0 masks nothing
    same, none = apply_ccd(raw, boxes, LS, np.random.default_rng(0), prob=0.0)
    assert none == [] and (same["image"] == raw["image"]).all()


def test_ccd_dataset_json_and_callable(tmp_path):
    base = faceparse.build_dataset("synthetic", split="train", num_samples=3, image_size=48)
    boxes = {}
    for i in range(3):
        raw = base.load_raw(i)
        boxes[raw["meta"]["name"]] = boxes_from_mask(raw["mask"], LS)
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(boxes))
    ds = CCDDataset(
        "synthetic",
        {"num_samples": 3, "image_size": 48},
        boxes=str(path),
        prob=1.0,
        convention="mirrored",
        image_size=48,
    )
    assert len(ds) == 3 and ds.label_set.name == "celebamask_hq"
    for i in range(3):
        raw, ccd = base.load_raw(i), ds.load_raw(i)
        masked = [m for m in ccd["meta"]["ccd_masked"].split(",") if m]
        assert masked, "synthetic faces always have eyes to mask"
        for name in masked:
            x0, y0, x1, y1 = (int(v) for v in boxes[raw["meta"]["name"]][name])  # integer boxes
            assert (ccd["image"][y0:y1, x0:x1] == 0).all()
            assert ccd["labels"][LS.index(name)] == 0
    sample = ds[0]
    assert sample["image"].shape == (3, 48, 48) and sample["labels"].shape == (19,)
    # the same boxes from a callable
    calls = []

    def source(raw, index):
        calls.append(index)
        return boxes[raw["meta"]["name"]]

    ds2 = CCDDataset("synthetic", {"num_samples": 3, "image_size": 48}, boxes=source, prob=1.0, convention="mirrored")
    assert (ds2.load_raw(1)["image"] == ds.load_raw(1)["image"]).all() and calls == [1]
    # synthetic faces name eyes from the viewer's side: with the paper's rule every eye box is rejected
    ds3 = CCDDataset("synthetic", {"num_samples": 3, "image_size": 48}, boxes=str(path), prob=1.0)
    assert not any(s in ds3.load_raw(0)["meta"]["ccd_masked"] for s in ("left_", "right_"))


def test_ccd_errors(tmp_path):
    with pytest.raises(FaceParseError, match="not found"):
        CCDDataset("synthetic", {"num_samples": 1}, boxes=str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(FaceParseError, match="object keyed by image"):
        CCDDataset("synthetic", {"num_samples": 1}, boxes=str(bad))
    with pytest.raises(FaceParseError, match="x0, y0, x1, y1"):
        select_boxes({"nose": [1, 2, 3]}, 10)
