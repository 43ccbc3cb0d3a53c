"""RTFormer (Mask-FPAN's segmentation module): parameter counts, shapes, attention maths, save/load."""

from __future__ import annotations

import pytest
import torch

import faceparse
from faceparse.models.rtformer import CrossResolutionAttention, GPUFriendlyAttention, RTFormer


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Counted from the official PaddleSeg RTFormer with 19 classes (REFERENCE.md §2).
@pytest.mark.parametrize(
    "name, with_aux, without_aux",
    [("rtformer_slim", 5.40e6, 5.37e6), ("rtformer_base", 17.92e6, 17.77e6)],
)
def test_parameter_counts_match_official(name, with_aux, without_aux):
    model = faceparse.build_model(name)
    assert model.num_classes == 19
    assert abs(_count(model) - with_aux) / with_aux < 0.01
    no_aux = faceparse.build_model(name, use_aux_head=False)
    assert abs(_count(no_aux) - without_aux) / without_aux < 0.01
    # The auxiliary head is the only difference between the two.
    assert _count(model) - _count(no_aux) == _count(model.net.aux_head)


def test_variants_structure():
    slim = RTFormer(variant="slim", use_aux_head=False)
    base = RTFormer(variant="base", use_aux_head=False)
    assert slim.net.stem[0].out_channels == 32 and base.net.stem[0].out_channels == 64
    # slim injects the high branch into the low one in both blocks, base only in the first
    assert slim.net.layer4.down is not None and slim.net.layer5.down is not None
    assert base.net.layer4.down is not None and base.net.layer5.down is None
    # external-attention memories: M = 8c slots; cross attention uses 12 x 12 pooled tokens
    assert tuple(slim.net.layer4.attn_low.k.shape) == (256, 128, 1, 1)
    assert slim.net.layer4.attn_high.tokens == 144
    with pytest.raises(ValueError):
        RTFormer(variant="huge")


@pytest.fixture(scope="module")
def slim_small():
    torch.manual_seed(0)
    return RTFormer(variant="slim", label_set="celebamask_hq_occ", input_size=64)


def test_logits_at_input_resolution_train_and_eval(slim_small):
    x = torch.randn(2, 3, 64, 48)
    slim_small.train()
    out = slim_small.forward_train(x)
    assert set(out) == {"logits", "aux_logits"}
    assert out["logits"].shape == (2, 20, 64, 48) and out["aux_logits"].shape == (2, 20, 64, 48)
    assert slim_small(x).shape == (2, 20, 64, 48)
    slim_small.eval()
    with torch.no_grad():
        y = slim_small(x)
        assert y.shape == (2, 20, 64, 48)
        assert "aux_logits" not in slim_small.forward_train(x)
    assert torch.isfinite(y).all()


def test_backward_reaches_all_parameters(slim_small):
    slim_small.train()
    out = slim_small.forward_train(torch.randn(2, 3, 64, 64))
    (out["logits"].mean() + out["aux_logits"].mean()).backward()
    missing = [n for n, p in slim_small.named_parameters() if p.grad is None]
    assert not missing, missing
    slim_small.zero_grad()


def test_grouped_double_normalisation():
    torch.manual_seed(0)
    attn = GPUFriendlyAttention(16, 16, memory=32, num_heads=8).eval()
    x = torch.randn(2, 16, 5, 6)
    # Re-derive the attention map: softmax over positions, then L1 over the 4 slots of each group.
    k = torch.nn.functional.conv2d(attn.norm(x), attn.k)
    a = k.reshape(2, 8, 4, 30).softmax(-1)
    a = a / (a.sum(2, keepdim=True) + 1e-6)
    assert torch.allclose(a.sum(2), torch.ones(2, 8, 30), atol=1e-4)
    expected = torch.nn.functional.conv2d(a.reshape(2, 32, 5, 6), attn.v)
    assert torch.allclose(attn(x), expected, atol=1e-6)
    # different widths: the key projection has stride 2
    assert GPUFriendlyAttention(16, 32, memory=32)(x).shape == (2, 32, 3, 3)


def test_cross_resolution_attention_is_softmax_over_tokens():
    torch.manual_seed(0)
    attn = CrossResolutionAttention(8, tokens=4).eval()
    x = torch.randn(1, 8, 3, 3)
    k, v = torch.randn(1, 4, 8), torch.randn(1, 8, 4)
    q = attn.norm(x).flatten(2)[0]  # 8 x 9
    weights = ((k[0] @ q) / 2.0).softmax(0)  # 4 x 9, scaled by 1/sqrt(4)
    expected = (v[0] @ weights).reshape(1, 8, 3, 3)
    assert torch.allclose(attn(x, k, v), expected, atol=1e-5)


def test_save_and_load_roundtrip(tmp_path, slim_small):
    slim_small.eval()
    slim_small.save_pretrained(tmp_path / "m")
    loaded = faceparse.load_model(tmp_path / "m")
    assert isinstance(loaded, RTFormer) and loaded.label_set.name == "celebamask_hq_occ"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), slim_small(x), atol=1e-5)


def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    with pytest.raises(faceparse.errors.MissingWeightsError, match="not found"):
        RTFormer(variant="slim", pretrained=str(tmp_path / "nope.pt"))


def test_registry_metadata():
    assert {"rtformer_slim", "rtformer_base"} <= set(faceparse.list_models("rtformer_*"))
    meta = faceparse.registry.MODELS.metadata("rtformer_slim")
    assert meta["label_set"] == "celebamask_hq" and meta["input_size"] == 512


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("hw", [(2, 2), (4, 5), (13, 30), (24, 24)])
def test_export_friendly_adaptive_max_pool_matches_native(hw):
    from faceparse.models.rtformer import AdaptiveMaxPool

    x = torch.randn(2, 3, *hw)
    traced = torch.jit.trace(AdaptiveMaxPool(12), x)
    assert torch.equal(traced(x), torch.nn.functional.adaptive_max_pool2d(x, 12))
