"""Predictor: face detection on a real photograph, crop/paste-back geometry, flip TTA, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import faceparse
from faceparse.cli import main
from faceparse.errors import FaceParseError
from faceparse.inference import FaceDetector, NoFaceWarning, Predictor, crop_square, expand_box, whole_image_crop
from faceparse.labels import get_label_set
from faceparse.models.base import FaceParsingModel

skimage_data = pytest.importorskip("skimage.data")

LS = get_label_set("celebamask_hq")
SKIN, LEFT_EYE, RIGHT_EYE = LS.index("skin"), LS.index("left_eye"), LS.index("right_eye")


class RedIsSkin(FaceParsingModel):
    """Pixel-wise rule: 'skin' where the red channel is bright, background elsewhere."""

    input_mean = (0.0, 0.0, 0.0)
    input_std = (1.0, 1.0, 1.0)

    def __init__(self, input_size: int = 32) -> None:
        super().__init__()
        self.label_set = LS
        self.default_input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], LS.num_classes, *x.shape[-2:])
        logits[:, SKIN] = (x[:, 0] - 0.5) * 40
        return logits


class LeftHalfIsLeftEye(FaceParsingModel):
    """Position rule: 'left_eye' on the image-left half, background on the right half."""

    def __init__(self) -> None:
        super().__init__()
        self.label_set = LS
        self.default_input_size = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        logits = torch.zeros(b, LS.num_classes, h, w)
        logits[:, LEFT_EYE, :, : w // 2] = 20.0
        logits[:, LS.background, :, w // 2 :] = 20.0
        return logits


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def tiny_unet() -> FaceParsingModel:
    torch.manual_seed(0)
    return faceparse.build_model("unet", encoder="resnet18", input_size=64).eval()


def test_detector_finds_the_astronauts_face(astronaut):
    boxes = FaceDetector()(astronaut)
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    # the face of the astronaut is around x 180-270, y 70-170 in the 512 x 512 photo
    assert 150 < (x0 + x1) / 2 < 250 and 90 < (y0 + y1) / 2 < 150
    assert 60 < x1 - x0 < 140
    # no face in a photo without one; the predictor warns and parses the whole image
    assert FaceDetector()(skimage_data.coffee()) == []
    with pytest.warns(NoFaceWarning, match="no face found"):
        pred = Predictor(RedIsSkin(), detect_faces=True).predict(skimage_data.coffee())[0]
    assert not pred.face_found and pred.crops == [whole_image_crop(*skimage_data.coffee().shape[:2])]
    assert (
        Predictor(RedIsSkin(), detect_faces=True, no_face="background").predict(skimage_data.coffee())[0].labels.max()
        == 0
    )
    with pytest.raises(FaceParseError, match="no face found"):
        Predictor(RedIsSkin(), detect_faces=True, no_face="error").predict(skimage_data.coffee())


def test_predictor_on_a_real_photograph(astronaut, tiny_unet, tmp_path):
    pred = Predictor(tiny_unet, detect_faces=True, flip_tta=True).predict(astronaut, return_probs=True)[0]
    assert pred.labels.shape == astronaut.shape[:2]
    assert len(pred.faces) == 1 and len(pred.crops) == 1
    x0, y0, side = pred.crops[0]
    # outside the face crop everything is background; probabilities are a distribution
    outside = np.ones(pred.labels.shape, bool)
    outside[max(y0, 0) : y0 + side, max(x0, 0) : x0 + side] = False
    assert (pred.labels[outside] == LS.background).all()
    np.testing.assert_allclose(pred.probs.sum(0), 1.0, atol=1e-4)
    inside = ~outside
    assert (pred.probs.argmax(0)[inside] == pred.labels[inside]).mean() > 0.999
    over = pred.overlay(draw_faces=True)
    assert over.shape == astronaut.shape and over.dtype == np.uint8


def test_predict_command_writes_overlay_png(astronaut, tiny_unet, tmp_path, capsys):
    tiny_unet.save_pretrained(tmp_path / "model")
    Image.fromarray(astronaut).save(tmp_path / "astronaut.png")
    # the README's command, no extra flag: faces are detected by default
    rc = main(["predict", str(tmp_path / "astronaut.png"), "--model", str(tmp_path / "model")])
    assert rc == 0
    out = capsys.readouterr()
    assert "astronaut.png: 1 face" in out.out and "warning" not in out.err
    labels = np.asarray(Image.open(tmp_path / "astronaut_labels.png"))
    rows, cols = np.nonzero(labels != LS.background)  # labels only inside the face crop, not on the rocket
    assert rows.size and cols.min() > 60 and cols.max() < 390 and rows.max() < 300
    assert main(["predict", str(tmp_path / "astronaut.png"), "--model", str(tmp_path / "model"),
                 "--no-detect-faces", "--out-dir", str(tmp_path / "whole")]) == 0  # fmt: skip
    whole = np.asarray(Image.open(tmp_path / "whole" / "astronaut_labels.png"))
    assert (whole != LS.background).sum() > (labels != LS.background).sum()
    overlay = np.asarray(Image.open(tmp_path / "astronaut_overlay.png"))
    labels = np.asarray(Image.open(tmp_path / "astronaut_labels.png"))
    assert overlay.shape == (512, 512, 3) and labels.shape == (512, 512)
    assert labels.max() < LS.num_classes


def test_paste_back_matches_the_rule_at_original_resolution():
    img = np.zeros((90, 150, 3), np.uint8)
    img[20:70, 30:100, 0] = 255  # a red rectangle in a non-square image
    expected = img[..., 0] > 128
    # model input = crop size: the round trip is exact
    pred = Predictor(RedIsSkin(input_size=150)).predict(img)[0]
    assert pred.labels.shape == (90, 150)
    assert pred.crops == [whole_image_crop(90, 150)] == [(0, -30, 150)]
    np.testing.assert_array_equal(pred.labels == SKIN, expected)
    # resized to 64 and back: only the rectangle's border blurs, no shift
    skin = Predictor(RedIsSkin(input_size=64)).predict(img)[0].labels == SKIN
    assert (skin == expected).mean() > 0.95
    ys, xs = np.nonzero(skin)
    assert abs(ys.min() - 20) <= 2 and abs(ys.max() - 69) <= 2 and abs(xs.min() - 30) <= 2 and abs(xs.max() - 99) <= 2
    assert abs((ys.min() + ys.max()) / 2 - 44.5) <= 0.5 and abs((xs.min() + xs.max()) / 2 - 64.5) <= 0.5


def test_custom_detector_crop_and_background_outside():
    img = np.zeros((120, 160, 3), np.uint8)
    img[:, :, 0] = 255  # everything red: the rule says skin everywhere
    box = (70.0, 40.0, 90.0, 60.0)
    pred = Predictor(RedIsSkin(), detector=lambda im: [box], margin=0.5).predict(img)[0]
    x0, y0, side = expand_box(box, 0.5)
    assert (x0, y0, side) == (60, 30, 40) and pred.crops == [(60, 30, 40)]
    skin = pred.labels == SKIN
    assert skin[30:70, 60:100].all()
    assert skin.sum() == 40 * 40


def test_crop_square_pads_outside_with_zeros():
    img = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3) + 1
    out = crop_square(img, (-2, 3, 4))
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out[:2, 2:], img[3:5, 0:2])
    assert (out[:, :2] == 0).all() and (out[2:] == 0).all()


def test_flip_tta_swaps_left_and_right():
    img = np.full((16, 16, 3), 128, np.uint8)
    probs = Predictor(LeftHalfIsLeftEye(), flip_tta=True).predict(img, return_probs=True)[0].probs
    # original pass: left half left_eye; mirrored pass seen back in the original frame: right half
    # would be 'left_eye' of the mirrored image = right_eye of the original
    np.testing.assert_allclose(probs[LEFT_EYE, :, :8], 0.5, atol=1e-3)
    np.testing.assert_allclose(probs[RIGHT_EYE, :, 8:], 0.5, atol=1e-3)
    assert probs[RIGHT_EYE, :, :8].max() < 1e-3 and probs[LEFT_EYE, :, 8:].max() < 1e-3


def test_flip_tta_equals_reference_computation(tiny_unet):
    x = torch.randn(2, 3, 64, 64)
    # independent left/right permutation from class names
    names = list(LS.classes)
    lut = [names.index(n.replace("left_", "@").replace("right_", "left_").replace("@", "right_")) for n in names]
    with torch.inference_mode():
        ref = 0.5 * (tiny_unet(x).softmax(1) + tiny_unet(x.flip(-1)).softmax(1).flip(-1)[:, lut])
        got = Predictor(tiny_unet, flip_tta=True).probabilities(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_batching_and_input_types_give_identical_results(tiny_unet, tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((40, 50), (64, 64), (70, 33))]
    one = Predictor(tiny_unet, batch_size=1).predict(imgs)
    many = Predictor(tiny_unet, batch_size=8, channels_last=True).predict(imgs)
    for a, b, im in zip(one, many, imgs):
        assert a.labels.shape == im.shape[:2]
        assert (a.labels == b.labels).mean() > 0.999
    Image.fromarray(imgs[0]).save(tmp_path / "a.png")
    by_path = Predictor(tiny_unet).predict(str(tmp_path / "a.png"))[0].labels
    by_pil = Predictor(tiny_unet).predict(Image.open(tmp_path / "a.png"))[0].labels
    np.testing.assert_array_equal(by_path, one[0].labels)
    np.testing.assert_array_equal(by_pil, one[0].labels)


def test_errors():
    with pytest.raises(FaceParseError, match="does not exist"):
        Predictor(RedIsSkin()).predict("/no/such/image.png")
    with pytest.raises(FaceParseError, match="backend"):
        FaceDetector(backend="nope")
    with pytest.raises(FaceParseError, match="H x W x 3"):
        Predictor(RedIsSkin()).predict(np.zeros((4, 4, 5), np.uint8))
