"""Bad input gives a FaceParseError naming the file and what was expected, never a wrong label."""

from __future__ import annotations

import shutil

import cv2
import fixture_trees as fx
import numpy as np
import pytest

from faceparse.data.cofw import COFWDataset
from faceparse.data.helen import HelenDataset
from faceparse.data.lapa import LaPaDataset
from faceparse.data.part_labels import PartLabelsDataset
from faceparse.errors import FaceParseError

S = 48


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("clean")
    fx.write_lapa(base, size=S)
    fx.write_helen_smith(base, size=S)
    fx.write_helen_star(base / "star", size=S)
    fx.write_part_labels(base / "parts", size=S)
    fx.write_cofw(base / "cofw", size=S)
    return base


@pytest.fixture
def tree(trees, tmp_path):
    dst = tmp_path / "t"
    shutil.copytree(trees, dst)
    return dst


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "cls, sub",
    [(LaPaDataset, ""), (HelenDataset, ""), (PartLabelsDataset, ""), (COFWDataset, "")],
)
def test_missing_root(cls, sub, tmp_path):
    with pytest.raises(FaceParseError, match=r"nope.*does not exist|does not exist.*nope|nope"):
        cls(str(tmp_path / "nope"))


def test_missing_split_files(tree):
    (tree / "SmithCVPR2013_dataset_resized" / "tuning.txt").unlink()
    with pytest.raises(FaceParseError, match=r"tuning\.txt.*does not exist"):
        HelenDataset(tree, split="val")
    (tree / "parts" / "parts_validation.txt").unlink()
    with pytest.raises(FaceParseError, match=r"parts_validation\.txt"):
        PartLabelsDataset(tree / "parts", split="val")
    shutil.rmtree(tree / "LaPa" / "val")
    with pytest.raises(FaceParseError, match=r"LaPa/val"):
        LaPaDataset(tree, split="val")
    (tree / "cofw" / "COFW_test_color.mat").unlink()
    with pytest.raises(FaceParseError, match=r"COFW_test_color\.mat"):
        COFWDataset(tree / "cofw", split="test")
    (tree / "star" / "helen" / "landmarks.txt").unlink()
    with pytest.raises(FaceParseError, match=r"landmarks\.txt"):
        HelenDataset(tree / "star", split="train")


def test_missing_image_for_listed_face(tree):
    name = HelenDataset(tree, split="train").names[1]
    (tree / "SmithCVPR2013_dataset_resized" / "images" / f"{name}.jpg").unlink()
    with pytest.raises(FaceParseError, match=rf"missing image .*{name}\.jpg"):
        HelenDataset(tree, split="train")
    ds = PartLabelsDataset(tree / "parts", split="train")
    person, stem = ds.items[0]
    (tree / "parts" / "lfw_funneled" / person / f"{stem}.jpg").unlink()
    with pytest.raises(FaceParseError, match=rf"missing image .*{stem}\.jpg"):
        PartLabelsDataset(tree / "parts", split="train")
    lapa = LaPaDataset(tree, split="test")
    (tree / "LaPa" / "test" / "images" / f"{lapa.names[0]}.jpg").unlink()
    with pytest.raises(FaceParseError, match=rf"missing image .*{lapa.names[0]}\.jpg"):
        LaPaDataset(tree, split="test")
    star = HelenDataset(tree / "star", split="train")
    (tree / "star" / "helen" / "train" / f"{star.names[0]}_image.jpg").unlink()
    with pytest.raises(FaceParseError, match=rf"{star.names[0]}_image\.jpg"):
        HelenDataset(tree / "star", split="train")


def test_non_strict_collects_every_problem(tree):
    ds = LaPaDataset(tree, split="train")
    for n in ds.names[:2]:
        (tree / "LaPa" / "train" / "images" / f"{n}.jpg").unlink()
    (tree / "LaPa" / "train" / "landmarks" / f"{ds.names[2]}.txt").unlink()
    loose = LaPaDataset(tree, split="train", strict=False)
    assert len(loose) == 0 and len(loose.problems) == 3
    with pytest.raises(FaceParseError, match=r"3 problem\(s\)"):
        LaPaDataset(tree, split="train")


