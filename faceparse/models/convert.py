"""Known checkpoint formats and ``detect_format``: which public face parser a local file is.

:data:`FORMATS` is the static table behind ``faceparse convert FORMAT CKPT OUT_DIR`` and
``faceparse convert auto CKPT OUT_DIR``: for each format, the module that knows it (imported only when
asked), its matcher, its converter, a one-line description and where users obtain the checkpoint
(faceparse never downloads one).

:func:`detect_format` reads the file once, safely, and asks every matcher:

- a TorchScript archive (FaRL's face parsers) is recognised from its zip records (``constants.pkl``,
  ``code/``) without loading or running it, and only matchers that take a file path are asked;
- a folder with ``config.json`` is a Hugging Face snapshot (its ``model.safetensors`` or
  ``pytorch_model.bin`` is read); a faceparse model folder is recognised and refused (nothing to convert);
- anything else is read by :func:`faceparse.models.weights.read_state_dict` (safetensors, or
  ``torch.load(weights_only=True)``: no pickled code runs), unwrapping ``state_dict`` /
  ``state_dict_backbone`` / ``model`` and DataParallel ``module.`` prefixes.

No match, or more than one, is a :class:`~faceparse.errors.FaceParseError` that names every known
format and the matcher's reason for each.
"""

from __future__ import annotations

import importlib
import json
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faceparse.errors import FaceParseError, MissingWeightsError

__all__ = ["FORMATS", "CheckpointFormat", "Detection", "convert", "detect_format", "read_checkpoint"]

#: Weight files looked for in a Hugging Face snapshot folder, in this order.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass(frozen=True)
class CheckpointFormat:
    """One checkpoint format that ``faceparse convert`` knows.

    Args:
        name: the ``faceparse convert NAME`` method.
        module: module defining the matcher and converter (imported on first use).
        match: ``match(state) -> (bool, reason)``, or ``match(path)`` when ``takes_path``.
        convert: ``convert(src, out_dir, **kwargs) -> model`` (writes ``out_dir``).
        description: one line: the network and its label set.
        source: where users obtain the checkpoint (text only; nothing is downloaded).
        takes_path: the matcher gets the file path (TorchScript archives are never loaded to match).
        options: optional ``options(state) -> dict`` in ``module``: converter keyword arguments read from
            the checkpoint (e.g. SegFace's backbone), used by ``convert auto``.
    """

    name: str
    module: str
    match: str
    convert: str
    description: str
    source: str
    takes_path: bool = False
    options: str | None = None

    def function(self, attr: str) -> Callable[..., Any]:
        """A function of the format's module (imports it); a missing module or function is a FaceParseError."""
        try:
            return getattr(importlib.import_module(self.module), attr)
        except (ImportError, AttributeError) as exc:
            raise FaceParseError(
                f"checkpoint format '{self.name}' is not available in this installation "
                f"({self.module}.{attr}: {type(exc).__name__}: {exc})"
            ) from exc


