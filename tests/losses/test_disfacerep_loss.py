"""TCD losses (DisFaceRep Eq. 8-16) against hand computations, and the frozen open_clip encoder."""

from __future__ import annotations

import math

import pytest
import torch

import faceparse
from faceparse.losses.disfacerep import PAPER_WEIGHTS, TCDLoss, combine_terms, component_prompt, tcd_terms
from faceparse.models.mct_vit.text import TINY_CLIP_CONFIG, OpenCLIPEncoder, VisionLanguageEncoder

EPS = 1e-4


def _cos(a, b):
    a, b = a.tolist(), b.tolist()
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _clamp(s):
    return min(max(s, EPS), 1 - EPS)


def _reference(v_cls, v_ffc, v_bfc, v_txt, y, p, reduction):
    """Loop-by-loop Eq. 8, 9, 11, 12, 13, 15 (independent of the implementation)."""
    B, K = y.shape
    sums = dict.fromkeys(("pos_cls", "pos_ffc", "neg_cls", "neg_ffc", "neg_bfc"), 0.0)
    npos = nneg = 0
    for b in range(B):
        for k in range(K):
            if y[b, k] == 0:
                continue
            npos += 1
            sums["pos_cls"] -= math.log(_clamp(_cos(v_cls[b, k], v_txt[k])))
            sums["pos_ffc"] -= math.log(_clamp(_cos(v_ffc[b, k], v_txt[k])))
            sums["neg_bfc"] -= math.log(1 - _clamp(_cos(v_bfc[b, k], v_txt[k])))
            for l_ in range(K):
                if l_ == k:
                    continue
                nneg += 1
                sums["neg_cls"] -= math.log(1 - _clamp(_cos(v_cls[b, k], v_txt[l_])))
                sums["neg_ffc"] -= math.log(1 - _clamp(_cos(v_ffc[b, k], v_txt[l_])))
    if reduction == "mean":
        out = {n: v / (nneg if n.startswith("neg_") and n != "neg_bfc" else npos) for n, v in sums.items()}
    else:
        out = {n: v / B for n, v in sums.items()}
    out["reg"] = sum(p[b, k].mean().item() for b in range(B) for k in range(K)) / (B * K)
    return out


@pytest.fixture()
def fixed():
    g = torch.Generator().manual_seed(3)
    B, K, E = 3, 5, 8
    v_txt = torch.randn(K, E, generator=g)
    v_cls = torch.randn(B, K, E, generator=g) + 0.8 * v_txt  # mostly positive similarities
    v_ffc = torch.randn(B, K, E, generator=g) + 0.5 * v_txt
    v_bfc = torch.randn(B, K, E, generator=g)
    y = (torch.rand(B, K, generator=g) > 0.4).float()
    y[0, 0] = 1
    p = torch.rand(B, K, 6, 6, generator=g)
    return v_cls, v_ffc, v_bfc, v_txt, y, p


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_terms_match_independent_computation(fixed, reduction):
    terms = tcd_terms(*fixed, eps=EPS, reduction=reduction)
    ref = _reference(*fixed, reduction)
    for name, value in ref.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-5, abs=1e-6), name
    # Eq. 16 with the paper's weights [a0, a1, b0, b1, b2, lambda]
    assert PAPER_WEIGHTS == (1.2, 0.2, 2.1, 0.1, 0.017, 0.05)
    total = (
        1.2 * ref["pos_cls"]
        + 0.2 * ref["pos_ffc"]
        + 2.1 * ref["neg_cls"]
        + 0.1 * ref["neg_ffc"]
        + 0.017 * ref["neg_bfc"]
        + 0.05 * ref["reg"]
    )
    assert combine_terms(terms).item() == pytest.approx(total, rel=1e-5)


def test_clamped_logs_never_nan():
    v_txt = torch.eye(3, 4)
    # sim = -1 for the positives (log(sim) would be NaN) and sim = 1 for a negative (log(0) = -inf)
    v_cls = (-v_txt).unsqueeze(0).clone().requires_grad_(True)
    v_bfc = v_txt.unsqueeze(0).clone().requires_grad_(True)
    y = torch.ones(1, 3)
    terms = tcd_terms(v_cls, v_cls, v_bfc, v_txt, y, torch.rand(1, 3, 2, 2))
    total = combine_terms(terms)
    assert torch.isfinite(total)
    assert terms["pos_cls"].item() == pytest.approx(-math.log(EPS), rel=1e-4)
    assert terms["neg_bfc"].item() == pytest.approx(-math.log(EPS), rel=1e-3)
    total.backward()
    assert torch.isfinite(v_cls.grad).all() and torch.isfinite(v_bfc.grad).all()


