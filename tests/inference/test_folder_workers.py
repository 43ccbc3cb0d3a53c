"""predict_files / predict_folder with num_workers > 0: decoding (and detection) in DataLoader workers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import faceparse
import faceparse.inference as inference
import faceparse.media as media
from faceparse.cli import main
from faceparse.errors import FaceParseError
from faceparse.inference import Predictor, predict_files
from faceparse.media import predict_folder


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return faceparse.build_model("unet", encoder="resnet18", input_size=32).eval()


@pytest.fixture()
def folder(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        h, w = rng.integers(40, 73, 2)
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        image[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (210, 160, 130)  # a bright square "face"
        Image.fromarray(image).save(folder / f"img{i}.{('png', 'jpg')[i % 2]}")
    (folder / "img3b.png").write_bytes(b"this is not a PNG")  # sorted between img3 and img4
    return folder


class PidBoxes:
    """A detector that finds the bright square and records which process ran it (a file per pid)."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __call__(self, image: np.ndarray) -> list[tuple[float, float, float, float, float]]:
        (self.log / str(os.getpid())).touch()
        ys, xs = np.nonzero(np.abs(image.astype(int) - (210, 160, 130)).sum(-1) < 40)  # JPEG: near the colour
        if not len(xs):
            return []
        return [(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1), 0.9)]


def run(predictor, folder: Path, out: Path, workers: int, **kw):
    calls: list[tuple[str, str]] = []
    images = sorted(p for p in folder.iterdir() if p.suffix in (".png", ".jpg"))
    report = predict_files(
        predictor,
        images,
        out,
        num_workers=workers,
        on_result=lambda path, res: calls.append((Path(path).name, type(res).__name__)),
        **kw,
    )
    return report, calls


@pytest.mark.parametrize("detect", [False, True])
def test_workers_write_the_same_bytes_in_the_same_order(model, folder, tmp_path, detect):
    log = tmp_path / "pids"
    log.mkdir()
    det = PidBoxes(log) if detect else None
    predictor = Predictor(model, batch_size=3, detector=det)  # 7 good images: batches of 3, 3, 1
    out0, out2 = tmp_path / "w0", tmp_path / "w2"
    rep0, calls0 = run(predictor, folder, out0, 0)
    pids0 = {p.name for p in log.iterdir()}
    rep2, calls2 = run(predictor, folder, out2, 2)
    pids2 = {p.name for p in log.iterdir()} - pids0

    assert [(a.name, b.name) for a, b in rep2.written] == [(a.name, b.name) for a, b in rep0.written]
    assert len(rep2.written) == 7 and calls2 == calls0
    # as before workers: an unreadable file is reported when read, each batch's images when it is parsed
    names = ["img0.png", "img1.jpg", "img2.png", "img3b.png", "img3.jpg", "img4.png", "img5.jpg", "img6.png"]
    assert [name for name, _ in calls0] == names and calls0[3][1] == "FaceParseError"
    assert list(rep2.failed) == [str(folder / "img3b.png")] == list(rep0.failed)
    for (lab0, ov0), (lab2, ov2) in zip(rep0.written, rep2.written):
        assert lab0.read_bytes() == lab2.read_bytes() and ov0.read_bytes() == ov2.read_bytes()
    if detect:  # detection ran in this process with 0 workers, in two other processes with 2
        assert pids0 == {str(os.getpid())}
        assert len(pids2) == 2 and str(os.getpid()) not in pids2
        labels = np.asarray(Image.open(rep2.written[0][0]))
        assert labels.shape == np.asarray(Image.open(folder / "img0.png")).shape[:2]


def test_predict_folder_with_workers_resumes(model, folder):
    predictor = Predictor(model, batch_size=4)
    first = predict_folder(predictor, folder, progress=True, num_workers=2)
    assert len(first.written) == 7 and len(first.failed) == 1 and not first.skipped
    done = folder / "faceparse_out"
    stamps = {p: p.stat().st_mtime_ns for p in done.glob("*.png")}
    (done / "img5_labels.png").unlink()
    again = predict_folder(predictor, folder, progress=False, num_workers=2)
    assert [lab.name for lab, _ in again.written] == ["img5_labels.png"]
    assert len(again.skipped) == 6 and str(folder / "img5.jpg") not in again.skipped
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if not p.name.startswith("img5_"))


def test_cli_num_workers_reaches_predict_files(model, folder, tmp_path, monkeypatch):
    model_dir = model.save_pretrained(tmp_path / "model")
    seen: list[int] = []
    real = inference.predict_files

    def spy(*args, num_workers=0, **kw):
        seen.append(num_workers)
        return real(*args, num_workers=num_workers, **kw)

    monkeypatch.setattr(inference, "predict_files", spy)  # image files: the CLI imports it at call time
    monkeypatch.setattr(media, "predict_files", spy)  # folders: predict_folder's reference
    base = ["predict", "--model", str(model_dir), "--no-detect-faces"]
    assert main([*base, str(folder), "--num-workers", "2"]) == 2  # the broken file: exit status 2
    assert main([*base, str(folder / "img0.png"), "--num-workers", "0", "--out-dir", str(tmp_path / "o")]) == 0
    assert seen == [2, 0]
    for cores in (8, 3, 2, 1):
        monkeypatch.setattr("faceparse.runtime.available_cpus", lambda n=cores: n)
        main([*base, str(folder / "img0.png"), "--out-dir", str(tmp_path / "o")])
    assert seen == [2, 0, 2, 1, 0, 0]  # default: min(2, cores - 2), at least 0


def crash(image: np.ndarray) -> list:
    os._exit(3)  # a detector that kills its worker process


def test_a_dead_worker_is_an_error_that_says_what_to_do(model, folder, tmp_path):
    predictor = Predictor(model, batch_size=2, detector=crash)
    with pytest.raises(FaceParseError, match="num_workers=0"):
        run(predictor, folder, tmp_path / "out", 2)
