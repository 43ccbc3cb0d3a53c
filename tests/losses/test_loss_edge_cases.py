"""Named edge cases of the registered losses, each a bug seen before the float32 / empty-set fixes.

The random search over all losses is tests/losses/test_loss_properties.py; these pin the values.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import faceparse
from faceparse.errors import FaceParseError
from faceparse.losses.disfacerep import TCDLoss
from faceparse.models.mct_vit.text import TINY_CLIP_CONFIG, OpenCLIPEncoder


def _leaf(*shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype).requires_grad_()


@pytest.mark.parametrize("name", ["ce", "dice", "ce_dice", "consensus", "occlusion_weighted_ce"])
def test_all_ignore_batch_is_zero_with_a_grad_fn(name):
    """COFW's train split is all-ignore by design: 0, not 0/0 = NaN, and backward() works."""
    logits = _leaf(2, 4, 5, 5)
    out = faceparse.build_loss(name)(logits, {"mask": torch.full((2, 5, 5), 255)})
    loss = out["loss"] if isinstance(out, dict) else out
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_ce_with_class_weights_matches_torch_and_is_zero_when_all_ignore():
    logits = _leaf(2, 3, 4, 4)
    mask = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    mask[0, :2] = 255
    w = [0.2, 3.0, 1.0]
    got = faceparse.build_loss("ce", class_weights=w)(logits, {"mask": mask})
    want = F.cross_entropy(logits, mask, weight=torch.tensor(w), ignore_index=255)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    zero = faceparse.build_loss("ce", class_weights=w)(logits, {"mask": torch.full_like(mask, 255)})
    assert zero.item() == 0.0 and zero.requires_grad


@pytest.mark.parametrize("name", ["ce", "ce_dice", "occlusion_weighted_ce"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_huge_half_precision_logits_match_the_float32_loss(name, dtype):
    """Logits of magnitude 1e4 in fp16/bf16: the loss is computed in float32, so it equals the
    float32 loss of the same (rounded) logits instead of overflowing."""
    logits = _leaf(2, 3, 4, 4, dtype=dtype, scale=1e4 / 4)
    mask = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(2))
    loss_fn = faceparse.build_loss(name)
    out = loss_fn(logits, {"mask": mask})
    loss = out["loss"] if isinstance(out, dict) else out
    ref_out = loss_fn(logits.detach().float(), {"mask": mask})
    ref = ref_out["loss"] if isinstance(ref_out, dict) else ref_out
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert loss.item() > 1e3  # the wrong classes win by ~1e4: a large, finite loss
    loss.backward()
    assert torch.isfinite(logits.grad.float()).all() and logits.grad.dtype == dtype


@pytest.mark.parametrize("key", ["landmarks", "pose", "face_box"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_occlusion_weighted_ce_rejects_non_finite_geometry(key, bad):
    b, h, w = 2, 6, 6
    batch = {
        "mask": torch.zeros(b, h, w, dtype=torch.long),
        "landmarks": torch.full((b, 3, 2), 2.0),
        "landmark_occluded": torch.ones(b, 3, dtype=torch.bool),
        "pose": torch.zeros(b, 3),
        "face_box": torch.tensor([[0.0, 0.0, 6.0, 6.0]] * b),
    }
    batch[key] = batch[key].clone()
    batch[key].view(b, -1)[1, 0] = bad
    with pytest.raises(FaceParseError, match=rf"batch\['{key}'\].*NaN/inf.*images \[1\]"):
        faceparse.build_loss("occlusion_weighted_ce")(_leaf(b, 2, h, w), batch)


@pytest.mark.parametrize("normalization", ["paper", "official"])
def test_consensus_all_ignore_huge_fp16_logits_is_a_float32_zero(normalization):
    """No blob at all: the zero was ``logits.sum() * 0``, NaN once fp16 logits sum past 65504."""
    logits = (torch.ones(1, 3, 64, 64) * 3e4).half().requires_grad_()
    loss_fn = faceparse.build_loss("consensus", normalization=normalization)
    out = loss_fn(logits, {"mask": torch.full((1, 64, 64), 255)})
    assert out["loss"].item() == 0.0 and out["loss"].dtype == torch.float32
    out["loss"].backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_consensus_empty_and_gapped_blobs():
    logits = _leaf(1, 3, 4, 4)
    mask = torch.full((1, 4, 4), 255)
    mask[0, 0, 0] = 1
    blobs = torch.full((1, 4, 4), 7)  # ids 0..6 are empty
    for kw in ({"blobs": "given"}, {"blobs": "given", "normalization": "official"}, {"blobs": "components"}):
        out = faceparse.build_loss("consensus", **kw)(logits, {"mask": mask, "blobs": blobs})
        assert torch.isfinite(out["loss"]) and out["loss"].item() > 0, kw
        out["loss"].backward()
        assert torch.isfinite(logits.grad).all()


def _prompt_outputs(logits: torch.Tensor, valid: bool) -> dict:
    b = logits.shape[0]
    return {
        "occlusion_logits": logits,
        "occlusion_points": torch.zeros(b, 2, 2, dtype=torch.long),
        "occlusion_valid": torch.full((b, 2), valid),
        "face_points": torch.ones(b, 2, 2, dtype=torch.long),
        "face_valid": torch.full((b, 2), valid),
    }


def test_s3pot_prompt_loss_without_valid_prompts_backpropagates_zero():
    logits = _leaf(2, 1, 4, 4)
    out = faceparse.build_loss("s3pot_prompt")(_prompt_outputs(logits, valid=False), {})
    assert out["loss"].item() == 0.0 and out["loss"].requires_grad
    out["loss"].backward()  # raised "element 0 of tensors does not require grad" before
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.fixture(scope="module")
def tiny_encoder():
    torch.manual_seed(0)
    return OpenCLIPEncoder(model_cfg=TINY_CLIP_CONFIG, random_init=True)


def _tcd_inputs(b: int, k: int, dtype: torch.dtype) -> tuple[dict, dict]:
    outputs = {"vl_embed": _leaf(b, k, 32, dtype=dtype), "patch_cam": _leaf(b, k, 4, 4, dtype=dtype, seed=1)}
    batch = {"image": torch.randn(b, 3, 16, 16).to(dtype), "fg_labels": torch.ones(b, k)}
    return outputs, batch


def test_tcd_one_component_label_set_is_finite(tiny_encoder):
    """``cofw`` has one component: Eq. 11-12 have no "other" text and are 0 (were 0/0 = NaN)."""
    loss_fn = TCDLoss(encoder=tiny_encoder, label_set="cofw")
    outputs, batch = _tcd_inputs(2, 1, torch.float32)
    out = loss_fn(outputs, batch)
    assert out["neg_cls"].item() == 0.0 and out["neg_ffc"].item() == 0.0
    assert out["pos_cls"].item() > 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert torch.isfinite(outputs["vl_embed"].grad).all() and outputs["vl_embed"].grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_tcd_accepts_any_float_dtype(tiny_encoder, dtype):
    """fp16/bf16/fp64 outputs and images (crashed in component_embeddings before) give the float32
    loss of the same values."""
    loss_fn = TCDLoss(encoder=tiny_encoder, label_set="part_labels")
    outputs, batch = _tcd_inputs(2, 2, dtype)
    out = loss_fn(outputs, batch)
    ref = loss_fn({k: v.detach().float() for k, v in outputs.items()}, {**batch, "image": batch["image"].float()})
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-5)
    out["loss"].backward()
    assert outputs["vl_embed"].grad.dtype == dtype and torch.isfinite(outputs["vl_embed"].grad.float()).all()
