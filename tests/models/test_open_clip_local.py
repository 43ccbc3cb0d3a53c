"""DisFaceRep's frozen text side (FLIP / CLIP) from a LOCAL open_clip checkpoint saved by the test."""

from __future__ import annotations

import json

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from faceparse.errors import FaceParseError, MissingWeightsError  # noqa: E402
from faceparse.models.mct_vit.text import OpenCLIPEncoder, build_vl_encoder  # noqa: E402

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
PROMPTS = ["a photo of a face with nose", "a photo of a face with left eye"]  # DisFaceRep §3.4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny open_clip model: its config JSON (open_clip's model_configs format) and a FLIP-style
    training checkpoint ({"epoch", "name", "state_dict": {"module.*": ...}}) of random weights."""
    folder = tmp_path_factory.mktemp("flip")
    torch.manual_seed(0)
    ref = open_clip.CLIP(**TINY).eval()
    (folder / "tiny-flip.json").write_text(json.dumps(TINY))
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}
    torch.save({"epoch": 3, "name": "flip-tiny", "state_dict": state}, folder / "flip_tiny.pt")
    return folder, ref


def _text(encoder_or_model, tokens):
    with torch.no_grad():
        return encoder_or_model.encode_text(tokens)


def test_local_checkpoint_with_config_file_reproduces_the_saved_model(saved):
    folder, ref = saved
    enc = OpenCLIPEncoder(model_cfg=str(folder / "tiny-flip.json"), checkpoint=str(folder / "flip_tiny.pt"))
    loaded, want = enc.model.state_dict(), ref.state_dict()
    assert loaded.keys() == want.keys() and all(torch.equal(loaded[k], want[k]) for k in want)
    tokens = enc.tokenize(PROMPTS)
    assert tokens.shape == (2, 16)
    ref_tokens = open_clip.tokenizer.SimpleTokenizer(context_length=16)(PROMPTS)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(_text(enc, tokens), _text(ref, tokens), rtol=1e-4, atol=1e-5)
    img = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(enc.encode_image(img), ref.encode_image(img), rtol=1e-4, atol=1e-5)
    assert enc.image_size == 32 and not any(p.requires_grad for p in enc.parameters())
    fresh = OpenCLIPEncoder(model_cfg=TINY, random_init=True)
    assert not torch.allclose(_text(fresh, tokens), _text(ref, tokens))  # the load is what makes them equal


def test_registered_open_clip_config_name_and_spec_dict(saved):
    folder, ref = saved
    open_clip.add_model_config(folder / "tiny-flip.json")  # open_clip's own API for a custom architecture
    enc = build_vl_encoder({"model_name": "tiny-flip", "checkpoint": str(folder / "flip_tiny.pt")})
    tokens = enc.tokenize(PROMPTS)
    torch.testing.assert_close(_text(enc, tokens), _text(ref, tokens), rtol=1e-4, atol=1e-5)


def test_errors_name_the_argument_and_file(saved, tmp_path):
    folder, _ = saved
    with pytest.raises(MissingWeightsError, match="checkpoint="):
        OpenCLIPEncoder(model_cfg=str(folder / "tiny-flip.json"))
    with pytest.raises(MissingWeightsError, match="nowhere.pt"):
        OpenCLIPEncoder(model_cfg=TINY, checkpoint=str(tmp_path / "nowhere.pt"))
    with pytest.raises(FaceParseError, match="missing.json"):
        OpenCLIPEncoder(model_cfg=str(tmp_path / "missing.json"), random_init=True)
    other = dict(TINY, embed_dim=8)
    with pytest.raises(FaceParseError, match="flip_tiny.pt"):
        OpenCLIPEncoder(model_cfg=other, checkpoint=str(folder / "flip_tiny.pt"))
