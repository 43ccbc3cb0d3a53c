"""Mask-FPAN modules: PPM (solvePnP + learned head), LOM (landmarks + occlusion), DOM (LSTM AE)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import faceparse
from faceparse.errors import FaceParseError
from faceparse.losses.maskfpan import DeOcclusionLoss, LandmarkOcclusionLoss
from faceparse.models.maskfpan.deocclusion import DeOcclusionNet, SpatialLSTM, from_patches, to_patches
from faceparse.models.maskfpan.pose import (
    add_pose_targets,
    euler_from_rotation,
    five_from_68,
    head_pose_from_landmarks,
    project_generic_face,
    rotation_from_euler,
)
from faceparse.registry import AUX_MODELS
from faceparse.tasks.maskfpan import LandmarkOcclusionTask


# ----------------------------------------------------------------------------- PPM: solvePnP
@pytest.mark.parametrize("pose", [(0, 0, 0), (30, 0, 0), (0, -20, 0), (0, 0, 12), (-35, 15, -10)])
def test_solvepnp_recovers_pose_of_generic_face(pose):
    lmk = project_generic_face(*pose, image_size=(128, 160))
    est = head_pose_from_landmarks(lmk, (128, 160))
    np.testing.assert_allclose(est, pose, atol=0.5)


def test_pose_conventions_and_errors():
    r = rotation_from_euler(10, 20, 30)
    np.testing.assert_allclose(euler_from_rotation(r), (10, 20, 30), atol=1e-6)
    frontal = project_generic_face(0, 0, 0)
    rolled = project_generic_face(0, 0, 20)
    # positive roll is clockwise in the image: the image-left eye moves up (smaller y)
    assert rolled[0, 1] < frontal[0, 1]
    # an in-plane rotation of the landmarks is recovered as roll
    c = frontal.mean(0)
    a = np.deg2rad(15)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    est = head_pose_from_landmarks((frontal - c) @ rot.T + c, (128, 128))
    assert abs(est[2] - 15) < 1.5 and abs(est[0]) < 1.5
    with pytest.raises(FaceParseError, match="5"):
        head_pose_from_landmarks(np.zeros((7, 2)), (64, 64))
    pts68 = np.random.default_rng(0).uniform(0, 64, (68, 2))
    assert five_from_68(pts68).shape == (5, 2)
    np.testing.assert_allclose(five_from_68(pts68)[0], pts68[36:42].mean(0))


# ----------------------------------------------------------------------------- LOM + learned PPM
def test_lom_outputs_and_registry():
    model = AUX_MODELS.build("mfpan_lom", num_landmarks=29)
    out = model(torch.randn(2, 3, 64, 64))
    assert out["landmarks"].shape == (2, 29, 2) and out["occlusion_logits"].shape == (2, 29)
    assert out["pose"].shape == (2, 3) and out["pose"].abs().max() <= 90
    pred = model.predict(torch.randn(1, 3, 48, 64))
    assert pred["landmarks"].shape == (1, 29, 2) and pred["landmark_occluded"].dtype == torch.bool
    # zero-initialised landmark head: every landmark starts at the image centre
    assert torch.allclose(pred["landmarks"], torch.tensor([31.5, 23.5]).expand(1, 29, 2))
    assert "mfpan_lom" not in faceparse.list_models()  # not a face parser


def test_lom_loss_terms():
    loss = LandmarkOcclusionLoss(occlusion_weight=1.0, pose_weight=0.1)
    image = torch.zeros(1, 3, 11, 11)
    target = torch.tensor([[[5.0, 5.0], [10.0, 0.0]]])
    outputs = {
        "landmarks": torch.tensor([[[0.5, 0.5], [1.0, 0.0]]]),
        "occlusion_logits": torch.zeros(1, 2),
        "pose": torch.zeros(1, 3),
    }
    batch = {"image": image, "landmarks": target, "landmark_occluded": torch.tensor([[True, False]])}
    out = loss(outputs, batch)
    assert out["landmark"] == 0 and float(out["occlusion"]) == pytest.approx(np.log(2), abs=1e-6)
    # pose-weighted L2: a 60 degree yaw doubles... (1 + (1 - cos 60)) = 1.5 times the error
    outputs["landmarks"] = outputs["landmarks"] + 0.1
    plain = float(loss(outputs, batch)["landmark"])
    posed = loss(outputs, dict(batch, pose=torch.tensor([[60.0, 0.0, 0.0]])))
    assert float(posed["landmark"]) == pytest.approx(1.5 * plain, rel=1e-5)
    assert float(posed["pose"]) == pytest.approx(60.0 / 3 / 90.0, rel=1e-5)


def test_lom_learns_on_synthetic_occluded_faces():
    torch.manual_seed(0)
    ds = faceparse.build_dataset("occluded", base="synthetic", split="train", num_samples=8, image_size=48, seed=3)
    from faceparse.data import collate

    batch = add_pose_targets(collate([ds[i] for i in range(8)]))
    assert batch["pose"].shape == (8, 3) and batch["pose"].abs().max() < 45  # near-frontal faces
    task = LandmarkOcclusionTask(num_landmarks=5, lr=3e-3)
    opt = task.configure_optimizers()
    first = None
    for _ in range(25):
        out = task.loss(task.model(batch["image"]), batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = out["loss"].item() if first is None else first
    assert out["loss"].item() < 0.6 * first


# ----------------------------------------------------------------------------- DOM
def test_patches_roundtrip_and_order():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    p = to_patches(x, 4)
    assert p.shape == (2, 16, 12)
    assert torch.equal(p[0, 1].reshape(3, 2, 2), x[0, :, 0:2, 2:4])  # raster order: row 0, column 1
    assert torch.equal(from_patches(p, 4, 3, 8), x)


def test_spatial_lstm_is_causal_over_the_grid():
    torch.manual_seed(0)
    lstm = SpatialLSTM(4, 6)
    x = torch.randn(1, 9, 4)
    h = lstm(x, 3)
    x2 = x.clone()
    x2[0, 4] += 1.0  # change the centre cell (1, 1)
    h2 = lstm(x2, 3)
    changed = (h - h2).abs().sum(-1)[0] > 1e-7
    # cells above or left of (1, 1) cannot see it; (1, 1), (1, 2), (2, 1), (2, 2) can
    assert changed.tolist() == [False, False, False, False, True, True, False, True, True]


def test_dom_composes_output_from_occlusion_probability():
    torch.manual_seed(0)
    dom = DeOcclusionNet(image_size=16, grids=(4, 2), embed=8, hidden=12)
    x = torch.rand(2, 3, 16, 16)
    out = dom(x)
    p, rec = out["occlusion_prob"], out["reconstruction"]
    assert p.shape == (2, 1, 16, 16) and rec.shape == (2, 3, 16, 16)
    assert torch.allclose(out["output"], (1 - p) * x + p * rec)
    mask = dom.predict_occlusion(x, size=(32, 32))
    assert mask.shape == (2, 32, 32) and set(mask.unique().tolist()) <= {0, 1}
    assert dom(torch.rand(1, 3, 20, 20))["output"].shape == (1, 3, 16, 16)  # resized input
    with pytest.raises(ValueError, match="divisible"):
        DeOcclusionNet(image_size=18, grids=(4,))
    assert isinstance(AUX_MODELS.build("mfpan_dom", image_size=16, grids=[4]), DeOcclusionNet)


def test_dom_learns_occlusion_of_synthetic_pairs():
    torch.manual_seed(0)
    # clean faces: smooth gradients; occluded: a bright square at a random place
    g = torch.Generator().manual_seed(0)
    clean = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(8, 3, 16, 16).clone() * 0.5
    occ = torch.zeros(8, 16, 16)
    for i in range(8):
        y, x = torch.randint(0, 8, (2,), generator=g).tolist()
        occ[i, y : y + 8, x : x + 8] = 1
    noisy = clean * (1 - occ[:, None]) + occ[:, None]
    dom = DeOcclusionNet(image_size=16, grids=(4, 2), embed=16, hidden=32)
    loss = DeOcclusionLoss()
    opt = torch.optim.Adam(dom.parameters(), 1e-2)
    batch = {"clean": clean, "occlusion": occ}
    first = loss(dom(noisy), batch)["loss"].item()
    for _ in range(40):
        out = loss(dom(noisy), batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert out["loss"].item() < 0.5 * first
    pred = dom.predict_occlusion(noisy)
    iou = (pred.bool() & occ.bool()).sum() / (pred.bool() | occ.bool()).sum()
    assert iou > 0.5
