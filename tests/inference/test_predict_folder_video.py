"""`faceparse predict DIR/` (progress, unreadable files listed, resume) and `faceparse predict clip.mp4`."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import faceparse
from faceparse.cli import main
from faceparse.errors import FaceParseError
from faceparse.inference import Predictor
from faceparse.media import list_images, predict_video


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = faceparse.build_model("unet", encoder="resnet18", input_size=32).eval()
    return model.save_pretrained(tmp_path_factory.mktemp("m") / "model")


def write_clip(path, frames: int = 60, size=(64, 48)) -> list[np.ndarray]:
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (w, h))
    assert writer.isOpened()
    rgb = []
    yy, xx = np.mgrid[:h, :w]
    for t in range(frames):
        img = np.zeros((h, w, 3), np.uint8)
        img[((xx - 20 - t // 3) / 12.0) ** 2 + ((yy - 24) / 16.0) ** 2 < 1] = (220, 170, 140)  # a moving "face"
        img[..., 2] = np.clip(img[..., 2] + 3 * t, 0, 255)
        writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        rgb.append(img)
    writer.release()
    return rgb


def count_frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_folder_of_50_images_runs_and_a_rerun_resumes(tmp_path, model_dir, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(50):
        h, w = rng.integers(64, 97, 2)
        ext = ("png", "jpg")[i % 2]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.{ext}")
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    assert len(list_images(folder)) == 51

    argv = ["predict", str(folder), "--model", str(model_dir)]
    assert main(argv) == 2  # the unreadable file makes the exit status 2, the rest is written
    out = capsys.readouterr()
    assert "wrote 50 image(s)" in out.out and "skipped 0 already done" in out.out
    assert "1 unreadable" in out.out and "broken.png" in out.err
    done = folder / "faceparse_out"
    labels = sorted(done.glob("*_labels.png"))
    assert len(labels) == 50 and len(list(done.glob("*_overlay.png"))) == 50
    first = np.asarray(Image.open(done / "img07_labels.png"))
    assert first.shape == np.asarray(Image.open(folder / "img07.jpg")).shape[:2]
    stamps = {p: p.stat().st_mtime_ns for p in labels}

    # rerun: every done image skipped (outputs untouched); remove three outputs and only they are redone
    assert main(argv) == 2
    out = capsys.readouterr()
    assert "wrote 0 image(s)" in out.out and "skipped 50 already done" in out.out
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    for i in (3, 4, 5):
        next(done.glob(f"img{i:02d}_labels.png")).unlink()
    assert main(argv) == 2
    out = capsys.readouterr()
    assert "wrote 3 image(s)" in out.out and "skipped 47 already done" in out.out
    # --no-resume parses all again
    (folder / "broken.png").unlink()
    assert main([*argv, "--no-resume", "--no-detect-faces"]) == 0
    assert "wrote 50 image(s)" in capsys.readouterr().out


def test_video_of_60_frames_writes_label_maps_and_a_readable_overlay_video(tmp_path, model_dir, capsys):
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    assert count_frames(clip) == 60
    out_dir = tmp_path / "out"
    rc = main(["predict", str(clip), "--model", str(model_dir), "--out-dir", str(out_dir), "--smooth", "0.5"])
    assert rc == 0
    assert "clip.mp4: 60 frames" in capsys.readouterr().out
    frames = sorted((out_dir / "clip_labels").glob("frame_*.png"))
    assert len(frames) == 60 and frames[0].name == "frame_000000.png" and frames[-1].name == "frame_000059.png"
    assert np.asarray(Image.open(frames[10])).shape == (48, 64)
    overlay = out_dir / "clip_overlay.mp4"
    cap = cv2.VideoCapture(str(overlay))
    assert cap.isOpened()
    ok, frame = cap.read()
    assert ok and frame.shape == (48, 64, 3)
    cap.release()
    assert count_frames(overlay) == 60


def test_video_smoothing_is_the_documented_moving_average(tmp_path, model_dir):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=12)
    predictor = Predictor(model_dir, batch_size=5)
    rep = predict_video(predictor, clip, tmp_path / "o", smooth=0.5, write_overlay=False, progress=False)
    assert rep.frames == 12 and rep.overlay is None and rep.paths == {"whole image": 12}
    # independent: decode the same frames, parse each, P_t = 0.5 P_{t-1} + 0.5 p_t, argmax
    cap = cv2.VideoCapture(str(clip))
    state = None
    for t in range(12):
        ok, bgr = cap.read()
        assert ok
        p = predictor.predict(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), return_probs=True)[0].probs
        state = p if state is None else 0.5 * state + 0.5 * p
        got = np.asarray(Image.open(rep.label_files[t]))
        assert (got == state.argmax(0)).mean() > 0.999
    # without smoothing the labels are the per-frame predictions
    rep0 = predict_video(predictor, clip, tmp_path / "o0", write_overlay=False, progress=False, max_frames=3)
    assert rep0.frames == 3
    with pytest.raises(FaceParseError, match="smooth"):
        predict_video(predictor, clip, tmp_path / "x", smooth=1.0)
    with pytest.raises(FaceParseError, match="does not exist"):
        predict_video(predictor, tmp_path / "none.mp4")
