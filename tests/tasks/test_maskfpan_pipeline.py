"""Mask-FPAN's documented command sequence (docs/models/maskfpan.md, "Reproduce") on fixture trees.

Each stage runs by its ``faceparse`` command with tiny overrides, in a temporary working folder:
1. ``faceparse fit --config maskfpan_lom_cofw``            -> runs/maskfpan_lom_cofw/model (LOM)
2. ``faceparse fit --config maskfpan_dom_celebamask_hq``   -> runs/maskfpan_dom_celebamask_hq/model (DOM)
3. ``faceparse fit --config maskfpan_chain_celebamask_hq`` -> runs/maskfpan_chain_celebamask_hq/model,
   reading the LOM and DOM folders of stages 1 and 2
4. ``faceparse test --config maskfpan_chain_celebamask_hq --ckpt_path runs/.../checkpoints/last.ckpt``
   -> Table I columns in metrics.csv
on a COFW tree (tests/fixture_trees.py) and a CelebAMask-HQ tree (SyntheticFaces.write_celebamask_hq).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import fixture_trees as fx
import pytest
import torch
import torch.nn.functional as F
import yaml

import faceparse
from faceparse.cli import CONFIG_DIR, main
from faceparse.data.synthetic import SyntheticFaces
from faceparse.errors import FaceParseError, MissingWeightsError
from faceparse.models.maskfpan.deocclusion import DeOcclusionNet
from faceparse.models.maskfpan.landmarks import LandmarkOcclusionNet

TRAINER = [
    "--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
    "--trainer.devices", "1", "--trainer.precision", "32", "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false", "--trainer.limit_val_batches", "1",
    "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2",
]  # fmt: skip
QUIET = ["--trainer.logger", "false", "--trainer.enable_checkpointing", "false"]
LOM_DIR = Path("runs/maskfpan_lom_cofw/model")
DOM_DIR = Path("runs/maskfpan_dom_celebamask_hq/model")
SEG_DIR = Path("runs/maskfpan_chain_celebamask_hq/model")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Run stages 1-4 once; yield the working folder."""
    work = tmp_path_factory.mktemp("maskfpan")
    fx.write_cofw(work / "COFW", n_train=4, n_test=2, size=64)
    SyntheticFaces(split="train", num_samples=10, image_size=32, seed=3).write_celebamask_hq(work / "CelebAMask-HQ")
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    try:
        lom = ["fit", "--config", "maskfpan_lom_cofw", "--data.init_args.dataset_kwargs.root", "COFW"]
        lom += ["--data.init_args.image_size", "64", "--model.init_args.model_kwargs.input_size", "64"]
        assert main([*lom, *TRAINER, *QUIET]) == 0
        dom = ["fit", "--config", "maskfpan_dom_celebamask_hq", "--data.init_args.dataset_kwargs.root", "CelebAMask-HQ"]
        dom += ["--data.init_args.image_size", "32"]
        dom += ["--model.init_args.model_kwargs", '{"image_size": 16, "grids": [4, 2], "embed": 8, "hidden": 8}']
        assert main([*dom, *TRAINER, *QUIET]) == 0
        seg = ["--config", "maskfpan_chain_celebamask_hq", "--data.init_args.dataset_kwargs.root", "CelebAMask-HQ"]
        seg += ["--data.init_args.image_size", "64", "--model.init_args.model_kwargs.input_size", "64"]
        assert main(["fit", *seg, *TRAINER]) == 0  # CSV logger and checkpoint kept for stage 4
        ckpt = "runs/maskfpan_chain_celebamask_hq/checkpoints/last.ckpt"  # the path the docs name
        assert main(["test", *seg, *TRAINER, "--ckpt_path", ckpt]) == 0
        yield work
    finally:
        mp.undo()


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def test_stage1_writes_a_loadable_lom(pipeline):
    folder = pipeline / LOM_DIR
    assert (folder / "model.safetensors").is_file()
    cfg = _config(folder)
    assert cfg["class"] == "faceparse.models.maskfpan.landmarks.LandmarkOcclusionNet"
    assert cfg["kwargs"]["num_landmarks"] == 29 and cfg["kwargs"]["input_size"] == 64  # an int, not "64"
    lom = faceparse.load_model(folder)
    assert isinstance(lom, LandmarkOcclusionNet) and not lom.training
    pred = lom.predict(torch.rand(1, 3, 64, 64))
    assert pred["landmarks"].shape == (1, 29, 2) and pred["landmark_occluded"].shape == (1, 29)
    assert pred["pose"].shape == (1, 3)


