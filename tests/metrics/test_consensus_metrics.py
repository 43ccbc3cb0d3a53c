"""Consensus-paper metrics: sparsity, superpixel accuracy, COFW protocol, 128 -> 250 upsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from faceparse.metrics import (
    ConsensusMetrics,
    SparsityError,
    SuperpixelAccuracy,
    cofw_protocol,
    count_components,
    upsample_labels,
)


def _n_components(fg: np.ndarray) -> int:
    return int(ndimage.label(fg, structure=np.ones((3, 3)))[1])


def test_count_components_together_and_per_class():
    lab = np.zeros((10, 10), np.int64)
    lab[1:4, 1:4] = 1
    lab[4:6, 4:6] = 2  # touches the class-1 square diagonally: one blob together, two per class
    lab[8, 8] = 1
    lab[0, 9] = 255  # ignored
    assert count_components(lab) == 2
    assert count_components(lab, per_class=True) == 3
    assert count_components(lab, connectivity=4) == 3


def test_sparsity_is_mean_abs_difference():
    rng = np.random.default_rng(0)
    preds = torch.from_numpy(rng.integers(0, 3, (4, 16, 16)) * (rng.random((4, 16, 16)) < 0.3))
    target = torch.zeros(4, 16, 16, dtype=torch.long)
    target[:, 2:8, 2:8] = 1
    target[1, 10:14, 10:14] = 2
    target[2] = 255
    m = SparsityError()
    m.update(preds[:2], target[:2])
    m.update(preds[2:], target[2:])
    ref = []
    for p, t in zip(preds.numpy(), target.numpy()):
        ign = t == 255
        ref.append(abs(_n_components((t > 0) & ~ign) - _n_components((p > 0) & ~ign)))
    assert m.compute()["sparsity"].item() == pytest.approx(np.mean(ref))
    # logits input gives the same
    m2 = SparsityError()
    m2.update(torch.nn.functional.one_hot(preds, 3).permute(0, 3, 1, 2).float(), target)
    assert m2.compute()["sparsity"].item() == pytest.approx(np.mean(ref))


def test_superpixel_accuracy_majority_vote():
    rng = np.random.default_rng(1)
    sp = np.repeat(np.repeat(np.arange(16).reshape(4, 4), 4, 0), 4, 1)  # 16 superpixels of 4x4
    target = rng.integers(0, 3, (16, 16))
    preds = rng.integers(0, 3, (16, 16))
    m = SuperpixelAccuracy(3)
    m.update(torch.from_numpy(preds)[None], torch.from_numpy(target)[None], torch.from_numpy(sp)[None])
    correct = 0
    for s in range(16):
        gt = np.bincount(target[sp == s], minlength=3).argmax()
        pr = np.bincount(preds[sp == s], minlength=3).argmax()
        correct += int(gt == pr)
    assert m.compute().item() == pytest.approx(correct / 16)


def test_cofw_protocol_merges_occlusion_and_crops_to_box():
    preds = torch.tensor([[[0, 1, 2, 1], [1, 1, 2, 0], [2, 1, 1, 1]]])  # background/face/occlusion
    target = torch.tensor([[[0, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 255]]])  # cofw: 0 non-face, 1 face
    box = torch.tensor([[1.0, 0.0, 3.0, 1.0]])  # x 1..3, y 0..1
    p01, t01 = cofw_protocol(preds, target, box)
    assert p01.tolist() == [[[0, 1, 0, 1], [1, 1, 0, 0], [0, 1, 1, 1]]]
    assert t01.tolist() == [[[255, 1, 1, 1], [255, 1, 0, 0], [255, 255, 255, 255]]]
    m = ConsensusMetrics("cofw", protocol="cofw", pred_label_set="cofw_occlusion")
    m.update(preds, target, face_box=box)
    r = m.compute()
    # inside the box: target (1,1,1,1,0,0) vs preds (1,0,1,1,0,0)
    assert r["pixel_acc"].item() == pytest.approx(5 / 6)
    assert r["rec_face"].item() == pytest.approx(3 / 4)
    assert r["face_iou"].item() == pytest.approx(3 / 4)
    assert r["rec_all"].item() == pytest.approx((3 / 4 + 1) / 2)
    m.reset()
    m.update(target, target, face_box=box)
    assert m.compute()["pixel_acc"].item() == 1.0


def test_upsample_128_to_250_nearest():
    lab = torch.arange(128 * 128).reshape(128, 128)
    up = upsample_labels(lab, 250)
    idx = (np.arange(250) * 128 / 250).astype(int)  # nearest = floor(i * in / out)
    assert up.shape == (250, 250)
    assert torch.equal(up, lab[idx][:, idx])
    assert upsample_labels(lab[None].repeat(2, 1, 1), (250, 250)).shape == (2, 250, 250)


def test_consensus_metrics_part_labels_protocol():
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 250, 250))
    sp = torch.arange(250 * 250).reshape(250, 250) // 50 % 400
    preds = torch.randint(0, 3, (2, 128, 128))
    m = ConsensusMetrics("part_labels", protocol="part_labels")
    m.update(preds, target, superpixels=sp[None].repeat(2, 1, 1))
    r = m.compute()
    up = upsample_labels(preds, 250)
    assert r["pixel_acc"].item() == pytest.approx((up == target).float().mean().item(), abs=1e-6)
    recall = [((up == c) & (target == c)).sum().item() / (target == c).sum().item() for c in range(3)]
    assert r["rec_all"].item() == pytest.approx(np.mean(recall), abs=1e-6)
    assert set(r) >= {"superpixel_acc", "sparsity", "face_iou", "miou", "iou"}
    with pytest.raises(ValueError, match="protocol"):
        ConsensusMetrics("part_labels", protocol="helen")
