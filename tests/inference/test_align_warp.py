"""Face geometry: RoI tanh-warp and 5-point similarity alignment, their inverses, dataset transforms."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage.transform import SimilarityTransform

from faceparse.data.align import TEMPLATE_5, align_sample, maybe_align, warp_to_original
from faceparse.data.tanh_warp import (
    TANH_TEMPLATE_5,
    crop_to_image,
    image_to_crop,
    inverse_tanh_warp_coords,
    roi_matrix,
    tanh_warp_coords,
    tanh_warp_sample,
    unwarp,
    warp_image,
)
from faceparse.detection import Face
from faceparse.errors import FaceParseError
from faceparse.evaluate import _to_original
from faceparse.inference import (
    PATH_ESTIMATED,
    PATH_MEASURED,
    PATH_NO_FACE,
    PATH_PARSE_THEN_ALIGN,
    Predictor,
    landmarks_from_parsing,
)
from faceparse.labels import IGNORE_INDEX, get_label_set
from faceparse.models.base import FaceParsingModel

POINTS = np.array([[210.0, 220.0], [302.0, 224.0], [255.0, 280.0], [222.0, 330.0], [290.0, 333.0]])


def face_label_map(h: int = 512, w: int = 512) -> np.ndarray:
    """A LaPa-like synthetic label map: hair, skin, eyes, nose, mouth as ellipses around POINTS."""
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    lab = np.zeros((h, w), np.uint8)

    def ell(cx, cy, rx, ry, value):
        lab[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1] = value

    ell(256, 250, 170, 215, 10)  # hair
    ell(256, 270, 115, 150, 1)  # skin
    ell(210, 220, 20, 10, 4)  # left eye
    ell(302, 224, 20, 10, 5)  # right eye
    ell(255, 268, 15, 25, 6)  # nose
    ell(256, 331, 36, 12, 8)  # mouth
    return lab


def test_tanh_nonlinearity_and_its_inverse():
    u = np.linspace(-3, 3, 2001)
    np.testing.assert_allclose(tanh_warp_coords(u, 1.0), np.tanh(u), atol=1e-12)  # Lin et al.: pure tanh
    np.testing.assert_allclose(tanh_warp_coords(u, 0.0), u)  # no warp: a plain crop
    for f in (0.3, 0.8, 1.0):
        v = tanh_warp_coords(u, f)
        assert np.all(np.diff(v) > 0) and np.abs(v).max() < 1  # monotone, the whole line inside (-1, 1)
        inner = np.abs(u) <= 1 - f
        np.testing.assert_allclose(v[inner], u[inner])  # linear centre
        np.testing.assert_allclose(inverse_tanh_warp_coords(v, f), u, atol=1e-6)
    with pytest.raises(FaceParseError, match="factor"):
        tanh_warp_coords(u, 1.5)


def test_tanh_point_mapping_round_trip_and_template():
    m = roi_matrix(POINTS)
    c = image_to_crop(POINTS, m, 512)
    np.testing.assert_allclose(crop_to_image(c, m, 512), POINTS, atol=1e-6)
    # without the nonlinearity the five points land (least squares) on the template, in pixels
    c0 = image_to_crop(POINTS, m, 512, factor=0.0)
    expected = (TANH_TEMPLATE_5 + 1) * 256 - 0.5
    assert np.abs(c0 - expected).max() < 0.02 * 512
    # far points stay inside the crop (its outer pixel edge at most)
    far = image_to_crop(np.array([[-5000.0, -5000.0], [9000.0, 300.0]]), m, 512)
    assert np.all((far >= -0.5) & (far <= 511.5))


def test_tanh_warp_then_inverse_keeps_99_percent_of_a_512_label_map():
    lab = face_label_map()
    m = roi_matrix(POINTS)
    crop = warp_image(lab, m, 512, nearest=True)
    assert crop.shape == (512, 512) and set(np.unique(crop)) == set(np.unique(lab))
    back = unwarp(crop, m, lab.shape, 512).numpy()
    assert back.shape == lab.shape
    kept = (back == lab).mean()
    assert kept >= 0.99, kept
    # every original pixel comes back (the warp covers the whole image): no unknown value
    assert set(np.unique(back)) <= set(np.unique(lab))


def test_similarity_alignment_then_inverse_keeps_99_percent():
    lab = face_label_map()
    image = np.repeat(lab[..., None], 3, 2) * 20
    raw = {"image": image, "mask": lab, "meta": {}}
    # crop large enough (scale 2.2: zoomed out) to hold the whole 512 x 512 photo
    out = align_sample(raw, POINTS, 512, scale=2.2)
    back = warp_to_original(torch.from_numpy(out["mask"].astype(np.int64)), out["meta"]["align_inverse"], (512, 512))
    back = back.numpy()
    assert (back == IGNORE_INDEX).mean() < 0.005
    kept = (back == lab).mean()
    assert kept >= 0.99, kept
    # the default (tighter) crop: every pixel the crop covers comes back
    out = align_sample(raw, POINTS, 512)
    back = warp_to_original(torch.from_numpy(out["mask"].astype(np.int64)), out["meta"]["align_inverse"], (512, 512))
    covered = back.numpy() != IGNORE_INDEX
    assert (back.numpy()[covered] == lab[covered]).mean() >= 0.99
    assert covered[(lab > 0) & (lab < 10)].all()  # the face without hair is inside the crop


def test_tanh_dataset_transform_and_evaluation_paste_back():
    lab = face_label_map(400, 480)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (400, 480, 3), dtype=np.uint8)
    raw = {"image": image, "mask": lab, "landmarks": POINTS.astype(np.float32), "meta": {"name": "x"}}
    out = maybe_align(raw, POINTS, "tanh", 256)
    assert out["image"].shape == (256, 256, 3) and out["mask"].shape == (256, 256)
    meta = out["meta"]
    assert meta["warp"] == "tanh" and meta["tanh_size"] == 256 and meta["orig_size"] == (400, 480)
    np.testing.assert_allclose(out["landmarks"], image_to_crop(POINTS, np.array(meta["tanh_matrix"]), 256), atol=1e-4)
    # one-hot logits of the warped mask, pasted back by evaluate's own path, give the mask back
    logits = torch.nn.functional.one_hot(torch.from_numpy(out["mask"]).long(), 11).permute(2, 0, 1).float()
    back = _to_original(logits, meta).argmax(0).numpy()
    assert back.shape == (400, 480) and (back == lab).mean() > 0.98
    # the similarity path still works under its own names, and unknown modes are errors
    assert "align_inverse" in maybe_align(raw, POINTS, True, 128)["meta"]
    assert "align_inverse" in maybe_align(raw, POINTS, "similarity", 128)["meta"]
    with pytest.raises(FaceParseError, match="align="):
        maybe_align(raw, POINTS, "polar", 128)
    with pytest.raises(FaceParseError, match="needs landmarks"):
        maybe_align(raw, None, "tanh", 128)
    np.testing.assert_array_equal(
        tanh_warp_sample(raw, POINTS, 64)["mask"], maybe_align(raw, POINTS, "tanh", 64)["mask"]
    )


# ---------------------------------------------------------------------------- Predictor geometry
LAPA = get_label_set("lapa")
PALETTE = np.random.default_rng(3).uniform(0.05, 0.95, (LAPA.num_classes, 3))


class ConstantLogits(FaceParsingModel):
    """Output independent of the input: fixed random logits, so crop probabilities are known exactly."""

    input_mean = (0.0, 0.0, 0.0)
    input_std = (1.0, 1.0, 1.0)

    def __init__(self, size: int = 48) -> None:
        super().__init__()
        self.label_set = LAPA
        self.default_input_size = size
        self.logits = torch.randn(LAPA.num_classes, size, size, generator=torch.Generator().manual_seed(0)) * 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[None].expand(x.shape[0], -1, -1, -1).clone()


class ColourIsClass(FaceParsingModel):
    """A perfect parser of images painted with PALETTE: logits = -distance to each class colour."""

    input_mean = (0.0, 0.0, 0.0)
    input_std = (1.0, 1.0, 1.0)

    def __init__(self, size: int = 128) -> None:
        super().__init__()
        self.label_set = LAPA
        self.default_input_size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pal = torch.tensor(PALETTE, dtype=x.dtype)
        return -80.0 * ((x[:, None] - pal[None, :, :, None, None]) ** 2).sum(2)


def painted(labels: np.ndarray) -> np.ndarray:
    return (PALETTE[labels] * 255).round().astype(np.uint8)


def bilinear(probs: np.ndarray, crop_xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Reference sampling (scipy): probs K x S x S at crop coordinates, border extended."""
    from scipy.ndimage import map_coordinates

    s = probs.shape[-1]
    x = np.clip(crop_xy[:, 0], 0, s - 1)
    y = np.clip(crop_xy[:, 1], 0, s - 1)
    return np.stack([map_coordinates(p, [y, x], order=1) for p in probs]).reshape(-1, *shape)


