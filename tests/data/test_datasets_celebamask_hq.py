"""CelebAMask-HQ adapter: real layout, merge order, splits, label cache, pre-merged folders."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import faceparse
from faceparse.data.celebamask_hq import CelebAMaskHQ, read_split_ids
from faceparse.data.synthetic import SyntheticFaces
from faceparse.errors import FaceParseError
from faceparse.labels import get_label_set

N = 10
SIZE = 32


@pytest.fixture(scope="module")
def celeb_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeb") / "CelebAMask-HQ"
    syn = SyntheticFaces(split="train", num_samples=N, image_size=SIZE, seed=3)
    syn.write_celebamask_hq(root, N)
    masks = [syn.load_raw(i)["mask"] for i in range(N)]
    return root, masks


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".faceparse_cache"))
    return dst


def test_registered_and_split_sizes(celeb_tree, tmp_path):
    root, _ = celeb_tree
    assert "celebamask_hq" in faceparse.list_datasets()
    sizes = {
        s: len(CelebAMaskHQ(root, split=s, cache_dir=str(tmp_path / "c"), progress=False))
        for s in ("train", "val", "test", "all")
    }
    assert sizes == {"train": 8, "val": 1, "test": 1, "all": 10}


def test_split_boundaries(tmp_path):
    f = tmp_path / "CelebA-HQ-to-CelebA-mapping.txt"
    f.write_text("idx orig_idx orig_file\n0 162770 a.jpg\n1 162771 b.jpg\n2 182637 c.jpg\n3 182638 d.jpg\n4 5 e.jpg\n")
    assert read_split_ids(f, "train") == [0, 4]
    assert read_split_ids(f, "val") == [1, 2]
    assert read_split_ids(f, "test") == [3]


def test_merged_labels_match_source(celeb_tree, tmp_path):
    root, masks = celeb_tree
    ds = CelebAMaskHQ(root, split="all", image_size=SIZE, cache_dir=str(tmp_path / "c"), progress=False)
    for j in range(len(ds)):
        raw = ds.load_raw(j)
        i = raw["meta"]["id"]
        np.testing.assert_array_equal(raw["mask"], masks[i])
        assert raw["image"].shape == (SIZE, SIZE, 3)  # 2x image brought to the label resolution
    s = ds[0]
    assert s["mask"].dtype.__str__() == "torch.int64" and tuple(s["image"].shape) == (3, SIZE, SIZE)
    assert s["labels"].shape[0] == 19


def _write_face(root: Path, i: int, parts: dict[str, np.ndarray], size: int = 16, orig_idx: int = 1) -> None:
    (root / "CelebA-HQ-img").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "CelebA-HQ-img" / f"{i}.jpg"), np.full((2 * size, 2 * size, 3), 128, np.uint8))
    folder = root / "CelebAMask-HQ-mask-anno" / str(i // 2000)
    folder.mkdir(parents=True, exist_ok=True)
    for name, m in parts.items():
        cv2.imwrite(str(folder / f"{i:05d}_{name}.png"), m.astype(np.uint8) * 255)
    mp = root / "CelebA-HQ-to-CelebA-mapping.txt"
    lines = mp.read_text().splitlines() if mp.exists() else ["idx orig_idx orig_file"]
    lines.append(f"{i} {orig_idx} x.jpg")
    mp.write_text("\n".join(lines) + "\n")


def test_overwrite_order_default_and_bisenet(tmp_path):
    root = tmp_path / "ov"
    z = np.zeros((16, 16), bool)
    neck, skin, hair, hat, nose = z.copy(), z.copy(), z.copy(), z.copy(), z.copy()
    neck[8:, :] = True
    skin[4:12, 4:12] = True  # overlaps neck on rows 8..11
    hair[:6, :] = True  # overlaps skin on rows 4..5
    hat[:3, :8] = True  # overlaps hair
    nose[6:9, 7:9] = True  # inside skin
    _write_face(root, 2001, {"neck": neck, "skin": skin, "hair": hair, "hat": hat, "nose": nose}, orig_idx=7)
    d = CelebAMaskHQ(root, split="all", progress=False)
    b = CelebAMaskHQ(root, split="all", label_order="celebamask_hq_bisenet", progress=False)
    md, mb = d.load_raw(0)["mask"], b.load_raw(0)["mask"]
    ld, lb = get_label_set("celebamask_hq"), get_label_set("celebamask_hq_bisenet")
    # neck & skin overlap: SegFace/FaRL order writes skin (2) after neck (1); BiSeNet writes neck (14) last
    assert md[10, 6] == ld.index("skin") == 2
    assert mb[10, 6] == lb.index("neck") == 14
    # hair over skin in both orders; hat over hair in both
    assert md[5, 6] == ld.index("hair") and mb[5, 6] == lb.index("hair")
    assert md[1, 2] == ld.index("hat") == 16 and mb[1, 2] == lb.index("hat") == 18
    assert md[7, 7] == ld.index("nose") == 10 and mb[7, 7] == lb.index("nose") == 10
    assert md[14, 0] == 1 and md[15, 15] == 1 and md[12, 13] == 1
    assert md[6, 0] == 0 and mb[6, 0] == 0
    # the cache folders are per label order
    assert (root / ".faceparse_cache" / "celebamask_hq" / "2001.png").is_file()
    assert (root / ".faceparse_cache" / "celebamask_hq_bisenet" / "2001.png").is_file()


def test_cache_reuse_and_rebuild_on_change(celeb_tree, tmp_path):
    root = _copy_tree(celeb_tree[0], tmp_path / "CelebAMask-HQ")
    cache = tmp_path / "labelcache"
    ds = CelebAMaskHQ(root, split="train", cache_dir=str(cache), progress=False)
    assert ds.cache_stats == {"merged": 8, "reused": 0}
    assert (cache / "manifest.json").is_file() and len(list(cache.glob("*.png"))) == 8
    ds2 = CelebAMaskHQ(root, split="train", cache_dir=str(cache), progress=False)
    assert ds2.cache_stats == {"merged": 0, "reused": 8}
    # change one part file of face 0: new content and a new mtime -> only that face is merged again
    part = root / "CelebAMask-HQ-mask-anno" / "0" / "00000_skin.png"
    m = cv2.imread(str(part), cv2.IMREAD_GRAYSCALE)
    m[:, :] = 255
    cv2.imwrite(str(part), m)
    st = part.stat()
    os.utime(part, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    # add a part that was absent in face 1 -> face 1 rebuilt too
    new = root / "CelebAMask-HQ-mask-anno" / "0" / "00001_neck_l.png"
    if new.exists():
        new.unlink()
    z = np.zeros((SIZE, SIZE), np.uint8)
    z[-2:, :4] = 255
    cv2.imwrite(str(new), z)
    ds3 = CelebAMaskHQ(root, split="train", cache_dir=str(cache), progress=False)
    assert ds3.cache_stats == {"merged": 2, "reused": 6}
    raw0 = ds3.load_raw(ds3.ids.index(0))["mask"]
    assert (raw0 >= get_label_set("celebamask_hq").index("skin")).all()  # skin everywhere, later parts on top
    raw1 = ds3.load_raw(ds3.ids.index(1))["mask"]
    assert (raw1[-2:, :4] == get_label_set("celebamask_hq").index("necklace")).all()


def test_cached_equals_uncached(celeb_tree, tmp_path):
    root, _ = celeb_tree
    a = CelebAMaskHQ(root, split="train", cache_dir=str(tmp_path / "c"), progress=False)
    b = CelebAMaskHQ(root, split="train", cache=False)
    for i in range(len(a)):
        np.testing.assert_array_equal(a.load_raw(i)["mask"], b.load_raw(i)["mask"])


def test_default_cache_location(celeb_tree, tmp_path):
    root = _copy_tree(celeb_tree[0], tmp_path / "CelebAMask-HQ")
    CelebAMaskHQ(root, split="val", progress=False)
    assert (root / ".faceparse_cache" / "celebamask_hq" / "manifest.json").is_file()


def test_premerged_bisenet_folder(celeb_tree, tmp_path):
    src, masks = celeb_tree
    root = tmp_path / "merged"
    (root / "mask").mkdir(parents=True)
    import shutil

    shutil.copytree(src / "CelebA-HQ-img", root / "CelebA-HQ-img")
    shutil.copy(src / "CelebA-HQ-to-CelebA-mapping.txt", root)
    lut = get_label_set("celebamask_hq").mapping_to(get_label_set("celebamask_hq_bisenet"))
    for i, m in enumerate(masks):
        cv2.imwrite(str(root / "mask" / f"{i}.png"), lut[m].astype(np.uint8))
    ds = CelebAMaskHQ(root, split="all")  # auto -> merged layout, remapped to the default order
    assert ds.layout == "merged"
    for j in range(len(ds)):
        raw = ds.load_raw(j)
        np.testing.assert_array_equal(raw["mask"], masks[raw["meta"]["id"]])
    bis = CelebAMaskHQ(root, split="all", label_order="celebamask_hq_bisenet")
    np.testing.assert_array_equal(bis.load_raw(0)["mask"], lut[masks[bis.ids[0]]])


def test_datamodule_and_flip(celeb_tree, tmp_path):
    from faceparse.data import FaceParsingDataModule, flip_sample

    root, _ = celeb_tree
    dm = FaceParsingDataModule(
        dataset="celebamask_hq",
        dataset_kwargs={"root": str(root), "cache_dir": str(tmp_path / "c"), "progress": False},
        image_size=SIZE,
        batch_size=2,
    )
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch["image"].shape) == (2, 3, SIZE, SIZE) and tuple(batch["mask"].shape) == (2, SIZE, SIZE)
    ds = dm.build("train")
    raw = ds.load_raw(0)
    ls = ds.label_set
    flipped = flip_sample(raw, ls.flip_lut, None)
    m, f = raw["mask"], flipped["mask"]
    le, re_ = ls.index("left_eye"), ls.index("right_eye")
    ys, xs = np.nonzero(m == le)
    assert len(ys) and (f[ys, SIZE - 1 - xs] == re_).all()


def test_cache_speed_smoke(celeb_tree, tmp_path):
    """Not a benchmark (see benchmarks/loaders.py): cached reads must not be slower than merging."""
    root, _ = celeb_tree
    a = CelebAMaskHQ(root, split="train", cache_dir=str(tmp_path / "c"), progress=False)
    b = CelebAMaskHQ(root, split="train", cache=False)

    def rate(ds):
        t = time.perf_counter()
        for _ in range(3):
            for i in range(len(ds)):
                ds.load_mask(i)
        return time.perf_counter() - t

    assert rate(a) < rate(b) * 1.5


def test_errors(celeb_tree, tmp_path):
    root = _copy_tree(celeb_tree[0], tmp_path / "CelebAMask-HQ")
    with pytest.raises(FaceParseError, match="does not exist"):
        CelebAMaskHQ(tmp_path / "nope")
    # missing image for a listed face
    (root / "CelebA-HQ-img" / "3.jpg").unlink()
    with pytest.raises(FaceParseError, match=r"3\.jpg"):
        CelebAMaskHQ(root, split="train", cache=False)
    # part of the wrong size
    root2 = _copy_tree(celeb_tree[0], tmp_path / "C2")
    part = root2 / "CelebAMask-HQ-mask-anno" / "0" / "00002_hair.png"
    cv2.imwrite(str(part), np.zeros((SIZE // 2, SIZE // 2), np.uint8))
    with pytest.raises(FaceParseError, match=r"00002_hair\.png.*expected 32x32"):
        CelebAMaskHQ(root2, split="train", progress=False)
    # truncated image
    root3 = _copy_tree(celeb_tree[0], tmp_path / "C3")
    img = root3 / "CelebA-HQ-img" / "0.jpg"
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    ds = CelebAMaskHQ(root3, split="train", cache=False)
    with pytest.raises(FaceParseError, match=r"0\.jpg"):
        ds.load_raw(ds.ids.index(0))
    # missing split file
    (root3 / "CelebA-HQ-to-CelebA-mapping.txt").unlink()
    with pytest.raises(FaceParseError, match="CelebA-HQ-to-CelebA-mapping.txt"):
        CelebAMaskHQ(root3)


def test_check_command_lists_celebamask_problems(celeb_tree, tmp_path, capsys):
    from faceparse.cli import main

    root = _copy_tree(celeb_tree[0], tmp_path / "CelebAMask-HQ")
    assert main(["datasets", "check", str(root), "--dataset", "celebamask_hq"]) == 0
    assert "faces per split: train 8, val 1, test 1" in capsys.readouterr().out
    (root / "CelebA-HQ-img" / "5.jpg").unlink()
    cv2.imwrite(str(root / "CelebAMask-HQ-mask-anno" / "0" / "00001_nose.png"), np.zeros((3, 3), np.uint8))
    assert main(["datasets", "check", str(root), "--dataset", "celebamask_hq"]) == 2
    out = capsys.readouterr().out
    assert "2 problem(s)" in out and "5.jpg" in out and "00001_nose.png" in out