def test_stage2_writes_a_loadable_dom(pipeline):
    cfg = _config(pipeline / DOM_DIR)
    assert cfg["class"] == "faceparse.models.maskfpan.deocclusion.DeOcclusionNet"
    assert cfg["kwargs"] == {"image_size": 16, "grids": [4, 2], "embed": 8, "hidden": 8, "skip": True}
    dom = faceparse.load_model(pipeline / DOM_DIR)
    assert isinstance(dom, DeOcclusionNet)
    assert dom.predict_occlusion(torch.rand(2, 3, 40, 40)).shape == (2, 40, 40)


def test_stage3_writes_the_segmentation_model(pipeline):
    seg = faceparse.load_model(pipeline / SEG_DIR)
    assert seg.registry_name == "rtformer_slim"
    assert seg.label_set.name == "celebamask_hq_occ" and seg.num_classes == 20
    assert seg(torch.rand(1, 3, 64, 64)).shape == (1, 20, 64, 64)


def test_stage3_reads_the_lom_and_dom_folders(pipeline):
    """The chain's batch equals an independent computation from the two saved folders."""
    from faceparse.images import IMAGENET_MEAN, IMAGENET_STD
    from faceparse.tasks.maskfpan import MaskFPANTask

    task = MaskFPANTask(
        model="rtformer_slim",
        model_kwargs={"input_size": 64},
        lom=str(pipeline / LOM_DIR),
        dom=str(pipeline / DOM_DIR),
    )
    lom, dom = faceparse.load_model(pipeline / LOM_DIR), faceparse.load_model(pipeline / DOM_DIR)
    torch.manual_seed(1)
    image = torch.randn(2, 3, 64, 64)
    mask = torch.randint(0, 19, (2, 64, 64))
    batch = {"image": image, "mask": mask, "occlusion": torch.zeros(2, 64, 64, dtype=torch.long)}
    batch["meta"] = [{"occlusion_labelled": True}, {"occlusion_labelled": False}]
    out = task.chain(batch)
    # LOM: prediction at its input size (64 here, the data's size too), landmarks in image pixels
    ref = lom.predict(image)
    torch.testing.assert_close(out["landmarks"], ref["landmarks"])
    assert torch.equal(out["landmark_occluded"], ref["landmark_occluded"])
    torch.testing.assert_close(out["pose"], ref["pose"])
    # DOM: occlusion of the un-normalised image; only the unlabelled face is relabelled
    x01 = (image * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)).clamp(
        0, 1
    )
    p = F.interpolate(dom(x01)["occlusion_prob"], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    occ = (p > 0.5).long()
    assert torch.equal(out["occlusion"][0], torch.zeros(64, 64, dtype=torch.long))
    assert torch.equal(out["occlusion"][1], occ[1])
    assert torch.equal(out["mask"][0], mask[0])
    assert torch.equal(out["mask"][1], torch.where(occ[1] > 0, torch.tensor(19), mask[1]))
    assert torch.equal(batch["mask"], mask)  # the caller's batch is not modified


def test_stage4_reports_table1_columns(pipeline):
    files = sorted(Path(pipeline / "runs/maskfpan_chain_celebamask_hq").glob("version_*/metrics.csv"))
    rows = [r for f in files for r in csv.DictReader(f.open()) if r.get("test/miou")]
    assert len(rows) == 1  # written by the `faceparse test` run (its own version folder)
    test_row = rows[0]
    for key in ("test/mean_f1", "test/miou", "test/table1_eyes", "test/table1_mouth"):
        assert 0.0 <= float(test_row[key]) <= 1.0, key


def test_chain_errors_name_the_folder_and_class(pipeline, tmp_path):
    from faceparse.tasks.maskfpan import MaskFPANTask

    with pytest.raises(MissingWeightsError, match="no_such_lom"):
        MaskFPANTask(model="rtformer_slim", lom=str(tmp_path / "no_such_lom"))
    with pytest.raises(FaceParseError, match="lom= must be a folder of a saved LandmarkOcclusionNet"):
        MaskFPANTask(model="rtformer_slim", lom=str(pipeline / DOM_DIR))
    with pytest.raises(FaceParseError, match="lacks"):
        MaskFPANTask(model="rtformer_slim", label_set="celebamask_hq", dom=str(pipeline / DOM_DIR))


def test_dom_task_needs_occlusion_pairs():
    from faceparse.tasks.maskfpan import DeOcclusionTask

    task = DeOcclusionTask(model_kwargs={"image_size": 16, "grids": [4], "embed": 8, "hidden": 8})
    with pytest.raises(FaceParseError, match="return_clean: true"):
        task.training_step({"image": torch.rand(1, 3, 16, 16), "occlusion": torch.zeros(1, 16, 16)}, 0)


def test_occluded_pairs_clean_is_transformed_like_image():
    """``return_clean``: away from the occluder, clean == image exactly, through random flips and affines
    (colour jitter is off: its contrast step mixes in each image's own mean, which the occluder shifts)."""
    from faceparse.data.transforms import build_transforms

    geometric = build_transforms(48, train=True, color_jitter=0.0)
    ds = faceparse.build_dataset(
        "occluded",
        base="synthetic",
        split="train",
        num_samples=3,
        image_size=48,
        return_clean=True,
        transform=geometric,
        blur=0.0,  # hard occluder edges: no faint alpha tail outside the occlusion mask
    )
    for i in range(3):
        s = ds[(i, 1234 + i)]
        assert s["clean"].shape == s["image"].shape == (3, 48, 48)
        free = s["occlusion"] == 0
        assert free.float().mean() > 0.3
        # bilinear resampling blends across the occluder's edge: compare pixels away from it
        far = F.max_pool2d(s["occlusion"][None, None].float(), 5, 1, 2)[0, 0] == 0
        torch.testing.assert_close(s["clean"][:, far], s["image"][:, far], atol=1e-5, rtol=0)
        assert not torch.allclose(s["clean"][:, ~free], s["image"][:, ~free])


def test_chain_configs_read_what_the_stage_configs_write():
    """Stage 3's lom/dom paths are the SavePretrained folders of the stage configs (both data variants)."""

    def load(name: str) -> dict:
        return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())

    def writes(name: str) -> str:
        return load(name)["trainer"]["callbacks"][0]["init_args"]["dirpath"]

    for chain, lom, dom in (
        ("maskfpan_chain_synthetic", "maskfpan_lom_synthetic", "maskfpan_dom_synthetic"),
        ("maskfpan_chain_celebamask_hq", "maskfpan_lom_cofw", "maskfpan_dom_celebamask_hq"),
    ):
        args = load(chain)["model"]["init_args"]
        assert args["lom"] == writes(lom) and args["dom"] == writes(dom)
        assert load(dom)["data"]["init_args"]["dataset_kwargs"]["return_clean"] is True


def test_unlabelled_occlusion_is_hidden_from_eq2_without_a_dom():
    """The ablation rows without a DOM must not see the true occluders of faces marked unlabelled."""
    from faceparse.tasks.maskfpan import MaskFPANTask

    task = MaskFPANTask(model="rtformer_slim", model_kwargs={"input_size": 64})
    batch = {"image": torch.zeros(2, 3, 8, 8), "mask": torch.ones(2, 8, 8, dtype=torch.long)}
    batch["occlusion"] = torch.ones(2, 8, 8, dtype=torch.long)
    batch["meta"] = [{"occlusion_labelled": True}, {"occlusion_labelled": False}]
    out = task.chain(batch)
    assert out["occlusion"][0].sum() == 64 and out["occlusion"][1].sum() == 0
    assert torch.equal(out["mask"], batch["mask"]) and "landmarks" not in out
