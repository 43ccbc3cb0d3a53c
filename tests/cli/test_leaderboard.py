"""`faceparse leaderboard`: two tiny saved models x two fixture datasets, end to end.

Checked: the table has one row per (model, dataset) cell; each cell's figures equal what
`faceparse evaluate` prints for the same model, dataset and protocol (LaPa's tanh-warp protocol:
``faceparse.evaluate.evaluate`` on a dataset built here); one cell recomputed by hand
(model run here, labels mapped by name, F1 from counts); the CSV; a rerun reads every cell from the
cache (the scorer is made to fail, cache files stay byte- and mtime-identical); a deleted cell is
rescored alone; changed weights invalidate that model's cells; bad NAME:ROOT specs are clear errors.
"""

from __future__ import annotations

import csv
from pathlib import Path

import fixture_trees as fx
import numpy as np
import pytest
import torch

import faceparse
import faceparse.evaluate
from faceparse.cli import main
from faceparse.data.synthetic import SyntheticFaces
from faceparse.labels import get_label_set
from faceparse.leaderboard import run

CELEB_SIZE, CONS_SIZE = 64, 32  # the two models' input sizes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("leaderboard")
    torch.manual_seed(0)
    # two families, two label sets: a 19-class CelebAMask-HQ U-Net and an 11-class LaPa consensus net
    unet = faceparse.build_model("unet", encoder="resnet18", input_size=CELEB_SIZE)
    cons = faceparse.build_model("consensus_net", label_set="lapa", width=8, input_size=CONS_SIZE)
    assert unet.label_set.name == "celebamask_hq" and cons.label_set.name == "lapa"
    unet.save_pretrained(base / "unet_celeb")
    cons.save_pretrained(base / "consensus_lapa")
    # 20 faces -> 2 in the CelebAMask-HQ test split (the last 10 %)
    SyntheticFaces(split="test", num_samples=20, image_size=64).write_celebamask_hq(base / "celeb", num_faces=20)
    lapa = fx.write_lapa(base / "lapa", {"test": 3}, size=64)
    return {
        "base": base,
        "models": [str(base / "unet_celeb"), str(base / "consensus_lapa")],
        "sizes": {"unet_celeb": CELEB_SIZE, "consensus_lapa": CONS_SIZE},
        "datasets": {"celebamask_hq": str(base / "celeb"), "lapa": lapa["root"]},
    }


