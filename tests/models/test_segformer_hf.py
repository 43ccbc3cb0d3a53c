"""SegFormer from transformers checkpoints (faceparse.models.segformer_hf).

The reference is transformers' own ``SegformerForSemanticSegmentation`` with a tiny random config,
saved with ``save_pretrained`` exactly as the Hub model (jonathandinu/face-parsing) is stored.
Skipped when transformers is not installed (``pip install -e '.[hf]'``).
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import faceparse
from faceparse.errors import FaceParseError, MissingWeightsError
from faceparse.models.segformer_hf import (
    SegformerHF,
    _variant_of,
    convert_segformer_hf,
    label_set_from_id2label,
    match_segformer_hf,
)

transformers = pytest.importorskip("transformers")

# jonathandinu/face-parsing's config.json id2label, written out independently of faceparse.labels
HUB_ID2LABEL = {
    "0": "background", "1": "skin", "2": "nose", "3": "eye_g", "4": "l_eye", "5": "r_eye", "6": "l_brow",
    "7": "r_brow", "8": "l_ear", "9": "r_ear", "10": "mouth", "11": "u_lip", "12": "l_lip", "13": "hair",
    "14": "hat", "15": "ear_r", "16": "neck_l", "17": "neck", "18": "cloth",
}  # fmt: skip
TOL = 1e-4


def _tiny_reference(num_labels: int = 19, id2label: dict | None = None, seed: int = 0):
    """A tiny random transformers SegFormer (widths divisible by MiT's 1/2/5/8 heads), eval mode,
    with random BatchNorm statistics so that parity covers them."""
    torch.manual_seed(seed)
    cfg = transformers.SegformerConfig(
        hidden_sizes=[8, 16, 40, 64],
        num_attention_heads=[1, 2, 5, 8],
        depths=[1, 2, 1, 1],
        decoder_hidden_size=16,
        num_labels=num_labels,
        id2label=id2label or (HUB_ID2LABEL if num_labels == 19 else None),
    )
    model = transformers.SegformerForSemanticSegmentation(cfg).eval()
    bn = model.decode_head.batch_norm
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.1)
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """A Hub-shaped snapshot folder: config.json + model.safetensors written by save_pretrained."""
    ref = _tiny_reference()
    folder = tmp_path_factory.mktemp("segformer") / "snapshot"
    ref.save_pretrained(folder)
    return ref, folder


def _ref_logits(ref, x):
    with torch.no_grad():
        return ref(pixel_values=x).logits


@pytest.mark.parametrize("size", [(64, 64), (61, 78)])
def test_parity_with_transformers(hub_folder, tmp_path, size):
    ref, folder = hub_folder
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    model = convert_segformer_hf(folder, tmp_path / "out").eval()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    expected = _ref_logits(ref, x)  # 1/4 resolution: ceil(H/4) x ceil(W/4)
    with torch.no_grad():
        quarter = model.forward_quarter(x)
        full = model(x)
    assert quarter.shape == expected.shape == (2, 19, -(-size[0] // 4), -(-size[1] // 4))
    assert (quarter - expected).abs().max().item() <= TOL
    # full resolution: transformers' logits upsampled the way its loss / the model card do
    upsampled = F.interpolate(expected, size=size, mode="bilinear", align_corners=False)
    assert full.shape == (2, 19, *size)
    assert (full - upsampled).abs().max().item() <= TOL


def test_label_set_from_config_maps_by_name(hub_folder, tmp_path):
    _, folder = hub_folder
    model = convert_segformer_hf(folder, tmp_path / "out")
    ls = model.label_set
    assert ls.name == "celebamask_hq_official" and ls.source_names == tuple(HUB_ID2LABEL[str(i)] for i in range(19))
    assert label_set_from_id2label(HUB_ID2LABEL) == ls
    # every Hub class lands on the class of the same part file in the other CelebAMask-HQ orders
    for other_name in ("celebamask_hq", "celebamask_hq_bisenet"):
        other = faceparse.get_label_set(other_name)
        lut = ls.mapping_to(other)
        for i, short in enumerate(ls.source_names):
            assert other.source_names[lut[i]] == short, (other_name, short)
    # flips swap the l_/r_ classes of the Hub order
    assert sorted(map(tuple, ls.flip_pairs)) == [(4, 5), (6, 7), (8, 9)]


def test_id2label_variants():
    assert label_set_from_id2label({"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}).name == "generic_3"
    custom = label_set_from_id2label({0: "background", 1: "l_eye", 2: "teeth"})
    assert custom.classes == ("background", "left_eye", "teeth") and custom.source_names[1] == "l_eye"
    with pytest.raises(FaceParseError, match="0..n-1"):
        label_set_from_id2label({"0": "background", "2": "skin"})


def test_file_without_config_infers_the_shape(hub_folder, tmp_path):
    ref, folder = hub_folder
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "weights.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    model = convert_segformer_hf(lone / "weights.safetensors", tmp_path / "out")
    kw = model.get_config()["kwargs"]
    assert kw["hidden_sizes"] == [8, 16, 40, 64] and kw["depths"] == [1, 2, 1, 1]
    assert kw["sr_ratios"] == [8, 4, 2, 1] and kw["decoder_hidden_size"] == 16
    assert model.label_set.name == "celebamask_hq_official"  # 19 labels, no config: the Hub order
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (model.forward_quarter(x) - _ref_logits(ref, x)).abs().max().item() <= TOL


def test_v5_in_memory_names_and_bin_file(tmp_path):
    """A state dict saved straight from ``model.state_dict()`` converts too (transformers >= 5 names its
    modules differently in memory: stages.*, q_proj...; 4.x keeps the saved names), as does a ``.bin``."""
    from safetensors.torch import save_file

    ref = _tiny_reference(num_labels=5, seed=3)
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    if int(transformers.__version__.split(".")[0]) >= 5:
        assert any(k.startswith("segformer.stages.") for k in state)
    save_file(state, str(tmp_path / "v5.safetensors"))
    x = torch.randn(1, 3, 64, 64)
    for path in (tmp_path / "v5.safetensors", tmp_path / "pytorch_model.bin"):
        if path.suffix == ".bin":
            torch.save(state, path)
        ok, reason = match_segformer_hf(state)
        assert ok and "5 labels" in reason
        model = convert_segformer_hf(path, tmp_path / f"out_{path.suffix[1:]}")
        assert model.label_set.name == "generic_5"
        with torch.no_grad():
            assert (model.forward_quarter(x) - _ref_logits(ref, x)).abs().max().item() <= TOL


def test_match_accepts_and_rejects(hub_folder):
    from safetensors.torch import load_file

    _, folder = hub_folder
    state = load_file(str(folder / "model.safetensors"))
    ok, reason = match_segformer_hf(state)
    assert ok and "widths [8, 16, 40, 64]" in reason and "19 labels" in reason

    ok, reason = match_segformer_hf({"conv1.weight": torch.zeros(4, 3, 3, 3)})
    assert not ok and "patch_embeddings" in reason
    encoder_only = {k: v for k, v in state.items() if not k.startswith("decode_head.")}
    ok, reason = match_segformer_hf(encoder_only)
    assert not ok and "decode_head" in reason
    broken = dict(state)
    del broken["segformer.encoder.block.1.1.mlp.dense2.weight"]
    ok, reason = match_segformer_hf(broken)
    assert not ok and "missing" in reason and "block2.1.mlp.fc2.weight" in reason
    reshaped = dict(state)
    reshaped["decode_head.linear_fuse.weight"] = torch.zeros(16, 60, 1, 1)
    ok, reason = match_segformer_hf(reshaped)
    assert not ok and "shape" in reason


def test_round_trip_through_load_model(hub_folder, tmp_path):
    _, folder = hub_folder
    model = convert_segformer_hf(folder, tmp_path / "out")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors"} <= files
    loaded = faceparse.load_model(tmp_path / "out")
    assert type(loaded) is SegformerHF and loaded.label_set == model.label_set
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_preprocessor_config_sets_normalisation(hub_folder, tmp_path):
    _, folder = hub_folder
    snap = tmp_path / "snap"
    snap.mkdir()
    for name in ("config.json", "model.safetensors"):
        (snap / name).write_bytes((folder / name).read_bytes())
    (snap / "preprocessor_config.json").write_text(
        json.dumps(
            {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "size": {"height": 256, "width": 256}}
        )
    )
    model = convert_segformer_hf(snap, tmp_path / "out")
    assert model.input_mean == (0.5, 0.5, 0.5) and model.input_std == (0.25, 0.25, 0.25)
    assert model.default_input_size == 256
    assert convert_segformer_hf(folder, tmp_path / "out2").input_mean == (0.485, 0.456, 0.406)


def test_clear_errors(hub_folder, tmp_path):
    _, folder = hub_folder
    with pytest.raises(MissingWeightsError, match="nope.safetensors"):
        convert_segformer_hf(tmp_path / "nope.safetensors", tmp_path / "out")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(FaceParseError, match="corrupt.safetensors"):
        convert_segformer_hf(corrupt, tmp_path / "out")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(MissingWeightsError, match="neither model.safetensors nor pytorch_model.bin"):
        convert_segformer_hf(empty, tmp_path / "out")
    # a config.json that contradicts the tensors
    snap = tmp_path / "snap"
    snap.mkdir()
    (snap / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    cfg["depths"] = [1, 1, 1, 1]
    (snap / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FaceParseError, match=r"config.json' says depths=\[1, 1, 1, 1\]"):
        convert_segformer_hf(snap, tmp_path / "out")
    with pytest.raises(FaceParseError, match="has 11 classes but .* predicts 19"):
        convert_segformer_hf(folder, tmp_path / "out", label_set="lapa")
    assert not (tmp_path / "out").exists()


def test_registered_variants_and_variant_detection():
    assert {f"segformer_hf_b{i}" for i in range(6)} <= set(faceparse.list_models("segformer_hf_*"))
    b0 = faceparse.model_info("segformer_hf_b0")
    assert b0["label_set"] == "celebamask_hq_official" and b0["input_size"] == 512
    # same parameter count as transformers' SegFormer-B0 (its default config) with 19 labels
    with torch.device("meta"):
        ref = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(num_labels=19))
    assert b0["parameters"] == sum(p.numel() for p in ref.parameters())
    shape = {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 6, 40, 3], "decoder_hidden_size": 768}
    std = {"num_attention_heads": [1, 2, 5, 8], "sr_ratios": [8, 4, 2, 1], "mlp_ratios": [4, 4, 4, 4]}
    assert _variant_of({**shape, **std}) == "b5"
    assert _variant_of({**shape, **std, "depths": [3, 6, 41, 3]}) is None
