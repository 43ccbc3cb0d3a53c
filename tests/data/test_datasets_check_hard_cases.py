"""`faceparse datasets check` on trees with 16-bit images, 0/1 COFW masks, NaN landmarks and an
all-zero HELEN face: each is either read right (and counted) or listed as a problem naming its file.

Runs the real command as a subprocess (``python -m faceparse.cli datasets check ROOT --dataset NAME``)
and the library function behind it (``check_dataset`` / ``format_report``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import fixture_trees as fx
import numpy as np
import pytest

from faceparse.data.check import check_dataset, format_report

S = 48
REPO = Path(__file__).resolve().parents[2]


def _cli(root: Path, dataset: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "faceparse.cli", "datasets", "check", str(root), "--dataset", dataset],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )


def _problems(out: str) -> list[str]:
    return [ln[4:] for ln in out.splitlines() if ln.startswith("  - ")]


def _face_share(out: str, class_name: str) -> float:
    m = re.search(rf"^\s+\d+ {re.escape(class_name)}\s+([\d.]+) %", out, re.M)
    assert m, out
    return float(m.group(1))


@pytest.fixture(scope="module")
def cofw_tree(tmp_path_factory):
    """COFW v7.3 with uint16 images (some grayscale), 0/1 test masks, and a NaN landmark on test face 2."""
    root = tmp_path_factory.mktemp("cofw_hard")
    info = fx.write_cofw(root, n_train=2, n_test=3, size=S, version="7.3")
    for split, keys, fname in (
        ("train", ("IsTr", "phisTr", "bboxesTr"), "COFW_train_color.mat"),
        ("test", ("IsT", "phisT", "bboxesT"), "COFW_test_color.mat"),
    ):
        d = info[split]
        phis = d["phis"].copy()
        if split == "test":
            phis[1, 7] = np.nan  # face 2 (index 1), x of point 7
        images16 = [np.asarray(x).astype(np.uint16) * 257 for x in d["images"]]
        fx._write_mat73(root / fname, *keys, images16, phis, d["boxes"])
    for k, m in enumerate(info["test"]["masks"]):
        cv2.imwrite(str(root / "COFW_test_masks" / f"{k + 1}.png"), (m > 0).astype(np.uint8))  # 0/1, not 0/255
    return root, info


def test_cofw_uint16_images_01_masks_and_nan_landmarks(cofw_tree):
    root, info = cofw_tree
    reports = check_dataset(str(root), "cofw")
    by_split = {r.split: r for r in reports}
    assert by_split["train"].count == 2 and by_split["test"].count == 2  # test face 2 is listed, not read
    problems = [p for r in reports for p in r.problems]
    assert len(problems) == 1, problems
    assert "COFW_test_color.mat" in problems[0] and "index 1" in problems[0] and "NaN" in problems[0]
    # the 0/1 masks are read as masks: the face share is that of the drawn masks of faces 1 and 3
    masks = [info["test"]["masks"][k] > 0 for k in (0, 2)]
    want = 100.0 * sum(m.sum() for m in masks) / sum(m.size for m in masks)
    assert _face_share(format_report(reports), "face") == pytest.approx(want, abs=1e-3)

    from faceparse.data.cofw import COFWDataset

    ds = COFWDataset(str(root), split="test", strict=False, image_size=None)
    img = ds.load_raw(0)["image"]
    want_img = np.asarray(info["test"]["images"][0])
    want_img = np.repeat(want_img[..., None], 3, 2) if want_img.ndim == 2 else want_img
    assert np.array_equal(img, want_img)  # uint16 scaled by 255/65535, not saturated to white

    res = _cli(root, "cofw")
    assert res.returncode == 2, res.stdout + res.stderr
    listed = _problems(res.stdout)
    assert len(listed) == 1 and "COFW_test_color.mat" in listed[0] and "index 1" in listed[0]
    assert "faces per split: train 2, test 2" in res.stdout
    assert _face_share(res.stdout, "face") == pytest.approx(want, abs=1e-3)


def test_lapa_16bit_image_read_and_nan_landmarks_listed(tmp_path):
    info = fx.write_lapa(tmp_path, {"train": 3, "val": 1, "test": 1}, size=S)
    d = tmp_path / "LaPa" / "train"
    a, b, _ = info["names"]["train"]
    rgb = info["faces"][a]["image"]
    ok, buf = cv2.imencode(".png", (rgb.astype(np.uint16) * 257)[..., ::-1])
    (d / "images" / f"{a}.jpg").write_bytes(buf.tobytes())  # 16-bit PNG content under the .jpg name
    lines = (d / "landmarks" / f"{b}.txt").read_text().splitlines()
    lines[1 + 42] = "nan 10.0"
    (d / "landmarks" / f"{b}.txt").write_text("\n".join(lines) + "\n")

    from faceparse.data.lapa import LaPaDataset

    assert np.array_equal(
        LaPaDataset(str(tmp_path), split="train", image_size=None, strict=False).load_raw(0)["image"], rgb
    )
    res = _cli(tmp_path, "lapa")
    assert res.returncode == 2, res.stdout + res.stderr
    listed = _problems(res.stdout)
    assert len(listed) == 1, listed
    assert f"{b}.txt" in listed[0] and "index 42" in listed[0]
    assert "faces per split: train 2, val 1, test 1" in res.stdout  # the 16-bit face is read and counted
    assert a not in res.stdout


def test_helen_all_zero_face_listed(tmp_path):
    info = fx.write_helen_smith(tmp_path, {"train": 3}, size=S)
    base = tmp_path / "SmithCVPR2013_dataset_resized"
    bad = info["names"]["train"][1]
    for c in range(11):
        cv2.imwrite(str(base / "labels" / bad / f"{bad}_lbl{c:02d}.png"), np.zeros((S, S), np.uint8))
    # a 16-bit image for another face: read right, not a problem
    good = info["names"]["train"][0]
    rgb = info["faces"][good]["image"]
    ok, buf = cv2.imencode(".png", (rgb.astype(np.uint16) * 257)[..., ::-1])
    (base / "images" / f"{good}.jpg").write_bytes(buf.tobytes())

    reports = check_dataset(str(tmp_path), "helen", splits=["train"])
    problems = [p for r in reports for p in r.problems]
    assert len(problems) == 1 and bad in problems[0] and "all zero" in problems[0]
    assert reports[0].count == 2

    res = _cli(tmp_path, "helen")
    assert res.returncode == 2, res.stdout + res.stderr
    listed = _problems(res.stdout)
    assert any(bad in p and "all zero" in p for p in listed), listed
    assert not any(good in p for p in listed), listed
