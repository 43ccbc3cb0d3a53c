"""DisFaceRep from the data to the tables by command (docs/models/disfacerep.md, "Reproduce"), on a
CelebAMask-HQ fixture tree (plus LaPa and Helen trees for the cross-dataset rows), each stage run by its
documented ``faceparse`` command in a temporary working folder, with the paths the recipes name and
tiny local stand-ins for the three weight files the recipe needs:

- ``weights/grounding-dino-base``: a random Grounding DINO (Swin + BERT) saved with transformers;
- ``weights/deit_small_patch16_224.pth``: a tiny timm ViT state dict (the DeiT-S initialisation);
- ``weights/flip_vit_b16.pt``: a tiny open_clip model in a FLIP-style training checkpoint, and its config;
- ``weights/resnet18_imagenet.pth``: a torchvision ResNet-18 state dict (stage 2's encoder).

1. ``faceparse datasets check data/CelebAMask-HQ --dataset celebamask_hq``
2. ``faceparse boxes ground ... --out data/celebamask_hq_boxes.json``
3. ``faceparse fit --config disfacerep_stage1_celebamask_hq`` on the uniform training subset -> runs/disfacerep_celebamask_hq/model
4. ``faceparse pseudo-labels cam ... --out-dir runs/disfacerep_celebamask_hq_pseudo``
5. ``faceparse pseudo-labels score ... --subset uniform --n 4 --out runs/disfacerep_table1_pseudo.md``
6. ``faceparse fit --config disfacerep_stage2_celebamask_hq`` -> runs/disfacerep_stage2_celebamask_hq/model
7. ``faceparse evaluate`` on CelebAMask-HQ val and test, LaPa test and Helen test.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
from pathlib import Path

import cv2
import fixture_trees as fx
import numpy as np
import pytest
import torch
from tiny_grounding_dino import save_tiny_grounding_dino

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

import faceparse  # noqa: E402
from faceparse.cli import main  # noqa: E402
from faceparse.data.base import build_wrapped_dataset, sample_key  # noqa: E402
from faceparse.data.disfacerep_ccd import CCDDataset, select_boxes  # noqa: E402
from faceparse.data.synthetic import SyntheticFaces  # noqa: E402
from faceparse.labels import get_label_set  # noqa: E402

LS = get_label_set("celebamask_hq")
ROOT = "data/CelebAMask-HQ"
N_FACES, N_TRAIN, SUBSET = 10, 8, 4  # write_celebamask_hq: 80 % train, 10 % val, 10 % test
MASK = 32  # label maps (images at twice the size, as 1024 vs 512 in the real data)
VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
TRAINER = [
    "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
    "--trainer.precision", "32", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--trainer.limit_val_batches", "1", "--trainer.enable_checkpointing", "false", "--trainer.log_every_n_steps", "1",
    "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "2", "--data.init_args.image_size", "32",
]  # fmt: skip


def _csv_logger(name: str) -> list[str]:
    spec = {"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": name}}
    return ["--trainer.logger", json.dumps(spec)]


def _save_weights(weights: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The four local weight files; returns the state dicts written, to check what each stage loaded."""
    import timm
    import torchvision

    torch.manual_seed(0)
    save_tiny_grounding_dino(weights / "grounding-dino-base")
    deit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=10
    ).state_dict()
    torch.save(deit, weights / "deit_small_patch16_224.pth")
    clip = open_clip.CLIP(**CLIP).state_dict()
    (weights / "flip_vit_b16.json").write_text(json.dumps(CLIP))
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in clip.items()}}, weights / "flip_vit_b16.pt")
    resnet = torchvision.models.resnet18(num_classes=1000).state_dict()
    torch.save(resnet, weights / "resnet18_imagenet.pth")
    return {"deit": deit, "clip": clip, "resnet": resnet}


