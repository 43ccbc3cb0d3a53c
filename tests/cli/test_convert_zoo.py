"""Every converted architecture end to end: ``faceparse convert auto`` recognises a checkpoint with the
distributed key names, ``faceparse predict`` parses scikit-image's astronaut photograph (512 x 512)
with the converted model, and ``faceparse export`` writes an ONNX file where the architecture allows.
Plus the errors of ``detect_format`` (no match lists every format, ambiguity, folders, TorchScript).

The checkpoints are built here with random values: from the release key tables of the model tests
(``tests/models/test_bisenet.py``, ``test_parsenet.py``, ``test_segface.py``), from transformers'
own SegFormer (saved with ``save_pretrained`` as on the Hub) and from the consensus release layout
(whose module names faceparse keeps).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import faceparse
from faceparse.cli import main
from faceparse.errors import FaceParseError
from faceparse.models import convert as convert_mod
from faceparse.models.convert import FORMATS, detect_format, is_torchscript_archive

MODEL_TESTS = Path(__file__).resolve().parents[1] / "models"
PREDICT_SIZE = "128"  # network input for predict (the label map is written at the photo's 512 x 512)
EXPORT_SIZE = "64"


def _model_test(name: str):
    """A model test module, loaded under its own name (for its release key table builders)."""
    spec = importlib.util.spec_from_file_location(f"_convert_zoo_{name}", MODEL_TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _landed(fmt: str) -> None:
    try:
        FORMATS[fmt].function(FORMATS[fmt].convert)
    except FaceParseError as exc:
        pytest.skip(f"converter of '{fmt}' not in this checkout: {exc}")


# ------------------------------------------------------------------------ checkpoints as distributed
def _bisenet(tmp: Path) -> Path:  # face-parsing.PyTorch 79999_iter.pth: a bare state dict
    path = tmp / "79999_iter.pth"
    torch.save(_model_test("test_bisenet").release_state(19), path)
    return path


def _parsenet(tmp: Path) -> Path:  # facexlib parsing_parsenet.pth: a bare state dict
    path = tmp / "parsing_parsenet.pth"
    torch.save(_model_test("test_parsenet").release_state(19), path)
    return path


def _segformer_hf(tmp: Path) -> Path:  # a Hub snapshot folder written by transformers itself
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.SegformerConfig(
        hidden_sizes=[8, 16, 40, 64], num_attention_heads=[1, 2, 5, 8], depths=[1, 1, 1, 1],
        decoder_hidden_size=16, num_labels=19,
    )  # fmt: skip
    folder = tmp / "face-parsing"
    transformers.SegformerForSemanticSegmentation(cfg).eval().save_pretrained(folder)
    return folder


def _segface(tmp: Path) -> Path:  # official: {"state_dict_backbone": ..., "optimizer": ..., "scheduler": ...}
    import torchvision

    sf = _model_test("test_segface")
    g = torch.Generator().manual_seed(0)
    state = {f"backbone.{k}": v for k, v in torchvision.models.mobilenet_v3_large().features.state_dict().items()}
    for key, shape in sf._official_decoder_shapes(sf.MNV3_CHANNELS).items():  # scales as test_segface's
        std = 1.0 if ("token" in key or "gaussian" in key) else 1.0 / math.sqrt(shape[1] if len(shape) > 1 else 1)
        state[key] = torch.randn(shape, generator=g) * std
        if key.endswith(("norm1.weight", "output_upscaling.1.weight")):
            state[key] = 1.0 + 0.1 * state[key]
    path = tmp / "model_299.pt"
    sf._write_official_checkpoint(state, path)
    return path


def _consensus(tmp: Path) -> Path:  # official: {"state_dict": {"module.<key>": ...}, ...}
    from faceparse.models.consensus.model import ConsensusNet

    torch.manual_seed(0)
    state = {f"module.{k}": v for k, v in ConsensusNet(label_set="part_labels").state_dict().items()}
    path = tmp / "ptlabel_best_model.pth"
    torch.save({"state_dict": state, "iteration": 1}, path)
    return path


class _TinyFaRLNet(torch.nn.Module):
    """facer's interface: RGB in [0, 1] in, ``(logits at a fixed out_size, aux dict)`` out."""

    def __init__(self, k: int = 11) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = torch.nn.Conv2d(8, k, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = (x - 0.5) / 0.25  # the network normalises inside, as FaRL's does
        logits = self.head(torch.relu(self.conv(x)))
        logits = torch.nn.functional.interpolate(logits, size=(48, 48), mode="bilinear", align_corners=False)
        return logits, {"features": logits}


def _farl(tmp: Path) -> Path:  # facer's release: a TorchScript file named after its dataset
    torch.manual_seed(0)
    path = tmp / "face_parsing.farl.lapa.main_ema_136500_jit191.pt"
    torch.jit.save(torch.jit.script(_TinyFaRLNet(11).eval()), path)
    return path


# Formats whose models are not registered (so have no ModelCfg.not_exportable_reason), and why they do
# not export: FaRL's network is the user's TorchScript program, which neither ONNX exporter traces
# through (TorchScript tracing refuses a ScriptModule called inside the trace; torch.export cannot
# export a ScriptModule).
NOT_EXPORTABLE = {"farl": "the network is a TorchScript program run as-is"}

BUILDERS = {
    "bisenet": _bisenet,
    "parsenet": _parsenet,
    "segformer-hf": _segformer_hf,
    "farl": _farl,
    "segface": _segface,
    "consensus": _consensus,
}


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, tuple[Path, str] | str]:
    """Each format's checkpoint through ``faceparse convert auto``: fmt -> (model folder, printed text),
    or the reason the format's converter is not in this checkout."""
    out: dict[str, tuple[Path, str] | str] = {}
    for fmt, build in BUILDERS.items():
        try:
            FORMATS[fmt].function(FORMATS[fmt].convert)
        except FaceParseError as exc:
            out[fmt] = f"converter of '{fmt}' not in this checkout: {exc}"
            continue
        base = tmp_path_factory.mktemp(fmt.replace("-", "_"))
        try:
            src = build(base)
        except pytest.skip.Exception as exc:  # e.g. transformers not installed
            out[fmt] = str(exc)
            continue
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            status = main(["convert", "auto", str(src), str(base / "model")])
        assert status == 0, (fmt, text.getvalue())
        out[fmt] = (base / "model", text.getvalue())
    return out