def fit(src: np.ndarray, dst: np.ndarray) -> SimilarityTransform:
    if hasattr(SimilarityTransform, "from_estimate"):
        return SimilarityTransform.from_estimate(src, dst)
    t = SimilarityTransform()
    t.estimate(src, dst)
    return t


def reference_tanh_crop_xy(points, pts_img, size, factor):
    """The tanh-warp written again from the formula: Umeyama fit by scikit-image, then w_f."""
    u = fit(points, TANH_TEMPLATE_5)(pts_img)
    lin = 1 - factor
    a = np.abs(u)
    w = np.sign(u) * np.where(a <= lin, a, lin + factor * np.tanh((a - lin) / factor))
    return (w + 1) * size / 2 - 0.5


def test_paste_back_of_probabilities_equals_an_independent_computation():
    h, w, s = 90, 120, 48
    points = POINTS * 0.25 - np.array([10.0, 20.0])  # a face in a 90 x 120 image
    image = np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)
    model = ConstantLogits(s)
    probs = torch.softmax(model.logits, 0).numpy()
    face = Face((40.0, 30.0, 70.0, 70.0), 0.9, points, landmarks_estimated=False)
    ys, xs = np.mgrid[:h, :w]
    pix = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)

    # RoI tanh-warp: every image pixel has a place in the crop
    pred = Predictor(model, detector=lambda im: [face], align="tanh").predict(image, return_probs=True)[0]
    expected = bilinear(probs, reference_tanh_crop_xy(points, pix, s, 0.8), (h, w))
    np.testing.assert_allclose(pred.probs, expected, atol=2e-5)
    np.testing.assert_array_equal(pred.labels, expected.argmax(0))
    assert pred.faces[0].path == PATH_MEASURED and pred.faces[0].align == "tanh"

    # similarity: inside the crop the sampled probabilities, outside background
    pred = Predictor(model, detector=lambda im: [face], align="similarity").predict(image, return_probs=True)[0]
    c = fit(points, TEMPLATE_5 * s - 0.5)(pix)
    inside = np.all((c >= -0.5) & (c <= s - 0.5), 1).reshape(h, w)
    expected = bilinear(probs, c, (h, w))
    expected[:, ~inside] = 0.0
    expected[LAPA.background, ~inside] = 1.0
    assert 0.1 < inside.mean() < 0.9
    np.testing.assert_allclose(pred.probs, expected, atol=2e-5)
    np.testing.assert_array_equal(pred.labels, expected.argmax(0))
    np.testing.assert_array_equal(pred.faces[0].labels, pred.labels)  # one face: its own map is the result

    # two faces: composited per pixel by confidence (1 - p(background)), then argmax
    face2 = Face((0.0, 0.0, 30.0, 40.0), 0.8, points - np.array([25.0, 15.0]), landmarks_estimated=False)
    pred = Predictor(model, detector=lambda im: [face, face2], align="similarity").predict(image, return_probs=True)[0]
    per_face = []
    for f in (face, face2):
        c = fit(f.landmarks, TEMPLATE_5 * s - 0.5)(pix)
        p = bilinear(probs, c, (h, w))
        conf = np.where(np.all((c >= -0.5) & (c <= s - 0.5), 1).reshape(h, w), 1 - p[LAPA.background], -1.0)
        per_face.append((conf, p))
    (c1, p1), (c2, p2) = per_face
    expected = np.where(c2 > c1, p2, p1)
    nowhere = (c1 < 0) & (c2 < 0)
    expected[:, nowhere] = 0.0
    expected[LAPA.background, nowhere] = 1.0
    assert (c2 > c1).any() and (c1 > c2).any()
    np.testing.assert_allclose(pred.probs, expected, atol=2e-5)
    np.testing.assert_array_equal(pred.labels, expected.argmax(0))
    assert len(pred.faces) == 2 and all(f.labels.shape == (h, w) for f in pred.faces)


