"""``faceparse convert FORMAT CKPT OUT_DIR``: public face-parser checkpoints -> faceparse model folders.

FORMAT is ``segface``, ``consensus``, ``bisenet``, ``parsenet``, ``segformer-hf`` or ``farl``
(:data:`faceparse.models.convert.FORMATS`), or ``auto``: recognise the format from the file's key names
and shapes, read safely (:func:`faceparse.models.convert.detect_format`).
"""

from __future__ import annotations

from faceparse.cli._args import PositiveInt, existing_file, out_dir, yes_no


def segface_arguments(parser) -> None:
    parser.add_argument("src", help="official SegFace checkpoint (.pt with state_dict_backbone)")
    parser.add_argument("out_dir", help="model folder to write (config.json + model.safetensors)")
    parser.add_argument(
        "--backbone", default="swin_base", help="our names or the official --model names (mobilenet, resnet...)"
    )
    parser.add_argument("--dataset", default="celebamask_hq", help="celebamask_hq, lapa or helen")
    parser.add_argument("--unsafe-load", action=yes_no(), default=False, help="allow pickled objects in the file")


def segface(cfg) -> None:
    """Convert an official SegFace checkpoint into a faceparse model folder."""
    existing_file(cfg.src, "checkpoint")
    out_dir(cfg.out_dir, "OUT_DIR")
    from faceparse.models.segface import convert_segface

    model = convert_segface(
        cfg.src, cfg.out_dir, backbone=cfg.backbone, dataset=cfg.dataset, unsafe_load=cfg.unsafe_load
    )
    print(
        f"wrote {cfg.out_dir} (segface_{model.backbone_name}, {cfg.dataset}, "
        f"{model.num_parameters() / 1e6:.2f}M parameters)"
    )


def consensus_arguments(parser) -> None:
    parser.add_argument("src", help="official consensus_net checkpoint (e.g. ptlabel_best_model.pth)")
    parser.add_argument("out_dir", help="model folder to write (config.json + model.safetensors)")
    parser.add_argument(
        "--label-set", default="part_labels", help="part_labels (background, face, hair) or cofw_occlusion"
    )
    parser.add_argument("--dropout", type=float, default=0.2, help="0.2 for the regularised release (training only)")
    parser.add_argument("--trust-pickle", action=yes_no(), default=False, help="allow pickled objects in the file")


def consensus(cfg) -> None:
    """Convert an official Structure-via-Consensus checkpoint into a faceparse model folder."""
    existing_file(cfg.src, "checkpoint")
    out_dir(cfg.out_dir, "OUT_DIR")
    from faceparse.models.consensus.model import convert_consensus

    model = convert_consensus(
        cfg.src, cfg.out_dir, label_set=cfg.label_set, dropout=cfg.dropout, trust_pickle=cfg.trust_pickle
    )
    print(f"wrote {cfg.out_dir} ({model.num_parameters():,} parameters, label set {cfg.label_set})")


# --------------------------------------------------------------- face parsers of other projects
def _common_arguments(parser, src_help: str) -> None:
    parser.add_argument("src", help=src_help)
    parser.add_argument("out_dir", help="model folder to write (config.json + model.safetensors)")
    parser.add_argument("--label-set", default=None, help="label set name (default: the checkpoint's own)")


def _run(fmt: str, cfg, src_kind: str = "checkpoint", **options) -> None:
    """Convert ``cfg.src`` with the converter of format ``fmt`` (options left at None are not passed)."""
    from pathlib import Path

    if not (src_kind == "file or folder" and Path(cfg.src).is_dir()):
        existing_file(cfg.src, "checkpoint")
    out_dir(cfg.out_dir, "OUT_DIR")
    from faceparse.models.convert import convert

    kwargs = {k: v for k, v in {"label_set": cfg.label_set, **options}.items() if v is not None}
    _report(cfg.out_dir, convert(cfg.src, cfg.out_dir, format=fmt, **kwargs))


