"""Occlusion pseudo-labels of the consensus paper (§3.1): factorisation, command, dataset."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

import faceparse
from faceparse.data.base import collate
from faceparse.data.consensus_pseudo import factorize_occlusion, full_face_mask, pseudo_labels_occlusion
from faceparse.losses.consensus import consensus_loss


def _circle(cx, cy, r, n=64):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def test_factorisation_finds_occluders_as_separate_blobs():
    contour = _circle(150, 150, 130)
    full = full_face_mask(contour, (300, 300))
    face = full.copy()
    face[80:150, 70:140] = False  # occluder 1 (70 x 70)
    face[170:240, 160:230] = False  # occluder 2
    face[40:260, 148:151] = False  # a 3-px crack: removed by the 25 x 7 erosion
    res = factorize_occlusion(face, contour=contour)
    assert res.num_occlusions == 2
    assert set(np.unique(res.blobs)) == {0, 1, 2, 3}
    assert (res.labels[95:135, 95:115] == 2).all() and (res.labels[185:225, 185:205] == 2).all()
    assert res.blobs[110, 105] != res.blobs[200, 195]
    assert res.labels[50, 149] == 0  # the crack is no occlusion (and not face)
    assert res.labels[5, 5] == 0 and res.labels[150, 60] == 1
    assert (res.labels[~full] != 2).all()  # occlusions stay inside the full-face hull
    np.testing.assert_array_equal(res.labels, np.minimum(res.blobs, 2))  # Eq. 2
    # the erosion really matters: a small occluder (smaller than two 7-px erosions) disappears
    face2 = full.copy()
    face2[140:150, 130:170] = False
    assert factorize_occlusion(face2, full_face=full).num_occlusions == 0
    # kernel_scale shrinks the kernels: the same occluder survives at scale 0.25
    assert factorize_occlusion(face2, full_face=full, kernel_scale=0.25).num_occlusions == 1
    with pytest.raises(ValueError, match="contour"):
        factorize_occlusion(face)


def test_full_face_mask_hull_and_scale():
    pts = np.array([[10, 10], [30, 10], [30, 30], [10, 30], [20, 20]], np.float32)
    m = full_face_mask(pts, (40, 40))
    assert m.sum() == 21 * 21
    assert full_face_mask(pts, (40, 40), scale=1.5).sum() > m.sum()
    assert full_face_mask(pts[:2], (40, 40)).sum() == 0


def test_command_writes_pngs_and_dataset_reads_them(tmp_path):
    out = tmp_path / "pl"
    msg = pseudo_labels_occlusion(
        str(out), dataset="synthetic", split="train", num_samples=6, hull_scale=2.0, kernel_scale=0.25
    )
    assert "6 occlusion pseudo-labels" in msg
    info = json.loads((out / "pseudo_labels.json").read_text())
    assert info["label_set"]["name"] == "cofw_occlusion" and info["count"] == 6
    lab = cv2.imread(str(out / "synthetic_train_000000.png"), cv2.IMREAD_UNCHANGED)
    blobs = cv2.imread(str(out / "blobs" / "synthetic_train_000000.png"), cv2.IMREAD_UNCHANGED)
    assert lab.shape == (128, 128) and set(np.unique(lab)) <= {0, 1, 2}
    assert blobs.dtype == np.uint16
    np.testing.assert_array_equal(lab, np.minimum(blobs, 2))
    ds = faceparse.build_dataset(
        "occlusion_pseudo",
        labels_dir=str(out),
        dataset="synthetic",
        split="train",
        dataset_kwargs={"num_samples": 6},
        image_size=64,
    )
    batch = collate([ds[i] for i in range(3)])
    assert batch["mask"].shape == (3, 64, 64) and batch["blobs"].shape == (3, 64, 64)
    logits = torch.randn(3, 3, 64, 64, requires_grad=True)
    loss = faceparse.build_loss("consensus", blobs="given")(logits, batch)["loss"]
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    ref = consensus_loss(logits, batch["mask"], blobs="given", blob_ids=batch["blobs"])["loss"]
    assert loss.item() == pytest.approx(ref.item())
    with pytest.raises(faceparse.FaceParseError, match="pseudo-labels occlusion"):
        faceparse.build_dataset("occlusion_pseudo", labels_dir=str(tmp_path))


def test_command_with_teacher_model_via_cli(tmp_path):
    from faceparse.cli import main

    teacher = faceparse.build_model("consensus_net", label_set="part_labels")
    teacher.save_pretrained(tmp_path / "teacher")
    rc = main([
        "pseudo-labels", "occlusion", str(tmp_path / "pl"), "--model", str(tmp_path / "teacher"),
        "--num-samples", "2", "--image-size", "32", "--hull-scale", "2.0", "--kernel-scale", "0.1",
    ])  # fmt: skip
    assert rc == 0
    assert len(list((tmp_path / "pl").glob("*.png"))) == 2
    assert len(list((tmp_path / "pl" / "blobs").glob("*.png"))) == 2


def test_synthetic_occlusion_dataset_blobs_follow_eq2():
    ds = faceparse.build_dataset("synthetic_occlusion", num_samples=6, image_size=48, occluder_prob=1.0)
    assert ds.label_set.name == "cofw_occlusion"
    raw = ds.load_raw(0)
    occ = np.asarray(ds.base.load_raw(0)["occlusion"]) > 0
    np.testing.assert_array_equal(raw["mask"] == 2, occ)
    np.testing.assert_array_equal(np.minimum(raw["blobs"], 2), raw["mask"])
    n_occ = cv2.connectedComponents(occ.astype(np.uint8), connectivity=8)[0] - 1
    assert len(np.unique(raw["blobs"][occ])) == n_occ
    batch = collate([ds[i] for i in range(4)])
    out = faceparse.build_loss("consensus", blobs="given")(torch.randn(4, 3, 48, 48), batch)
    assert torch.isfinite(out["loss"])


def test_occlusion_pseudo_without_labels_maps_true_masks():
    ds = faceparse.build_dataset(
        "occlusion_pseudo", labels_dir=None, dataset="synthetic", dataset_kwargs={"num_samples": 2}, image_size=32
    )
    raw, base = ds.load_raw(1), ds.base.load_raw(1)
    lut = base_lut = ds.base.label_set.mapping_to(ds.label_set)
    np.testing.assert_array_equal(raw["mask"], lut[base["mask"]])
    assert "blobs" not in raw and base_lut[ds.base.label_set.index("nose")] == 1
