"""5-point alignment with its inverse, cross-dataset evaluation, and `faceparse datasets check`."""

from __future__ import annotations

import math

import fixture_trees as fx
import numpy as np
import pytest
import torch
from torch import nn

from faceparse.cli import main as cli_main
from faceparse.data.align import (
    TEMPLATE_5,
    alignment_matrix,
    apply_affine,
    similarity_transform,
    warp_to_original,
)
from faceparse.data.lapa import LaPaDataset, lapa_five_points
from faceparse.evaluate import evaluate
from faceparse.labels import get_label_set

S = 96


@pytest.fixture(scope="module")
def lapa(tmp_path_factory):
    return fx.write_lapa(tmp_path_factory.mktemp("lapa_eval"), size=S)


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, size=(5, 2))
    ang, scale, t = 0.3, 1.7, np.array([5.0, -3.0])
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    dst = src @ (scale * rot).T + t
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)
    # template points map exactly onto the template (pixel centres at integer coordinates)
    pts = TEMPLATE_5 * 200 + 13
    m = alignment_matrix(pts, 64)
    np.testing.assert_allclose(apply_affine(pts, m), TEMPLATE_5 * 64 - 0.5, atol=1e-9)


def test_aligned_sample_inverse_maps_back(lapa):
    plain = LaPaDataset(lapa["root"], split="train", image_size=None)
    ds = LaPaDataset(lapa["root"], split="train", image_size=None, align=True, align_size=128, align_scale=1.3)
    raw0, raw = plain.load_raw(0), ds.load_raw(0)
    meta = raw["meta"]
    assert raw["image"].shape == (128, 128, 3) and raw["mask"].shape == (128, 128)
    assert meta["orig_size"] == (S, S)
    inv = np.asarray(meta["align_inverse"])
    # landmarks go back exactly through the stored inverse
    np.testing.assert_allclose(apply_affine(raw["landmarks"], inv), raw0["landmarks"], atol=1e-3)
    # the 5 points are near the template (least-squares fit of a similarity)
    five = lapa_five_points(raw["landmarks"])
    c = np.array([0.5, 0.5])
    np.testing.assert_allclose(five, ((TEMPLATE_5 - c) / 1.3 + c) * 128 - 0.5, atol=3.0)
    # the aligned label map warped back agrees with the original one inside the crop
    back = warp_to_original(torch.from_numpy(raw["mask"].astype(np.int64)), inv, (S, S)).numpy()
    inside = back != 255
    assert inside.mean() > 0.8
    assert (back[inside] == raw0["mask"][inside]).mean() > 0.97
    # logits too, and from a prediction at another resolution than align_size
    onehot = torch.nn.functional.one_hot(torch.from_numpy(raw["mask"].astype(np.int64)), 11).permute(2, 0, 1).float()
    small = torch.nn.functional.interpolate(onehot[None], size=(64, 64), mode="bilinear", align_corners=False)[0]
    lab = warp_to_original(small, inv, (S, S), align_size=128).argmax(0).numpy()
    assert (lab[inside] == raw0["mask"][inside]).mean() > 0.93


class Oracle(nn.Module):
    """Returns one-hot logits of pre-computed label maps, in order (a perfect model of a dataset)."""

    def __init__(self, masks: list[torch.Tensor], label_set: str) -> None:
        super().__init__()
        self.masks = masks
        self.label_set = get_label_set(label_set)
        self.i = 0

    def forward(self, x):
        out = []
        for _ in range(len(x)):
            m = self.masks[self.i % len(self.masks)]
            self.i += 1
            out.append(
                torch.nn.functional.one_hot(m.clamp(max=self.label_set.num_classes - 1), self.label_set.num_classes)
                .permute(2, 0, 1)
                .float()
            )
        return torch.stack(out) * 10


def _f1(gt: np.ndarray, pred: np.ndarray, c: int) -> float:
    valid = gt != 255
    g, p = gt[valid] == c, pred[valid] == c
    denom = g.sum() + p.sum()
    return float("nan") if denom == 0 else 2 * (g & p).sum() / denom


