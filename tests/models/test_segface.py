"""SegFace: parameter counts, every variant's forward/backward, official-checkpoint conversion
checked against an independent functional re-implementation written here, save/load, export."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
import torchvision

import faceparse
from faceparse.cli import main as cli_main
from faceparse.errors import FaceParseError, MissingWeightsError
from faceparse.models.segface import SegFace, convert_segface

VARIANTS = [
    "segface_swin_base",
    "segface_swinv2_base",
    "segface_swinv2_small",
    "segface_swinv2_tiny",
    "segface_convnext_base",
    "segface_convnext_small",
    "segface_convnext_tiny",
    "segface_resnet101",
    "segface_mobilenet_v3_large",
    "segface_efficientnet_v2_m",
]

# Table/text of the SegFace paper (AAAI 2025), millions of parameters at 19 classes.
PAPER_PARAMS_M = {
    "segface_mobilenet_v3_large": 7.03,
    "segface_resnet101": 47.25,
    "segface_efficientnet_v2_m": 57.04,
    "segface_swinv2_base": 91.17,
    "segface_swin_base": 91.01,
}


def test_registry_lists_every_backbone():
    assert faceparse.list_models("segface_*") == sorted(VARIANTS)
    meta = faceparse.MODELS.metadata("segface_swin_base") if hasattr(faceparse, "MODELS") else None
    if meta is not None:
        assert meta["input_size"] == 512 and meta["label_set"] == "celebamask_hq"


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_parameter_count_matches_paper(name):
    with torch.device("meta"):  # no memory, no init cost
        model = faceparse.build_model(name)
    assert model.num_classes == 19
    count = model.num_parameters() / 1e6
    assert abs(count - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] < 0.01, (name, count)


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_backward_every_variant(name):
    model = faceparse.build_model(name, label_set="lapa").train()
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 11, 64, 64)
    out = model.forward_train(x)
    assert out["logits"].shape == (2, 11, 64, 64)
    F.cross_entropy(logits, torch.randint(0, 11, (2, 64, 64))).backward()
    assert model.class_tokens.weight.grad is not None and model.class_tokens.weight.grad.abs().sum() > 0
    first = next(model.backbone.parameters())
    assert first.grad is not None and torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0


def test_odd_input_size_and_class_count():
    model = SegFace(backbone="mobilenet_v3_large", label_set="helen").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 72, 56)).shape == (1, 11, 72, 56)


def test_class_tokens_are_permutation_equivariant():
    # Attention over tokens has no positional order: permuting the class tokens permutes the
    # logits channels (one token <-> one class, modelled independently of its index).
    model = SegFace(backbone="mobilenet_v3_large").eval()
    x = torch.randn(1, 3, 64, 64)
    perm = torch.randperm(19)
    with torch.no_grad():
        ref = model(x)
        model.class_tokens.weight.copy_(model.class_tokens.weight[perm])
        out = model(x)
    torch.testing.assert_close(out, ref[:, perm], atol=1e-5, rtol=1e-4)


def test_save_load_roundtrip(tmp_path):
    model = faceparse.build_model("segface_mobilenet_v3_large", input_size=128).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = faceparse.load_model(tmp_path / "m")
    assert isinstance(loaded, SegFace) and loaded.default_input_size == 128
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))  # includes the random Fourier buffer


def test_backbone_weights_from_local_torchvision_file(tmp_path):
    tv = torchvision.models.mobilenet_v3_large()
    torch.save(tv.state_dict(), tmp_path / "mnv3.pth")
    model = SegFace(backbone="mobilenet_v3_large", backbone_weights=str(tmp_path / "mnv3.pth"))
    torch.testing.assert_close(model.backbone[16][0].weight, tv.features[16][0].weight)
    assert model.get_config()["kwargs"]["backbone_weights"] is None  # file paths are not saved
    with pytest.raises(MissingWeightsError, match="not found"):
        SegFace(backbone="mobilenet_v3_large", backbone_weights=str(tmp_path / "missing.pth"))


def test_bn_momentum_override_reaches_every_backbone_norm():
    model = SegFace(backbone="mobilenet_v3_large", bn_momentum=0.1)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms)
    assert SegFace(backbone="mobilenet_v3_large").backbone[1].block[0][1].momentum == 0.01  # torchvision's


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(FaceParseError, match="unknown SegFace backbone 'vgg'.*mobilenet_v3_large"):
        SegFace(backbone="vgg")


# ----------------------------------------------------------------------------- official format
# Official (Kartik-3004/SegFace) class-token attribute names in concatenation order = class index.
CELEB_TOKENS = (
    "background neck face cloth rightear leftear rightbro leftbro righteye lefteye nose innermouth "
    "lowerlip upperlip hair glass hat earring necklace"
).split()
MNV3_INDICES, MNV3_CHANNELS = (3, 6, 12, 16), (24, 40, 112, 960)


def _official_decoder_shapes(channels) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of the official decoder (facts from the official code)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i, c in enumerate(channels):
        shapes[f"linear_c.{i}.proj.weight"] = (256, c)
        shapes[f"linear_c.{i}.proj.bias"] = (256,)
    shapes["linear_fuse.weight"] = (256, 1024, 1, 1)
    shapes["pe_layer.positional_encoding_gaussian_matrix"] = (2, 128)
    for t in CELEB_TOKENS:
        shapes[f"face_decoder.{t}_token.weight"] = (1, 256)

    def attn(prefix: str, inner: int) -> None:
        for p in "qkv":
            shapes[f"{prefix}.{p}_proj.weight"] = (inner, 256)
            shapes[f"{prefix}.{p}_proj.bias"] = (inner,)
        shapes[f"{prefix}.out_proj.weight"] = (256, inner)
        shapes[f"{prefix}.out_proj.bias"] = (256,)

    tr = "face_decoder.transformer"
    for layer in range(2):
        p = f"{tr}.layers.{layer}"
        attn(f"{p}.self_attn", 256)
        attn(f"{p}.cross_attn_token_to_image", 128)
        attn(f"{p}.cross_attn_image_to_token", 128)
        for n in range(1, 5):
            shapes[f"{p}.norm{n}.weight"] = shapes[f"{p}.norm{n}.bias"] = (256,)
        shapes[f"{p}.mlp.lin1.weight"], shapes[f"{p}.mlp.lin1.bias"] = (2048, 256), (2048,)
        shapes[f"{p}.mlp.lin2.weight"], shapes[f"{p}.mlp.lin2.bias"] = (256, 2048), (256,)
    attn(f"{tr}.final_attn_token_to_image", 128)
    shapes[f"{tr}.norm_final_attn.weight"] = shapes[f"{tr}.norm_final_attn.bias"] = (256,)
    up = "face_decoder.output_upscaling"
    shapes[f"{up}.0.weight"], shapes[f"{up}.0.bias"] = (256, 64, 2, 2), (64,)
    shapes[f"{up}.1.weight"], shapes[f"{up}.1.bias"] = (64,), (64,)
    shapes[f"{up}.3.weight"], shapes[f"{up}.3.bias"] = (64, 32, 2, 2), (32,)
    hy = "face_decoder.output_hypernetwork_mlps.layers"
    for i, (o, n) in enumerate([(256, 256), (256, 256), (32, 256)]):
        shapes[f"{hy}.{i}.weight"], shapes[f"{hy}.{i}.bias"] = (o, n), (o,)
    return shapes


@pytest.fixture(scope="module")
def official_mobilenet_state() -> dict[str, torch.Tensor]:
    """An official-format SegFace-MobileNetV3 CelebAMask-HQ state dict with random values."""
    g = torch.Generator().manual_seed(0)
    tv = torchvision.models.mobilenet_v3_large().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    state = {f"backbone.{k}": v.clone() for k, v in tv.features.state_dict().items()}
    for k, shape in _official_decoder_shapes(MNV3_CHANNELS).items():
        fan_in = shape[1] if len(shape) > 1 else 1
        std = 1.0 if ("token" in k or "gaussian" in k) else 1.0 / math.sqrt(fan_in)
        state[k] = torch.randn(shape, generator=g) * std
        if k.endswith("norm1.weight") or k.endswith("output_upscaling.1.weight"):
            state[k] = 1.0 + 0.1 * state[k]
    return state


def _reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Independent functional SegFace forward straight from official key names."""
    tv = torchvision.models.mobilenet_v3_large().eval()
    tv.features.load_state_dict({k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")})
    feats, h = [], x
    for i, stage in enumerate(tv.features):
        h = stage(h)
        if i in MNV3_INDICES:
            feats.append(h)
    s = state.__getitem__
    size = feats[0].shape[-2:]
    levels = []
    for i, f in enumerate(feats):
        y = f.flatten(2).transpose(1, 2) @ s(f"linear_c.{i}.proj.weight").T + s(f"linear_c.{i}.proj.bias")
        y = y.transpose(1, 2).reshape(f.shape[0], 256, *f.shape[-2:])
        levels.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
    fused = F.conv2d(torch.cat(levels[::-1], 1), s("linear_fuse.weight"))
    b, c, hh, ww = fused.shape
    # random Fourier PE on cell centres in [-1, 1]
    yy, xx = torch.meshgrid((torch.arange(hh) + 0.5) / hh, (torch.arange(ww) + 0.5) / ww, indexing="ij")
    coords = torch.stack([xx, yy], -1) * 2 - 1
    proj = 2 * math.pi * coords @ s("pe_layer.positional_encoding_gaussian_matrix")
    pe = torch.cat([proj.sin(), proj.cos()], -1).reshape(1, hh * ww, 256).expand(b, -1, -1)

    def lin(t, p):
        return t @ s(p + ".weight").T + s(p + ".bias")

    def attention(p, q, k, v, heads=8):
        q, k, v = lin(q, p + ".q_proj"), lin(k, p + ".k_proj"), lin(v, p + ".v_proj")
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).permute(0, 2, 1, 3)
        q, k, v = split(q), split(k), split(v)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        out = (w @ v).permute(0, 2, 1, 3).reshape(b, -1, heads * q.shape[-1])
        return lin(out, p + ".out_proj")

    def ln(t, p):
        return F.layer_norm(t, (t.shape[-1],), s(p + ".weight"), s(p + ".bias"))

    tokens = torch.cat([s(f"face_decoder.{t}_token.weight") for t in CELEB_TOKENS]).unsqueeze(0).expand(b, -1, -1)
    q, keys = tokens, fused.flatten(2).transpose(1, 2)
    for layer in range(2):
        p = f"face_decoder.transformer.layers.{layer}"
        if layer == 0:
            q = attention(p + ".self_attn", q, q, q)
        else:
            q = q + attention(p + ".self_attn", q + tokens, q + tokens, q)
        q = ln(q, p + ".norm1")
        q = ln(q + attention(p + ".cross_attn_token_to_image", q + tokens, keys + pe, keys), p + ".norm2")
        q = ln(q + lin(F.relu(lin(q, p + ".mlp.lin1")), p + ".mlp.lin2"), p + ".norm3")
        keys = ln(keys + attention(p + ".cross_attn_image_to_token", keys + pe, q + tokens, q), p + ".norm4")
    tr = "face_decoder.transformer"
    q = ln(q + attention(tr + ".final_attn_token_to_image", q + tokens, keys + pe, keys), tr + ".norm_final_attn")
    up = "face_decoder.output_upscaling"
    img = keys.transpose(1, 2).reshape(b, c, hh, ww)
    img = F.conv_transpose2d(img, s(up + ".0.weight"), s(up + ".0.bias"), stride=2)
    mu, var = img.mean(1, keepdim=True), img.var(1, keepdim=True, unbiased=False)
    img = (img - mu) / torch.sqrt(var + 1e-6) * s(up + ".1.weight")[:, None, None] + s(up + ".1.bias")[:, None, None]
    img = F.gelu(F.conv_transpose2d(F.gelu(img), s(up + ".3.weight"), s(up + ".3.bias"), stride=2))
    hy = "face_decoder.output_hypernetwork_mlps.layers"
    w = lin(F.relu(lin(F.relu(lin(q, hy + ".0")), hy + ".1")), hy + ".2")
    return torch.einsum("bkc,bchw->bkhw", w, img)


def _write_official_checkpoint(state, path):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[80, 200], gamma=0.1)
    assert isinstance(sched.state_dict()["milestones"], Counter)  # must load with weights_only=True
    torch.save({"state_dict_backbone": state, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, path)


def test_convert_official_checkpoint_matches_reference(tmp_path, official_mobilenet_state):
    ckpt = tmp_path / "segface_mobilenet_celeba.pt"
    _write_official_checkpoint(official_mobilenet_state, ckpt)
    # through the command line, with the official --model name as backbone
    assert cli_main(["convert", "segface", str(ckpt), str(tmp_path / "out"), "--backbone", "mobilenet"]) == 0
    model = faceparse.load_model(tmp_path / "out")
    assert isinstance(model, SegFace) and model.backbone_name == "mobilenet_v3_large"
    assert model.label_set.name == "celebamask_hq"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, ref = model(x), _reference_forward(official_mobilenet_state, x)
    assert ref.abs().max() > 1.0  # not a degenerate comparison
    assert (ours - ref).abs().max() <= 1e-4


def test_convert_errors(tmp_path, official_mobilenet_state, capsys):
    ckpt = tmp_path / "ckpt.pt"
    _write_official_checkpoint(official_mobilenet_state, ckpt)
    with pytest.raises(
        FaceParseError, match=r"does not fit.*--backbone swinv2_tiny.*fits --backbone mobilenet_v3_large"
    ):
        convert_segface(str(ckpt), str(tmp_path / "o"), backbone="swinv2_tiny")
    with pytest.raises(FaceParseError, match="19 class tokens but --dataset lapa expects 11"):
        convert_segface(str(ckpt), str(tmp_path / "o"), backbone="mobilenet", dataset="lapa")
    with pytest.raises(MissingWeightsError):
        convert_segface(str(tmp_path / "nope.pt"), str(tmp_path / "o"), backbone="mobilenet")
    torch.save({"model": {}}, tmp_path / "other.pt")
    assert (
        cli_main(["convert", "segface", str(tmp_path / "other.pt"), str(tmp_path / "o"), "--backbone", "mobilenet"])
        == 2
    )
    assert "expected a dict with 'state_dict_backbone'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_torch_export_mobilenet():
    model = faceparse.build_model("segface_mobilenet_v3_large", label_set="lapa").eval()
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["segface_mobilenet_v3_large", "segface_swin_base"])
def test_torchscript_and_export_slow(name):
    model = faceparse.build_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), ref)
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), ref)
