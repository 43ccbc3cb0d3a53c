import numpy as np
import pytest
import torch

import faceparse
from faceparse.data import FaceParsingDataModule, collate, flip_sample
from faceparse.data.transforms import FIVE_POINT_FLIP
from faceparse.labels import get_label_set

CELEB = get_label_set("celebamask_hq")


def test_synthetic_is_deterministic_and_complete():
    a = faceparse.build_dataset("synthetic", split="train", num_samples=50, image_size=64)
    b = faceparse.build_dataset("synthetic", split="train", num_samples=50, image_size=64)
    for i in (0, 7, 49):
        ra, rb = a.load_raw(i), b.load_raw(i)
        np.testing.assert_array_equal(ra["image"], rb["image"])
        np.testing.assert_array_equal(ra["mask"], rb["mask"])
    assert not np.array_equal(a.load_raw(0)["image"], a.load_raw(1)["image"])
    val = faceparse.build_dataset("synthetic", split="val", num_samples=50, image_size=64)
    assert not np.array_equal(a.load_raw(0)["mask"], val.load_raw(0)["mask"])
    s = a[3]
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert s["mask"].shape == (64, 64) and s["mask"].dtype == torch.int64
    assert s["landmarks"].shape == (5, 2) and s["labels"].shape == (19,)
    assert s["occlusion"].shape == (64, 64)
    np.testing.assert_array_equal(s["labels"].numpy() > 0, np.isin(np.arange(19), s["mask"].unique().numpy()))


def test_synthetic_long_tail_and_occluders():
    ds = faceparse.build_dataset("synthetic", split="train", num_samples=400, image_size=64)
    counts = np.zeros(19)
    occluded = 0
    for i in range(len(ds)):
        raw = ds.load_raw(i)
        counts += np.isin(np.arange(19), raw["mask"])
        occluded += raw["occlusion"].any()
    freq = counts / len(ds)
    assert freq[CELEB.index("skin")] > 0.99 and freq[CELEB.index("nose")] > 0.95
    for rare in ("hat", "earring", "necklace", "eyeglasses"):
        assert 0.01 < freq[CELEB.index(rare)] < 0.2, (rare, freq[CELEB.index(rare)])
    assert (freq > 0).all(), "every one of the 19 classes must appear"
    assert 0.15 < occluded / len(ds) < 0.45


def test_landmarks_sit_on_their_parts():
    ds = faceparse.build_dataset("synthetic", split="val", num_samples=30, image_size=128, occluders=False)
    hits = 0
    for i in range(len(ds)):
        raw = ds.load_raw(i)
        (lx, ly), (rx, ry) = raw["landmarks"][0], raw["landmarks"][1]
        m = raw["mask"]
        hits += m[int(round(ly)), int(round(lx))] in (8, 15) and m[int(round(ry)), int(round(rx))] in (9, 15)
        assert lx < rx
    assert hits >= 27


def test_flip_swaps_left_right_pixel_counts_and_is_involution():
    ds = faceparse.build_dataset("synthetic", split="train", num_samples=5, image_size=64)
    raw = ds.load_raw(2)
    flipped = flip_sample(raw, CELEB.flip_lut, FIVE_POINT_FLIP)
    for left, right in (("left_eye", "right_eye"), ("left_brow", "right_brow"), ("left_ear", "right_ear")):
        li, ri = CELEB.index(left), CELEB.index(right)
        assert (flipped["mask"] == li).sum() == (raw["mask"] == ri).sum()
        assert (flipped["mask"] == ri).sum() == (raw["mask"] == li).sum()
    # the left eye landmark (index 0) is still the image-left one after flipping
    assert flipped["landmarks"][0, 0] < flipped["landmarks"][1, 0]
    np.testing.assert_allclose(flipped["landmarks"][0], [63 - raw["landmarks"][1, 0], raw["landmarks"][1, 1]])
    twice = flip_sample(flipped, CELEB.flip_lut, FIVE_POINT_FLIP)
    for key in ("image", "mask", "occlusion", "landmarks", "face_box"):
        np.testing.assert_allclose(twice[key], raw[key])


def test_train_transform_keeps_mask_and_landmarks_aligned():
    ds = faceparse.build_dataset(
        "synthetic", split="train", num_samples=8, image_size=96, augment=True, occluders=False
    )
    for i in range(8):
        s = ds[i]
        assert s["image"].shape == (3, 96, 96)
        valid = s["mask"] != 255
        assert set(s["mask"][valid].unique().tolist()) <= set(range(19))
        nose = s["landmarks"][2].round().long().clamp(0, 95)
        assert s["mask"][nose[1], nose[0]].item() in (10, 2, 255)


def test_write_celebamask_hq_layout(tmp_path):
    ds = faceparse.build_dataset("synthetic", split="train", image_size=64)
    ds.write_celebamask_hq(tmp_path, num_faces=10)
    assert (tmp_path / "CelebA-HQ-img" / "3.jpg").is_file()
    lines = (tmp_path / "CelebA-HQ-to-CelebA-mapping.txt").read_text().split("\n")
    assert lines[0] == "idx orig_idx orig_file"
    orig = [int(line.split()[1]) for line in lines[1:] if line]
    assert sum(o < 162771 for o in orig) == 8 and sum(o >= 182638 for o in orig) == 1
    import cv2

    skin = cv2.imread(str(tmp_path / "CelebAMask-HQ-mask-anno" / "0" / "00003_skin.png"), cv2.IMREAD_GRAYSCALE)
    assert skin.shape == (64, 64) and set(np.unique(skin)) <= {0, 255}
    np.testing.assert_array_equal(skin > 0, ds.load_raw(3)["mask"] == CELEB.index("skin"))
    img = cv2.imread(str(tmp_path / "CelebA-HQ-img" / "3.jpg"))
    assert img.shape == (128, 128, 3)


def test_datamodule_batches():
    dm = FaceParsingDataModule(
        "synthetic", train_kwargs={"num_samples": 12}, val_kwargs={"num_samples": 6}, image_size=64, batch_size=4
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 64, 64)
    assert isinstance(batch["meta"], list) and len(batch["meta"]) == 4
    assert dm.label_set.name == "celebamask_hq"
    with pytest.raises(KeyError, match="Did you mean"):
        FaceParsingDataModule("synthetik")


def test_collate_keeps_ragged_entries():
    items = [{"image": torch.zeros(3, 4, 4), "landmarks": torch.zeros(n, 2), "meta": {"i": n}} for n in (5, 6)]
    out = collate(items)
    assert out["image"].shape == (2, 3, 4, 4) and isinstance(out["landmarks"], list) and out["meta"][1]["i"] == 6


def test_synthetic_cache_returns_same_faces_and_is_not_mutated():
    plain = faceparse.build_dataset("synthetic", split="val", num_samples=4, image_size=48)
    cached = faceparse.build_dataset("synthetic", split="val", num_samples=4, image_size=48, cache=True)
    first = cached.load_raw(2)
    first["mask"][:] = 0  # callers may modify what they get
    np.testing.assert_array_equal(cached.load_raw(2)["mask"], plain.load_raw(2)["mask"])
    np.testing.assert_array_equal(cached.load_raw(2)["image"], plain.load_raw(2)["image"])
