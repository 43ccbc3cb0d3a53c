"""S3POT prompt losses (paper Eq. 1-4) against independent computations on hand-made maps."""

from __future__ import annotations

import math

import pytest
import torch

import faceparse
from faceparse.losses.s3pot import PromptLoss, prompt_loss_terms


def _outputs(prob: torch.Tensor, occ_pts: list[list[tuple[int, int]]], face_pts: list[list[tuple[int, int]]]) -> dict:
    """forward_train-style dict from a B x H x W probability map and per-image (x, y) lists."""
    out = {"occlusion_logits": torch.logit(prob)[:, None]}
    for key, pts in (("occlusion", occ_pts), ("face", face_pts)):
        n = max(1, max(len(p) for p in pts))
        t = torch.zeros(len(pts), n, 2, dtype=torch.long)
        v = torch.zeros(len(pts), n, dtype=torch.bool)
        for b, p in enumerate(pts):
            if p:
                t[b, : len(p)] = torch.tensor(p)
                v[b, : len(p)] = True
        out[f"{key}_points"], out[f"{key}_valid"] = t, v
    return out


def _reference(prob, occ_pts, face_pts, alpha=10.0, lam=0.5):
    """Eq. 1-4 written out with Python floats, per image, then averaged over the batch."""
    per = {"recall_occ": [], "recall_face": [], "face_penalty": [], "loss": []}
    for b in range(prob.shape[0]):
        qo = [float(prob[b, y, x]) for x, y in occ_pts[b]]
        qf = [float(prob[b, y, x]) for x, y in face_pts[b]]
        opr = -sum(math.log(q) for q in qo) / len(qo) if qo else 0.0
        fpr = sum(math.log(q) for q in qf) / len(qf) if qf else 0.0
        fpp = sum(1 / (1 + math.exp(-alpha * (q - 0.5))) for q in qf) / len(qf) if qf else 0.0
        for k, v in (("recall_occ", opr), ("recall_face", fpr), ("face_penalty", fpp), ("loss", fpr + opr + lam * fpp)):
            per[k].append(v)
    return {k: sum(v) / len(v) for k, v in per.items()}


@pytest.fixture
def hand_made():
    prob = torch.full((2, 6, 8), 0.5, dtype=torch.float64)
    prob[0, 1, 2], prob[0, 2, 5], prob[0, 4, 1] = 0.9, 0.7, 0.2  # occlusion points of image 0
    prob[0, 3, 3], prob[0, 5, 7] = 0.1, 0.6  # face points of image 0
    prob[1, 0, 0], prob[1, 2, 2], prob[1, 4, 6], prob[1, 1, 7] = 0.3, 0.05, 0.95, 0.4
    occ = [[(2, 1), (5, 2), (1, 4)], [(0, 0)]]
    face = [[(3, 3), (7, 5)], [(2, 2), (6, 4), (7, 1)]]
    return prob, occ, face


def test_terms_equal_independent_computation(hand_made):
    prob, occ, face = hand_made
    got = PromptLoss(alpha=10.0, lam=0.5)(_outputs(prob, occ, face), {})
    want = _reference(prob, occ, face)
    for k, v in want.items():
        assert got[k].item() == pytest.approx(v, rel=1e-6, abs=1e-9), k


def test_other_alpha_lambda_and_registry(hand_made):
    prob, occ, face = hand_made
    loss = faceparse.build_loss("s3pot_prompt", alpha=3.0, lam=2.0)
    got = loss(_outputs(prob, occ, face), {})
    want = _reference(prob, occ, face, alpha=3.0, lam=2.0)
    assert got["loss"].item() == pytest.approx(want["loss"], rel=1e-6)
    assert got["face_penalty"].item() == pytest.approx(want["face_penalty"], rel=1e-6)


def test_two_class_logits_give_the_same_loss(hand_made):
    prob, occ, face = hand_made
    out = _outputs(prob, occ, face)
    occ_logit = out.pop("occlusion_logits")
    out["logits"] = torch.cat([-0.5 * occ_logit, 0.5 * occ_logit], dim=1)  # softmax class 1 == sigmoid
    want = _reference(prob, occ, face)
    assert PromptLoss()(out, {})["loss"].item() == pytest.approx(want["loss"], rel=1e-6)


def test_total_decreases_as_occlusion_rises_and_face_falls(hand_made):
    prob, occ, face = hand_made
    loss = PromptLoss()
    base = loss(_outputs(prob, occ, face), {})["loss"].item()
    up = prob.clone()
    for b, pts in enumerate(occ):
        for x, y in pts:
            up[b, y, x] = up[b, y, x] + 0.5 * (1 - up[b, y, x])
    occ_up = loss(_outputs(up, occ, face), {})["loss"].item()
    down = up.clone()
    for b, pts in enumerate(face):
        for x, y in pts:
            down[b, y, x] = 0.5 * down[b, y, x]
    both = loss(_outputs(down, occ, face), {})["loss"].item()
    assert occ_up < base
    assert both < occ_up
    # the reverse direction raises it
    worse = prob.clone()
    for b, pts in enumerate(face):
        for x, y in pts:
            worse[b, y, x] = 0.99
    assert loss(_outputs(worse, occ, face), {})["loss"].item() > base


def test_gradient_signs_on_logits(hand_made):
    prob, occ, face = hand_made
    out = _outputs(prob, occ, face)
    out["occlusion_logits"] = out["occlusion_logits"].clone().requires_grad_(True)
    PromptLoss()(out, {})["loss"].backward()
    g = out["occlusion_logits"].grad[:, 0]
    for b in range(2):
        assert all(g[b, y, x] < 0 for x, y in occ[b])  # descent raises occlusion probability
        assert all(g[b, y, x] > 0 for x, y in face[b])  # and lowers face probability
    assert g[0, 0, 4] == 0  # pixels without prompts get no gradient


def test_penalty_punishes_high_face_probabilities_most():
    t = prompt_loss_terms(torch.tensor([]), torch.tensor([0.4, 0.6]))
    t_low = prompt_loss_terms(torch.tensor([]), torch.tensor([0.4, 0.45]))
    assert t["face_penalty"] - t_low["face_penalty"] == pytest.approx(
        (1 / (1 + math.exp(-1.0)) - 1 / (1 + math.exp(0.5))) / 2, rel=1e-5
    )


def test_empty_prompt_sets_contribute_zero():
    prob = torch.full((1, 4, 4), 0.3)
    got = PromptLoss()(_outputs(prob, [[]], [[(1, 1)]]), {})
    assert got["recall_occ"].item() == 0.0
    assert got["recall_face"].item() == pytest.approx(math.log(0.3), rel=1e-5)
    got = PromptLoss()(_outputs(prob, [[]], [[]]), {})
    assert got["loss"].item() == 0.0
