"""Strict loading of every ``pretrained=`` / ``backbone_weights=`` / ``checkpoint=`` file.

For each loader: a correct file loads (a weight is compared), a mismatching file written here is an
error naming the file and an example key, ``*_strict=False`` is an explicit opt-in that loads what fits
and warns, a file fitting too few keys is refused even then, and unreadable files name the file.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import faceparse
from faceparse.errors import FaceParseError, MissingWeightsError
from faceparse.models.weights import load_weights, read_state_dict
from faceparse.registry import AUX_MODELS

MCT_TINY = dict(
    img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, projector_dim=16, projector_hidden_dim=16
)


class Evil:
    """A pickled object that ``weights_only=True`` refuses to load."""


def _perturbed(state: dict) -> dict:
    """A copy with every floating tensor changed, so that a load is visible."""
    return {k: (v + 0.5 if v.is_floating_point() else v.clone()) for k, v in state.items()}


def _drop(state: dict, n: int) -> dict:
    keys = [k for k, v in state.items() if v.is_floating_point()][:n]
    return {k: v for k, v in state.items() if k not in keys}


# Each case: name -> (build(path, strict) -> module, target(module) -> the module holding the file's
# keys, make_state(module) -> a correct state dict for the file)
def _smp(path, strict=True):
    kw = {} if path is None else {"pretrained": str(path), "pretrained_strict": strict}
    return faceparse.build_model("unet", encoder="resnet18", label_set="lapa", input_size=64, **kw)


def _rtformer(path, strict=True):
    kw = {} if path is None else {"pretrained": str(path), "pretrained_strict": strict}
    return faceparse.build_model("rtformer_slim", label_set="lapa", **kw)


def _mct(path, strict=True):
    kw = {} if path is None else {"pretrained": str(path), "pretrained_strict": strict}
    return faceparse.build_model("mct_vit_tiny", **MCT_TINY, **kw)


def _lom(path, strict=True):
    kw = {} if path is None else {"pretrained": str(path), "pretrained_strict": strict}
    return AUX_MODELS.build("mfpan_lom", num_landmarks=5, **kw)


def _consensus(path, strict=True):
    kw = {} if path is None else {"pretrained": str(path), "pretrained_strict": strict}
    return faceparse.build_model("consensus_net", width=8, **kw)


def _segface(path, strict=True):
    from faceparse.models.segface import SegFace

    kw = {} if path is None else {"backbone_weights": str(path), "backbone_weights_strict": strict}
    return SegFace(backbone="mobilenet_v3_large", label_set="lapa", dim=32, mlp_dim=64, **kw)


def _clip(path, strict=True):
    from faceparse.models.mct_vit.text import TINY_CLIP_CONFIG, OpenCLIPEncoder

    kw = {"random_init": True} if path is None else {"checkpoint": str(path), "checkpoint_strict": strict}
    return OpenCLIPEncoder(model_cfg=TINY_CLIP_CONFIG, **kw)


def _vit_state() -> dict:
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    return vit.state_dict()


def _tv_mnv3_state() -> dict:
    import torchvision

    return torchvision.models.mobilenet_v3_large().state_dict()


CASES = {
    # name: (build, module whose state is written, check key in that module, how to make a good file)
    "smp_unet": (_smp, lambda m: m.net.encoder, "layer4.1.conv2.weight", None),
    "rtformer": (_rtformer, lambda m: m, None, None),
    "mct_vit": (_mct, lambda m: m, "blocks.1.mlp.fc2.weight", _vit_state),
    "lom": (_lom, lambda m: m, "landmark_head.weight", None),
    "consensus": (_consensus, lambda m: m, "model_class.weight", None),
    "segface": (_segface, None, None, _tv_mnv3_state),
    "open_clip": (_clip, lambda m: m.model, "text_projection", None),
}


def _good_state(name: str) -> dict:
    build, target, _, make = CASES[name]
    if make is not None:
        return _perturbed(make())
    return _perturbed(target(build(None)).state_dict())


def _droppable(state: dict) -> str:
    """A body key (not a classifier/aux head/projector the loaders may allow to be absent)."""
    keys = [
        k
        for k, v in state.items()
        if v.is_floating_point() and v.ndim >= 2 and not any(h in k for h in ("head", "classifier", "projector"))
    ]
    return keys[len(keys) // 2]


def _a_key(state: dict) -> str:
    return next(k for k, v in state.items() if v.is_floating_point() and v.ndim >= 2)


@pytest.mark.parametrize("name", list(CASES))
def test_correct_file_loads(name, tmp_path):
    build, target, key, _ = CASES[name]
    state = _good_state(name)
    path = tmp_path / f"{name}.pt"
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a full load warns about nothing
        model = build(path)
    if name == "segface":
        torch.testing.assert_close(model.backbone[16][0].weight, state["features.16.0.weight"])
        return
    key = key or _a_key(state)
    torch.testing.assert_close(target(model).state_dict()[key], state[key])


@pytest.mark.parametrize("name", list(CASES))
def test_missing_and_unexpected_keys_name_the_file(name, tmp_path):
    build, *_ = CASES[name]
    state = _good_state(name)
    gone = _droppable(state)
    state.pop(gone)
    state["totally.unknown.weight"] = torch.zeros(3)
    path = tmp_path / f"{name}_partial.pt"
    torch.save(state, path)
    with pytest.raises(FaceParseError) as err:
        build(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "totally.unknown.weight" in msg
    if name != "segface":  # SegFace maps torchvision names to backbone names first
        assert gone in msg
    else:
        assert gone.removeprefix("features.") in msg


@pytest.mark.parametrize("name", list(CASES))
def test_opt_in_partial_load_warns_and_loads_what_fits(name, tmp_path):
    build, target, key, _ = CASES[name]
    state = _good_state(name)
    floats = [k for k, v in state.items() if v.is_floating_point() and v.ndim >= 2]
    gone = _droppable(state)
    state.pop(gone)
    floats.remove(gone)
    path = tmp_path / f"{name}_opt_in.pt"
    torch.save(state, path)
    with pytest.warns(UserWarning, match="partial load"):
        model = build(path, strict=False)
    if name == "segface":
        torch.testing.assert_close(model.backbone[0][0].weight, state["features.0.0.weight"])
    else:
        k = floats[0]
        if name == "mct_vit":
            k = "blocks.0.attn.qkv.weight"
        torch.testing.assert_close(target(model).state_dict()[k], state[k])


@pytest.mark.parametrize("name", list(CASES))
def test_file_of_another_model_is_refused_even_when_not_strict(name, tmp_path):
    build, *_ = CASES[name]
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).state_dict()
    path = tmp_path / f"{name}_other.pt"
    torch.save(other, path)
    for strict in (True, False):
        with pytest.raises(FaceParseError, match="fit") as err:
            build(path, strict=strict)
        assert str(path) in str(err.value)


@pytest.mark.parametrize("name", ["smp_unet", "rtformer", "lom", "consensus", "mct_vit"])
def test_wrong_shapes_name_the_file_and_key(name, tmp_path):
    build, *_ = CASES[name]
    state = _good_state(name)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim >= 2 and not k.startswith("head"))
    state[key] = torch.zeros(*(s + 1 for s in state[key].shape))
    path = tmp_path / f"{name}_shape.pt"
    torch.save(state, path)
    with pytest.raises(FaceParseError, match="wrong shape") as err:
        build(path)
    assert str(path) in str(err.value) and key in str(err.value)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("kind", ["garbage", "truncated", "bad_safetensors", "pickle", "not_a_dict", "missing"])
def test_unreadable_files_name_the_file(name, kind, tmp_path):
    build, *_ = CASES[name]
    path = tmp_path / f"{name}_{kind}.pt"
    if kind == "garbage":
        path.write_bytes(b"this is not a weights file at all" * 10)
    elif kind == "truncated":
        torch.save(_good_state(name), path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "bad_safetensors":
        path = path.with_suffix(".safetensors")
        path.write_bytes((1000).to_bytes(8, "little") + b'{"broken json')
    elif kind == "pickle":
        torch.save({"x": Evil()}, path)
    elif kind == "not_a_dict":
        torch.save([torch.zeros(2)], path)
    expected = MissingWeightsError if kind == "missing" else FaceParseError
    with pytest.raises(expected) as err:
        build(path)
    assert str(path) in str(err.value)


def test_safetensors_file_loads_and_rtformer_may_omit_the_aux_head(tmp_path):
    from safetensors.torch import save_file

    ref = _rtformer(None)
    state = {k: v for k, v in _perturbed(ref.state_dict()).items() if not k.startswith("net.aux_head.")}
    path = tmp_path / "rt.safetensors"
    save_file(state, str(path))
    model = _rtformer(path)
    key = "net.head.conv2.weight" if "net.head.conv2.weight" in state else _a_key(state)
    torch.testing.assert_close(model.state_dict()[key], state[key])


def test_loader_reports_lists_and_min_match():
    lin = torch.nn.Linear(2, 3)
    state = {"weight": torch.ones(3, 2), "extra": torch.zeros(1)}
    with pytest.raises(FaceParseError, match=r"'f\.pt'.*missing key\(s\).*bias.*unexpected key\(s\).*extra"):
        load_weights(lin, state, "f.pt")
    with pytest.warns(UserWarning):
        rep = load_weights(lin, state, "f.pt", strict=False)
    assert rep.loaded == ["weight"] and rep.missing == ["bias"] and rep.unexpected == ["extra"]
    assert torch.equal(lin.weight, torch.ones(3, 2))
    with pytest.raises(FaceParseError, match="fewer than 60%"):
        load_weights(lin, state, "f.pt", strict=False, min_match=0.6)


def test_read_state_dict_unwraps_and_strips_module_prefix(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"module.a": torch.zeros(1)}, "epoch": 3}, path)
    assert list(read_state_dict(path)) == ["a"]


def test_plain_timm_checkpoint_loads_into_a_tu_encoder(tmp_path):
    import timm

    state = _perturbed(timm.create_model("resnet18", pretrained=False).state_dict())  # with its fc.* head
    path = tmp_path / "timm_resnet18.pth"
    torch.save(state, path)
    model = faceparse.build_model("unet", encoder="tu-resnet18", label_set="lapa", input_size=64, pretrained=str(path))
    torch.testing.assert_close(
        model.net.encoder.state_dict()["model.layer3.0.conv1.weight"], state["layer3.0.conv1.weight"]
    )
    state.pop("layer3.0.conv1.weight")
    torch.save(state, path)
    with pytest.raises(FaceParseError, match="layer3.0.conv1.weight"):
        faceparse.build_model("unet", encoder="tu-resnet18", label_set="lapa", input_size=64, pretrained=str(path))
