"""DisFaceRep's uniform training subset (data/subset.py) and ``faceparse pseudo-labels score``."""

from __future__ import annotations

import json
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

import faceparse
from faceparse.cli import main
from faceparse.data.datamodule import FaceParsingDataModule
from faceparse.data.disfacerep_pseudo_masks import score_pseudo_masks
from faceparse.data.subset import DISFACEREP_SUBSET_SIZE, SubsetDataset, subset_indices
from faceparse.errors import FaceParseError

CELEBAMASK_HQ_TRAIN = 24183  # DisFaceRep Sec. 4.1.1: 24,183 training images, 3,820 in the subset


def test_uniform_subset_of_celebamask_hq_train_has_one_image_per_bin():
    """The 3,820 indices out of 24,183: sorted, distinct, exactly one in each of the 3,820 equal-width
    bins of the split's order, at the bin's centre (exact rational reference)."""
    idx = subset_indices(CELEBAMASK_HQ_TRAIN, DISFACEREP_SUBSET_SIZE, "uniform")
    assert len(idx) == DISFACEREP_SUBSET_SIZE == 3820
    assert np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < CELEBAMASK_HQ_TRAIN
    width = Fraction(CELEBAMASK_HQ_TRAIN, DISFACEREP_SUBSET_SIZE)
    ref = [int((i + Fraction(1, 2)) * width) for i in range(DISFACEREP_SUBSET_SIZE)]  # floor of the centre
    assert idx.tolist() == ref
    bins = np.floor(idx / float(width)).astype(int)
    assert np.array_equal(np.bincount(bins, minlength=DISFACEREP_SUBSET_SIZE), np.ones(DISFACEREP_SUBSET_SIZE))
    gaps = set(np.diff(idx).tolist())
    assert gaps == {6, 7}  # 24183 / 3820 = 6.33: every gap is the floor or the ceiling


def test_random_subset_is_seeded_and_distinct():
    a, b = subset_indices(100, 10, "random", seed=1), subset_indices(100, 10, "random", seed=1)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 10
    assert not np.array_equal(a, subset_indices(100, 10, "random", seed=2))
    assert subset_indices(7, 7).tolist() == list(range(7))  # n == total: everything


@pytest.mark.parametrize(
    ("args", "match"),
    [((10, 11, "uniform"), "larger than the dataset"), ((10, 0, "uniform"), ">= 1"), ((10, 3, "even"), "uniform")],
)
def test_subset_errors(args, match):
    with pytest.raises(FaceParseError, match=match):
        subset_indices(*args)


def test_datamodule_trains_on_the_subset_only():
    dm = FaceParsingDataModule(
        dataset="synthetic",
        train_kwargs={"num_samples": 9},
        val_kwargs={"num_samples": 4},
        image_size=32,
        subset="uniform",
        subset_size=3,
    )
    train, val = dm.build("train"), dm.build("val")
    assert isinstance(train, SubsetDataset) and len(train) == 3 and len(val) == 4
    assert train.indices.tolist() == [1, 4, 7]
    full = faceparse.build_dataset("synthetic", split="train", num_samples=9, image_size=32, augment=True)
    for j, i in enumerate([1, 4, 7]):
        s, ref = train[(j, 99)], full[(i, 99)]  # the sampler's (index, seed) reaches the wrapped dataset
        assert torch.equal(s["image"], ref["image"]) and s["meta"]["name"] == f"synthetic_train_{i:06d}"
    with pytest.raises(FaceParseError, match="go together"):
        FaceParsingDataModule(dataset="synthetic", subset="uniform")


def _write_masks(folder, n, corrupt=()):
    """The true synthetic masks as pseudo masks; faces in ``corrupt`` get their nose written as skin."""
    ds = faceparse.build_dataset("synthetic", split="train", num_samples=n, image_size=32)
    folder.mkdir(parents=True, exist_ok=True)
    nose, skin = ds.label_set.index("nose"), ds.label_set.index("skin")
    preds, gts = [], []
    for i in range(n):
        raw = ds.load_raw(i)
        pred = raw["mask"].copy()
        if i in corrupt:
            pred[pred == nose] = skin
        cv2.imwrite(str(folder / f"{raw['meta']['name']}.png"), pred.astype(np.uint8))
        preds.append(pred)
        gts.append(raw["mask"])
    return ds.label_set, preds, gts


