"""save_pretrained is atomic as a folder: kill -9 at any point leaves the old or the new model."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest
import torch

import faceparse
from faceparse.models.base import atomic_folder, load_model

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked savers (POSIX)")


def _save_in_child(folder: Path, fill: int) -> tuple[int, int]:
    """Fork a child that saves a model whose config and weights both record ``fill``; returns (pid, pipe)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(r)
            torch.set_num_threads(1)
            model = faceparse.build_model("unet", encoder="resnet18", input_size=64 + fill)  # config records it
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(fill)  # and so do the weights
            os.write(w, b"r")
            start = time.perf_counter()
            model.save_pretrained(folder)
            os.write(w, f"{time.perf_counter() - start:.6f}".encode())
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"r"  # built; the save starts now
    return pid, r


def _fill_of(folder: Path) -> float:
    model = load_model(folder)
    values = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (values == values[0]).all(), "weights mix two saves"
    assert model.default_input_size == 64 + int(values[0]), "config.json and weights come from different saves"
    return float(values[0])


def test_kill_minus_9_at_many_points_never_leaves_an_unloadable_folder(tmp_path):
    folder = tmp_path / "model"
    pid, r = _save_in_child(folder, 0)
    os.waitpid(pid, 0)
    save_seconds = float(os.read(r, 64).decode())
    os.close(r)
    assert _fill_of(folder) == 0.0
    (folder / "notes.txt").write_text("kept across saves")

    current, outcomes = 0.0, {"old": 0, "new": 0}
    points = 24
    # kill points spread over the whole first save and a bit past it; a later save (which replaces a
    # folder) can take longer than the first, so while no kill has come after a save completed, further
    # points wait 2x, 4x, ... the first save's time (at most 6 more)
    delays = [save_seconds * 1.3 * (i - 1) / (points - 1) for i in range(1, points + 1)]
    for i in range(1, points + 7):
        if i > points:
            if outcomes["new"]:
                break
            delays.append(save_seconds * 2 ** (i - points))
        pid, r = _save_in_child(folder, i)
        time.sleep(delays[i - 1])
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        fill = _fill_of(folder)  # must load, as the old or the new model
        assert fill in (current, float(i))
        outcomes["new" if fill == float(i) else "old"] += 1
        assert (folder / "notes.txt").read_text() == "kept across saves"
        current = fill
    print(f"kill points {len(delays)}: {outcomes}")
    assert outcomes["old"] > 0 and outcomes["new"] > 0, outcomes
    # the next save removes what interrupted saves left beside the folder
    faceparse.build_model("unet", encoder="resnet18", input_size=64).save_pretrained(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]


def test_saved_files_have_ordinary_permissions_and_a_failed_save_changes_nothing(tmp_path):
    model = faceparse.build_model("unet", encoder="resnet18", input_size=64)
    folder = model.save_pretrained(tmp_path / "m")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"]  # not 0600 beside 0644
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_folder(folder) as tmp:
            (tmp / "model.safetensors").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert (folder / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(faceparse.FaceParseError, match="is a file"):
        model.save_pretrained(tmp_path / "file")
    assert torch.equal(
        load_model(folder).state_dict()["net.segmentation_head.0.bias"],
        model.state_dict()["net.segmentation_head.0.bias"],
    )
