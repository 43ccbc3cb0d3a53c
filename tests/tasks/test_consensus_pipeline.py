"""Structure via Consensus, "+Transf." by command (docs/models/consensus.md, "Reproduce"), on a folder of
synthetic photos and a COFW fixture tree, each stage run by its ``faceparse`` command in a temporary
working folder with a tiny network:

1. ``faceparse pseudo-labels teacher --model teacher --images photos --out pseudo/transfer``
2. ``faceparse fit --config consensus_transfer``        -> runs/consensus_transfer/model (ReduceLROnPlateau)
3. ``faceparse pseudo-labels occlusion pseudo/cofw_train --dataset cofw ...``
4. ``faceparse fit --config consensus_cofw_transfer``   -> runs/consensus_cofw_transfer/model, from stage 2
5. ``faceparse evaluate consensus --protocol cofw``

The photos are scikit-image's astronaut (the offline "auto" detector finds her face) in per-subject
folders, plus a photo without a face that every stage must skip and count.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import fixture_trees as fx
import numpy as np
import pytest
import torch
from skimage import data as skdata

import faceparse
from faceparse.cli import main
from faceparse.data.consensus_teacher import TeacherLabels
from faceparse.data.image_folder import ImageFolderFaces, crop_face, square_crop_box, subject_in_split
from faceparse.errors import FaceParseError

TRAINER = [
    "--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
    "--trainer.devices", "1", "--trainer.precision", "32", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "1", "--trainer.enable_checkpointing",
    "false", "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
    "--data.init_args.image_size", "64",
]  # fmt: skip
TINY = {"dropout": 0.2, "width": 8, "input_size": 64}


def _subjects() -> tuple[list[str], list[str]]:
    """Two subject names held out for validation at val_fraction 0.5 and two kept for training."""
    names = [f"person{i}" for i in range(40)]
    val = [n for n in names if subject_in_split(f"{n}/x.jpg", "val", 0.5)][:2]
    train = [n for n in names if subject_in_split(f"{n}/x.jpg", "train", 0.5)][:2]
    return train, val


def _write_photos(root: Path) -> list[str]:
    face = cv2.resize(skdata.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
    train, val = _subjects()
    written = []
    for i, subject in enumerate(train + val):
        img = np.clip(face.astype(np.int16) + (i * 6 - 9), 0, 255).astype(np.uint8)
        (root / subject).mkdir(parents=True)
        cv2.imwrite(str(root / subject / "photo.jpg"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        written.append(f"{subject}/photo.jpg")
    cv2.imwrite(str(root / "wall.png"), np.full((96, 128, 3), 127, np.uint8))  # no face
    return written


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("consensus")
    photos = _write_photos(work / "photos")
    torch.manual_seed(0)
    faceparse.build_model("consensus_net", width=8, input_size=64).save_pretrained(work / "teacher")
    fx.write_cofw(work / "data" / "COFW", n_train=4, n_test=2, size=64)
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    try:
        teach = ["pseudo-labels", "teacher", "--model", "teacher", "--images", "photos"]
        assert main([*teach, "--out", "pseudo/transfer", "--batch-size", "3"]) in (0, None)  # batches span photos
        lines_first = Path("pseudo/transfer/faces.jsonl").read_text()
        assert main([*teach, "--out", "pseudo/transfer"]) in (0, None)  # resume: nothing new
        assert main([*teach, "--out", "pseudo/transfer_soft", "--soft", "--limit", "2"]) in (0, None)
        pre = ["fit", "--config", "consensus_transfer", "--model.init_args.model_kwargs", json.dumps(TINY)]
        pre += ["--data.init_args.dataset_kwargs.val_fraction", "0.5"]
        assert main([*pre, *TRAINER]) == 0
        occ = ["pseudo-labels", "occlusion", "pseudo/cofw_train", "--dataset", "cofw", "--root", "data/COFW"]
        occ += ["--split", "train", "--model", "teacher", "--hull-scale", "1.1", "--kernel-scale", "0.25"]
        assert main(occ) in (0, None)
        ft = ["fit", "--config", "consensus_cofw_transfer", "--trainer.logger", "false"]
        ft += ["--model.init_args.model_kwargs", json.dumps({**TINY, "pretrained": "runs/consensus_transfer/model"})]
        assert main([*ft, *TRAINER]) == 0
        ev = ["evaluate", "consensus", "--model", "runs/consensus_cofw_transfer/model", "--dataset", "cofw"]
        assert main([*ev, "--root", "data/COFW", "--protocol", "cofw"]) in (0, None)
        yield {"work": work, "photos": photos, "lines_first": lines_first}
    finally:
        mp.undo()


def test_teacher_stage_writes_labels_index_and_skips_the_faceless_photo(pipeline):
    out = pipeline["work"] / "pseudo" / "transfer"
    records = [json.loads(line) for line in (out / "faces.jsonl").read_text().splitlines()]
    assert sorted(r["image"] for r in records) == sorted([*pipeline["photos"], "wall.png"])
    assert [r["skipped"] for r in records if r["image"] == "wall.png"] == ["no face"]
    assert (out / "faces.jsonl").read_text() == pipeline["lines_first"]  # the rerun added nothing
    info = json.loads((out / "pseudo_labels.json").read_text())
    assert (info["num_photos"], info["num_faces"], info["num_skipped"]) == (5, 4, 1)
    teacher = faceparse.load_model(pipeline["work"] / "teacher").eval()
    for rec in records:
        if "faces" not in rec:
            continue
        (face,) = rec["faces"]
        labels = cv2.imread(str(out / "labels" / f"{face['key']}.png"), cv2.IMREAD_UNCHANGED)
        assert labels.shape == (128, 128) and labels.max() < 3
        # independent recomputation: crop by hand, teacher at 64, bilinear probabilities at 128, argmax
        photo = cv2.cvtColor(cv2.imread(str(pipeline["work"] / "photos" / rec["image"])), cv2.COLOR_BGR2RGB)
        x0, y0, x1, y1 = face["crop"]
        assert x1 - x0 == pytest.approx(1.2 * max(face["box"][2] - face["box"][0], face["box"][3] - face["box"][1]))
        crop, _ = crop_face(photo, face["crop"], 128)
        x = torch.from_numpy(cv2.resize(crop, (64, 64)).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        with torch.no_grad():
            p = torch.nn.functional.interpolate(teacher(x).softmax(1), size=(128, 128), mode="bilinear")
        assert (p[0].argmax(0).numpy() == labels).mean() > 0.99


def test_soft_labels_are_float16_probabilities(pipeline):
    out = pipeline["work"] / "pseudo" / "transfer_soft"
    files = sorted((out / "labels").glob("*.npy"))
    n_faces = sum(len(json.loads(x).get("faces", [])) for x in (out / "faces.jsonl").read_text().splitlines())
    assert len(files) == n_faces >= 1 and len((out / "faces.jsonl").read_text().splitlines()) == 2  # --limit 2
    arr = np.load(files[0])
    assert arr.dtype == np.float16 and arr.shape == (3, 128, 128)
    np.testing.assert_allclose(arr.astype(np.float32).sum(0), 1.0, atol=5e-3)
    ds = TeacherLabels(str(out), label_set=None)
    assert ds[0]["mask"].shape == (128, 128) and int(ds[0]["mask"].max()) < 3


def test_teacher_labels_dataset_factorises_and_splits_by_subject(pipeline):
    out = str(pipeline["work"] / "pseudo" / "transfer")
    train = TeacherLabels(out, factorize=True, split="train", val_fraction=0.5, image_size=None)
    val = TeacherLabels(out, factorize=True, split="val", val_fraction=0.5, image_size=None)
    assert len(train) == 2 and len(val) == 2
    train_src = {e["image"].split("/")[0] for e in train.faces.entries}
    assert train_src.isdisjoint({e["image"].split("/")[0] for e in val.faces.entries})
    s = train[0]
    assert set(s) >= {"image", "mask", "blobs", "landmarks"} and s["image"].shape == (3, 128, 128)
    mask, blobs = s["mask"].numpy(), s["blobs"].numpy()
    assert ((blobs >= 2) == (mask == 2)).all() and ((blobs == 1) == (mask == 1)).all()
    plain = TeacherLabels(out, factorize=False, split="train", val_fraction=0.5, image_size=None)
    face_before = plain[0]["mask"].numpy() == 1
    assert not (mask == 1)[~face_before].any()  # face after factorisation is a subset of the teacher's face


def test_pretraining_writes_a_model_and_logs_the_plateau_monitor_and_lr(pipeline):
    work = pipeline["work"]
    model = faceparse.load_model(work / "runs" / "consensus_transfer" / "model")
    assert model.label_set.name == "cofw_occlusion" and model(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)
    (metrics,) = (work / "runs" / "consensus_transfer").glob("version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    assert any(r.get("val/rec_all") for r in rows)
    assert any(r.get("lr-Adam") for r in rows)  # LearningRateMonitor of the recipe


def test_finetuning_starts_from_the_pretrained_model(pipeline):
    work = pipeline["work"]
    pre = faceparse.load_model(work / "runs" / "consensus_transfer" / "model").state_dict()
    ft = faceparse.load_model(work / "runs" / "consensus_cofw_transfer" / "model").state_dict()
    torch.manual_seed(123)
    fresh = faceparse.build_model("consensus_net", width=8, input_size=64).state_dict()
    w = "model_enc.1.weight"
    assert (ft[w] - pre[w]).abs().max() < 1e-3  # two Adam steps at lr 1e-5
    assert (fresh[w] - pre[w]).abs().max() > 1e-2


def test_cofw_pseudo_labels_stage_wrote_blobs(pipeline):
    out = pipeline["work"] / "pseudo" / "cofw_train"
    assert len(list(out.glob("*.png"))) == 4 and len(list((out / "blobs").glob("*.png"))) == 4


def test_image_folder_dataset_and_errors(tmp_path, pipeline):
    ds = ImageFolderFaces(str(pipeline["work"] / "photos"), index=str(pipeline["work"] / "pseudo" / "transfer"))
    assert len(ds) == 4 and ds.skipped == [("wall.png", "no face")]
    s = ds[0]
    assert (s["mask"] == 255).all() and s["landmarks"].shape == (5, 2)
    assert square_crop_box([10, 20, 30, 60], 1.0) == [0.0, 20.0, 40.0, 60.0]
    with pytest.raises(FaceParseError, match="not a folder written by"):
        TeacherLabels(str(tmp_path))
    with pytest.raises(FaceParseError, match="does not exist"):
        ImageFolderFaces(str(tmp_path / "nowhere"))
    with pytest.raises(FaceParseError, match="other settings"):
        main(["--debug", "pseudo-labels", "teacher", "--model", str(pipeline["work"] / "teacher"), "--images",
              str(pipeline["work"] / "photos"), "--out", str(pipeline["work"] / "pseudo" / "transfer"),
              "--crop-scale", "1.5"])  # fmt: skip


def test_plateau_scheduler_divides_the_lr_on_a_flat_monitor_down_to_min_lr():
    from faceparse.tasks import SegmentationTask

    task = SegmentationTask(
        "consensus_net", "ce", "cofw_occlusion", {"width": 8, "input_size": 64}, lr=1e-3, optimizer="adam",
        scheduler="plateau", gamma=0.1, patience=1, min_lr=1e-5,
    )  # fmt: skip
    conf = task.configure_optimizers()
    sched = conf["lr_scheduler"]
    assert sched["monitor"] == "val/rec_all" and sched["interval"] == "epoch"
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)
    opt = conf["optimizer"]
    lrs = []
    for value in [0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]:  # mode max: 0.6 then no gain
        sched["scheduler"].step(value)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:3] == [1e-3, 1e-3, 1e-3]
    assert lrs[3] == pytest.approx(1e-4) and lrs[5] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-5)
    with pytest.raises(FaceParseError, match="scheduler"):
        SegmentationTask("consensus_net", "ce", "cofw_occlusion", {"width": 8}, scheduler="plateaux")