def _run(argv: list[str]) -> str:
    """One command in-process; returns what it printed."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    assert rc in (0, None), (argv, rc)
    return buf.getvalue()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = tmp_path_factory.mktemp("disfacerep")
    saved = _save_weights(work / "weights")
    SyntheticFaces(split="train", num_samples=N_FACES, seed=3).write_celebamask_hq(work / ROOT, mask_size=MASK)
    fx.write_lapa(work / "data" / "LaPa", counts={"test": 1}, size=64)
    fx.write_helen_smith(work / "data" / "Helen", counts={"test": 1}, size=64)
    printed: dict[str, str] = {}
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    try:  # the documented commands, with the tiny sizes and local stand-ins added
        printed["check"] = _run(f"datasets check {ROOT} --dataset celebamask_hq".split())
        printed["ground"] = _run(
            f"boxes ground --checkpoint weights/grounding-dino-base --dataset celebamask_hq:{ROOT} --split train "
            "--out data/celebamask_hq_boxes.json --box-threshold 0.3 --text-threshold 0 --top-k 50".split()
        )
        vit = {**VIT, "projector_dim": 16, "projector_hidden_dim": 16}
        vit["pretrained"] = "weights/deit_small_patch16_224.pth"
        tcd = {
            "encoder": {"model_cfg": "weights/flip_vit_b16.json", "checkpoint": "weights/flip_vit_b16.pt"},
            "weights": [1.2, 0.2, 2.1, 0.1, 0.017, 0.05],
            "prompt": "a photo of a face with {component}",
        }
        stage1 = (
            f"fit --config disfacerep_stage1_celebamask_hq --data.init_args.dataset_kwargs.dataset_kwargs.root {ROOT} "
            f"--data.init_args.subset uniform --data.init_args.subset_size {SUBSET}".split()
        )
        stage1 += ["--model.init_args.model_kwargs", json.dumps(vit), "--model.init_args.tcd", json.dumps(tcd)]
        assert main([*stage1, *TRAINER, *_csv_logger("disfacerep_celebamask_hq")]) == 0
        printed["cam"] = _run(
            f"pseudo-labels cam --model runs/disfacerep_celebamask_hq/model --dataset celebamask_hq --root {ROOT} "
            "--split train --image-size 32 --out-dir runs/disfacerep_celebamask_hq_pseudo".split()
        )
        printed["score"] = _run(
            f"pseudo-labels score --pred runs/disfacerep_celebamask_hq_pseudo --dataset celebamask_hq:{ROOT} "
            f"--split train --subset uniform --n {SUBSET} --out runs/disfacerep_table1_pseudo.md".split()
        )
        deeplab = {"encoder": "resnet18", "input_size": 32, "pretrained": "weights/resnet18_imagenet.pth"}
        deeplab["arch_kwargs"] = {"encoder_output_stride": 8}
        stage2 = (
            f"fit --config disfacerep_stage2_celebamask_hq --data.init_args.dataset_kwargs.dataset_kwargs.root {ROOT}"
        )
        stage2 = [*stage2.split(), "--model.init_args.model_kwargs", json.dumps(deeplab), "--trainer.max_steps", "2"]
        assert main([*stage2, *TRAINER]) == 0
        model = "runs/disfacerep_stage2_celebamask_hq/model"
        for name, root, split in [
            ("celebamask_hq", ROOT, "val"), ("celebamask_hq", ROOT, "test"), ("lapa", "data/LaPa", "test"),
            ("helen", "data/Helen", "test"),
        ]:  # fmt: skip
            ev = f"evaluate --model {model} --dataset {name} --root {root} --split {split} --image-size 32"
            printed[f"evaluate {name} {split}"] = _run(ev.split())
        yield {"work": work, "saved": saved, "printed": printed}
    finally:
        mp.undo()


def _true_mask(face_id: int) -> np.ndarray:
    """A CelebAMask-HQ label map merged by hand from the tree's per-part PNGs (no adapter involved)."""
    mask = np.zeros((MASK, MASK), np.int64)
    folder = Path(ROOT) / "CelebAMask-HQ-mask-anno" / str(face_id // 2000)
    for cls, name in enumerate(LS.source_names):
        path = folder / f"{face_id:05d}_{name}.png"
        if cls and path.is_file():
            mask[cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127] = cls
    return mask


def _f1_iou(preds: list[np.ndarray], gts: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Dataset-level F1 and IoU per class from pixel counts; NaN for a class in neither."""
    p, g = np.concatenate([x.ravel() for x in preds]), np.concatenate([x.ravel() for x in gts])
    f1, iou = np.full(k, np.nan), np.full(k, np.nan)
    for c in range(k):
        tp, n_p, n_g = np.sum((p == c) & (g == c)), np.sum(p == c), np.sum(g == c)
        if n_p + n_g:
            f1[c], iou[c] = 2 * tp / (n_p + n_g), tp / (n_p + n_g - tp)
    return f1, iou


def _table(text: str) -> dict[str, float]:
    """Per-class F1 column of a printed ``per_class_table``."""
    rows = re.findall(r"^\| (\w+) \| ([\d.]+|nan) \|", text, flags=re.M)
    return {name: float(v) for name, v in rows}


def _mean_f1(text: str) -> float:
    return float(re.search(r"\*\*mean F1 \(no bg\)\*\* \| \*\*([\d.]+)\*\*", text).group(1))


def _train_keys() -> list[str]:
    ds = build_wrapped_dataset("celebamask_hq", root=ROOT, split="train")
    return [sample_key(ds.load_raw(i), i) for i in range(len(ds))]


def test_datasets_check_counts_the_tree(pipeline):
    text = pipeline["printed"]["check"]
    assert f"faces per split: train {N_TRAIN}, val 1, test 1" in text and "0 problem(s)" in text


def test_boxes_ground_writes_every_training_image_and_ccd_reads_the_file(pipeline):
    boxes = json.loads(Path("data/celebamask_hq_boxes.json").read_text())
    keys = _train_keys()
    assert sorted(boxes) == sorted(keys) and len(keys) == N_TRAIN
    assert f"wrote boxes of {N_TRAIN} images ({N_TRAIN} new" in pipeline["printed"]["ground"]
    for entry in boxes.values():
        assert set(entry) <= set(LS.classes)
        for cands in entry.values():
            scores = [c["score"] for c in cands]
            assert scores == sorted(scores, reverse=True) and min(scores) >= 0.3
            assert all(
                0 <= c["box"][0] <= c["box"][2] <= MASK and 0 <= c["box"][1] <= c["box"][3] <= MASK for c in cands
            )
    # the ccd dataset of the stage-1 config reads it: every accepted component present in a face is masked
    ccd = CCDDataset("celebamask_hq", {"root": ROOT}, boxes="data/celebamask_hq_boxes.json", split="train", prob=1.0)
    n_masked = 0
    for i, key in enumerate(keys):
        present = {LS.classes[c] for c in np.unique(_true_mask(int(key)))}
        masked = {m for m in ccd[i]["meta"]["ccd_masked"].split(",") if m}
        assert masked == {c for c in select_boxes(boxes[key], MASK) if c in present}
        n_masked += len(masked)
    assert n_masked > 0


def test_stage1_trains_on_the_uniform_subset_from_the_local_deit_and_flip(pipeline):
    folder = Path("runs/disfacerep_celebamask_hq/model")
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors"}
    model = faceparse.load_model(folder).eval()
    assert model.label_set.name == "celebamask_hq" and model.embed_dim == 32 and model.num_tokens == 18
    # initialised from the DeiT file: two AdamW steps at lr 5e-6 barely move it; a fresh init is far away
    deit, state = pipeline["saved"]["deit"], model.state_dict()
    w = "blocks.0.attn.qkv.weight"
    assert (state[w] - deit[w]).abs().max() < 1e-3
    torch.manual_seed(1)
    fresh = faceparse.build_model("mct_vit_small", **VIT, projector_dim=16, projector_hidden_dim=16).state_dict()
    assert (fresh[w] - deit[w]).abs().max() > 1e-2
    (metrics,) = Path("runs/disfacerep_celebamask_hq").glob("version_*/metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    steps = {int(r["step"]) for r in rows if r.get("train/loss_step")}
    assert steps == {0, 1}  # one epoch of the 4-face uniform subset at batch 2 (the whole split: 4 steps)
    (last,) = [r for r in rows if r.get("train/tcd")]
    assert all(np.isfinite(float(last[k])) for k in ("train/cls", "train/patch", "train/tcd", "train/tcd_reg"))
    (run_cfg,) = Path("runs/disfacerep_celebamask_hq").glob("version_*/config.yaml")
    text = run_cfg.read_text()  # TCD's frozen encoder came from the local FLIP file
    assert "checkpoint: weights/flip_vit_b16.pt" in text and "dataset: ccd" in text
    assert "boxes: data/celebamask_hq_boxes.json" in text


def test_cam_writes_one_pseudo_mask_per_training_image_within_its_labels(pipeline):
    out = Path("runs/disfacerep_celebamask_hq_pseudo")
    keys = _train_keys()
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(keys)
    info = json.loads((out / "pseudo_labels.json").read_text())
    assert info["count"] == N_TRAIN and info["scales"] == [1.0, 0.75, 1.25] and info["flip"] and info["refine"]
    assert info["theta"] == 0.5 and info["use_labels"]
    for key in keys:
        m = cv2.imread(str(out / f"{key}.png"), cv2.IMREAD_UNCHANGED)
        assert m.shape == (MASK, MASK) and m.dtype == np.uint8  # at the size of the dataset's raw images
        assert set(np.unique(m).tolist()) <= set(np.unique(_true_mask(int(key))).tolist()) | {0}


def test_score_matches_an_independent_computation_on_the_subset(pipeline, capsys):
    text = pipeline["printed"]["score"]
    assert Path("runs/disfacerep_table1_pseudo.md").read_text().strip() == text.strip()
    assert f"{SUBSET} pseudo masks of celebamask_hq train (subset uniform n={SUBSET})" in text
    keys = sorted(_train_keys(), key=int)
    subset = [keys[int((i + 0.5) * N_TRAIN / SUBSET)] for i in range(SUBSET)]  # faces 1, 3, 5, 7
    assert subset == ["1", "3", "5", "7"]
    pred_dir = Path("runs/disfacerep_celebamask_hq_pseudo")
    preds = [cv2.imread(str(pred_dir / f"{k}.png"), cv2.IMREAD_UNCHANGED) for k in subset]
    f1, iou = _f1_iou(preds, [_true_mask(int(k)) for k in subset], LS.num_classes)
    mean_f1, miou = np.nanmean(f1[1:]), np.nanmean(iou)
    assert f"mean F1 {100 * mean_f1:.2f}, mIoU {100 * miou:.2f}" in text
    table = _table(text)
    for c, name in enumerate(LS.classes):
        assert np.isnan(table[name]) if np.isnan(f1[c]) else table[name] == pytest.approx(100 * f1[c], abs=0.006)
    # only the subset's masks are read: without face 0 the subset still scores; without face 3 it names it
    argv = ["pseudo-labels", "score", "--pred", "pseudo_copy", "--dataset", f"celebamask_hq:{ROOT}"]
    argv += ["--subset", "uniform", "--n", str(SUBSET)]
    shutil.copytree(pred_dir, "pseudo_copy")
    Path("pseudo_copy/0.png").unlink()
    assert f"mean F1 {100 * mean_f1:.2f}" in _run(argv)
    Path("pseudo_copy/3.png").unlink()
    capsys.readouterr()
    assert main(argv) == 2
    assert "1 of 4 pseudo masks are missing" in capsys.readouterr().err


def test_stage2_trains_the_deeplab_recipe_on_the_pseudo_masks(pipeline):
    folder = Path("runs/disfacerep_stage2_celebamask_hq/model")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["kwargs"]["arch"] == "deeplabv3plus" and cfg["kwargs"]["arch_kwargs"] == {"encoder_output_stride": 8}
    model = faceparse.load_model(folder).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 19, 32, 32)
    resnet = pipeline["saved"]["resnet"]  # the encoder came from the local ImageNet file (warm-up: lr ~ 0)
    assert (model.net.encoder.conv1.weight - resnet["conv1.weight"]).abs().max() < 1e-3
    (run_cfg,) = Path("runs/disfacerep_stage2_celebamask_hq").glob("version_*/config.yaml")
    assert "masks_dir: runs/disfacerep_celebamask_hq_pseudo" in run_cfg.read_text()
    # what the recipe's train split reads is the pseudo mask; validation reads the true mask
    train = faceparse.build_dataset(
        "pseudo", masks_dir="runs/disfacerep_celebamask_hq_pseudo", dataset="celebamask_hq",
        dataset_kwargs={"root": ROOT}, split="train", image_size=32,
    )  # fmt: skip
    keys = _train_keys()
    pseudo = cv2.imread(f"runs/disfacerep_celebamask_hq_pseudo/{keys[2]}.png", cv2.IMREAD_UNCHANGED)
    assert np.array_equal(train.load_raw(2)["mask"], pseudo)
    val = faceparse.build_dataset(
        "pseudo", masks_dir=None, dataset="celebamask_hq", dataset_kwargs={"root": ROOT}, split="val"
    )
    assert np.array_equal(val.load_raw(0)["mask"], _true_mask(int(val.load_raw(0)["meta"]["name"])))


def test_evaluate_scores_celebamask_hq_lapa_and_helen(pipeline):
    printed = pipeline["printed"]
    for key, label_set, n_classes in [
        ("evaluate celebamask_hq val", "celebamask_hq", 19), ("evaluate celebamask_hq test", "celebamask_hq", 19),
        ("evaluate lapa test", "lapa", 11), ("evaluate helen test", "helen", 11),
    ]:  # fmt: skip
        split = key.split()[-1]
        assert f"1 faces of {key.split()[1]} {split}, scored in the '{label_set}' label set" in printed[key]
        assert len(_table(printed[key])) == n_classes
    # the val row recomputed by hand: the model at 32 px on the one val face, argmax, F1 from pixel counts
    model = faceparse.load_model("runs/disfacerep_stage2_celebamask_hq/model").eval()
    ds = faceparse.build_dataset(
        "celebamask_hq", root=ROOT, split="val", image_size=32, mean=tuple(model.input_mean), std=tuple(model.input_std)
    )
    sample = ds[0]
    with torch.no_grad():
        pred = model(sample["image"][None]).argmax(1)[0].numpy()
    f1, _ = _f1_iou([pred], [_true_mask(int(sample["meta"]["name"]))], LS.num_classes)
    assert _mean_f1(printed["evaluate celebamask_hq val"]) == pytest.approx(100 * np.nanmean(f1[1:]), abs=0.006)
