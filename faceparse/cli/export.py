"""``faceparse export --model DIR``."""

from __future__ import annotations

from pathlib import Path

from faceparse.cli._args import PositiveInt, yes_no
from faceparse.errors import FaceParseError, require


def export_arguments(parser) -> None:
    parser.add_argument(
        "--model", required=True, help="model folder written by save_pretrained, a model name, or hf-hub:ORG/NAME"
    )
    parser.add_argument("--format", default="onnx", help="onnx (the only format)")
    parser.add_argument("--out", default=None, help="output file (default: MODEL/model.onnx)")
    parser.add_argument("--size", type=PositiveInt, default=None, help="traced input size (default: the model's)")
    parser.add_argument("--opset", type=PositiveInt, default=None, help="ONNX opset (default: faceparse's)")
    parser.add_argument("--check", action=yes_no(), default=True, help="compare onnxruntime with PyTorch")
    parser.add_argument("--dynamic", action=yes_no(), default=True, help="dynamic height and width when they match")


def export(cfg) -> None:
    """Export a saved model folder (or a registered model name) to ONNX.

    Writes MODEL/model.onnx (or --out) and compares onnxruntime with PyTorch (--no-check skips that).
    Height and width stay dynamic when onnxruntime matches PyTorch at a second size too, else the
    traced size is fixed; --no-dynamic fixes it. Nothing is written when the export or a check fails.
    """
    if cfg.format.lower() != "onnx":
        raise FaceParseError(f"--format '{cfg.format}' is not supported; the only export format is 'onnx'")
    if cfg.out and Path(cfg.out).is_dir():
        raise FaceParseError(f"--out '{cfg.out}' is a folder; give the .onnx file to write")
    require("onnx", "onnx")
    if cfg.check or cfg.dynamic:
        require("onnxruntime", "onnx")
    from faceparse.export import DEFAULT_OPSET, _load_any, export_onnx
    from faceparse.hub import download_model, is_hub_id, parse_hub_id

    if is_hub_id(cfg.model):  # written beside the current folder, not into the Hub cache
        default_target = Path(parse_hub_id(cfg.model)[0].split("/")[-1] + ".onnx")
        cfg.model = str(download_model(cfg.model))
    else:
        src = Path(cfg.model)
        default_target = src / "model.onnx" if src.is_dir() else Path(f"{cfg.model}.onnx")
    model = _load_any(cfg.model)
    target = Path(cfg.out) if cfg.out else default_target
    res = export_onnx(
        model,
        target,
        input_size=cfg.size,
        opset=cfg.opset or DEFAULT_OPSET,
        check=cfg.check,
        dynamic_hw=None if cfg.dynamic else False,
    )
    print(f"wrote {res.path} ({res.summary()})")