def test_parse_then_align_runs_and_is_reported():
    lab = face_label_map(384, 384)
    lab[lab == 8] = LAPA.index("mouth")
    image = painted(lab)
    model = ColourIsClass(128)
    true_eyes = np.array([[210.0, 220.0], [302.0, 224.0]])
    # the parsed landmarks of the true label map: eye centroids, nose, mouth corners
    lm = landmarks_from_parsing(lab, LAPA)
    np.testing.assert_allclose(lm[:2], true_eyes, atol=0.5)
    np.testing.assert_allclose(lm[3:, 0], [220.0, 292.0], atol=5.0)  # mouth ellipse ends at 256 -/+ 36
    assert landmarks_from_parsing(np.zeros((20, 20), np.uint8), LAPA) is None

    def box_only(im):  # a detector without landmarks
        return [(140.0, 150.0, 370.0, 400.0)]

    for align in ("similarity", "tanh"):
        pred = Predictor(model, detector=box_only, align=align).predict(image)[0]
        face = pred.faces[0]
        assert face.path == PATH_PARSE_THEN_ALIGN == pred.path and face.align == align
        np.testing.assert_allclose(face.landmarks[:2], true_eyes, atol=3.0)  # from the first pass
        assert (pred.labels == lab)[(lab > 0) & (lab < 10)].mean() > 0.97
    # no detector at all: the whole image is the first pass
    pred = Predictor(model, align="tanh").predict(image)[0]
    assert pred.path == PATH_PARSE_THEN_ALIGN and pred.faces[0].align == "tanh"
    assert (pred.labels == lab).mean() > 0.98
    # estimated landmarks used directly when parse_landmarks=False; measured ones need no first pass
    est = Face((140.0, 150.0, 370.0, 400.0), 1.0, POINTS * 0.75, landmarks_estimated=True)
    pred = Predictor(model, detector=lambda im: [est], align="similarity", parse_landmarks=False).predict(image)[0]
    assert pred.faces[0].path == PATH_ESTIMATED
    meas = Face(est.box, 1.0, POINTS * 0.75, landmarks_estimated=False)
    pred = Predictor(model, detector=lambda im: [meas]).predict(image)[0]  # auto: similarity for measured
    assert pred.faces[0].path == PATH_MEASURED and pred.faces[0].align == "similarity"
    # no face: reported, whole image parsed
    with pytest.warns(UserWarning, match="no face found"):
        pred = Predictor(model, detector=lambda im: []).predict(image)[0]
    assert not pred.face_found and pred.path == PATH_NO_FACE and pred.faces == []
    assert (pred.labels == lab).mean() > 0.97
    with pytest.raises(FaceParseError, match="align="):
        Predictor(model, align="polar")


