"""Occlusion synthesis (transform + ``occluded`` dataset wrapper) and the occlusion-weighted CE."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import faceparse
from faceparse.data.maskfpan_occlusion import (
    PROCEDURAL_KINDS,
    OccludedFaces,
    OcclusionSynthesis,
    make_occluder,
    occlusion_label_set,
)
from faceparse.errors import FaceParseError
from faceparse.losses.maskfpan import OcclusionWeightedCE, occlusion_term


def _face(size: int = 64) -> dict:
    """A tiny hand-made face: skin ellipse with eyes, nose and lips, 5 landmarks, a face box."""
    ls = faceparse.get_label_set("celebamask_hq")
    img = np.full((size, size, 3), 90, np.uint8)
    mask = np.zeros((size, size), np.uint8)
    c = size // 2
    cv2.ellipse(mask, (c, c), (size // 4, size // 3), 0, 0, 360, ls.index("skin"), -1)
    mask[c - 6 : c - 3, c - 9 : c - 4] = ls.index("left_eye")
    mask[c - 6 : c - 3, c + 4 : c + 9] = ls.index("right_eye")
    mask[c - 2 : c + 4, c - 2 : c + 2] = ls.index("nose")
    mask[c + 8 : c + 11, c - 6 : c + 6] = ls.index("upper_lip")
    img[mask > 0] = (200, 160, 130)
    lmk = np.array([[c - 6, c - 5], [c + 6, c - 5], [c, c + 2], [c - 6, c + 9], [c + 6, c + 9]], np.float32)
    box = np.array([c - size // 4, c - size // 3, c + size // 4, c + size // 3], np.float32)
    return {"image": img, "mask": mask, "landmarks": lmk, "face_box": box}


@pytest.mark.parametrize("kind", PROCEDURAL_KINDS)
def test_make_occluder_kinds(kind):
    rgba = make_occluder(kind, np.random.default_rng(0), size=64)
    assert rgba.shape == (64, 64, 4) and rgba.dtype == np.uint8
    frac = (rgba[..., 3] > 0).mean()
    assert 0.03 < frac < 0.95
    with pytest.raises(FaceParseError, match="unknown occluder kind"):
        make_occluder("umbrella", np.random.default_rng(0))


@pytest.mark.parametrize("seed", range(6))
def test_occlusion_mask_is_alpha_above_half_and_class_written(seed):
    sample = _face()
    synth = OcclusionSynthesis(return_alpha=True, num_occluders=(1, 3), blur=0.05)
    out = synth(sample, seed)
    alpha, occ = out["occluder_alpha"], out["occlusion"].astype(bool)
    np.testing.assert_array_equal(occ, alpha > 0.5)
    assert occ.any()
    occ_id = synth.label_set.index("occlusion")
    assert synth.label_set.name == "celebamask_hq_occ" and occ_id == 19
    assert (out["mask"][occ] == occ_id).all()
    np.testing.assert_array_equal(out["mask"][~occ], sample["mask"][~occ])  # same indices in _occ
    # pixels with no alpha at all are untouched; fully covered pixels changed colour only there
    untouched = alpha == 0
    np.testing.assert_array_equal(out["image"][untouched], sample["image"][untouched])
    # the input sample is not modified
    assert (sample["mask"] != occ_id).all()


def test_label_modes_remove_and_none():
    sample = _face()
    base = OcclusionSynthesis(label_mode="remove", return_alpha=True)(sample, 3)
    occ = base["occlusion"].astype(bool)
    assert occ.any() and (base["mask"][occ] == 0).all()
    ign = OcclusionSynthesis(label_mode="remove", remove_to="ignore")(sample, 3)
    assert (ign["mask"][occ] == 255).all()
    np.testing.assert_array_equal(ign["occlusion"], base["occlusion"])  # same seed, same occluders
    none = OcclusionSynthesis(label_mode="none")(sample, 3)
    np.testing.assert_array_equal(none["mask"], sample["mask"])
    assert none["occlusion"].any()
    assert OcclusionSynthesis(label_mode="remove").label_set.name == "celebamask_hq"
    with pytest.raises(FaceParseError, match="label_mode"):
        OcclusionSynthesis(label_mode="paint")


def test_deterministic_under_seed():
    sample = _face()
    synth = OcclusionSynthesis()
    a, b, c = synth(sample, 11), synth(sample, 11), synth(sample, 12)
    for key in ("image", "mask", "occlusion", "landmark_occluded"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], c["image"])


def test_landmarks_under_occluders_are_flagged():
    sample = _face()
    synth = OcclusionSynthesis(num_occluders=(1, 2), scale=(0.5, 0.9))
    seen_flagged = seen_clear = False
    for seed in range(30):
        out = synth(sample, seed)
        xy = np.round(sample["landmarks"]).astype(int)
        under = out["occlusion"][xy[:, 1], xy[:, 0]] > 0
        np.testing.assert_array_equal(out["landmark_occluded"], under)
        seen_flagged |= bool(under.any())
        seen_clear |= bool((~under).any())
    assert seen_flagged and seen_clear
    # flags already set by the dataset are kept
    prior = dict(sample, landmark_occluded=np.array([1, 0, 0, 0, 0], bool))
    assert synth(prior, 0)["landmark_occluded"][0]


def test_occluders_from_a_folder(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:30, 5:35] = (0, 0, 255, 255)  # BGRA: red square, opaque
    cv2.imwrite(str(tmp_path / "square.png"), rgba)
    synth = OcclusionSynthesis(kinds=[], occluder_dir=str(tmp_path), blur=0.0, rotate=0.0, return_alpha=True)
    assert synth.kinds == ["folder"]
    out = synth(_face(), 0)
    occ = out["occlusion"].astype(bool)
    assert occ.any()
    solid = out["occluder_alpha"] > 0.999
    assert solid.any() and (out["image"][solid] == (255, 0, 0)).all()  # pasted red (RGB order)
    (tmp_path / "bad").mkdir()
    cv2.imwrite(str(tmp_path / "bad" / "rgb.png"), rgba[..., :3])
    with pytest.raises(FaceParseError, match="RGBA"):
        OcclusionSynthesis(occluder_dir=str(tmp_path / "bad"))
    with pytest.raises(FaceParseError, match="occluder_dir"):
        OcclusionSynthesis(kinds=["folder"])


def test_occlusion_label_set_generic():
    ls = occlusion_label_set("lapa")
    assert ls.classes[-1] == "occlusion" and ls.num_classes == faceparse.get_label_set("lapa").num_classes + 1
    assert occlusion_label_set(ls) is ls


def test_occluded_dataset_wrapper():
    kw = {"base": "synthetic", "split": "val", "num_samples": 6, "image_size": 48, "seed": 1}
    ds = faceparse.build_dataset("occluded", **kw)
    assert isinstance(ds, OccludedFaces) and len(ds) == 6
    assert ds.label_set.name == "celebamask_hq_occ"
    s = ds[0]
    assert s["image"].shape == (3, 48, 48) and s["mask"].shape == (48, 48)
    occ = s["occlusion"].bool()
    assert occ.any() and (s["mask"][occ] == 19).all()
    assert s["landmark_occluded"].shape == (5,) and s["labels"].shape == (20,)
    again = faceparse.build_dataset("occluded", **kw)[0]
    assert torch.equal(again["image"], s["image"]) and torch.equal(again["mask"], s["mask"])
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["image"], s["image"])
    # base given as an instance
    base = faceparse.build_dataset("synthetic", split="val", num_samples=3, image_size=48, occluders=False)
    wrapped = OccludedFaces(base=base, image_size=48, label_mode="remove")
    assert wrapped.label_set.name == "celebamask_hq" and (wrapped[1]["mask"][wrapped[1]["occlusion"].bool()] == 0).all()


def test_unlabelled_fraction_keeps_true_occlusion_but_not_labels():
    ds = faceparse.build_dataset(
        "occluded", base="synthetic", split="train", num_samples=12, image_size=32, unlabelled_fraction=0.5
    )
    flags = [ds.is_labelled(i) for i in range(len(ds))]
    assert any(flags) and not all(flags)
    for i, labelled in enumerate(flags):
        s = ds[i]
        assert s["meta"]["occlusion_labelled"] == labelled
        has_class = bool((s["mask"] == 19).any())
        assert has_class == (labelled and bool(s["occlusion"].any()))


def test_datamodule_with_occluded_dataset():
    from faceparse.data import FaceParsingDataModule

    dm = FaceParsingDataModule(
        dataset="occluded",
        dataset_kwargs={"base": "synthetic", "num_samples": 4},
        image_size=32,
        batch_size=2,
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["occlusion"].shape == (2, 32, 32)
    assert dm.label_set.num_classes == 20


# ----------------------------------------------------------------------------- weighted CE (Eq. 2)
def _batch(b=2, k=5, h=24, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, h, w, generator=g)
    mask = torch.randint(0, k, (b, h, w), generator=g)
    mask[0, :2] = 255
    return logits, {"mask": mask}


def test_weighted_ce_equals_plain_ce_with_unit_weights():
    logits, batch = _batch()
    plain = F.cross_entropy(logits, batch["mask"], ignore_index=255)
    # lambdas 0: weights are 1 whatever the evidence
    batch_full = dict(
        batch,
        landmarks=torch.tensor([[[5.0, 5.0]], [[10.0, 10.0]]]),
        landmark_occluded=torch.tensor([[True], [True]]),
        occlusion=torch.ones(2, 24, 24, dtype=torch.long),
        pose=torch.tensor([[60.0, 0.0, 0.0], [0.0, 30.0, 10.0]]),
    )
    zero = OcclusionWeightedCE(lambda_occ=0.0, lambda_pose=0.0)
    assert torch.allclose(zero(logits, batch_full)["loss"], plain, atol=1e-6)
    # default lambdas, but no occluded landmark, no occlusion, frontal pose: weights are 1 too
    loss = OcclusionWeightedCE()
    frontal = dict(batch, landmarks=batch_full["landmarks"], landmark_occluded=torch.zeros(2, 1, dtype=torch.bool))
    frontal["pose"] = torch.zeros(2, 3)
    frontal["occlusion"] = torch.zeros(2, 24, 24, dtype=torch.long)
    out = loss(logits, frontal)
    assert torch.allclose(out["loss"], plain, atol=1e-6) and out["mean_weight"] == 1.0
    for normalize in ("valid", "weight"):
        assert torch.allclose(OcclusionWeightedCE(normalize=normalize)(logits, batch)["loss"], plain, atol=1e-6)


def test_weights_rise_near_occluded_landmarks():
    loss = OcclusionWeightedCE(lambda_occ=2.0, lambda_pose=0.0, sigma_frac=0.1, use_region=False)
    lmk = torch.tensor([[[20.0, 20.0], [60.0, 60.0]]])
    occluded = torch.tensor([[True, False]])
    batch = {"mask": torch.zeros(1, 80, 80, dtype=torch.long), "landmarks": lmk, "landmark_occluded": occluded}
    w = loss.weights(batch, (1, 80, 80))[0]
    assert w[20, 20] == pytest.approx(3.0)  # 1 + lambda at the occluded landmark
    assert w[60, 60] == pytest.approx(1.0)  # visible landmark: no extra weight
    # monotone decrease with distance from the occluded landmark, reference Gaussian with sigma 8 px
    d = torch.arange(0, 24, 4)
    vals = w[20, 20 + d]
    assert (vals[1:] < vals[:-1]).all()
    ref = 1 + 2 * torch.exp(-(d.float() ** 2) / (2 * 8.0**2))
    assert torch.allclose(vals, ref, atol=1e-5)
    assert w[20, 50] == 1.0  # beyond the cutoff (3 sigma)
    # a face box sets the scale: sigma = 0.1 x 40 px = 4 px
    w_box = loss.weights(dict(batch, face_box=torch.tensor([[0.0, 0.0, 40.0, 30.0]])), (1, 80, 80))[0]
    assert w_box[20, 28] == pytest.approx(1 + 2 * np.exp(-64 / 32), abs=1e-5)


def test_weights_rise_near_occlusion_regions_and_with_pose():
    occ = torch.zeros(1, 40, 40, dtype=torch.long)
    occ[0, 10:20, 10:20] = 1
    o = occlusion_term((1, 40, 40), occlusion=occ, sigma_frac=0.1)[0]
    assert (o[10:20, 10:20] == 1).all() and o[15, 22] > o[15, 26] > o[15, 35] >= 0
    loss = OcclusionWeightedCE(lambda_occ=0.0, lambda_pose=1.0, max_angle=90.0)
    batch = {"mask": torch.zeros(2, 8, 8, dtype=torch.long), "pose": torch.tensor([[0.0, 0, 0], [45.0, 0, 0]])}
    w = loss.weights(batch, (2, 8, 8))
    assert torch.allclose(w[0], torch.ones(8, 8)) and torch.allclose(w[1], torch.full((8, 8), 1.5))


def test_weighted_ce_matches_manual_and_handles_aux():
    logits, batch = _batch(b=1, k=3, h=16, w=16, seed=3)
    batch["landmarks"] = torch.tensor([[[4.0, 4.0]]])
    batch["landmark_occluded"] = torch.tensor([[True]])
    loss = OcclusionWeightedCE(use_region=False)
    w = loss.weights(batch, (1, 16, 16))
    ce = F.cross_entropy(logits, batch["mask"], ignore_index=255, reduction="none")
    valid = (batch["mask"] != 255).float()
    expected = (w * ce * valid).sum() / valid.sum()
    assert torch.allclose(loss(logits, batch)["loss"], expected, atol=1e-6)
    out = loss({"logits": logits, "aux_logits": logits * 2}, batch)
    aux = loss(logits * 2, batch)["loss"]
    assert torch.allclose(out["loss"], expected + 0.4 * aux, atol=1e-6)
    assert isinstance(faceparse.build_loss("occlusion_weighted_ce"), OcclusionWeightedCE)
