"""ParseNet (PSFRGAN / facexlib ``parsing_parsenet.pth``): release key table, key mapping, conversion,
parity with a functional forward written here, restored-image head, match_parsenet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import faceparse
from faceparse.errors import FaceParseError
from faceparse.models.parsenet import ParseNet, convert_parsenet, match_parsenet, release_to_faceparse_keys

SIZE = 32  # the released network has 4 down steps: 32 px gives a 2 x 2 bottleneck


# ------------------------------------------------------------------ the release's key table (written by hand)
def _conv(prefix: str, cin: int, cout: int, bias: bool) -> dict[str, tuple[int, ...]]:
    t = {f"{prefix}.conv2d.weight": (cout, cin, 3, 3)}
    if bias:
        t[f"{prefix}.conv2d.bias"] = (cout,)
    else:  # ConvLayer with norm_type='bn': NormLayer.norm is the BatchNorm2d
        t |= {f"{prefix}.norm.norm.{n}": (cout,) for n in ("weight", "bias", "running_mean", "running_var")}
        t[f"{prefix}.norm.norm.num_batches_tracked"] = ()
    return t


def _res(prefix: str, cin: int, cout: int, shortcut: bool) -> dict[str, tuple[int, ...]]:
    t = _conv(f"{prefix}.shortcut_func", cin, cout, bias=True) if shortcut else {}
    return t | _conv(f"{prefix}.conv1", cin, cout, bias=False) | _conv(f"{prefix}.conv2", cout, cout, bias=False)


def release_shapes(k: int = 19) -> dict[str, tuple[int, ...]]:
    """Every key of facexlib's ``ParseNet(in_size=512, out_size=512, parsing_ch=19)`` with its shape."""
    t = _conv("encoder.0", 3, 64, bias=True)
    for i, (cin, cout) in enumerate([(64, 128), (128, 256), (256, 256), (256, 256)], start=1):
        t |= _res(f"encoder.{i}", cin, cout, shortcut=True)
    for i in range(10):
        t |= _res(f"body.{i}", 256, 256, shortcut=False)
    for i, (cin, cout) in enumerate([(256, 256), (256, 256), (256, 128), (128, 64)]):
        t |= _res(f"decoder.{i}", cin, cout, shortcut=True)
    return t | _conv("out_img_conv", 64, 3, bias=True) | _conv("out_mask_conv", 64, k, bias=True)