def test_anti_aliased_crops_keep_the_geometry_of_the_direct_warp():
    """Large faces into small crops are shrunk with INTER_AREA first; the geometry must not move."""
    from faceparse.data.align import alignment_matrix
    from faceparse.inference import SimilarityCrop

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8), (0, 0), 8)
    img = np.ascontiguousarray(img + np.linspace(0, 60, 1600, dtype=np.float32)[None, :, None]).clip(0, 255)
    img = img.astype(np.uint8)
    pts = np.array([[600.0, 500.0], [1000.0, 500.0], [800.0, 700.0], [650.0, 900.0], [950.0, 900.0]])
    direct = cv2.warpAffine(img, alignment_matrix(pts, 64), (64, 64), flags=cv2.INTER_LINEAR)
    assert np.abs(SimilarityCrop(pts, 64).crop(img).astype(float) - direct).mean() < 3.0
    m = roi_matrix(pts)
    src = crop_to_image(np.stack(np.meshgrid(np.arange(64.0), np.arange(64.0)), -1).reshape(-1, 2), m, 64)
    maps = src.reshape(64, 64, 2).astype(np.float32)
    direct = cv2.remap(img, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR)
    assert np.abs(warp_image(img, m, 64).astype(float) - direct).mean() < 3.0


def test_auto_alignment_follows_what_the_model_records(tmp_path):
    lab = face_label_map(256, 256)
    image = painted(lab)
    model = ColourIsClass(64)
    model.warp, model.warp_factor = "tanh", 0.5  # as faceparse.models.farl records its LaPa geometry
    meas = Face((150.0, 150.0, 350.0, 400.0), 1.0, POINTS * 0.5, landmarks_estimated=False)
    pred = Predictor(model, detector=lambda im: [meas]).predict(image)[0]
    assert pred.faces[0].align == "tanh" and pred.faces[0].path == PATH_MEASURED
    predictor = Predictor(model, detector=lambda im: [meas])
    assert predictor.model_warp == "tanh" and predictor.warp_factor == 0.5
    # a model that records nothing: similarity for measured landmarks
    assert Predictor(ColourIsClass(64), detector=lambda im: [meas]).predict(image)[0].faces[0].align == "similarity"