FORMATS: dict[str, CheckpointFormat] = {
    f.name: f
    for f in (
        CheckpointFormat(
            "bisenet",
            "faceparse.models.bisenet",
            "match_bisenet",
            "convert_bisenet",
            "BiSeNet (ResNet-18) face parser, 19 CelebAMask-HQ classes in BiSeNet order, 512 input",
            "79999_iter.pth of github.com/zllrunning/face-parsing.PyTorch; parsing_bisenet.pth of facexlib",
        ),
        CheckpointFormat(
            "parsenet",
            "faceparse.models.parsenet",
            "match_parsenet",
            "convert_parsenet",
            "ParseNet (PSFRGAN) face parser, 19 CelebAMask-HQ classes, 512 input",
            "parsing_parsenet.pth of facexlib, also used by CodeFormer",
        ),
        CheckpointFormat(
            "segformer-hf",
            "faceparse.models.segformer_hf",
            "match_segformer_hf",
            "convert_segformer_hf",
            "SegFormer with transformers key names (a .safetensors/.bin file or a Hub snapshot folder)",
            "jonathandinu/face-parsing on the Hugging Face Hub: model.safetensors + config.json",
        ),
        CheckpointFormat(
            "farl",
            "faceparse.models.farl",
            "match_farl",
            "convert_farl",
            "FaRL face parser, TorchScript file run as-is (LaPa 11 or CelebAMask-HQ 19 classes), 448 input",
            "facer's releases: face_parsing.farl.lapa.main_ema_136500_jit191.pt, "
            "face_parsing.farl.celebm.main_ema_181500_jit.pt",
            takes_path=True,
        ),
        CheckpointFormat(
            "segface",
            "faceparse.models.segface",
            "match_segface",
            "convert_segface",
            "SegFace (AAAI 2025): official checkpoint with state_dict_backbone, any of its backbones",
            "github.com/Kartik-3004/SegFace releases, e.g. swin_base_celeba_512/model_299.pt",
            options="segface_options",
        ),
        CheckpointFormat(
            "consensus",
            "faceparse.models.consensus.model",
            "match_consensus",
            "convert_consensus",
            "Structure via Consensus (CVPR 2020) consensus_net, 3 classes, 128 input",
            "ptlabel_best_model.pth of github.com/isi-vista/structure_via_consensus",
        ),
    )
}


@dataclass
class Detection:
    """What :func:`detect_format` found: the format, the matcher's reason, converter options."""

    name: str
    reason: str
    options: dict[str, Any]

    def __iter__(self):  # ``name, reason = detect_format(path)``
        return iter((self.name, self.reason))


# ------------------------------------------------------------------------------------------ reading
def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript zip (``torch.jit.save``), judged from its record names only."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    # records sit under one archive folder: "<archive>/constants.pkl", "<archive>/code/..."
    inner = {n.split("/", 1)[1] if "/" in n else n for n in names}
    return "constants.pkl" in inner or any(n.startswith("code/") for n in inner)


def hf_weights_file(folder: Path) -> Path:
    """The weight file of a Hugging Face snapshot folder."""
    for name in HF_WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    if (folder / "model.safetensors.index.json").is_file():
        raise FaceParseError(
            f"'{folder}' holds a sharded checkpoint (model.safetensors.index.json); faceparse converts "
            f"single-file snapshots ({' or '.join(HF_WEIGHT_FILES)})"
        )
    raise MissingWeightsError(f"'{folder}' has config.json but none of {', '.join(HF_WEIGHT_FILES)}")


def read_checkpoint(path: str | os.PathLike) -> tuple[str, Any]:
    """Read ``path`` once, safely: ``("torchscript", path)``, or ``(kind, state_dict)`` with kind
    ``"hf-folder"`` or ``"state-dict"``. Raises :class:`FaceParseError` naming the file."""
    from collections import Counter

    import torch

    from faceparse.models.weights import read_state_dict

    p = Path(path)
    if p.is_dir():
        config = p / "config.json"
        if not config.is_file():
            raise FaceParseError(
                f"'{p}' is a folder without config.json: pass a checkpoint file, or a Hugging Face snapshot "
                f"folder (config.json + {' or '.join(HF_WEIGHT_FILES)})"
            )
        try:
            meta = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise FaceParseError(f"cannot read '{config}' as JSON: {exc}") from None
        if isinstance(meta, dict) and "faceparse_format" in meta:
            raise FaceParseError(
                f"'{p}' is already a faceparse model folder (config.json + model.safetensors); nothing to "
                "convert: use it directly (faceparse.load_model, --model)"
            )
        return "hf-folder", read_state_dict(hf_weights_file(p), what="Hugging Face weights file")
    if not p.is_file():
        raise MissingWeightsError(f"checkpoint '{p}' not found; pass the path of a local checkpoint file")
    if is_torchscript_archive(p):
        return "torchscript", p
    # official SegFace checkpoints also hold a MultiStepLR state, whose milestones are a Counter
    with torch.serialization.safe_globals([Counter]):
        state = read_state_dict(
            p,
            what="checkpoint",
            hint="pass the path of a local checkpoint file",
            unwrap=("state_dict_backbone", "state_dict", "model"),
        )
    return "state-dict", state


