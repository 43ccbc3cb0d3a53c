"""BiSeNet face parser (face-parsing.PyTorch / facexlib release): key layout, conversion, parity with a
functional forward written here from the release's description, aux heads, match_bisenet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import faceparse
from faceparse.errors import FaceParseError
from faceparse.models.bisenet import BiSeNet, convert_bisenet, match_bisenet

SIZE = 64


# ------------------------------------------------------------------ the release's key table (written by hand)
def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()
    }


def _cbr(prefix: str, cin: int, cout: int, k: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.conv.weight": (cout, cin, k, k)} | _bn(f"{prefix}.bn", cout)


def release_shapes(k: int = 19) -> dict[str, tuple[int, ...]]:
    """Every key of a distributed ``79999_iter.pth`` with its shape (ResNet-18 + BiSeNet modules)."""
    t = {"cp.resnet.conv1.weight": (64, 3, 7, 7)} | _bn("cp.resnet.bn1", 64)
    cin = 64
    for i, c in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            p = f"cp.resnet.layer{i}.{j}"
            a = cin if j == 0 else c
            t[f"{p}.conv1.weight"] = (c, a, 3, 3)
            t |= _bn(f"{p}.bn1", c)
            t[f"{p}.conv2.weight"] = (c, c, 3, 3)
            t |= _bn(f"{p}.bn2", c)
            if j == 0 and i > 1:
                t[f"{p}.downsample.0.weight"] = (c, cin, 1, 1)
                t |= _bn(f"{p}.downsample.1", c)
        cin = c
    for name, c in (("arm16", 256), ("arm32", 512)):
        t |= _cbr(f"cp.{name}.conv", c, 128, 3)
        t[f"cp.{name}.conv_atten.weight"] = (128, 128, 1, 1)
        t |= _bn(f"cp.{name}.bn_atten", 128)
    t |= _cbr("cp.conv_head32", 128, 128, 3) | _cbr("cp.conv_head16", 128, 128, 3) | _cbr("cp.conv_avg", 512, 128, 1)
    t |= _cbr("ffm.convblk", 256, 256, 1)
    t["ffm.conv1.weight"], t["ffm.conv2.weight"] = (64, 256, 1, 1), (256, 64, 1, 1)
    for name, cin, mid in (("conv_out", 256, 256), ("conv_out16", 128, 64), ("conv_out32", 128, 64)):
        t |= _cbr(f"{name}.conv", cin, mid, 3)
        t[f"{name}.conv_out.weight"] = (k, mid, 1, 1)
    return t


def release_state(k: int = 19, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in release_shapes(k).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("running_mean", ".bias")):
            state[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # BN weight
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
            if key.endswith("conv_out.weight"):  # classifiers: logits of order 1 (float32 rounding stays tiny)
                state[key] *= 0.01
    return state


# ------------------------------------------------------------------ independent functional forward
def reference_forward(s: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The release's forward (model.py / resnet.py, read for facts), written with torch.nn.functional."""

    def bn(t, p):
        return F.batch_norm(t, s[f"{p}.running_mean"], s[f"{p}.running_var"], s[f"{p}.weight"], s[f"{p}.bias"])

    def cbr(t, p, pad):
        return F.relu(bn(F.conv2d(t, s[f"{p}.conv.weight"], padding=pad), f"{p}.bn"))

    def block(t, p, stride):
        r = F.relu(bn(F.conv2d(t, s[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
        r = bn(F.conv2d(r, s[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
        if f"{p}.downsample.0.weight" in s:
            t = bn(F.conv2d(t, s[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
        return F.relu(t + r)

    def arm(t, p):
        f = cbr(t, f"{p}.conv", 1)
        a = F.avg_pool2d(f, f.shape[2:])
        return f * torch.sigmoid(bn(F.conv2d(a, s[f"{p}.conv_atten.weight"]), f"{p}.bn_atten"))

    h, w = x.shape[2:]
    t = F.max_pool2d(
        F.relu(bn(F.conv2d(x, s["cp.resnet.conv1.weight"], stride=2, padding=3), "cp.resnet.bn1")), 3, 2, 1
    )
    feats = []
    for i in range(1, 5):
        for j in range(2):
            t = block(t, f"cp.resnet.layer{i}.{j}", 2 if (j == 0 and i > 1) else 1)
        feats.append(t)
    _, f8, f16, f32 = feats
    avg = cbr(F.avg_pool2d(f32, f32.shape[2:]), "cp.conv_avg", 0)
    s32 = arm(f32, "cp.arm32") + F.interpolate(avg, f32.shape[2:], mode="nearest")
    up32 = cbr(F.interpolate(s32, f16.shape[2:], mode="nearest"), "cp.conv_head32", 1)
    s16 = arm(f16, "cp.arm16") + up32
    up16 = cbr(F.interpolate(s16, f8.shape[2:], mode="nearest"), "cp.conv_head16", 1)
    fuse = cbr(torch.cat([f8, up16], 1), "ffm.convblk", 0)
    att = F.avg_pool2d(fuse, fuse.shape[2:])
    att = torch.sigmoid(F.conv2d(F.relu(F.conv2d(att, s["ffm.conv1.weight"])), s["ffm.conv2.weight"]))
    fuse = fuse * att + fuse

    def head(t, p):
        out = F.conv2d(cbr(t, f"{p}.conv", 1), s[f"{p}.conv_out.weight"])
        return F.interpolate(out, (h, w), mode="bilinear", align_corners=True)

    return head(fuse, "conv_out"), head(up16, "conv_out16"), head(up32, "conv_out32")


@pytest.fixture(scope="module")
def release_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bisenet") / "79999_iter.pth"
    torch.save(release_state(), path)
    return path


# ------------------------------------------------------------------ tests
def test_release_label_order():
    # prepropess_data.py of face-parsing.PyTorch: atts, labelled 1..18 after background 0
    atts = ["skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
            "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat"]  # fmt: skip
    ls = faceparse.get_label_set("celebamask_hq_bisenet")
    assert ls.source_names == ("background", *atts)
    model = faceparse.build_model("bisenet", input_size=SIZE)
    assert model.label_set == ls and model.num_classes == 19
    assert model.input_mean == (0.485, 0.456, 0.406) and model.input_std == (0.229, 0.224, 0.225)
    assert faceparse.model_info("bisenet")["input_size"] == 512


def test_keys_and_shapes_equal_the_release():
    model = BiSeNet()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == release_shapes(19)
    assert model.num_parameters() == 13_300_416


def test_convert_matches_functional_reference(release_file, tmp_path):
    model = convert_bisenet(release_file, tmp_path / "out")
    assert not model.training and model.registry_name == "bisenet"
    assert model.label_set.name == "celebamask_hq_bisenet"
    state = torch.load(release_file, weights_only=True)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        main, aux16, aux32 = reference_forward(state, x)
        logits = model(x)
        train_out = model.forward_train(x)
    assert logits.shape == (2, 19, SIZE, SIZE)
    torch.testing.assert_close(logits, main, atol=1e-4, rtol=1e-4)
    assert set(train_out) == {"logits", "aux_logits16", "aux_logits32"}
    torch.testing.assert_close(train_out["logits"], logits)
    torch.testing.assert_close(train_out["aux_logits16"], aux16, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(train_out["aux_logits32"], aux32, atol=1e-4, rtol=1e-4)
    # the heads differ (the comparison is not vacuous)
    assert (main - aux16).abs().max() > 1e-2

    # a model loaded by hand (strict) and the saved folder give the same logits
    by_hand = BiSeNet()
    by_hand.load_state_dict(state, strict=True)
    loaded = faceparse.load_model(tmp_path / "out")
    assert loaded.label_set == model.label_set and loaded.registry_name == "bisenet"
    with torch.no_grad():
        torch.testing.assert_close(by_hand.eval()(x), logits)
        torch.testing.assert_close(loaded(x), logits)


def test_non_square_input_matches_reference(release_file):
    state = torch.load(release_file, weights_only=True)
    model = BiSeNet(pretrained=str(release_file)).eval()
    x = torch.randn(1, 3, 72, 56)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(state, x)[0], atol=1e-4, rtol=1e-4)


def test_match_accepts_release_and_rejects_others(release_file):
    state = torch.load(release_file, weights_only=True)
    ok, why = match_bisenet(state)
    assert ok and "19 classes" in why
    ok, why = match_bisenet({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})
    assert ok  # older PyTorch saved no BatchNorm counters
    consensus = faceparse.build_model("consensus_net", width=8).state_dict()
    ok, why = match_bisenet(consensus)
    assert not ok and "cp.resnet.conv1.weight" in why
    ok, why = match_bisenet({k: v for k, v in state.items() if k != "cp.arm16.conv_atten.weight"})
    assert not ok and "1 missing" in why and "cp.arm16.conv_atten.weight" in why
    bad = dict(state, **{"ffm.conv1.weight": torch.zeros(32, 256, 1, 1)})
    ok, why = match_bisenet(bad)
    assert not ok and "ffm.conv1.weight" in why and "another shape" in why
    ok, why = match_bisenet(dict(state, extra=torch.zeros(1)))
    assert not ok and "unexpected" in why


def test_convert_errors_and_class_counts(release_file, tmp_path):
    consensus = tmp_path / "consensus.pth"
    torch.save(faceparse.build_model("consensus_net", width=8).state_dict(), consensus)
    with pytest.raises(FaceParseError, match="consensus.pth.*not a BiSeNet"):
        convert_bisenet(consensus, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(FaceParseError, match="19 classes but label set 'lapa' has 11"):
        convert_bisenet(release_file, tmp_path / "y", label_set="lapa")
    with pytest.raises(faceparse.errors.MissingWeightsError, match="nope.pth"):
        convert_bisenet(tmp_path / "nope.pth", tmp_path / "z")
    # another class count converts with a generic label set; a wrapped {'state_dict': ...} file works too
    eleven = tmp_path / "eleven.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in release_state(k=11).items()}}, eleven)
    model = convert_bisenet(eleven, tmp_path / "eleven_out")
    assert model.label_set.name == "generic_11" and model.num_classes == 11
    model = convert_bisenet(eleven, tmp_path / "lapa_out", label_set="lapa")
    assert faceparse.load_model(tmp_path / "lapa_out").label_set.name == "lapa"


def test_backbone_weights_from_a_torchvision_file(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    model = BiSeNet(backbone_weights=str(path))
    torch.testing.assert_close(model.cp.resnet.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    assert model.get_config()["kwargs"]["backbone_weights"] is None  # local paths are never saved