def _reference_f1(preds, gts, k, background=0):
    """Dataset-level F1 per class from pixel counts (numpy), mean over non-background classes present."""
    p, g = np.concatenate([x.ravel() for x in preds]), np.concatenate([x.ravel() for x in gts])
    valid = g != 255
    p, g = p[valid], g[valid]
    f1 = []
    for c in range(k):
        tp, np_, ng = np.sum((p == c) & (g == c)), np.sum(p == c), np.sum(g == c)
        f1.append(2 * tp / (np_ + ng) if np_ + ng else np.nan)
    f1 = np.array(f1)
    return f1, np.nanmean(np.delete(f1, background))


def test_score_matches_an_independent_f1(tmp_path):
    ls, preds, gts = _write_masks(tmp_path / "pseudo", 6, corrupt={0, 3})
    res = score_pseudo_masks(tmp_path / "pseudo", "synthetic", dataset_kwargs={"num_samples": 6}, image_size=32)
    f1, mean_f1 = _reference_f1(preds, gts, ls.num_classes)
    assert res["count"] == 6
    np.testing.assert_allclose(res["f1"].numpy(), f1, atol=1e-6)
    assert float(res["mean_f1"]) == pytest.approx(mean_f1, abs=1e-6)
    assert float(res["f1"][ls.index("nose")]) < 0.9  # the corruption is seen
    perfect = score_pseudo_masks(
        tmp_path / "pseudo", "synthetic", dataset_kwargs={"num_samples": 6}, image_size=32, subset="uniform", n=2
    )
    assert perfect["count"] == 2 and float(perfect["mean_f1"]) == 1.0  # faces 1 and 4 are uncorrupted


def test_score_command_on_the_uniform_subset(tmp_path, capsys):
    """Only the subset's masks need exist: faces 1, 4, 7 of 9 (--subset uniform --n 3)."""
    ls, preds, gts = _write_masks(tmp_path / "pseudo", 9, corrupt={4})
    for i in (0, 2, 3, 5, 6, 8):
        (tmp_path / "pseudo" / f"synthetic_train_{i:06d}.png").unlink()
    out = tmp_path / "report" / "score.md"
    argv = ["pseudo-labels", "score", "--pred", str(tmp_path / "pseudo"), "--dataset", "synthetic"]
    argv += ["--dataset-kwargs", '{"num_samples": 9}', "--image-size", "32", "--out", str(out)]
    assert main([*argv, "--subset", "uniform", "--n", "3"]) == 0
    text = capsys.readouterr().out
    _, mean_f1 = _reference_f1([preds[i] for i in (1, 4, 7)], [gts[i] for i in (1, 4, 7)], ls.num_classes)
    assert "3 pseudo masks of synthetic train (subset uniform n=3)" in text
    assert f"mean F1 {100 * mean_f1:.2f}" in text
    assert out.read_text().strip() == text.strip()
    assert main(argv) == 2  # the whole split: six masks are missing
    err = capsys.readouterr().err
    assert "6 of 9 pseudo masks are missing" in err and "synthetic_train_000000.png" in err
    assert main([*argv, "--subset", "uniform"]) == 2
    assert "go together" in capsys.readouterr().err


def test_cam_writes_only_the_subset(tmp_path):
    model = faceparse.build_model(
        "mct_vit_tiny", img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2, projector_dim=None
    )
    model.save_pretrained(tmp_path / "mct")
    argv = ["pseudo-labels", "cam", "--model", str(tmp_path / "mct"), "--out-dir", str(tmp_path / "masks")]
    argv += ["--dataset", "synthetic", "--num-samples", "9", "--image-size", "32", "--scales", "1.0", "--no-refine"]
    assert main([*argv, "--subset", "uniform", "--n", "3"]) == 0
    names = sorted(p.stem for p in (tmp_path / "masks").glob("*.png"))
    assert names == [f"synthetic_train_{i:06d}" for i in (1, 4, 7)]
    info = json.loads((tmp_path / "masks" / "pseudo_labels.json").read_text())
    assert info["subset"] == {"mode": "uniform", "n": 3, "seed": 0} and info["count"] == 3
    # the score command reads them back on the same subset
    score = ["pseudo-labels", "score", "--pred", str(tmp_path / "masks"), "--dataset", "synthetic"]
    score += ["--dataset-kwargs", '{"num_samples": 9}', "--image-size", "32", "--subset", "uniform", "--n", "3"]
    assert main(score) == 0