def test_cross_dataset_evaluation_celeb_model_on_lapa(lapa):
    ds = LaPaDataset(lapa["root"], split="val", image_size=48)
    lapa_ls, celeb = get_label_set("lapa"), get_label_set("celebamask_hq")
    gts = [ds[i]["mask"] for i in range(len(ds))]
    to_celeb = torch.as_tensor(lapa_ls.mapping_to(celeb))
    # a perfect CelebAMask-HQ model: every LaPa class is predicted as its CelebAMask-HQ counterpart
    res = evaluate(Oracle([to_celeb[g] for g in gts], "celebamask_hq"), ds, batch_size=2)
    assert res["label_set"] == "lapa" and res["num_images"] == 2
    assert res["mean_f1"] == pytest.approx(1.0) and res["pixel_acc"] == pytest.approx(1.0)
    assert res["mapping"]["nose"] == "nose" and res["mapping"]["neck"] == "background"
    # a model that calls skin "neck": neck has no LaPa class -> background
    neck = celeb.index("neck")
    preds = []
    for g in gts:
        p = to_celeb[g].clone()
        p[g == lapa_ls.index("skin")] = neck
        preds.append(p)
    res = evaluate(Oracle(preds, "celebamask_hq"), ds, batch_size=1)
    gt_all = torch.cat([g.flatten() for g in gts]).numpy()
    lut = torch.as_tensor(celeb.mapping_to(lapa_ls))
    pred_all = torch.cat([lut[p].flatten() for p in preds]).numpy()
    assert res["f1"]["skin"] == 0.0
    assert res["f1"]["background"] == pytest.approx(_f1(gt_all, pred_all, 0), abs=1e-6)
    assert res["f1"]["hair"] == pytest.approx(1.0)
    expected_mean = np.nanmean([_f1(gt_all, pred_all, c) for c in range(1, 11)])
    assert res["mean_f1"] == pytest.approx(expected_mean, abs=1e-6)
    # unmapped="ignore": the neck pixels are left out of the scores
    res = evaluate(Oracle(preds, "celebamask_hq"), ds, batch_size=2, unmapped="ignore")
    assert math.isnan(res["f1"]["skin"]) and res["mean_f1"] == pytest.approx(1.0)


def test_evaluation_at_original_resolution_through_alignment(lapa):
    ds = LaPaDataset(lapa["root"], split="test", image_size=128, align=True, align_scale=1.3)
    gts = [ds[i]["mask"] for i in range(len(ds))]
    res = evaluate(Oracle(gts, "lapa"), ds, batch_size=2, original_resolution=True)
    assert res["num_images"] == 2
    # scored on the 96 x 96 originals: small losses from resampling and pixels outside the crop
    assert res["mean_f1"] > 0.95
    assert res["f1"]["left_eye"] > 0.93 and res["f1"]["nose"] > 0.93


def test_evaluation_flip_tta_keeps_sides(lapa):
    ds = LaPaDataset(lapa["root"], split="val", image_size=48)
    gts = [ds[i]["mask"] for i in range(len(ds))]

    class Mirror(Oracle):
        # a model that sees its input: on the flipped pass it returns the mirrored label map, as a
        # real model would (left eye pixels now on the right side, labelled left eye)
        def forward(self, x):
            flipped = bool(getattr(self, "_next_flipped", False))
            self._next_flipped = not flipped
            out = super().forward(x) if not flipped else self._mirror(x)
            return out

        def _mirror(self, x):
            self.i -= len(x)
            logits = super().forward(x)
            return logits.flip(-1)[:, torch.as_tensor(self.label_set.flip_permutation)]

    res = evaluate(Mirror(gts, "lapa"), ds, batch_size=2, flip_tta=True)
    assert res["mean_f1"] == pytest.approx(1.0)


