"""S3POT: greedy matching, prompt selection, SAM wrappers, references, the task end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import faceparse
from faceparse.errors import FaceParseError, MissingWeightsError
from faceparse.models.s3pot.model import S3POT, greedy_match, select_prompts

pytest.importorskip("segment_anything")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The tiny SAM is latency-bound; one thread is fastest on a busy 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def naive_greedy(sim: np.ndarray) -> list[tuple[int, int]]:
    """Sort all similarities (descending, stable: ties by flat index) and take free pairs."""
    n, m = sim.shape
    order = np.argsort(-sim, axis=None, kind="stable")
    rows, cols, pairs = set(), set(), []
    for flat in order:
        i, j = divmod(int(flat), m)
        if i not in rows and j not in cols:
            pairs.append((i, j))
            rows.add(i)
            cols.add(j)
        if len(pairs) == min(n, m):
            break
    return pairs


# --------------------------------------------------------------------------- greedy matching
@pytest.mark.parametrize("shape", [(1, 1), (7, 7), (30, 12), (12, 30), (64, 40), (3, 50), (150, 90), (90, 200)])
@pytest.mark.parametrize("levels", [None, 3, 7])
def test_greedy_match_equals_naive(shape, levels):
    rng = np.random.default_rng(sum(shape) * 31 + (levels or 0))
    for _ in range(5):
        sim = rng.standard_normal(shape).astype(np.float32)
        if levels is not None:  # many exact ties
            sim = rng.integers(0, levels, size=shape).astype(np.float32)
        rows, cols = greedy_match(torch.from_numpy(sim))
        assert list(zip(rows.tolist(), cols.tolist())) == naive_greedy(sim)


def test_greedy_match_on_cosine_similarities_and_edge_cases():
    g = torch.Generator().manual_seed(3)
    a = torch.nn.functional.normalize(torch.randn(50, 16, generator=g), dim=1)
    b = torch.nn.functional.normalize(torch.randn(35, 16, generator=g), dim=1)
    sim = a @ b.T
    rows, cols = greedy_match(sim)
    assert list(zip(rows.tolist(), cols.tolist())) == naive_greedy(sim.numpy())
    assert len(set(rows.tolist())) == 35 and len(set(cols.tolist())) == 35
    r, c = greedy_match(torch.empty(0, 5))
    assert r.numel() == 0 and c.numel() == 0
    with pytest.raises(FaceParseError):
        greedy_match(torch.zeros(2, 2, 2))


def test_select_prompts_finds_tokens_that_differ_from_the_reference():
    g = torch.Generator().manual_seed(0)
    n, c = 36, 24
    ref = torch.randn(n, c, generator=g).abs()  # positive features: cosines between them > 0
    img = ref + 0.05 * torch.randn(n, c, generator=g).abs()
    face = torch.zeros(n, dtype=torch.bool)
    face[6:30] = True
    occluded = torch.tensor([8, 9, 14, 15])
    # an occluder hides these face tokens: negative cosine with every reference token, so the
    # reference tokens left without their own image token match background tokens instead
    img[occluded] = -torch.randn(len(occluded), c, generator=g).abs()
    occ_idx, face_idx = select_prompts(img, ref, face)
    assert set(occ_idx.tolist()) == set(occluded.tolist())
    assert set(face_idx.tolist()) == set(range(6, 30)) - set(occluded.tolist())
    # identical image and reference: every face token is a face prompt
    occ_idx, face_idx = select_prompts(ref, ref, face)
    assert occ_idx.numel() == 0 and face_idx.tolist() == list(range(6, 30))
    # empty face region
    occ_idx, face_idx = select_prompts(ref, ref, torch.zeros(n, dtype=torch.bool))
    assert occ_idx.numel() == 0 and face_idx.numel() == 0


# --------------------------------------------------------------------------- SAM wrappers
SAM_COUNTS = {"vit_b": 93_735_472, "vit_l": 312_342_832, "vit_h": 641_090_608}
SCREENING = 3 * 256 * 256 + 3 * 256 + 256 * 256 + 256 + 2 * 256  # MHA in/out proj + LayerNorm


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_parameter_counts_match_sam_plus_screening(variant):
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        model = faceparse.build_model(f"s3pot_{variant}")
        sam = sam_model_registry[variant]()
    sam_count = sum(p.numel() for p in sam.parameters())
    assert sam_count == SAM_COUNTS[variant]
    assert model.num_parameters() == sam_count + SCREENING
    assert model.num_parameters(trainable_only=True) == SCREENING
    assert round(sum(p.numel() for p in model.sam.parameters()) / 1e6, 2) == round(SAM_COUNTS[variant] / 1e6, 2)


def test_registered_names():
    assert faceparse.list_models("s3pot_*") == ["s3pot_tiny", "s3pot_vit_b", "s3pot_vit_h", "s3pot_vit_l"]
    meta = faceparse.MODELS.metadata("s3pot_vit_b")
    assert meta["input_size"] == 1024
    assert faceparse.get_label_set(meta["label_set"]).classes == ("background", "occlusion")
    assert faceparse.model_info("s3pot_vit_b")["parameters"] == SAM_COUNTS["vit_b"] + SCREENING
    # cheap build of any variant (random SAM: random_init=True, a SAM variant otherwise needs its checkpoint)
    tiny_h = faceparse.build_model("s3pot_vit_h", **{**meta["tiny"], "random_init": True})
    assert tiny_h.token_grid == (16, 16) and tiny_h.encoder_name == "vit_h"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return faceparse.build_model("s3pot_tiny").eval()


def _face_mask(b: int, h: int, w: int) -> torch.Tensor:
    m = torch.zeros(b, h, w, dtype=torch.bool)
    m[:, h // 6 : h - h // 6, w // 5 : w - w // 5] = True
    return m


def test_tiny_forward_contract(tiny):
    x = torch.randn(2, 3, 64, 48)
    ref = x + 0.1 * torch.randn_like(x)
    fm = _face_mask(2, 64, 48)
    out = tiny.forward_train(x, ref, fm)
    assert out["logits"].shape == (2, 2, 64, 48)
    assert out["occlusion_logits"].shape == (2, 1, 64, 48)
    p = out["logits"].softmax(1)[:, 1]
    assert torch.allclose(p, torch.sigmoid(out["occlusion_logits"][:, 0]), atol=1e-6)
    # prompts lie inside the face region, occlusion and face prompts are disjoint
    for b in range(2):
        for key in ("occlusion", "face"):
            pts = out[f"{key}_points"][b][out[f"{key}_valid"][b]]
            assert fm[b, pts[:, 1], pts[:, 0]].all()
        total = int(out["occlusion_valid"][b].sum() + out["face_valid"][b].sum())
        assert total == 0 or total <= int(fm[b].sum())
    # train mode gives the same logits (frozen SAM, no dropout), and the fallback reference runs
    tiny.train()
    assert torch.allclose(tiny(x, ref, fm), out["logits"], atol=1e-5)
    tiny.eval()
    assert not tiny.sam.training
    assert tiny(x).shape == (2, 2, 64, 48)  # no reference, no face mask
    with pytest.raises(FaceParseError):
        tiny(x, ref[:, :, :32], fm)


def test_only_the_screening_layer_learns(tiny):
    x = torch.randn(1, 3, 64, 64)
    out = tiny.forward_train(x, torch.randn_like(x), _face_mask(1, 64, 64))
    out["occlusion_logits"].mean().backward()
    assert all(p.grad is None for p in tiny.sam.parameters())
    assert all(p.grad is not None for p in tiny.screening.parameters())
    tiny.zero_grad(set_to_none=True)


def test_save_load_round_trip(tiny, tmp_path):
    x = torch.randn(1, 3, 64, 64)
    ref, fm = torch.randn_like(x), _face_mask(1, 64, 64)
    with torch.no_grad():
        tiny.screening.norm.weight.mul_(1.5)
        want = tiny(x, ref, fm)
    tiny.save_pretrained(tmp_path / "m")
    loaded = faceparse.load_model(tmp_path / "m")
    assert torch.allclose(loaded(x, ref, fm), want, atol=1e-5)
    assert loaded.get_config()["kwargs"]["checkpoint"] is None
    with torch.no_grad():
        tiny.screening.norm.weight.div_(1.5)


def test_sam_checkpoint_loading(tmp_path):
    torch.manual_seed(1)
    src = S3POT(encoder="tiny")
    path = tmp_path / "sam_tiny.pth"
    torch.save(src.sam.state_dict(), path)
    torch.manual_seed(2)
    got = S3POT(encoder="tiny", checkpoint=str(path))
    for k, v in src.sam.state_dict().items():
        assert torch.equal(got.sam.state_dict()[k], v), k
    with pytest.raises(MissingWeightsError):
        S3POT(encoder="tiny", checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(FaceParseError, match="does not fit"):
        S3POT(encoder="tiny", depth=1, checkpoint=str(path))
    with pytest.raises(FaceParseError):
        S3POT(encoder="vit_x")


# --------------------------------------------------------------------------- references
def _disk_face(size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size]
    face = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2
    clean = np.full((size, size, 3), 30, np.uint8)
    clean[face] = (210, 160, 130)
    img = clean.copy()
    occ = np.zeros((size, size), bool)
    occ[20:34, 24:40] = True
    img[occ] = (20, 40, 220)  # a blue occluder on the skin
    return img, clean, face.astype(np.int64)


def test_inpaint_fallback_removes_a_coloured_occluder():
    from faceparse.models.s3pot.references import InpaintReferences

    img, clean, regions = _disk_face()
    inp = InpaintReferences()
    ref = inp(img, regions)
    occ = np.zeros(regions.shape, bool)
    occ[20:34, 24:40] = True
    assert inp.outliers(img, regions)[occ].mean() > 0.95
    err_before = np.abs(img.astype(float) - clean)[occ].mean()
    err_after = np.abs(ref.astype(float) - clean)[occ].mean()
    assert err_after < 0.1 * err_before
    assert np.array_equal(ref[regions == 0], img[regions == 0])  # nothing outside the face changes
    assert np.array_equal(inp(clean, regions), clean)  # a clean face is left alone


def test_folder_references(tmp_path):
    import cv2

    from faceparse.models.s3pot.references import FolderReferences, build_reference_source

    img, clean, _ = _disk_face()
    cv2.imwrite(str(tmp_path / "face01_ref.png"), cv2.cvtColor(cv2.resize(clean, (32, 32)), cv2.COLOR_RGB2BGR))
    src = build_reference_source(str(tmp_path))
    assert isinstance(src, FolderReferences)
    ref = src(img, None, "dir/face01.jpg")
    assert ref.shape == img.shape
    with pytest.raises(FaceParseError, match="no reference"):
        src(img, None, "face02.jpg")
    with pytest.raises(FaceParseError):
        FolderReferences(tmp_path / "nope")


# --------------------------------------------------------------------------- task end to end
@pytest.fixture(scope="module")
def pairs():
    return {
        split: faceparse.build_dataset("reference_pairs", split=split, num_samples=4, image_size=64, seed=0)
        for split in ("train", "val")
    }


def test_reference_pairs_oracle_is_the_face_under_the_occluder(pairs):
    s = pairs["train"][0]
    assert s["reference"].shape == s["image"].shape
    occ = s["occlusion"].bool()
    assert occ.any()
    diff = (s["reference"] - s["image"]).abs().mean(0)
    assert diff[~occ].mean() < 0.05 < diff[occ].mean()
    assert pairs["train"].label_set.name == "celebamask_hq"


def test_task_trains_predicts_and_overfits_per_image(pairs, tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from faceparse.data.base import collate
    from faceparse.tasks.s3pot import OcclusionPromptTask, per_image_overfit

    torch.manual_seed(0)
    task = OcclusionPromptTask("s3pot_tiny", lr=1e-3)
    sam_before = {k: v.clone() for k, v in task.model.sam.state_dict().items()}
    scr_before = {k: v.clone() for k, v in task.model.screening.state_dict().items()}
    train = DataLoader(pairs["train"], batch_size=2, collate_fn=collate)
    val = DataLoader(pairs["val"], batch_size=2, collate_fn=collate)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(task, train, val)
    assert "train/loss" in trainer.callback_metrics
    assert 0.0 <= float(trainer.callback_metrics["val/occlusion_iou"]) <= 1.0
    assert all(torch.equal(v, task.model.sam.state_dict()[k]) for k, v in sam_before.items())
    assert any(not torch.equal(v, task.model.screening.state_dict()[k]) for k, v in scr_before.items())

    preds = trainer.predict(task, val)
    assert preds[0].shape == (2, 64, 64) and preds[0].dtype == torch.uint8
    assert set(preds[0].unique().tolist()) <= {0, 1}

    # per-image overfitting: the loss of the image falls, weights are restored afterwards
    batch = collate([pairs["val"][i] for i in range(2)])
    x, ref, regions = task.inputs_of(batch)
    saved = {k: v.clone() for k, v in task.model.screening.state_dict().items()}
    logits, curve = per_image_overfit(task.model, x, ref, regions, steps=8, lr=3e-3)
    assert logits.shape == (2, 2, 64, 64)
    assert len(curve) == 9 and curve[-1] < curve[0]
    assert all(torch.equal(v, task.model.screening.state_dict()[k]) for k, v in saved.items())

    # the same mode inside Trainer.test (runs under inference mode)
    task.hparams.per_image_steps = 2
    trainer.test(task, DataLoader(pairs["val"], batch_size=2, collate_fn=collate, sampler=[0, 1]))
    assert len(task.per_image_curves) == 1 and len(task.per_image_curves[0]) == 3
    assert "test/occlusion_iou" in trainer.callback_metrics


def test_predict_occlusion_writes_masks(tiny, tmp_path):
    import cv2

    from faceparse.tasks.s3pot import predict_occlusion

    img, clean, regions = _disk_face(48)
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), (regions * 255).astype(np.uint8))
    cv2.imwrite(str(tmp_path / "masks" / "b.png"), (regions * 255).astype(np.uint8))
    tiny.save_pretrained(tmp_path / "model")
    paths = predict_occlusion(
        tmp_path / "model", [tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "out", face_masks=tmp_path / "masks"
    )
    assert [p.name for p in paths] == ["a_occlusion.png", "b_occlusion.png"]
    m = cv2.imread(str(paths[0]), cv2.IMREAD_UNCHANGED)
    assert m.shape == (48, 48) and set(np.unique(m).tolist()) <= {0, 255}
    with pytest.raises(FaceParseError):
        predict_occlusion(tiny, [tmp_path / "missing.png"])


def test_occlusion_folder_dataset(tiny, tmp_path):
    import cv2

    from faceparse.tasks.s3pot import OcclusionPromptTask

    img, clean, regions = _disk_face(48)
    root = tmp_path / "data" / "test"
    for sub in ("images", "references", "parsing", "occlusion"):
        (root / sub).mkdir(parents=True)
    occ = np.zeros((48, 48), np.uint8)
    occ[20:34, 24:40] = 255
    skin = faceparse.get_label_set("celebamask_hq").index("skin")
    parsing = np.where(regions > 0, skin, 0).astype(np.uint8)
    for stem in ("f1", "f2"):
        cv2.imwrite(str(root / "images" / f"{stem}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "references" / f"{stem}_ref.png"), cv2.cvtColor(clean, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "parsing" / f"{stem}.png"), parsing)
        cv2.imwrite(str(root / "occlusion" / f"{stem}.png"), occ)
    ds = faceparse.build_dataset("occlusion_folder", root=tmp_path / "data", split="test", image_size=64)
    s = ds[0]
    assert s["image"].shape == s["reference"].shape == (3, 64, 64)
    assert s["mask"].shape == s["occlusion"].shape == (64, 64)
    assert s["occlusion"].sum() > 0 and s["meta"]["name"] == "f1.png"
    from faceparse.data.base import collate

    task = OcclusionPromptTask(tiny)
    batch = collate([ds[0], ds[1]])
    x, ref, regions = task.inputs_of(batch)
    assert torch.equal(ref, batch["reference"]) and regions.shape == (2, 64, 64)
    assert bool((regions > 0).eq(batch["mask"] == skin).all())
    with pytest.raises(FaceParseError, match="images"):
        faceparse.build_dataset("occlusion_folder", root=tmp_path / "nothing")


def test_packaged_s3pot_configs():
    import inspect

    import yaml

    from faceparse.cli import CONFIG_DIR
    from faceparse.data import FaceParsingDataModule
    from faceparse.tasks.s3pot import OcclusionPromptTask

    cfg = yaml.safe_load((CONFIG_DIR / "s3pot_synthetic.yaml").read_text())
    task = OcclusionPromptTask(**cfg["model"]["init_args"])
    dm = FaceParsingDataModule(**{**cfg["data"]["init_args"], "train_kwargs": {"num_samples": 2}})
    sample = dm.build("train")[0]
    x, ref, regions = task.inputs_of({k: v[None] for k, v in sample.items() if torch.is_tensor(v)})
    assert task.model(x, ref, regions).shape == (1, 2, 64, 64)
    paper = yaml.safe_load((CONFIG_DIR / "s3pot_vit_b.yaml").read_text())
    params = inspect.signature(OcclusionPromptTask).parameters
    assert set(paper["model"]["init_args"]) <= set(params)
    args = paper["model"]["init_args"]
    assert (args["alpha"], args["lam"], args["lr"], paper["data"]["init_args"]["batch_size"]) == (10.0, 0.5, 1e-4, 3)
    assert paper["trainer"]["max_epochs"] == 50 and paper["data"]["init_args"]["image_size"] == 1024


def test_cli_predict_occlusion_flag(tiny, tmp_path, capsys):
    import cv2

    from faceparse.cli import main

    img, _, _ = _disk_face(40)
    cv2.imwrite(str(tmp_path / "face.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    tiny.save_pretrained(tmp_path / "model")
    args = ["predict", str(tmp_path / "face.png"), "--model", str(tmp_path / "model"), "--occlusion"]
    assert main([*args, "--out-dir", str(tmp_path / "out")]) == 0
    mask = cv2.imread(str(tmp_path / "out" / "face_occlusion.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (40, 40)
    assert main(["predict", str(tmp_path / "missing.png"), "--model", str(tmp_path / "model"), "--occlusion"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_clear_error_without_segment_anything(monkeypatch):
    import ast
    import sys

    import faceparse.models.s3pot.model as mod
    from faceparse.errors import MissingDependencyError

    # no module-level import of segment_anything (faceparse imports without the extra)
    tree = ast.parse(open(mod.__file__).read())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not any(name.startswith("segment_anything") for name in names)
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(MissingDependencyError, match=r"faceparse\[sam\]"):
        faceparse.build_model("s3pot_tiny")
