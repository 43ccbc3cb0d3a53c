"""FaRL face parsers as facer distributes them: TorchScript files wrapped by faceparse.models.farl.

The real files cannot be used here, so a tiny TorchScript network with facer's interface stands in
for them: RGB in [0, 1] in (it normalises inside, as FaRL's does), ``(logits, {})`` out, logits at its
own output size (FaRL's is 512 x 512). The reference is facer's inference path written out from
facer/face_parsing/farl.py: ``uint8 / 255`` then ``seg_logits, _ = net(images)``.
"""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import faceparse
from faceparse.errors import FaceParseError, MissingWeightsError
from faceparse.models.farl import TORCHSCRIPT_NAME, FaRLParser, convert_farl, match_farl

# the stand-in network is scripted and saved here with torch.jit, which this torch marks deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")


class FacerLikeNet(nn.Module):
    """facer-interface stand-in: resizes to a fixed resolution, normalises inside, returns (logits, {})."""

    def __init__(self, num_classes: int, work: int = 24, out: int = 40) -> None:
        super().__init__()
        self.work, self.out = work, out
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, num_classes, 1)

    def forward(self, image: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        x = F.interpolate(image, size=(self.work, self.work), mode="bilinear", align_corners=False)
        x = (x - 0.5) / 0.5
        logits = self.conv2(torch.relu(self.conv1(x)))
        out: dict[str, Tensor] = {}
        return F.interpolate(logits, size=(self.out, self.out), mode="bilinear", align_corners=False), out


def _script(path, num_classes=11, **kw):
    torch.manual_seed(num_classes)
    net = torch.jit.script(FacerLikeNet(num_classes, **kw).eval())
    torch.jit.save(net, str(path))
    return net


def _facer_reference(net, image_u8: Tensor) -> Tensor:
    """facer's FaRLFaceParser.forward_warped: unify_image_dtype (uint8 -> float / 255), then net(images)[0]."""
    images = image_u8.float() / 255.0
    with torch.no_grad():
        seg_logits, _ = net(images)
    return seg_logits


def _faceparse_input(model, image_u8: Tensor) -> Tensor:
    """What faceparse's predictor feeds a model: RGB in [0, 1], normalised by the model's mean/std."""
    mean = torch.tensor(model.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.input_std).view(1, 3, 1, 1)
    return (image_u8.float() / 255.0 - mean) / std


@pytest.fixture
def lapa_file(tmp_path):
    path = tmp_path / "face_parsing.farl.lapa.main_ema_tiny.pt"
    return path, _script(path, 11)


def test_parity_with_facer_preprocessing(lapa_file, tmp_path):
    path, net = lapa_file
    model = convert_farl(path, tmp_path / "out", input_size=48).eval()
    image = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref = _facer_reference(net, image)  # 2 x 11 x 40 x 40: the network's own output size
    with torch.no_grad():
        ours = model(_faceparse_input(model, image))
    assert ref.shape == (2, 11, 40, 40) and ours.shape == (2, 11, 48, 48)
    # faceparse returns logits at the input size: the network's map resized bilinearly
    expected = F.interpolate(ref, size=(48, 48), mode="bilinear", align_corners=False)
    assert (ours - expected).abs().max().item() <= 1e-6
    # where the network already answers at the input size, the logits are passed through unchanged
    same = tmp_path / "same.pt"
    net40 = _script(same, 11, out=48)
    model40 = convert_farl(same, tmp_path / "out40", label_set="lapa", input_size=48)
    with torch.no_grad():
        assert torch.equal(model40(_faceparse_input(model40, image)), _facer_reference(net40, image))


def test_presets_from_facer_file_names(lapa_file, tmp_path):
    path, _ = lapa_file
    lapa = convert_farl(path, tmp_path / "lapa")
    assert lapa.label_set.name == "lapa" and lapa.default_input_size == 448
    assert (lapa.warp, lapa.warp_factor) == ("tanh", 0.8)
    assert lapa.input_mean == (0.0, 0.0, 0.0) and lapa.input_std == (1.0, 1.0, 1.0)
    config = json.loads((tmp_path / "lapa" / "config.json").read_text())
    assert config["warp"] == "tanh" and config["input_size"] == 448 and config["kwargs"]["checkpoint"] is None
    assert config["kwargs"]["source_label_names"][2] == "rb"  # facer's name of LaPa's index 2

    celebm = tmp_path / "face_parsing.farl.celebm.main_ema_tiny_jit.pt"
    _script(celebm, 19)
    model = convert_farl(celebm, tmp_path / "celebm")
    assert model.label_set.name == "celebamask_hq" and (model.warp, model.warp_factor) == ("similarity", 0.0)


def test_label_set_from_output_channels_and_mismatch(tmp_path):
    neutral = tmp_path / "parser.pt"
    _script(neutral, 19)
    assert convert_farl(neutral, tmp_path / "a").label_set.name == "celebamask_hq"
    assert convert_farl(neutral, tmp_path / "b", label_set="celebamask_hq_farl").label_set.name == "celebamask_hq"
    with pytest.raises(FaceParseError, match="outputs 19 classes but label set 'lapa' has 11"):
        convert_farl(neutral, tmp_path / "c", label_set="lapa")
    odd = tmp_path / "odd.pt"
    _script(odd, 7)
    with pytest.raises(FaceParseError, match="outputs 7 classes; pass --label-set"):
        convert_farl(odd, tmp_path / "d")
    assert convert_farl(odd, tmp_path / "e", label_set="generic_7").num_classes == 7
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def test_label_sets_follow_farl_dataset_orders():
    """FaRL trains on label maps built from CelebAMask-HQ part files in this order (farl/datasets/
    celebamask_hq.py, label value = position + 1) and on LaPa's own indices; faceparse's label sets must
    name the same part in the same channel, whatever facer calls it."""
    farl_celebm_suffixes = [
        "neck", "skin", "cloth", "l_ear", "r_ear", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth",
        "l_lip", "u_lip", "hair", "eye_g", "hat", "ear_r", "neck_l",
    ]  # fmt: skip
    celeb = faceparse.get_label_set("celebamask_hq")
    assert list(celeb.source_names) == ["background", *farl_celebm_suffixes]
    lapa_readme = ["background", "skin", "left eyebrow", "right eyebrow", "left eye", "right eye", "nose",
                   "upper lip", "inner mouth", "lower lip", "hair"]  # fmt: skip
    assert list(faceparse.get_label_set("lapa").source_names) == lapa_readme
    # by name, FaRL's CelebAMask-HQ output evaluates on LaPa and on the Hub SegFormer order
    lut = celeb.mapping_to(faceparse.get_label_set("lapa"))
    assert lut[celeb.index("left_eye")] == 4 and lut[celeb.index("mouth")] == 8 and lut[celeb.index("neck")] == 0
    official = faceparse.get_label_set("celebamask_hq_official")
    lut = celeb.mapping_to(official)
    assert all(official.source_names[lut[i]] == celeb.source_names[i] for i in range(19))


def test_match_reads_record_names_only(tmp_path, lapa_file):
    path, net = lapa_file
    ok, reason = match_farl(path)
    assert ok and "TorchScript archive" in reason
    plain = tmp_path / "plain.pt"
    torch.save(net.state_dict(), plain)
    ok, reason = match_farl(plain)
    assert not ok and "torch.save" in reason
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    ok, reason = match_farl(junk)
    assert not ok and "not a zip" in reason
    assert match_farl(tmp_path / "missing.pt") == (False, f"'{tmp_path / 'missing.pt'}' is not a file")
    # records named like TorchScript but holding garbage: matched from the names alone (nothing is
    # loaded), and the conversion then fails with a clear error naming the file
    fake = tmp_path / "fake.pt"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("fake/constants.pkl", b"garbage")
        zf.writestr("fake/code/__torch__/net.py", b"garbage")
    assert match_farl(fake)[0]
    with pytest.raises(FaceParseError, match="cannot load TorchScript file .*fake.pt"):
        convert_farl(fake, tmp_path / "out")


def test_round_trip_and_folder_errors(lapa_file, tmp_path):
    path, _ = lapa_file
    model = convert_farl(path, tmp_path / "m", input_size=48)
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", TORCHSCRIPT_NAME}
    loaded = faceparse.load_model(tmp_path / "m")
    assert type(loaded) is FaRLParser and loaded.label_set == model.label_set and not loaded.training
    assert (loaded.warp, loaded.default_input_size) == ("tanh", 48)
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    loaded.save_pretrained(tmp_path / "again")
    with torch.no_grad():
        torch.testing.assert_close(faceparse.load_model(tmp_path / "again")(x), model(x), rtol=0, atol=0)

    (tmp_path / "m" / TORCHSCRIPT_NAME).unlink()
    with pytest.raises(MissingWeightsError, match=f"no {TORCHSCRIPT_NAME}"):
        faceparse.load_model(tmp_path / "m")
    with pytest.raises(MissingWeightsError, match="not found"):
        convert_farl(tmp_path / "missing.pt", tmp_path / "x")
    with pytest.raises(MissingWeightsError, match="checkpoint=<local TorchScript file>"):
        FaRLParser()
    with pytest.raises(FaceParseError, match="warp must be one of"):
        FaRLParser(checkpoint=path, warp="affine")
