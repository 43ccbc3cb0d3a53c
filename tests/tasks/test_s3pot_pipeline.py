"""S3POT by command (docs/models/s3pot.md, "Reproduce"), on synthetic occluded faces in the
``occlusion_folder`` layout, each stage run by its ``faceparse`` command in a temporary working
folder with tiny models (a tiny random diffusers inpainting pipeline, a 71k-parameter face parser,
the tiny random SAM):

1. ``faceparse references generate --images DATA/<split>/images --out DATA/<split>/references
   --inpainter INPAINTER --parser PARSER --parsing-out DATA/<split>/parsing``  (train, val, test)
2. ``faceparse fit --config s3pot_vit_b``  -> runs/s3pot_vit_b/model + checkpoints/last.ckpt
3. ``faceparse test --config s3pot_vit_b --ckpt_path ...``  (the full model); then a training-free
   Table 2 row: ``faceparse test --config s3pot_vit_b --model.init_args.prompt_selection otsu
   --model.init_args.screening false`` (no checkpoint: Lightning would restore the saved switches)
4. ``faceparse predict IMAGE --model runs/s3pot_vit_b/model --references ... --face-masks ...``
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import fixture_trees as fx
import numpy as np
import pytest
import torch
from torch import nn

import faceparse
from faceparse.cli import main
from faceparse.labels import get_label_set

pytest.importorskip("segment_anything")
pytest.importorskip("diffusers")

SPLITS = {"train": 2, "val": 1, "test": 2}
TINY_SAM = [
    "--model.init_args.model", "s3pot_tiny", "--model.init_args.model_kwargs", "{}",
]  # fmt: skip
TRAINER = [
    "--trainer.max_steps", "2", "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
    "--trainer.devices", "1", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2", "--data.init_args.image_size", "64",
    "--data.init_args.dataset_kwargs.root", "DATA",
]  # fmt: skip


def _write_data(root: Path) -> dict[str, np.ndarray]:
    """Synthetic faces with a blue box pasted on each: images/ and the true occlusion/ masks."""
    truth = {}
    rng = np.random.default_rng(0)
    for split, n in SPLITS.items():
        for i in range(n):
            img = fx.draw_face(64, seed=i + 10 * len(truth))["image"].copy()
            occ = np.zeros((64, 64), np.uint8)
            x, y = rng.integers(16, 36, size=2)
            occ[y : y + 14, x : x + 14] = 255
            img[occ > 0] = (30, 60, 200)
            for sub, arr in (("images", cv2.cvtColor(img, cv2.COLOR_RGB2BGR)), ("occlusion", occ)):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / split / sub / f"face{i}.png"), arr)
            truth[f"{split}/face{i}"] = img
    return truth


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from tiny_diffusers import build_tiny_inpainting_pipeline

    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("s3pot")
    truth = _write_data(work / "DATA")
    inpainter = build_tiny_inpainting_pipeline(work / "weights")
    # a saved faceparse parsing model that calls every pixel 'face' (head weights 0, bias on 'face')
    torch.manual_seed(0)
    parser = faceparse.build_model("consensus_net", width=8, input_size=32)
    head = [m for m in parser.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    parser.save_pretrained(work / "parser")
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    try:
        for split in SPLITS:
            gen = ["references", "generate", "--images", f"DATA/{split}/images", "--out", f"DATA/{split}/references"]
            gen += ["--inpainter", str(inpainter), "--parser", "parser", "--parsing-out", f"DATA/{split}/parsing"]
            assert main([*gen, "--mask", "occlusion", "--steps", "1", "--size", "32"]) == 0
        assert main(["fit", "--config", "s3pot_vit_b", *TINY_SAM, *TRAINER]) == 0
        ckpt = "runs/s3pot_vit_b/version_0/checkpoints/last.ckpt"
        assert main(["test", "--config", "s3pot_vit_b", *TINY_SAM, *TRAINER, "--ckpt_path", ckpt]) == 0
        ablation = ["--model.init_args.prompt_selection", "otsu", "--model.init_args.screening", "false"]
        assert main(["test", "--config", "s3pot_vit_b", *TINY_SAM, *TRAINER, *ablation]) == 0  # training-free row
        pred = ["predict", "DATA/test/images/face0.png", "DATA/test/images/face1.png", "--model"]
        pred += ["runs/s3pot_vit_b/model", "--references", "DATA/test/references", "--face-masks", "DATA/test/parsing"]
        assert main([*pred, "--out-dir", "out"]) == 0
        yield {"work": work, "truth": truth}
    finally:
        mp.undo()


def _metrics(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path)))


def test_references_stage_writes_what_the_dataset_reads(pipeline):
    from faceparse.data.s3pot import OcclusionFolder

    data = pipeline["work"] / "DATA"
    skin = get_label_set("celebamask_hq").index("skin")
    for split, n in SPLITS.items():
        rows = _metrics(data / split / "references" / "quality.csv")
        assert [r["name"] for r in rows] == [f"face{i}.png" for i in range(n)]
        assert all(0.0 <= float(r["quality"]) <= 1.0 for r in rows)
        for i in range(n):
            src = pipeline["truth"][f"{split}/face{i}"]
            ref = cv2.cvtColor(cv2.imread(str(data / split / "references" / f"face{i}_ref.png")), cv2.COLOR_BGR2RGB)
            region = cv2.imread(str(data / split / "references" / f"face{i}_inpainted.png"), 0) > 0
            occ = cv2.imread(str(data / split / "occlusion" / f"face{i}.png"), 0) > 0
            assert region[occ].all()  # the blue box is an occlusion candidate and gets repainted
            np.testing.assert_array_equal(ref[~region], src[~region])
            assert (ref[occ] != src[occ]).any(axis=-1).mean() > 0.5
            parsing = cv2.imread(str(data / split / "parsing" / f"face{i}.png"), cv2.IMREAD_UNCHANGED)
            assert (parsing == skin).all()  # the parser's 'face' everywhere -> the hull -> skin
    ds = OcclusionFolder(data, split="test", image_size=64)
    item = ds[0]
    assert set(item) >= {"image", "reference", "mask", "occlusion"} and int(item["occlusion"].sum()) == 14 * 14
    ref = cv2.cvtColor(cv2.imread(str(data / "test" / "references" / "face0_ref.png")), cv2.COLOR_BGR2RGB)
    mean, std = np.array(ds.mean), np.array(ds.std)
    want = torch.from_numpy(((ref / 255.0 - mean) / std).transpose(2, 0, 1)).float()
    assert torch.allclose(item["reference"], want, atol=1e-5)  # the dataset reads the generated reference


def test_fit_writes_the_model_folder_and_checkpoint(pipeline):
    work = pipeline["work"]
    model = faceparse.load_model(work / "runs" / "s3pot_vit_b" / "model")
    assert type(model).__name__ == "S3POT" and model.encoder_name == "tiny"
    assert (model.prompt_selection, model.feature_enhancement, model.use_screening) == ("greedy", True, True)
    state = torch.load(work / "runs/s3pot_vit_b/version_0/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    screening = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.screening.")}
    fresh = faceparse.build_model("s3pot_tiny").state_dict()
    saved = model.state_dict()
    assert all(torch.equal(saved[k], v) for k, v in screening.items())  # the folder holds the trained layer
    assert any(not torch.equal(fresh[k], saved[k]) for k in screening)  # ... which training changed
    rows = _metrics(work / "runs/s3pot_vit_b/version_0/metrics.csv")
    assert any(r.get("train/loss_epoch") for r in rows) and any(r.get("val/occlusion_iou") for r in rows)


def test_test_stage_reports_occlusion_iou_for_the_full_model_and_a_table2_row(pipeline):
    work = pipeline["work"]
    full = [r for r in _metrics(work / "runs/s3pot_vit_b/version_1/metrics.csv") if r.get("test/occlusion_iou")]
    row = [r for r in _metrics(work / "runs/s3pot_vit_b/version_2/metrics.csv") if r.get("test/occlusion_iou")]
    assert len(full) == 1 and len(row) == 1
    assert 0.0 <= float(full[0]["test/occlusion_iou"]) <= 1.0 and 0.0 <= float(row[0]["test/occlusion_iou"]) <= 1.0
    hp = (work / "runs/s3pot_vit_b/version_2/hparams.yaml").read_text()
    assert "prompt_selection: otsu" in hp and "screening: false" in hp


def test_predict_stage_writes_masks_from_the_saved_model_and_generated_references(pipeline):
    from faceparse.tasks.s3pot import predict_occlusion

    work = pipeline["work"]
    for i in range(2):
        mask = cv2.imread(str(work / "out" / f"face{i}_occlusion.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    # the command equals the library call on the same folders
    again = predict_occlusion(
        work / "runs/s3pot_vit_b/model",
        [work / "DATA/test/images/face0.png"],
        work / "again",
        work / "DATA/test/references",
        work / "DATA/test/parsing",
    )
    np.testing.assert_array_equal(cv2.imread(str(again[0]), 0), cv2.imread(str(work / "out/face0_occlusion.png"), 0))