def test_prompts():
    assert component_prompt("nose") == "a photo of a face with nose"
    assert component_prompt("left_brow") == "a photo of a face with left eyebrow"
    assert component_prompt("upper_lip") == "a photo of a face with upper lip"


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    return OpenCLIPEncoder(model_cfg=TINY_CLIP_CONFIG, random_init=True)


def test_open_clip_encoder_protocol(tiny_encoder, tmp_path):
    assert isinstance(tiny_encoder, VisionLanguageEncoder)
    tokens = tiny_encoder.tokenize(["a photo of a face with nose"])
    assert tokens.shape == (1, 16)
    assert tiny_encoder.encode_text(tokens).shape == (1, 32)
    assert tiny_encoder.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 32)
    assert all(not p.requires_grad for p in tiny_encoder.parameters())
    tiny_encoder.train()
    assert not tiny_encoder.model.training  # frozen encoders stay in eval mode
    # a user checkpoint file (FLIP/CLIP weights) is loaded from disk
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_encoder.model.state_dict().items()}}, path)
    other = OpenCLIPEncoder(model_cfg=TINY_CLIP_CONFIG, checkpoint=str(path))
    torch.testing.assert_close(other.encode_text(tokens), tiny_encoder.encode_text(tokens))
    with pytest.raises(faceparse.errors.FaceParseError, match="not found"):
        OpenCLIPEncoder(model_cfg=TINY_CLIP_CONFIG, checkpoint=str(tmp_path / "missing.pt"))


def test_gradients_reach_vit_not_encoder(tiny_encoder):
    model = faceparse.build_model(
        "mct_vit_tiny",
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
        projector_dim=32,
        projector_hidden_dim=16,
    )
    loss_fn = faceparse.build_loss("tcd", encoder=tiny_encoder)
    assert len(loss_fn.prompts) == 18 and loss_fn.prompts[0] == "a photo of a face with neck"
    x = torch.randn(2, 3, 32, 32)
    y = torch.zeros(2, 18)
    y[0, [1, 5, 9]] = 1
    y[1, [1, 2]] = 1
    out = model.forward_train(x)
    res = loss_fn(out, {"image": x, "fg_labels": y})
    assert set(res) == {"loss", "pos_cls", "pos_ffc", "neg_cls", "neg_ffc", "neg_bfc", "reg"}
    assert torch.isfinite(res["loss"])
    torch.testing.assert_close(res["loss"], combine_terms(res))
    res["loss"].backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    assert model.projector[0].weight.grad.abs().sum() > 0
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_encoder.parameters())


def test_ffc_images_are_masked_inputs(tiny_encoder):
    """Eq. 5-6: the encoder sees x * P_k and x * (1 - P_k) in pixel space."""
    loss_fn = TCDLoss(encoder=tiny_encoder)
    x = torch.randn(1, 3, 32, 32)
    maps = torch.rand(1, 18, 4, 4)
    y = torch.zeros(1, 18)
    y[0, 3] = 1
    v_ffc, v_bfc, encoded = loss_fn.component_embeddings(x, maps, y)
    assert encoded.sum() == 1 and v_ffc[0, 0].abs().sum() == 0
    pix = (x * loss_fn.in_std + loss_fn.in_mean).clamp(0, 1)
    pk = torch.nn.functional.interpolate(maps[:, 3:4], size=(32, 32), mode="bilinear", align_corners=False)
    ref = tiny_encoder.encode_image((pix * pk - loss_fn.vl_mean) / loss_fn.vl_std)
    torch.testing.assert_close(v_ffc[0, 3], ref[0], atol=1e-5, rtol=1e-4)
    ref_b = tiny_encoder.encode_image((pix * (1 - pk) - loss_fn.vl_mean) / loss_fn.vl_std)
    torch.testing.assert_close(v_bfc[0, 3], ref_b[0], atol=1e-5, rtol=1e-4)


def test_projector_size_mismatch_is_explained(tiny_encoder):
    model = faceparse.build_model(
        "mct_vit_tiny", img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2, projector_dim=8
    )
    loss_fn = TCDLoss(encoder=tiny_encoder)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(faceparse.errors.FaceParseError, match="projector_dim=32"):
        loss_fn(model.forward_train(x), {"image": x, "fg_labels": torch.ones(1, 18)})
