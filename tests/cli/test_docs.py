"""Docs: every code block of docs/quickstart.md runs as written; the site builds offline."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, code) of every fenced block in a Markdown file, in order."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(path.read_text())]


def test_code_blocks_are_found():
    blocks = code_blocks(QUICKSTART)
    langs = [lang for lang, _ in blocks]
    assert langs.count("python") >= 4 and "bash" in langs
    assert set(langs) <= {"python", "bash"}, "the test runs only python and bash blocks"


def test_quickstart_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("skimage")
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__quickstart__"}
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONPATH=str(ROOT))
    for i, (lang, code) in enumerate(code_blocks(QUICKSTART)):
        if lang == "python":
            exec(compile(code, f"{QUICKSTART.name} block {i}", "exec"), namespace)
            continue
        for line in code.splitlines():
            line = line.split("  #")[0].strip()
            if not line:
                continue
            argv = shlex.split(line)
            assert argv[0] == "faceparse", f"unexpected command in {QUICKSTART.name}: {line}"
            proc = subprocess.run(
                [sys.executable, "-m", "faceparse.cli", *argv[1:]], capture_output=True, text=True, env=env, timeout=600
            )
            assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    # what the page promises
    assert (tmp_path / "photo_overlay.png").is_file()
    assert (tmp_path / "predictions" / "photo_overlay.png").is_file()
    assert (tmp_path / "my_model" / "model.onnx").is_file()
    assert list((tmp_path / "bench_results").glob("speed_*.md"))
    assert namespace["pred"].labels.shape == (512, 512) and len(namespace["pred"].faces) == 1


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="needs the docs extra (mkdocs, mkdocstrings[python])",
)
def test_site_builds_offline(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "-q",
            "-f",
            str(ROOT / "mkdocs.yml"),
            "-d",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "Predictor" in api and "export_onnx" in api and "flip" in api
    assert (tmp_path / "site" / "quickstart" / "index.html").is_file()
