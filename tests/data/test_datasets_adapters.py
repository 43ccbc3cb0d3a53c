"""LaPa, Helen (both layouts), COFW (v7.3 and v5 .mat) and Part Labels adapters on fixture trees
written in the real layouts: labels at chosen pixels, split sizes, landmarks, side-correct flips."""

from __future__ import annotations

import fixture_trees as fx
import h5py
import numpy as np
import pytest

import faceparse
from faceparse.data import flip_sample
from faceparse.data.cofw import COFW_FLIP_29, COFWDataset
from faceparse.data.helen import FLIP_68, HelenDataset
from faceparse.data.lapa import LAPA_FLIP_106, LaPaDataset, lapa_five_points
from faceparse.data.part_labels import PartLabelsDataset
from faceparse.data.transforms import build_transforms

S = 96  # fixture image size


def _perm_ok(perm, fixed):
    perm = np.asarray(perm)
    assert sorted(perm.tolist()) == list(range(len(perm)))  # a permutation
    np.testing.assert_array_equal(perm[perm], np.arange(len(perm)))  # an involution
    assert set(np.nonzero(perm == np.arange(len(perm)))[0].tolist()) == set(fixed)


def test_landmark_flip_permutations():
    _perm_ok(LAPA_FLIP_106, {16, 51, 52, 53, 54, 60, 87, 93, 98, 102})
    _perm_ok(COFW_FLIP_29, {20, 21, 24, 25, 26, 27, 28})
    _perm_ok(FLIP_68, {8, 27, 28, 29, 30, 33, 51, 57, 62, 66})
    # the points used for the 5-point derivation swap with their mirror partners
    assert LAPA_FLIP_106[74] == 83 and LAPA_FLIP_106[104] == 105 and LAPA_FLIP_106[84] == 90
    assert COFW_FLIP_29[16] == 17 and COFW_FLIP_29[22] == 23
    assert FLIP_68[36] == 45 and FLIP_68[48] == 54


def test_registered_names():
    for name in ("celebamask_hq", "lapa", "helen", "cofw", "part_labels"):
        assert name in faceparse.list_datasets()


# ------------------------------------------------------------------------------------------ LaPa
@pytest.fixture(scope="module")
def lapa(tmp_path_factory):
    return fx.write_lapa(tmp_path_factory.mktemp("lapa"), size=S)


def _face_point_labels(mask, points5):
    return [int(mask[round(y), round(x)]) for x, y in points5]


