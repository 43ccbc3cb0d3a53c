"""MCT-ViT (DisFaceRep / MCTformer+): parameter counts, attention maps, checkpoint init, FCAMs."""

from __future__ import annotations

import pytest
import torch

import faceparse
from faceparse.models.mct_vit.cam import fcam, normalize_cams, pseudo_masks
from faceparse.models.mct_vit.model import attention_with_map, block_forward_with_attn, rank_pool

TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, projector_dim=16, projector_hidden_dim=16)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return faceparse.build_model("mct_vit_tiny", **TINY).eval()


def test_mct_vit_small_parameter_counts():
    with torch.device("meta"):
        m = faceparse.build_model("mct_vit_small")
    assert m.num_tokens == 18 and m.default_input_size == 448
    total = sum(p.numel() for p in m.parameters())
    proj = sum(p.numel() for p in m.projector.parameters())
    # MCTformer+ at 448 with K=18: 22,042,386; DisFaceRep Table 5: 22.5M trainable.
    assert abs((total - proj) / 22_042_386 - 1) < 0.01
    assert abs(total / 22.5e6 - 1) < 0.01
    assert m.pos_embed_pat.shape == (1, 28 * 28, 384) and m.cls_token.shape == (1, 18, 384)


def test_attention_map_matches_timm_block(tiny):
    blk = tiny.blocks[0]
    x = torch.randn(2, 5, 32)
    out, weights = block_forward_with_attn(blk, x)
    torch.testing.assert_close(out, blk(x), atol=1e-5, rtol=1e-5)
    # independent computation of the softmax map from the qkv weights
    a = blk.attn
    h = blk.norm1(x)
    qkv = h @ a.qkv.weight.t() + a.qkv.bias
    q, k, _ = qkv.split(32, dim=-1)
    q = q.view(2, 5, 2, 16).transpose(1, 2)
    k = k.view(2, 5, 2, 16).transpose(1, 2)
    ref = torch.softmax(q @ k.transpose(-1, -2) / 16**0.5, dim=-1)
    torch.testing.assert_close(weights, ref, atol=1e-5, rtol=1e-5)
    _, w2 = attention_with_map(a, h)
    torch.testing.assert_close(w2, ref, atol=1e-5, rtol=1e-5)


def test_forward_shapes_train_and_eval(tiny):
    x = torch.randn(2, 3, 32, 32)
    out = tiny.forward_train(x)
    assert out["cls_logits"].shape == (2, 18) and out["patch_logits"].shape == (2, 18)
    assert out["patch_cam"].shape == (2, 18, 4, 4) and out["vl_embed"].shape == (2, 18, 16)
    assert out["logits"].shape == (2, 19, 32, 32)
    torch.testing.assert_close(out["cls_logits"], out["class_tokens"].mean(-1))
    # dense logits: argmax = sigmoid(P_k) > 0.5 pseudo mask (background logit 0)
    assert torch.all(out["logits"][:, 0] == 0)
    up = torch.nn.functional.interpolate(out["patch_cam"], size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["logits"][:, tiny.fg_index], up)
    for mode in (True, False):
        tiny.train(mode)
        assert tiny(x).shape == (2, 19, 32, 32)
    tiny.eval()
    # other input sizes resample the position embedding
    assert tiny.forward_train(torch.randn(1, 3, 48, 40))["patch_cam"].shape == (1, 18, 6, 5)


def test_rank_pool():
    s = torch.tensor([[[1.0, 3.0, 2.0]]])
    w = torch.tensor([1.0, 0.5, 0.25])
    torch.testing.assert_close(rank_pool(s, 0.5), ((torch.tensor([3.0, 2.0, 1.0]) * w).sum() / w.sum()).view(1, 1))
    torch.testing.assert_close(rank_pool(s, 1.0), s.mean(-1))


