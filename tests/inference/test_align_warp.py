"""Face geometry: RoI tanh-warp and 5-point similarity alignment, their inverses, dataset transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceparse.data.align import align_sample, maybe_align, warp_to_original
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
from faceparse.errors import FaceParseError
from faceparse.evaluate import _to_original
from faceparse.labels import IGNORE_INDEX

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