def test_lapa_splits_labels_landmarks(lapa):
    root = lapa["root"]
    for split, n in (("train", 3), ("val", 2), ("test", 2)):
        ds = LaPaDataset(root, split=split, image_size=64)
        assert len(ds) == n
    ds = LaPaDataset(str(lapa["root"]).rsplit("/LaPa", 1)[0], split="val", image_size=64)  # parent folder works
    raw = ds.load_raw(1)
    name = raw["meta"]["name"]
    face = lapa["faces"][name]
    np.testing.assert_array_equal(raw["mask"], face["mask"])
    np.testing.assert_allclose(raw["landmarks"], lapa["landmarks"][name], atol=1e-3)
    five = lapa_five_points(raw["landmarks"])
    np.testing.assert_allclose(five, face["points5"], atol=1e-3)
    # the derived points land on the right classes: left eye, right eye, nose, mouth, mouth
    assert _face_point_labels(raw["mask"], five) == [fx.LEYE, fx.REYE, fx.NOSE, fx.MOUTH, fx.MOUTH]
    assert raw["mask"][2, 2] == fx.HAIR and raw["mask"][S // 2, S - 3] == fx.BG
    s = ds[1]
    assert tuple(s["image"].shape) == (3, 64, 64) and tuple(s["landmarks"].shape) == (106, 2)
    assert s["labels"][fx.LEYE] == 1 and s["labels"].shape[0] == 11


def _check_flip_sides(raw, flipped, perm, key_points):
    """After a flip, landmark i sits where the mirror of landmark perm[i] was, and key points keep
    their semantic class (left eye on the left eye...)."""
    w = raw["image"].shape[1]
    np.testing.assert_allclose(flipped["landmarks"][:, 0], w - 1 - raw["landmarks"][perm, 0], atol=1e-4)
    for idx, cls in key_points:
        x, y = flipped["landmarks"][idx]
        assert flipped["mask"][round(y), round(x)] == cls, (idx, cls)


def test_lapa_flip_keeps_sides(lapa):
    ds = LaPaDataset(lapa["root"], split="train", image_size=None)
    raw = ds.load_raw(0)
    flipped = flip_sample(raw, ds.label_set.flip_lut, ds.landmark_flip)
    _check_flip_sides(raw, flipped, LAPA_FLIP_106, [(74, fx.LEYE), (83, fx.REYE), (54, fx.NOSE), (84, fx.MOUTH)])
    # every mirrored pair: the lower index is on the image left after the flip, as before
    lm = flipped["landmarks"]
    for i, j in enumerate(LAPA_FLIP_106):
        if i < j:
            assert lm[i, 0] < lm[j, 0]
    # hair strip was on the left; after the flip it is on the right
    assert flipped["mask"][S // 2, S - 3] == fx.HAIR
    # the training pipeline with a forced flip does the same through __getitem__
    t = build_transforms(
        None,
        train=True,
        label_set="lapa",
        landmark_flip=ds.landmark_flip,
        scale=(1, 1),
        rotate=0,
        translate=0,
        color_jitter=0,
    )
    t.flip.p = 1.0
    ds.transform = t
    s = ds[0]
    x, y = s["landmarks"][74].tolist()
    assert int(s["mask"][round(y), round(x)]) == fx.LEYE


def test_lapa_five_point_mode_and_align(lapa):
    ds = LaPaDataset(lapa["root"], split="test", landmarks="5", align=True, image_size=64)
    s = ds[0]
    assert tuple(s["landmarks"].shape) == (5, 2)
    meta = s["meta"]
    assert meta["align_size"] == 64 and meta["orig_size"] == (S, S)
    m = s["mask"].numpy()
    assert _face_point_labels(m, s["landmarks"].numpy()) == [fx.LEYE, fx.REYE, fx.NOSE, fx.MOUTH, fx.MOUTH]


# ------------------------------------------------------------------------------------------ Helen
@pytest.fixture(scope="module")
def helen_smith(tmp_path_factory):
    return fx.write_helen_smith(tmp_path_factory.mktemp("helen_smith"), size=S)


@pytest.fixture(scope="module")
def helen_star(tmp_path_factory):
    return fx.write_helen_star(tmp_path_factory.mktemp("helen_star"), size=S)


def test_helen_smith_layout(helen_smith):
    base = helen_smith["root"]
    sizes = {sp: len(HelenDataset(base, split=sp)) for sp in ("train", "val", "test")}
    assert sizes == {"train": 3, "val": 2, "test": 2}
    ds = HelenDataset(base, split="val")
    assert ds.layout == "smith" and ds.names == helen_smith["names"]["val"]  # file order kept
    raw = ds.load_raw(0)
    face = helen_smith["faces"][raw["meta"]["name"]]
    np.testing.assert_array_equal(raw["mask"], face["mask"])  # argmax of the 11 soft maps
    assert _face_point_labels(raw["mask"], face["points5"]) == [fx.LEYE, fx.REYE, fx.NOSE, fx.MOUTH, fx.MOUTH]


def test_helen_smith_crop(helen_smith):
    ds = HelenDataset(helen_smith["root"], split="train", crop_face=True, image_size=64)
    raw = ds.load_raw(0)
    face = helen_smith["faces"][raw["meta"]["name"]]
    x0, y0, x1, y1 = face["box"]  # box of the face parts (no landmarks in this layout)
    side = int(max(x1 - x0 + 1, y1 - y0 + 1) * 1.2)
    left, top, right, bottom = raw["meta"]["crop_box"]
    assert right - left == side == bottom - top
    assert abs((left + right) / 2 - (x0 + x1 + 1) / 2) <= 1 and abs((top + bottom) / 2 - (y0 + y1 + 1) / 2) <= 1
    assert raw["image"].shape == (side, side, 3)
    # a pixel keeps its label through the crop
    np.testing.assert_array_equal(raw["mask"][10, 10], face["mask"][top + 10, left + 10])


def test_helen_star_layout_landmarks_crop_flip(helen_star):
    base = helen_star["root"]
    assert len(HelenDataset(base, split="train")) == 3 and len(HelenDataset(base, split="test")) == 2
    ds = HelenDataset(base, split="test", image_size=None)
    assert ds.layout == "star"
    raw = ds.load_raw(1)
    name = raw["meta"]["name"]
    np.testing.assert_allclose(raw["landmarks"], helen_star["landmarks"][name], atol=0.01)  # x0.5 applied
    np.testing.assert_array_equal(raw["mask"], helen_star["faces"][name]["mask"])
    flipped = flip_sample(raw, ds.label_set.flip_lut, ds.landmark_flip)
    _check_flip_sides(raw, flipped, FLIP_68, [(36, fx.LEYE), (45, fx.REYE), (30, fx.NOSE), (48, fx.MOUTH)])
    # square crop at 1.2x the landmark box, computed independently
    cds = HelenDataset(base, split="test", crop_face=True, image_size=None)
    craw = cds.load_raw(1)
    lm = helen_star["landmarks"][name]
    w, h = lm.max(0) - lm.min(0) + 1
    side = int(max(w, h) * 1.2)
    left, top, right, bottom = craw["meta"]["crop_box"]
    assert right - left == side and bottom - top == side
    np.testing.assert_allclose(craw["landmarks"], lm - [left, top], atol=0.01)
    with pytest.raises(faceparse.FaceParseError, match="'train' or 'test'"):
        HelenDataset(base, split="val")


# ------------------------------------------------------------------------------------------ COFW
@pytest.fixture(scope="module", params=["7.3", "5"])
def cofw(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"cofw{request.param}")
    return request.param, fx.write_cofw(root, size=S, version=request.param)


def test_cofw_mat_files(cofw):
    version, info = cofw
    root = info["root"]
    path = f"{root}/COFW_train_color.mat"
    if version == "7.3":
        assert h5py.is_hdf5(path)
        assert open(path, "rb").read(10) == b"MATLAB 7.3"
        with h5py.File(path) as f:  # the real layout: transposed arrays, object references
            assert f["phisTr"].shape == (87, 3) and f["IsTr"].dtype == h5py.ref_dtype
    else:
        assert not h5py.is_hdf5(path)
    for split in ("train", "test"):
        ds = COFWDataset(root, split=split, image_size=64)
        assert len(ds) == 3
        for i in range(3):
            raw = ds.load_raw(i)
            src = info[split]["images"][i]
            ref = src if src.ndim == 3 else np.repeat(src[..., None], 3, 2)  # grayscale -> RGB
            np.testing.assert_array_equal(raw["image"], ref)
            phis = info[split]["phis"][i]
            np.testing.assert_allclose(raw["landmarks"][:, 0], phis[:29] - 1, atol=1e-5)
            np.testing.assert_allclose(raw["landmarks"][:, 1], phis[29:58] - 1, atol=1e-5)
            np.testing.assert_array_equal(raw["landmark_occluded"], phis[58:] > 0)
            bx, by, bw, bh = info[split]["boxes"][i]
            np.testing.assert_allclose(raw["face_box"], [bx - 1, by - 1, bx - 1 + bw, by - 1 + bh])
            if split == "test":
                np.testing.assert_array_equal(raw["mask"], (info["test"]["masks"][i] > 0).astype(np.uint8))
            else:
                assert (raw["mask"] == 255).all()
    s = COFWDataset(root, split="test", image_size=64)[1]
    assert tuple(s["image"].shape) == (3, 64, 64) and s["landmark_occluded"].dtype.__str__() == "torch.bool"


def test_cofw_box_protocol_and_flip(cofw):
    _, info = cofw
    ds = COFWDataset(info["root"], split="test", ignore_outside_box=True, image_size=None)
    raw = ds.load_raw(0)
    x0, y0, x1, y1 = raw["face_box"]
    assert raw["mask"][0, 0] == 255 and raw["mask"][int(y0) + 5, int((x0 + x1) / 2)] == 1
    flipped = flip_sample(raw, ds.label_set.flip_lut, ds.landmark_flip)
    # pupils: index 16 is the image-left eye before and after the flip
    assert flipped["landmarks"][16, 0] < flipped["landmarks"][17, 0]
    x, y = flipped["landmarks"][16]
    assert flipped["mask"][round(y), round(x)] == 1
    np.testing.assert_array_equal(flipped["landmark_occluded"], raw["landmark_occluded"][COFW_FLIP_29])


def test_cofw_mask_pattern(tmp_path):
    info = fx.write_cofw(tmp_path, n_train=1, n_test=2, size=48, mask_dir="masks", mask_pattern="mask_{index:03d}.png")
    ds = COFWDataset(tmp_path, split="test", mask_dir="masks", mask_pattern="mask_{index:03d}.png")
    assert len(ds) == 2
    np.testing.assert_array_equal(ds.load_raw(1)["mask"], (info["test"]["masks"][1] > 0).astype(np.uint8))
    with pytest.raises(faceparse.FaceParseError, match="mask_0001.png"):
        COFWDataset(tmp_path, split="test", mask_dir="masks", mask_pattern="mask_{index1:04d}.png")


# ------------------------------------------------------------------------------------------ Part Labels
@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return fx.write_part_labels(tmp_path_factory.mktemp("parts"), size=64)


def test_part_labels(parts):
    root = parts["root"]
    sizes = {sp: len(PartLabelsDataset(root, split=sp)) for sp in ("train", "val", "test")}
    assert sizes == {"train": 3, "val": 2, "test": 2}
    ds = PartLabelsDataset(root, split="test", image_size=None)
    raw = ds.load_raw(1)
    face = parts["faces"][raw["meta"]["name"]]
    np.testing.assert_array_equal(raw["mask"], face["parts"])
    assert raw["mask"][2, 2] == 2  # hair (red)
    cx, cy = face["centre"]
    assert raw["mask"][round(cy), round(cx)] == 1  # face (green)
    assert raw["mask"][32, 62] == 0  # background (blue)
    np.testing.assert_array_equal(raw["superpixels"], face["superpixels"])
    s = PartLabelsDataset(root, split="test", image_size=32)[1]
    assert tuple(s["superpixels"].shape) == (32, 32) and s["superpixels"].dtype.__str__() == "torch.int64"
    assert PartLabelsDataset(root, split="test", superpixels=False).load_raw(0).get("superpixels") is None