def release_state(k: int = 19, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in release_shapes(k).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(3)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        elif key.endswith(("running_mean", "bias")):
            state[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * (1.0 / (shape[1] * 9)) ** 0.5
    return state


# ------------------------------------------------------------------ independent functional forward
def reference_forward(s: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """facexlib's ParseNet.forward (read for facts) in torch.nn.functional, on release key names."""

    def conv_layer(t, p, stride=1, up=False, act=False):
        if up:
            t = F.interpolate(t, scale_factor=2, mode="nearest")
        t = F.conv2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), s[f"{p}.conv2d.weight"], s.get(f"{p}.conv2d.bias"), stride)
        if f"{p}.norm.norm.weight" in s:
            n = f"{p}.norm.norm"
            t = F.batch_norm(t, s[f"{n}.running_mean"], s[f"{n}.running_var"], s[f"{n}.weight"], s[f"{n}.bias"])
        return F.leaky_relu(t, 0.2) if act else t

    def res(t, p, scale):
        stride, up = (2 if scale == "down" else 1), scale == "up"
        short = conv_layer(t, f"{p}.shortcut_func", stride, up) if f"{p}.shortcut_func.conv2d.weight" in s else t
        r = conv_layer(t, f"{p}.conv1", 1, up, act=True)
        return short + conv_layer(r, f"{p}.conv2", stride)

    def count(prefix):
        return len({k.split(".")[1] for k in s if k.startswith(prefix + ".")})

    feat = conv_layer(x, "encoder.0")
    for i in range(1, count("encoder")):
        feat = res(feat, f"encoder.{i}", "down")
    body = feat
    for i in range(count("body")):
        body = res(body, f"body.{i}", "none")
    t = feat + body
    for i in range(count("decoder")):
        t = res(t, f"decoder.{i}", "up")
    return conv_layer(t, "out_mask_conv"), conv_layer(t, "out_img_conv")


@pytest.fixture(scope="module")
def release_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("parsenet") / "parsing_parsenet.pth"
    torch.save(release_state(), path)
    return path


# ------------------------------------------------------------------ tests
def test_release_label_order_and_normalisation():
    # facexlib inference_parsing_parsenet.py / PSFRGAN utils.label_list, after background 0
    order = ["skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
             "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth"]  # fmt: skip
    ls = faceparse.get_label_set("celebamask_hq_official")
    assert ls.source_names == ("background", *order)
    assert [ls.classes[a] + "/" + ls.classes[b] for a, b in ls.flip_pairs] == [
        "left_ear/right_ear",
        "left_brow/right_brow",
        "left_eye/right_eye",
    ]
    # mapping by name to faceparse's default CelebAMask-HQ order keeps every class
    lut = ls.mapping_to(faceparse.get_label_set("celebamask_hq"))[:19]
    assert sorted(lut.tolist()) == list(range(19))
    model = ParseNet(label_set=ls, **faceparse.MODELS.cfg("parsenet").tiny)
    assert model.input_mean == (0.5, 0.5, 0.5) and model.input_std == (0.5, 0.5, 0.5)
    assert ParseNet().default_input_size == 512


def test_key_mapping_covers_the_release_layout():
    model = ParseNet()
    assert model.num_parameters() == 21_303_254
    mapped = release_to_faceparse_keys({k: torch.empty(s) for k, s in release_shapes().items()})
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == ours
    assert "encoder.1.conv1.bn.running_var" in mapped and "encoder.1.shortcut.conv.bias" in mapped


def test_convert_matches_functional_reference(release_file, tmp_path):
    model = convert_parsenet(release_file, tmp_path / "out")
    assert not model.training and model.registry_name == "parsenet"
    assert model.label_set.name == "celebamask_hq_official"
    state = torch.load(release_file, weights_only=True)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_mask, ref_img = reference_forward(state, x)
        logits = model(x)
        train_out = model.forward_train(x)
    assert logits.shape == (2, 19, SIZE, SIZE) and ref_mask.std() > 0.05  # not a vacuous comparison
    torch.testing.assert_close(logits, ref_mask, atol=1e-4, rtol=1e-4)
    assert set(train_out) == {"logits", "restored_image"}
    torch.testing.assert_close(train_out["logits"], logits)
    assert train_out["restored_image"].shape == (2, 3, SIZE, SIZE)
    torch.testing.assert_close(train_out["restored_image"], ref_img, atol=1e-4, rtol=1e-4)

    by_hand = ParseNet()
    by_hand.load_state_dict(release_to_faceparse_keys(state), strict=True)
    loaded = faceparse.load_model(tmp_path / "out")
    assert loaded.label_set == model.label_set and tuple(loaded.input_mean) == (0.5, 0.5, 0.5)
    with torch.no_grad():
        torch.testing.assert_close(by_hand.eval()(x), logits)
        torch.testing.assert_close(loaded(x), logits)
    # pretrained= reads the same file
    with torch.no_grad():
        torch.testing.assert_close(ParseNet(pretrained=str(release_file)).eval()(x), logits)


def test_tiny_model_matches_functional_reference():
    torch.manual_seed(0)
    model = faceparse.build_model("parsenet", **faceparse.MODELS.cfg("parsenet").tiny).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    ours = model.state_dict()
    release = {}
    for k, v in ours.items():  # our names -> release names (the inverse table, written here)
        k = k.replace(".bn.", ".norm.norm.").replace(".conv.", ".conv2d.").replace(".shortcut.", ".shortcut_func.")
        release[k] = v
    x = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(release, x)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(FaceParseError, match="divisible by 4"):
        model(torch.randn(1, 3, 30, 32))


def test_match_accepts_release_and_rejects_others(release_file):
    state = torch.load(release_file, weights_only=True)
    ok, why = match_parsenet(state)
    assert ok and "19 classes" in why and "10 blocks" in why
    assert match_parsenet({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")})[0]
    bisenet_like = {"cp.resnet.conv1.weight": torch.zeros(64, 3, 7, 7)}
    ok, why = match_parsenet(bisenet_like)
    assert not ok and "encoder.0.conv2d.weight" in why
    ours = ParseNet().state_dict()  # faceparse names are not the release's
    ok, why = match_parsenet(ours)
    assert not ok and "missing" in why
    ok, why = match_parsenet({k: v for k, v in state.items() if not k.startswith("body.9.")})
    assert not ok and "body.9." in why and "10 body blocks" in why
    bad = dict(state, **{"decoder.3.conv1.conv2d.weight": torch.zeros(64, 256, 3, 3)})
    ok, why = match_parsenet(bad)
    assert not ok and "another shape" in why


def test_convert_errors_and_class_counts(tmp_path):
    foreign = tmp_path / "bisenet.pth"
    torch.save({"cp.resnet.conv1.weight": torch.zeros(64, 3, 7, 7)}, foreign)
    with pytest.raises(FaceParseError, match="bisenet.pth.*not a ParseNet"):
        convert_parsenet(foreign, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    eleven = tmp_path / "eleven.pth"
    torch.save({f"module.{k}": v for k, v in release_state(k=11).items()}, eleven)
    with pytest.raises(FaceParseError, match="11 classes but label set 'celebamask_hq' has 19"):
        convert_parsenet(eleven, tmp_path / "y", label_set="celebamask_hq")
    model = convert_parsenet(eleven, tmp_path / "z")
    assert model.label_set.name == "generic_11"