def _get(converted, fmt: str) -> tuple[Path, str]:
    found = converted[fmt]
    if isinstance(found, str):
        pytest.skip(found)
    return found


def test_every_format_has_a_builder():
    assert set(BUILDERS) == set(FORMATS)


@pytest.mark.parametrize("fmt", list(BUILDERS))
def test_convert_auto_predict_export(fmt, converted, tmp_path, astronaut, capsys):
    out, printed = _get(converted, fmt)
    assert f"recognised format '{fmt}'" in printed, printed
    assert f"converting as: faceparse convert {fmt} " in printed
    assert f"wrote {out}" in printed
    config = json.loads((out / "config.json").read_text())
    model = faceparse.load_model(out)
    k = model.num_classes

    pred = tmp_path / "pred"
    assert (
        main(["predict", str(astronaut), "--model", str(out), "--out-dir", str(pred), "--input-size", PREDICT_SIZE])
        == 0
    )
    labels = np.asarray(Image.open(pred / "astronaut_labels.png"))
    assert labels.shape[:2] == (512, 512)
    assert labels.max() < k

    # export: where the architecture allows (every exportable registered model is also exported at a
    # tiny size by tests/inference/test_export.py); one fixed size keeps this quick
    export = ["export", "--model", str(out), "--size", EXPORT_SIZE, "--no-dynamic", "--out", str(tmp_path / "m.onnx")]
    name = config.get("registry_name")
    cfg = faceparse.MODELS.cfg(name) if name and name in faceparse.MODELS else None
    reason = NOT_EXPORTABLE.get(fmt) or (cfg.not_exportable_reason if cfg is not None else "")
    if reason:
        assert main(export) == 2
        assert f"could not export {type(model).__name__} to ONNX" in capsys.readouterr().err
        return
    pytest.importorskip("onnxruntime")
    assert main(export) == 0  # and onnxruntime matched PyTorch
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_leaderboard_scores_every_converted_model(converted, tmp_path, capsys):
    """Every converted model in one `faceparse leaderboard` table (evaluate's protocol per cell), on a
    CelebAMask-HQ fixture tree, labels mapped by name."""
    from faceparse.data.synthetic import SyntheticFaces

    models = {fmt: found[0] for fmt, found in converted.items() if not isinstance(found, str)}
    if len(models) < 2:
        pytest.skip("fewer than two converters in this checkout")
    SyntheticFaces(split="test", num_samples=10, image_size=64).write_celebamask_hq(tmp_path / "celeb", num_faces=10)
    table = tmp_path / "board.md"
    args = ["leaderboard", "--models", *map(str, models.values()), "--dataset", f"celebamask_hq:{tmp_path / 'celeb'}"]
    assert main([*args, "--limit", "1", "--out", str(table), "--cache", str(tmp_path / "cache")]) == 0
    rows = [line for line in table.read_text().splitlines() if line.startswith("|")][2:]
    assert len(rows) == len(models)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "celebamask_hq"
        assert 0.0 <= float(cells[4]) <= 100.0  # mean F1 without background, in percent