def test_mask_of_wrong_size(tree):
    ds = LaPaDataset(tree, split="train")
    lbl = tree / "LaPa" / "train" / "labels" / f"{ds.names[0]}.png"
    cv2.imwrite(str(lbl), np.zeros((S // 2, S), np.uint8))
    with pytest.raises(FaceParseError, match=rf"{ds.names[0]}\.png.*expected {S}x{S}"):
        ds.load_raw(0)
    star = HelenDataset(tree / "star", split="test")
    lbl = tree / "star" / "helen" / "test" / f"{star.names[0]}_label.png"
    cv2.imwrite(str(lbl), np.zeros((S + 2, S + 2), np.uint8))
    with pytest.raises(FaceParseError, match=rf"_label\.png.*expected {S}x{S}"):
        star.load_raw(0)
    smith = HelenDataset(tree, split="test")
    n = smith.names[0]
    cv2.imwrite(
        str(tree / "SmithCVPR2013_dataset_resized" / "labels" / n / f"{n}_lbl03.png"), np.zeros((5, 5), np.uint8)
    )
    with pytest.raises(FaceParseError, match=rf"{n}_lbl03\.png.*expected"):
        smith.load_raw(0)
    cofw = COFWDataset(tree / "cofw", split="test")
    cv2.imwrite(str(tree / "cofw" / "COFW_test_masks" / "2.png"), np.zeros((7, 9), np.uint8))
    with pytest.raises(FaceParseError, match=r"COFW_test_masks/2\.png.*expected"):
        cofw.load_raw(1)
    parts = PartLabelsDataset(tree / "parts", split="val")
    _, stem = parts.items[0]
    cv2.imwrite(str(tree / "parts" / "parts_lfw_funneled_gt_images" / f"{stem}.ppm"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(FaceParseError, match=rf"{stem}\.ppm.*expected"):
        parts.load_raw(0)


def test_unknown_colour_in_ppm(tree):
    ds = PartLabelsDataset(tree / "parts", split="train")
    _, stem = ds.items[1]
    ppm = tree / "parts" / "parts_lfw_funneled_gt_images" / f"{stem}.ppm"
    bgr = cv2.imread(str(ppm))
    bgr[5, 7] = (128, 128, 128)
    cv2.imwrite(str(ppm), bgr)
    with pytest.raises(FaceParseError, match=rf"{stem}\.ppm.*unknown colour.*x=7, y=5"):
        ds.load_raw(1)


def test_unknown_label_value(tree):
    ds = LaPaDataset(tree, split="val")
    lbl = tree / "LaPa" / "val" / "labels" / f"{ds.names[1]}.png"
    m = cv2.imread(str(lbl), cv2.IMREAD_GRAYSCALE)
    m[3, 3] = 42
    cv2.imwrite(str(lbl), m)
    with pytest.raises(FaceParseError, match=rf"{ds.names[1]}\.png.*unknown label values \[42\]"):
        ds.load_raw(1)


def test_truncated_images(tree):
    ds = LaPaDataset(tree, split="val")
    img = tree / "LaPa" / "val" / "images" / f"{ds.names[0]}.jpg"
    _truncate(img)
    with pytest.raises(FaceParseError, match=rf"cannot read .*{ds.names[0]}\.jpg"):
        ds.load_raw(0)
    parts = PartLabelsDataset(tree / "parts", split="test")
    person, stem = parts.items[0]
    _truncate(tree / "parts" / "lfw_funneled" / person / f"{stem}.jpg")
    with pytest.raises(FaceParseError, match=rf"cannot read .*{stem}\.jpg"):
        parts.load_raw(0)


def test_bad_landmark_and_mat_content(tree):
    ds = LaPaDataset(tree, split="test")
    (tree / "LaPa" / "test" / "landmarks" / f"{ds.names[1]}.txt").write_text("106\n1 2\n3 4\n")
    with pytest.raises(FaceParseError, match=rf"{ds.names[1]}\.txt.*expected 106"):
        ds.load_raw(1)
    import h5py

    path = tree / "cofw" / "COFW_train_color.mat"
    with h5py.File(path, "r+") as f:
        del f["phisTr"]
        f.create_dataset("phisTr", data=np.zeros((80, 3)))
    with pytest.raises(FaceParseError, match=r"COFW_train_color\.mat.*phisTr.*N x 87"):
        COFWDataset(tree / "cofw", split="train")


def test_bad_superpixel_file(tree):
    ds = PartLabelsDataset(tree / "parts", split="val")
    person, stem = ds.items[1]
    (tree / "parts" / "parts_lfw_funneled_superpixels_mat" / person / f"{stem}.dat").write_text("1 2 3\n4 5 6\n")
    with pytest.raises(FaceParseError, match=rf"{stem}\.dat.*6 superpixel ids, expected {S} x {S}"):
        ds.load_raw(1)