def _report(out: str, model) -> None:
    name = getattr(model, "registry_name", None) or type(model).__name__
    print(
        f"wrote {out} ({name}, label set {model.label_set.name}, {model.num_parameters() / 1e6:.2f}M parameters, "
        f"input {model.default_input_size})"
    )


def bisenet_arguments(parser) -> None:
    _common_arguments(parser, "79999_iter.pth (face-parsing.PyTorch) or parsing_bisenet.pth (facexlib)")


def bisenet(cfg) -> None:
    """Convert a BiSeNet face-parsing checkpoint (face-parsing.PyTorch, facexlib) into a faceparse model folder."""
    _run("bisenet", cfg)


def parsenet_arguments(parser) -> None:
    _common_arguments(parser, "parsing_parsenet.pth (facexlib / PSFRGAN)")


def parsenet(cfg) -> None:
    """Convert a ParseNet checkpoint (facexlib parsing_parsenet.pth) into a faceparse model folder."""
    _run("parsenet", cfg)


def segformer_hf_arguments(parser) -> None:
    _common_arguments(
        parser, "model.safetensors / pytorch_model.bin, or its Hub snapshot folder (jonathandinu/face-parsing)"
    )
    parser.add_argument("--config", default=None, help="transformers config.json (default: the one beside SRC)")
    parser.add_argument("--input-size", type=PositiveInt, default=None, help="default input size (default: 512)")


def segformer_hf(cfg) -> None:
    """Convert a transformers SegFormer checkpoint (e.g. jonathandinu/face-parsing) into a faceparse model folder."""
    _run("segformer-hf", cfg, src_kind="file or folder", config=cfg.config, input_size=cfg.input_size)


def farl_arguments(parser) -> None:
    _common_arguments(parser, "facer's FaRL face-parsing TorchScript file (face_parsing.farl.*.pt)")
    parser.add_argument("--input-size", type=PositiveInt, default=None, help="default: the release's (448)")
    parser.add_argument(
        "--warp", choices=["tanh", "similarity", "none"], default=None, help="face crop (default: the release's)"
    )
    parser.add_argument("--warp-factor", type=float, default=None, help="tanh-warp factor (default: the release's)")


def farl(cfg) -> None:
    """Wrap a FaRL face-parsing TorchScript file (facer's release) as a faceparse model folder.

    Loading a TorchScript file runs the program it holds (faceparse.models.farl explains what that
    does and does not execute): convert only files from sources you trust."""
    _run("farl", cfg, input_size=cfg.input_size, warp=cfg.warp, warp_factor=cfg.warp_factor)


def auto_arguments(parser) -> None:
    from faceparse.models.convert import FORMATS

    parser.add_argument(
        "src", help=f"checkpoint file or Hugging Face snapshot folder, one of: {', '.join(FORMATS)} (read safely)"
    )
    parser.add_argument("out_dir", help="model folder to write (config.json + model.safetensors)")


def auto(cfg) -> None:
    """Recognise the checkpoint's format from its key names and shapes (read safely), say which and why,
    then convert it with that format's default options (SegFace: backbone and dataset read from the file)."""
    from pathlib import Path

    if not Path(cfg.src).is_dir():
        existing_file(cfg.src, "checkpoint")
    out_dir(cfg.out_dir, "OUT_DIR")
    from faceparse.models.convert import FORMATS, detect_format

    found = detect_format(cfg.src)
    opts = "".join(f" --{k.replace('_', '-')} {v}" for k, v in found.options.items())
    print(f"recognised format '{found.name}' ({FORMATS[found.name].description}): {found.reason}")
    print(f"converting as: faceparse convert {found.name} {cfg.src} {cfg.out_dir}{opts}")
    fmt = FORMATS[found.name]
    _report(cfg.out_dir, fmt.function(fmt.convert)(str(cfg.src), str(cfg.out_dir), **found.options))