# ------------------------------------------------------------------------------------- errors
def test_random_state_dict_lists_every_known_format(tmp_path, capsys):
    path = tmp_path / "random.pth"
    torch.save({"layer.weight": torch.randn(4, 3), "layer.bias": torch.randn(4)}, path)
    assert main(["convert", "auto", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "matches no known checkpoint format" in err
    for name, fmt in FORMATS.items():
        assert f"  - {name}: {fmt.description}" in err
    assert err.count("not this file: ") == len(FORMATS)
    assert "no BiSeNet keys" in err or "bisenet" in err
    assert not (tmp_path / "out").exists()


def test_ambiguous_match_is_an_error(tmp_path, monkeypatch):
    torch.save(_model_test("test_bisenet").release_state(19), tmp_path / "b.pth")
    twin = convert_mod.CheckpointFormat(
        "twin", "faceparse.models.bisenet", "match_bisenet", "convert_bisenet", "d", "s"
    )
    monkeypatch.setitem(convert_mod.FORMATS, "twin", twin)
    with pytest.raises(FaceParseError, match="matches several formats.*name one: faceparse convert bisenet\\|twin"):
        detect_format(tmp_path / "b.pth")


def test_wrong_layout_of_a_known_family_says_what_differs(tmp_path):
    state = _model_test("test_bisenet").release_state(19)
    del state["ffm.conv1.weight"]
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(FaceParseError, match="bisenet: .*\\n.*not this file: has cp.resnet.*1 missing"):
        detect_format(tmp_path / "broken.pth")


def test_folders_and_torchscript_are_recognised_without_loading(tmp_path):
    model = faceparse.build_model("consensus_net", width=8, input_size=32)
    model.save_pretrained(tmp_path / "fp")
    with pytest.raises(FaceParseError, match="already a faceparse model folder"):
        detect_format(tmp_path / "fp")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FaceParseError, match="folder without config.json"):
        detect_format(tmp_path / "empty")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "segformer"}')
    with pytest.raises(FaceParseError, match="none of model.safetensors, pytorch_model.bin"):
        detect_format(tmp_path / "hf")
    with pytest.raises(FaceParseError, match="not found"):
        detect_format(tmp_path / "missing.pth")

    # TorchScript: told apart from torch.save zips by its records; state-dict matchers never see it
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 2, 1)), tmp_path / "ts.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "sd.pt")
    assert is_torchscript_archive(tmp_path / "ts.pt") and not is_torchscript_archive(tmp_path / "sd.pt")
    _landed("farl")
    name, reason = detect_format(tmp_path / "ts.pt")  # the only TorchScript format; its converter checks outputs
    assert name == "farl" and "TorchScript archive" in reason
    with pytest.raises(FaceParseError, match="the file is a TorchScript archive, not a state dict"):
        monkeypatched = dict(FORMATS)
        monkeypatched.pop("farl")
        try:
            convert_mod.FORMATS = monkeypatched
            detect_format(tmp_path / "ts.pt")
        finally:
            convert_mod.FORMATS = FORMATS
    with pytest.raises(FaceParseError, match="outputs 2 classes; pass --label-set"):
        convert_mod.convert(tmp_path / "ts.pt", tmp_path / "ts_out")


def test_segface_options_are_read_from_the_checkpoint(tmp_path):
    found = detect_format(_segface(tmp_path))
    assert found.name == "segface"
    assert found.options == {"backbone": "mobilenet_v3_large", "dataset": "celebamask_hq"}
    name, reason = found
    assert "19 class tokens" in reason and "mobilenet_v3_large" in reason


def test_named_format_commands_and_their_options(tmp_path, capsys):
    bisenet_file, farl_file = _bisenet(tmp_path), _farl(tmp_path)
    assert main(["convert", "bisenet", str(bisenet_file), str(tmp_path / "b"), "--label-set", "generic_19"]) == 0
    assert faceparse.load_model(tmp_path / "b").label_set.name == "generic_19"
    # a file of another format, named explicitly: the converter's matcher says why not
    assert main(["convert", "parsenet", str(bisenet_file), str(tmp_path / "p")]) == 2
    assert "no ParseNet keys" in capsys.readouterr().err
    _landed("farl")
    args = ["convert", "farl", str(farl_file), str(tmp_path / "f"), "--input-size", "96", "--warp", "none"]
    assert main(args) == 0
    farl = faceparse.load_model(tmp_path / "f")
    assert (farl.default_input_size, farl.warp, farl.label_set.name) == (96, "none", "lapa")
    assert main(["convert", "farl", str(farl_file), str(tmp_path / "g"), "--label-set", "celebm"]) == 2
    assert "outputs 11 classes but label set 'celebamask_hq' has 19" in capsys.readouterr().err
    assert main(["convert", "farl", str(tmp_path / "missing.pt"), str(tmp_path / "h")]) == 2
    assert "checkpoint" in capsys.readouterr().err