def test_init_from_vit_checkpoint(tmp_path):
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    path = tmp_path / "deit.pth"
    torch.save({"model": vit.state_dict()}, path)
    m = faceparse.build_model("mct_vit_tiny", **TINY, pretrained=str(path))
    assert torch.equal(m.cls_token, vit.cls_token.repeat(1, 18, 1))
    assert torch.equal(m.pos_embed_cls, vit.pos_embed[:, :1].repeat(1, 18, 1))
    assert m.pos_embed_pat.shape == (1, 16, 32)  # 2x2 grid resampled to 4x4
    torch.testing.assert_close(m.blocks[1].mlp.fc2.weight, vit.blocks[1].mlp.fc2.weight)
    torch.testing.assert_close(m.patch_embed.proj.weight, vit.patch_embed.proj.weight)
    with pytest.raises(faceparse.errors.FaceParseError, match="not found"):
        faceparse.build_model("mct_vit_tiny", **TINY, pretrained=str(tmp_path / "nope.pth"))


def test_save_load_roundtrip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "m")
    back = faceparse.load_model(tmp_path / "m")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(back.forward_train(x)["cls_logits"], tiny.forward_train(x)["cls_logits"])


def test_fcam_properties(tiny):
    x = torch.randn(2, 3, 32, 32)
    labels = torch.zeros(2, 18)
    labels[0, [0, 3, 9]] = 1
    labels[1, [1, 4]] = 1
    with torch.no_grad():
        cams = fcam(tiny, x, labels=labels, scales=(1.0, 0.75), flip=True)
    assert cams.shape == (2, 18, 32, 32)
    assert cams.min() >= 0 and cams.max() <= 1 + 1e-6
    assert torch.all(cams[labels == 0] == 0)
    flat = cams[labels == 1].flatten(1)
    torch.testing.assert_close(flat.max(1).values, torch.ones(len(flat)), atol=1e-4, rtol=0)
    # with flip TTA the FCAM is mirror-equivariant (left/right channels swap)
    from faceparse.models.mct_vit.cam import _fg_flip_perm

    perm = _fg_flip_perm(tiny)
    ones = torch.ones(2, 18)
    with torch.no_grad():
        a = fcam(tiny, x, labels=ones, scales=(1.0,), flip=True)
        b = fcam(tiny, x.flip(-1), labels=ones, scales=(1.0,), flip=True)
    torch.testing.assert_close(b, a.flip(-1)[:, perm], atol=1e-4, rtol=1e-4)


def test_fcam_fusion_reference(tiny):
    """sqrt(class-to-patch attention x ReLU(patch CAM)) without refinement, computed by hand."""
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        cams = fcam(tiny, x, labels=torch.ones(1, 18), scales=(1.0,), flip=False, refine=False, out_size=(4, 4))
        cls, patches, attn = tiny.forward_features(x, return_attn=True)
        a = torch.stack(attn).mean(2).mean(0)[:, :18, 18:].reshape(1, 18, 4, 4)
        ref = normalize_cams(torch.sqrt(a * torch.relu(tiny.head(patches))))
    torch.testing.assert_close(cams, ref, atol=1e-5, rtol=1e-5)


def test_pseudo_masks_threshold_and_labels():
    cams = torch.zeros(1, 3, 1, 4)
    cams[0, 0] = torch.tensor([0.9, 0.4, 0.2, 0.6])
    cams[0, 1] = torch.tensor([0.8, 0.45, 0.7, 0.65])
    cams[0, 2] = torch.tensor([0.95, 0.0, 0.0, 0.0])
    labels = torch.tensor([[1.0, 1.0, 0.0]])  # class 3 absent: never predicted
    out = pseudo_masks(cams, labels, theta=0.5)
    assert out.tolist() == [[[1, 0, 2, 2]]]
    out = pseudo_masks(cams, labels, theta=0.5, fg_index=[5, 7, 9], background=0)
    assert out.tolist() == [[[5, 0, 7, 7]]]


def test_registered():
    assert {"mct_vit_small", "mct_vit_tiny"} <= set(faceparse.list_models("mct_vit_*"))
    from faceparse.cli import COMMANDS

    assert "pseudo-labels cam" in COMMANDS
    assert "pseudo" in faceparse.registry.DATASETS and "ccd" in faceparse.registry.DATASETS
