"""Foundation models never train at random by accident: the S3POT SAM variants and the TCD loss's
open_clip encoder refuse to build without their weights file unless ``random_init=True``."""

from __future__ import annotations

import pytest
import torch
import yaml

import faceparse
from faceparse.errors import MissingWeightsError

SAM_FILES = {
    "s3pot_vit_b": "sam_vit_b_01ec64.pth",
    "s3pot_vit_l": "sam_vit_l_0b3195.pth",
    "s3pot_vit_h": "sam_vit_h_4b8939.pth",
}


@pytest.mark.parametrize("name", sorted(SAM_FILES))
def test_sam_variants_without_checkpoint_raise_naming_the_argument_and_file(name):
    with pytest.raises(MissingWeightsError) as info:
        faceparse.build_model(name)
    msg = str(info.value)
    assert "checkpoint=" in msg and SAM_FILES[name] in msg and "random_init=True" in msg


@pytest.mark.parametrize("name", sorted(SAM_FILES))
def test_sam_variants_build_at_random_only_when_asked(name):
    tiny = faceparse.MODELS.metadata(name)["tiny"]
    model = faceparse.build_model(name, **{**tiny, "random_init": True})
    assert model.encoder_name == name.removeprefix("s3pot_")
    with torch.device("meta"):  # parameter counting allocates no values: allowed without weights
        assert faceparse.build_model(name).num_parameters() > 9e7


def test_tiny_variant_is_random_by_default_and_its_save_reloads(tmp_path):
    model = faceparse.build_model("s3pot_tiny")  # no published weights: random by definition
    path = tmp_path / "sam_tiny.pth"
    torch.save(model.sam.state_dict(), path)
    with_ckpt = faceparse.build_model("s3pot_tiny", checkpoint=str(path), random_init=False)
    with_ckpt.save_pretrained(tmp_path / "saved")
    # config.json keeps no checkpoint; the rebuild takes the SAM from model.safetensors
    loaded = faceparse.load_model(tmp_path / "saved")
    for a, b in zip(loaded.sam.state_dict().values(), model.sam.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoint_of_a_sam_variant_loads_without_random_init(tmp_path):
    tiny = faceparse.MODELS.metadata("s3pot_vit_b")["tiny"]
    src = faceparse.build_model("s3pot_vit_b", **{**tiny, "random_init": True})
    path = tmp_path / "sam.pth"
    torch.save(src.sam.state_dict(), path)
    got = faceparse.build_model("s3pot_vit_b", **tiny, checkpoint=str(path))
    assert torch.equal(got.sam.image_encoder.patch_embed.proj.weight, src.sam.image_encoder.patch_embed.proj.weight)
    got.save_pretrained(tmp_path / "saved")
    assert faceparse.load_model(tmp_path / "saved").encoder_name == "vit_b"
    with pytest.raises(MissingWeightsError, match="missing.pth"):
        faceparse.build_model("s3pot_vit_b", **tiny, checkpoint=str(tmp_path / "missing.pth"))


def test_paper_config_requires_a_sam_path():
    from faceparse.cli import CONFIG_DIR

    text = (CONFIG_DIR / "s3pot_vit_b.yaml").read_text()
    kwargs = yaml.safe_load(text)["model"]["init_args"]["model_kwargs"]
    assert kwargs["checkpoint"].endswith("sam_vit_b_01ec64.pth")
    assert "REQUIRED" in text
    with pytest.raises(MissingWeightsError, match="sam_vit_b_01ec64.pth"):  # the placeholder is not shipped
        faceparse.build_model("s3pot_vit_b", checkpoint="/nonexistent/" + kwargs["checkpoint"])


def test_open_clip_encoder_without_checkpoint_raises():
    from faceparse.models.mct_vit.text import TINY_CLIP_CONFIG, OpenCLIPEncoder, build_vl_encoder

    for build in (lambda: OpenCLIPEncoder(model_cfg=TINY_CLIP_CONFIG), lambda: build_vl_encoder("open_clip")):
        with pytest.raises(MissingWeightsError) as info:
            build()
        msg = str(info.value)
        assert "checkpoint=" in msg and "flip_vit_b16.pt" in msg and "random_init=True" in msg
    with pytest.raises(MissingWeightsError, match="checkpoint="):
        faceparse.build_loss("tcd")  # default encoder "open_clip": ViT-B-16 without weights
    assert OpenCLIPEncoder(model_cfg=TINY_CLIP_CONFIG, random_init=True).embed_dim == 32
    assert build_vl_encoder("tiny_clip").embed_dim == 32  # random by definition
