"""Zoo-wide contract tests, parametrised over ``faceparse.list_models()``: registering a model is all it
takes to have it tested here.

Each model is built from its typed config's ``tiny`` kwargs (``faceparse.MODELS.cfg(name).tiny``; a
model registered without them fails), then: forward gives ``B x K x H x W`` logits at the tiny size,
backward gives finite gradients, ``save_pretrained``/``load_model`` gives the same logits, and the
parameter count on the meta device (``faceparse.model_info``) equals the real one. Tiny builds that
still hold more than 30M parameters (SegFace's real-size torchvision backbones) are marked ``slow``,
like the ONNX export tests.
"""

from __future__ import annotations

import pytest
import torch

import faceparse
from faceparse.registry import ModelCfg

HEAVY_PARAMS = 30e6
BATCH = 2  # BatchNorm in train mode needs more than one value per channel


def tiny_kwargs_of(name: str, cfg: ModelCfg) -> dict:
    """The tiny constructor kwargs of a model; a model registered without them fails the zoo tests."""
    if cfg.tiny is None:
        pytest.fail(
            f"model '{name}' is registered without tiny kwargs: give its ModelCfg tiny={{...}} "
            "(constructor kwargs of a small random build) so the zoo-wide tests can run it"
        )
    return dict(cfg.tiny)


def _meta_count(name: str, kwargs: dict) -> int:
    return faceparse.model_info(name, **kwargs)["parameters"]


def _cases() -> list:
    cases = []
    for name in faceparse.list_models():
        cfg = faceparse.MODELS.cfg(name)
        try:
            heavy = cfg.tiny is not None and _meta_count(name, dict(cfg.tiny)) > HEAVY_PARAMS
        except Exception:
            heavy = False
        cases.append(pytest.param(name, marks=[pytest.mark.slow] if heavy else [], id=name))
    return cases


def test_every_model_has_a_typed_config_with_tiny_kwargs():
    missing = [n for n in faceparse.list_models() if faceparse.MODELS.cfg(n).tiny is None]
    assert not missing, f"registered without tiny kwargs: {missing}"
    for name in faceparse.list_models():
        cfg = faceparse.MODELS.cfg(name)
        assert cfg.paper and cfg.input_size > 0 and faceparse.get_label_set(cfg.label_set).num_classes >= 2
        assert cfg.exportable or len(cfg.not_exportable_reason) > 20, name


def test_missing_tiny_kwargs_fail_the_zoo_test():
    with pytest.raises(pytest.fail.Exception, match="without tiny kwargs"):
        tiny_kwargs_of("new_model", ModelCfg(paper="P"))
    assert tiny_kwargs_of("new_model", ModelCfg(paper="P", tiny={"width": 8})) == {"width": 8}


@pytest.mark.parametrize("name", _cases())
def test_zoo_model_contract(name, tmp_path):
    cfg = faceparse.MODELS.cfg(name)
    kwargs = tiny_kwargs_of(name, cfg)
    size = cfg.test_input_size
    torch.manual_seed(0)
    model = faceparse.build_model(name, **kwargs)
    assert model.registry_name == name
    k = model.num_classes
    assert k == model.label_set.num_classes >= 2

    # forward + backward in train mode: logits B x K x H x W, finite gradients reaching the weights
    model.train()
    x = torch.randn(BATCH, 3, size, size)
    logits = model.forward_train(x)["logits"]
    assert logits.shape == (BATCH, k, size, size), f"{name}: {tuple(logits.shape)}"
    assert torch.isfinite(logits).all()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable, f"{name} has no trainable parameters"
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, k, (BATCH, size, size)))
    loss.backward()
    grads = [p.grad for p in trainable if p.grad is not None]
    assert grads, f"{name}: the loss reaches no trainable parameter"
    assert all(torch.isfinite(g).all() for g in grads), f"{name}: non-finite gradients"
    assert any(g.abs().sum() > 0 for g in grads), f"{name}: all gradients are zero"

    # eval forward, save/load round trip: same logits
    model.eval()
    with torch.no_grad():
        before = model(x[:1])
    assert before.shape == (1, k, size, size)
    model.save_pretrained(tmp_path / name)
    loaded = faceparse.load_model(tmp_path / name)
    assert type(loaded) is type(model) and loaded.num_classes == k and loaded.label_set == model.label_set
    with torch.no_grad():
        after = loaded(x[:1])
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)

    # parameters counted on the meta device (model_info) == real count
    assert _meta_count(name, kwargs) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["unet", "segface_mobilenet_v3_large", "consensus_net", "mct_vit_tiny"])
def test_num_classes_without_label_set_survives_save_load(name, tmp_path):
    cfg = faceparse.MODELS.cfg(name)
    n = 5 if name != "segface_mobilenet_v3_large" else 11
    model = faceparse.build_model(name, num_classes=n, **cfg.tiny).eval()
    size = cfg.test_input_size
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        out = model(x)
    assert out.shape[1] == n and model.label_set.name == f"generic_{n}"
    assert model.label_set.classes[:2] == ("background", "class_1") and len(model.label_set.classes) == n
    model.save_pretrained(tmp_path / "m")
    loaded = faceparse.load_model(tmp_path / "m")
    assert loaded.num_classes == n and loaded.label_set.name == f"generic_{n}"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out)


def test_num_classes_on_full_size_unet_and_segface():
    # the acceptance examples: default variants, no tiny kwargs, shapes only
    unet = faceparse.build_model("unet", num_classes=5).eval()
    segface = faceparse.build_model("segface_mobilenet_v3_large", num_classes=11).eval()
    with torch.no_grad():
        assert unet(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)
        assert segface(torch.randn(1, 3, 64, 64)).shape == (1, 11, 64, 64)
    assert unet.num_classes == 5 and segface.num_classes == 11


def test_num_classes_and_label_set_must_agree():
    ok = faceparse.build_model("unet", num_classes=11, label_set="lapa", encoder="resnet18")
    assert ok.label_set.name == "lapa"
    with pytest.raises(faceparse.FaceParseError, match="num_classes=5 contradicts label_set 'lapa'"):
        faceparse.build_model("unet", num_classes=5, label_set="lapa", encoder="resnet18")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(faceparse.FaceParseError, match="positive integer"):
            faceparse.build_model("unet", num_classes=bad, encoder="resnet18")


def test_s3pot_is_binary_by_design():
    tiny = faceparse.MODELS.cfg("s3pot_tiny").tiny
    assert faceparse.build_model("s3pot_tiny", num_classes=2, **tiny).num_classes == 2
    for name in faceparse.list_models("s3pot_*"):
        with pytest.raises(faceparse.FaceParseError, match="predicts 2 classes by design"):
            faceparse.build_model(name, num_classes=3, **tiny)