# ---------------------------------------------------------------------------------------- detection
def _ask(fmt: CheckpointFormat, kind: str, content: Any) -> tuple[bool, str, Callable[..., Any] | None]:
    """(matches, reason, options function) of one format for a read checkpoint."""
    try:
        matcher = fmt.function(fmt.match)
        options = fmt.function(fmt.options) if fmt.options else None
    except FaceParseError as exc:
        return False, str(exc), None
    if fmt.takes_path != (kind == "torchscript"):
        if fmt.takes_path:
            return False, "not a TorchScript archive (this format is a torch.jit.save file)", None
        return False, "the file is a TorchScript archive, not a state dict", None
    try:
        ok, reason = matcher(content)
    except Exception as exc:  # a matcher must explain, not crash: report it as this format's reason
        return False, f"matcher {fmt.match} failed: {type(exc).__name__}: {exc}", None
    return bool(ok), str(reason), options


def known_formats_text(reasons: Mapping[str, str] | None = None) -> str:
    """One line per known format (with the reason it does not match, when given)."""
    lines = []
    for name, fmt in FORMATS.items():
        lines.append(f"  - {name}: {fmt.description} (from {fmt.source})")
        if reasons and name in reasons:
            lines.append(f"      not this file: {reasons[name]}")
    return "\n".join(lines)


def detect_format(path: str | os.PathLike) -> Detection:
    """Which known checkpoint format ``path`` is: ``name, reason = detect_format(path)``.

    The result also carries ``options``: converter keyword arguments read from the checkpoint (e.g.
    SegFace's backbone and dataset). Raises :class:`FaceParseError` when no format matches (listing
    every known format and why the file is not it) or when several do.
    """
    kind, content = read_checkpoint(path)
    hits: list[tuple[str, str, Callable[..., Any] | None]] = []
    reasons: dict[str, str] = {}
    for name, fmt in FORMATS.items():
        ok, reason, options = _ask(fmt, kind, content)
        reasons[name] = reason
        if ok:
            hits.append((name, reason, options))
    if not hits:
        what = {"torchscript": "TorchScript archive", "hf-folder": "Hugging Face folder"}.get(kind, "checkpoint")
        raise FaceParseError(
            f"{what} '{path}' matches no known checkpoint format. Known formats (faceparse convert FORMAT "
            f"CKPT OUT_DIR):\n{known_formats_text(reasons)}"
        )
    if len(hits) > 1:
        listed = "; ".join(f"{n}: {r}" for n, r, _ in hits)
        raise FaceParseError(
            f"checkpoint '{path}' matches several formats ({listed}); name one: faceparse convert "
            f"{'|'.join(n for n, _, _ in hits)} CKPT OUT_DIR"
        )
    name, reason, options = hits[0]
    opts = dict(options(content)) if options is not None and kind != "torchscript" else {}
    return Detection(name, reason, opts)


def convert(src: str | os.PathLike, out_dir: str | os.PathLike, format: str = "auto", **kwargs: Any):
    """Convert checkpoint ``src`` into the faceparse model folder ``out_dir``; returns the model.

    ``format``: a name of :data:`FORMATS`, or ``"auto"`` (:func:`detect_format`, with the options it
    reads from the checkpoint; ``kwargs`` override them).
    """
    if format == "auto":
        found = detect_format(src)
        format, kwargs = found.name, {**found.options, **kwargs}
    if format not in FORMATS:
        raise FaceParseError(f"unknown checkpoint format '{format}'; known: auto, {', '.join(FORMATS)}")
    fmt = FORMATS[format]
    return fmt.function(fmt.convert)(str(src), str(out_dir), **kwargs)