def _table(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return split[0], split[2:]


def _evaluate_cli(capsys, model: str, dataset: str, root: str, size: int) -> dict[str, str]:
    """The same cell scored apart from the leaderboard: class or summary name -> F1 / mIoU text (in %).

    What `faceparse evaluate` prints; LaPa under its protocol: the RoI tanh-warp, scored at the
    original resolution (``--align --align-mode tanh --original-resolution``).
    """
    args = ["evaluate", "--model", model, "--dataset", dataset, "--root", root, "--split", "test"]
    args += ["--image-size", str(size)]
    if dataset == "lapa":
        args += ["--align", "--align-mode", "tanh", "--original-resolution"]
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    figures = {}
    for ln in out.splitlines():
        cells = [c.strip().strip("*") for c in ln.strip().strip("|").split("|")]
        if ln.startswith("|") and len(cells) == 3 and cells[0] not in ("class", "---"):
            figures[cells[0]] = cells[2] if cells[0] == "mIoU (with bg)" else cells[1]
    return figures


def _run_board(capsys, world, *extra: str) -> tuple[int, str]:
    out = world["base"] / "board.md"
    args = ["leaderboard", "--models", *world["models"], "--dataset"]
    args += [f"{n}:{r}" for n, r in world["datasets"].items()]
    args += ["--out", str(out), "--csv", str(world["base"] / "board.csv"), *extra]
    capsys.readouterr()
    status = main(args)
    cap = capsys.readouterr()
    return status, cap.out + cap.err


def test_leaderboard_table_matches_evaluate_and_reruns_from_cache(world, capsys, monkeypatch):
    status, log = _run_board(capsys, world)
    assert status == 0, log
    assert "4 cells: 4 scored, 0 from the cache" in log
    head, rows = _table((world["base"] / "board.md").read_text())
    assert head[:6] == ["model", "dataset", "split", "faces", "mean F1", "mIoU"]
    assert [(r[0], r[1]) for r in rows] == [
        ("unet_celeb", "celebamask_hq"),
        ("unet_celeb", "lapa"),
        ("consensus_lapa", "celebamask_hq"),
        ("consensus_lapa", "lapa"),
    ]
    # per-class columns: classes present in the model's and the dataset's label sets
    classes = [h.removeprefix("F1 ") for h in head[6:]]
    assert set(classes) == set(get_label_set("celebamask_hq").classes[1:])
    col = {c: 6 + i for i, c in enumerate(classes)}
    lapa_names = get_label_set("lapa").classes[1:]
    for r in rows:
        if r[1] == "lapa" or r[0] == "consensus_lapa":
            # LaPa's 10 classes and nothing else (neck, cloth... are no LaPa class)
            assert {c for c in classes if r[col[c]] != ""} == set(lapa_names)
        else:
            assert all(r[col[c]] != "" for c in classes)

    # every cell equals what `faceparse evaluate` prints for the same model, dataset and protocol
    for r in rows:
        model = str(world["base"] / r[0])
        ev = _evaluate_cli(capsys, model, r[1], world["datasets"][r[1]], world["sizes"][r[0]])
        assert r[4] == ev["mean F1 (no bg)"] and r[5] == ev["mIoU (with bg)"], (r, ev)
        for c in classes:
            if r[col[c]] != "":
                assert r[col[c]].replace("n/a", "nan") == ev[c], (r[0], r[1], c)
        assert r[3] == ("2" if r[1] == "celebamask_hq" else "3")

    # the CSV holds the same figures at full precision (in %)
    with open(world["base"] / "board.csv") as fh:
        recs = list(csv.DictReader(fh))
    assert len(recs) == 4
    for rec, r in zip(recs, rows):
        assert (rec["model"], rec["dataset"]) == (r[0], r[1])
        assert f"{float(rec['mean_f1']):.2f}" == r[4] and f"{float(rec['miou']):.2f}" == r[5]

    # rerun: every cell comes from the cache; scoring would fail, cache files are untouched
    cache = world["base"] / "board_cache"
    files = sorted(cache.glob("*.json"))
    assert len(files) == 4
    before = {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in files}
    table_before = (world["base"] / "board.md").read_text()

    def boom(*a, **k):
        raise AssertionError("a cached cell was scored again")

    monkeypatch.setattr(faceparse.evaluate, "evaluate", boom)
    status, log = _run_board(capsys, world)
    assert status == 0, log
    assert log.count("cached: ") == 4 and "4 cells: 0 scored, 4 from the cache" in log
    assert {f: (f.read_bytes(), f.stat().st_mtime_ns) for f in sorted(cache.glob("*.json"))} == before
    assert (world["base"] / "board.md").read_text() == table_before


def test_leaderboard_cell_by_hand(world):
    """The LaPa model on CelebAMask-HQ, recomputed here: labels mapped by class name, F1 from counts."""
    rows = run(
        [world["models"][1]],
        {"celebamask_hq": world["datasets"]["celebamask_hq"]},
        cache_dir=world["base"] / "hand_cache",
        progress=False,
    )
    (row,) = rows
    model = faceparse.load_model(world["models"][1])
    ds = faceparse.build_dataset(
        "celebamask_hq", root=world["datasets"]["celebamask_hq"], split="test", image_size=CONS_SIZE, mean=(0.5,) * 3,
        std=(0.5,) * 3,
    )  # fmt: skip
    celeb, lapa = get_label_set("celebamask_hq"), get_label_set("lapa")
    to_celeb = np.array([celeb.classes.index(name) for name in lapa.classes])  # every LaPa name is a CelebA name
    tp = np.zeros(celeb.num_classes)
    gt_n = np.zeros(celeb.num_classes)
    pr_n = np.zeros(celeb.num_classes)
    with torch.no_grad():
        for i in range(len(ds)):
            s = ds[i]
            pred = to_celeb[model(s["image"][None]).argmax(1)[0].numpy()]
            gt = s["mask"].numpy()
            valid = gt != 255
            for c in range(celeb.num_classes):
                g, p = (gt == c) & valid, (pred == c) & valid
                tp[c] += (g & p).sum()
                gt_n[c] += g.sum()
                pr_n[c] += p.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * tp / (gt_n + pr_n)
    assert row["num_images"] == len(ds) == 2
    assert row["mean_f1"] == pytest.approx(np.nanmean(f1[1:]), abs=1e-6)
    for c, name in enumerate(celeb.classes):
        if not np.isnan(f1[c]):
            assert row["f1"][name] == pytest.approx(f1[c], abs=1e-6), name
    assert set(row["classes"]) == set(lapa.classes[1:])
    assert row["mapping"]["mouth"] == "mouth" and row["cached"] is False


def test_leaderboard_resumes_per_cell(world, monkeypatch, tmp_path):
    models = [str(tmp_path / "a"), world["models"][1]]
    faceparse.build_model("unet", encoder="resnet18", input_size=CELEB_SIZE).save_pretrained(models[0])
    datasets = [f"{n}:{r}" for n, r in world["datasets"].items()]
    cache = tmp_path / "cache"
    first = run(models, datasets, cache_dir=cache, progress=False, log=None)
    assert [r["cached"] for r in first] == [False] * 4

    scored = []
    real = faceparse.evaluate.evaluate

    def counting(model, dataset, **kw):
        scored.append(type(dataset).__name__)
        return real(model, dataset, **kw)

    monkeypatch.setattr(faceparse.evaluate, "evaluate", counting)
    Path(first[3]["cache_file"]).unlink()  # an interrupted run: the last cell never finished
    messages = []
    again = run(models, datasets, cache_dir=cache, progress=False, log=messages.append)
    assert [r["cached"] for r in again] == [True, True, True, False] and len(scored) == 1
    assert len(messages) == 3 and all(m.startswith("cached: ") for m in messages)
    assert again[3]["mean_f1"] == first[3]["mean_f1"]

    # new weights in a model folder: that model's cells are scored again, the other's are not
    scored.clear()
    torch.manual_seed(1)
    faceparse.build_model("unet", encoder="resnet18", input_size=CELEB_SIZE).save_pretrained(models[0])
    third = run(models, datasets, cache_dir=cache, progress=False, log=None)
    assert [r["cached"] for r in third] == [False, False, True, True] and len(scored) == 2
    assert third[0]["mean_f1"] != first[0]["mean_f1"]


@pytest.mark.parametrize(
    "spec, words",
    [
        ("lapa:{base}/no_such_folder", ["'lapa:", "no_such_folder' does not exist"]),
        ("lapq:{base}", ["unknown dataset 'lapq'", "Did you mean: lapa"]),
        ("lapa", ["dataset 'lapa' needs the folder that holds it", "lapa:ROOT"]),
        ("lapa:{base}/board.md", ["is a file, expected the dataset's folder"]),
        (":{base}", ["expected NAME:ROOT"]),
    ],
)
def test_leaderboard_bad_dataset_spec(world, capsys, spec, words):
    (world["base"] / "board.md").touch()
    spec = spec.format(base=world["base"])
    capsys.readouterr()
    status = main(["leaderboard", "--models", world["models"][0], "--dataset", spec])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: faceparse leaderboard: --dataset")
    for w in words:
        assert w in err, err
    assert "Traceback" not in err


def test_leaderboard_missing_model_folder(world, capsys, tmp_path):
    status = main(["leaderboard", "--models", str(tmp_path / "nope"), "--dataset", "synthetic"])
    err = capsys.readouterr().err
    assert status == 2 and "nope': the folder does not exist" in err


def test_leaderboard_converted_bisenet(world, capsys, tmp_path):
    """A converted community checkpoint (BiSeNet in its release's key names and class order) in the table."""
    from faceparse.models.bisenet import convert_bisenet

    torch.manual_seed(3)
    release = faceparse.build_model("bisenet")  # random weights, saved as the release distributes them
    torch.save(release.state_dict(), tmp_path / "79999_iter.pth")
    convert_bisenet(tmp_path / "79999_iter.pth", tmp_path / "bisenet")
    assert faceparse.load_model(tmp_path / "bisenet").label_set.name == "celebamask_hq_bisenet"

    out = tmp_path / "board.md"
    args = ["leaderboard", "--models", str(tmp_path / "bisenet"), "--dataset"]
    args += [f"{n}:{r}" for n, r in world["datasets"].items()] + ["--out", str(out)]
    capsys.readouterr()
    assert main(args) == 0
    head, rows = _table(out.read_text())
    assert [(r[0], r[1]) for r in rows] == [("bisenet", "celebamask_hq"), ("bisenet", "lapa")]
    classes = [h.removeprefix("F1 ") for h in head[6:]]
    # BiSeNet's 18 classes, in another order, are CelebAMask-HQ's by name
    assert set(classes) == set(get_label_set("celebamask_hq").classes[1:])
    for r in rows:
        ev = _evaluate_cli(capsys, str(tmp_path / "bisenet"), r[1], world["datasets"][r[1]], 512)
        assert (r[4], r[5]) == (ev["mean F1 (no bg)"], ev["mIoU (with bg)"])
        for i, c in enumerate(classes):
            if r[6 + i] != "":
                assert r[6 + i].replace("n/a", "nan") == ev[c], (r[1], c)


def test_leaderboard_folder_of_another_dataset_names_the_cell(world, capsys, tmp_path):
    # the CelebAMask-HQ tree given as LaPa: the adapter's message, prefixed by the cell, and no cell cached
    spec = f"lapa:{world['datasets']['celebamask_hq']}"
    status = main(["leaderboard", "--models", world["models"][0], "--dataset", spec, "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert status == 2
    assert f"unet_celeb on lapa ({world['datasets']['celebamask_hq']}): LaPa split 'test'" in err, err
    assert list((tmp_path / "c").glob("*.json")) == []