def test_datasets_check_command(lapa, tmp_path, capsys):
    assert cli_main(["datasets", "check", str(lapa["root"]), "--dataset", "lapa"]) == 0
    out = capsys.readouterr().out
    assert "faces per split: train 3, val 2, test 2" in out and "0 problem(s)" in out
    assert "left_eye" in out
    # a broken copy: three different problems, all listed
    import shutil

    import cv2

    root = tmp_path / "LaPa"
    shutil.copytree(lapa["root"], root)
    names = sorted(p.stem for p in (root / "train" / "images").glob("*.jpg"))
    (root / "val" / "images" / sorted(p.name for p in (root / "val" / "images").glob("*.jpg"))[0]).unlink()
    cv2.imwrite(str(root / "train" / "labels" / f"{names[0]}.png"), np.zeros((5, 5), np.uint8))
    m = cv2.imread(str(root / "train" / "labels" / f"{names[1]}.png"), cv2.IMREAD_GRAYSCALE)
    m[0, 0] = 77
    cv2.imwrite(str(root / "train" / "labels" / f"{names[1]}.png"), m)
    assert cli_main(["datasets", "check", str(root), "--dataset", "lapa"]) == 2
    cap = capsys.readouterr()
    assert "3 problem(s)" in cap.out
    assert f"{names[0]}.png" in cap.out and "[77]" in cap.out and "missing image" in cap.out
    assert "error:" in cap.err
    # a missing root is reported, not raised
    assert cli_main(["datasets", "check", str(tmp_path / "nope"), "--dataset", "part_labels"]) == 2
    assert "does not exist" in capsys.readouterr().out


def test_every_adapter_through_datamodule_and_yaml(tmp_path):
    import yaml

    from faceparse.data import FaceParsingDataModule
    from faceparse.data.synthetic import SyntheticFaces

    SyntheticFaces(split="train", num_samples=10, image_size=32).write_celebamask_hq(tmp_path / "celeb", 10)
    fx.write_lapa(tmp_path / "lapa", size=48)
    fx.write_helen_smith(tmp_path / "helen", size=48)
    fx.write_cofw(tmp_path / "cofw", size=48)
    fx.write_part_labels(tmp_path / "parts", size=48)
    cases = {
        "celebamask_hq": ({"root": str(tmp_path / "celeb"), "progress": False}, "train", 19),
        "lapa": ({"root": str(tmp_path / "lapa")}, "train", 11),
        "helen": ({"root": str(tmp_path / "helen")}, "train", 11),
        "cofw": ({"root": str(tmp_path / "cofw")}, "test", 2),
        "part_labels": ({"root": str(tmp_path / "parts")}, "train", 3),
    }
    for name, (kwargs, split, k) in cases.items():
        text = yaml.safe_dump(
            {
                "data": {
                    "class_path": "faceparse.data.FaceParsingDataModule",
                    "init_args": {
                        "dataset": name,
                        "dataset_kwargs": kwargs,
                        "train_split": split,
                        "val_split": "test",  # COFW has no val split
                        "image_size": 32,
                        "batch_size": 2,
                    },
                }
            }
        )
        init = yaml.safe_load(text)["data"]["init_args"]
        dm = FaceParsingDataModule(**init)
        batch = next(iter(dm.train_dataloader()))
        assert tuple(batch["image"].shape) == (2, 3, 32, 32), name
        assert dm.label_set.num_classes == k, name
        assert int(batch["mask"][batch["mask"] != 255].max()) < k


def test_evaluate_command_on_saved_model(lapa, tmp_path, capsys):
    import faceparse

    model = faceparse.build_model("unet", encoder="resnet18", label_set="celebamask_hq")
    model.save_pretrained(tmp_path / "m")
    rc = cli_main(
        ["evaluate", "--model", str(tmp_path / "m"), "--dataset", "lapa", "--root", str(lapa["root"]), "--split", "val",
         "--image-size", "64"]
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 faces of lapa val" in out and "'lapa' label set" in out and "| nose |" in out
