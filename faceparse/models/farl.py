"""FaRL face parsers as distributed by facer: the user's TorchScript file, run as-is.

Paper: "General Facial Representation Learning in a Visual-Linguistic Manner", Y. Zheng et al.,
CVPR 2022 (FaRL). facer (github.com/FacePerceiver/facer) releases two face parsers as TorchScript
files, a FaRL ViT-B/16 backbone with a UPerNet head:

- ``face_parsing.farl.lapa.main_ema_136500_jit191.pt``: LaPa, 11 classes, 448 x 448, used with the
  RoI tanh-warp (facer: ``get_face_align_matrix`` on the five landmarks, ``warp_factor=0.8``);
- ``face_parsing.farl.celebm.main_ema_181500_jit.pt``: CelebAMask-HQ, 19 classes, 448 x 448, used
  with a plain aligned crop (facer: ``get_face_align_matrix_celebm``, an FFHQ-style quad from the five
  landmarks, ``warp_factor=0``).

What facer does around the scripted network (``facer/face_parsing/farl.py``), and so this wrapper:

- input: RGB in [0, 1] (``uint8 / 255``), no mean/std (the network normalises inside). Recorded as
  ``input_mean = (0, 0, 0)``, ``input_std = (1, 1, 1)`` so faceparse's predictor feeds it exactly that.
- the network returns a tuple ``(logits, aux_dict)``; the logits are the first element. FaRL's
  network resizes its output to its own ``out_size`` (512 x 512 in the FaRL configs); facer samples
  that map with ``grid_sample`` when warping back. :meth:`FaRLParser.forward` resizes the logits
  bilinearly (``align_corners=False``) to the input size when they differ, the faceparse contract.
- class order: the training datasets' label indices. LaPa's is faceparse's ``lapa`` set; FaRL's
  CelebAMask-HQ order (part files neck, skin, cloth, l_ear, r_ear, l_brow, r_brow, l_eye, r_eye, nose,
  mouth, l_lip, u_lip, hair, eye_g, hat, ear_r, neck_l after background; FaRL's
  ``farl/datasets/celebamask_hq.py``) is faceparse's ``celebamask_hq`` set. facer's own names
  (``rb``, ``lb``, ``rr``...) swap left and right relative to the datasets' (image-side) naming;
  faceparse keeps the datasets' names (see :mod:`faceparse.labels`), and records facer's names in
  config.json as ``source_label_names``.

A model folder holds ``config.json`` (``"class": "faceparse.models.farl.FaRLParser"``, label set,
input size, normalisation, the ``warp`` the face crop needs: ``"tanh"`` for LaPa, ``"similarity"``
for CelebAMask-HQ, and ``warp_factor``) and ``model.torchscript.pt`` (the network, re-saved with
``torch.jit.save``); :func:`faceparse.load_model` reads it through
:meth:`FaRLParser.load_pretrained_folder`. There is no ``model.safetensors``.

What loading a TorchScript file executes (``torch.jit.load``): the archive's ``code/`` holds
TorchScript source, which TorchScript's own compiler compiles and its interpreter runs (at load: any
``__setstate__`` of scripted classes; at every call: ``forward``); its ``data.pkl`` /
``constants.pkl`` are read by TorchScript's restricted unpickler, which only rebuilds tensors and
TorchScript objects. No Python pickle is unpickled, no Python module is imported and no Python
bytecode runs. It is still a program: it can call any operator registered in the process (file
reading and writing operators exist among them), so load TorchScript files only from sources you
trust, as you would run their code. :func:`match_farl` never loads the file: it only reads the zip
record names.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from faceparse.errors import FaceParseError, MissingWeightsError
from faceparse.labels import LabelSet, get_label_set
from faceparse.models.base import CONFIG_NAME, FaceParsingModel, atomic_folder, resolve_label_set

PAPER = "FaRL (CVPR 2022), facer's TorchScript face parsers"
TORCHSCRIPT_NAME = "model.torchscript.pt"

# facer's label names (facer/face_parsing/farl.py ``pretrain_settings``), same order as the label sets.
FACER_LABEL_NAMES = {
    "lapa": ("background", "face", "rb", "lb", "re", "le", "nose", "ulip", "imouth", "llip", "hair"),
    "celebamask_hq": (
        "background", "neck", "face", "cloth", "rr", "lr", "rb", "lb", "re", "le", "nose", "imouth", "llip",
        "ulip", "hair", "eyeg", "hat", "earr", "neck_l",
    ),
}  # fmt: skip

# Per release: faceparse label set, input size and the face crop facer uses.
PRESETS: dict[str, dict[str, Any]] = {
    "lapa": {"label_set": "lapa", "input_size": 448, "warp": "tanh", "warp_factor": 0.8},
    "celebamask_hq": {"label_set": "celebamask_hq", "input_size": 448, "warp": "similarity", "warp_factor": 0.0},
}
# Names accepted for ``label_set=`` (facer's config names, the brief's alias).
LABEL_SET_ALIASES = {
    "lapa": "lapa",
    "lapa/448": "lapa",
    "celebm": "celebamask_hq",
    "celebm/448": "celebamask_hq",
    "celebamask_hq": "celebamask_hq",
    "celebamask_hq_farl": "celebamask_hq",
}
WARPS = ("tanh", "similarity", "none")


class FaRLParser(FaceParsingModel):
    """A FaRL face parser: the TorchScript network ``checkpoint`` run as-is (see the module docstring).

    Args:
        checkpoint: local TorchScript file (facer's ``face_parsing.farl.*.pt``); never downloaded.
        label_set: ``lapa`` (11 classes) or ``celebamask_hq`` (19, FaRL's order), or any label set
            with as many classes as the network outputs.
        input_size: square input size (448).
        warp: face crop the network expects: ``"tanh"`` (RoI tanh-warp, LaPa), ``"similarity"``
            (aligned crop, CelebAMask-HQ) or ``"none"``. Recorded for the front end; not applied here.
        warp_factor: facer's tanh-warp factor (0.8 LaPa, 0 CelebAMask-HQ).
        input_mean / input_std: normalisation of RGB in [0, 1] before the network (facer: none).
        source_label_names: facer's names of the classes (documentation only).
        map_location: device the TorchScript file is loaded to.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        label_set: str | LabelSet = "lapa",
        input_size: int = 448,
        warp: str = "tanh",
        warp_factor: float = 0.8,
        input_mean: Sequence[float] = (0.0, 0.0, 0.0),
        input_std: Sequence[float] = (1.0, 1.0, 1.0),
        source_label_names: Sequence[str] | None = None,
        map_location: str = "cpu",
    ) -> None:
        super().__init__()
        if checkpoint is None:
            raise MissingWeightsError(
                "FaRLParser needs checkpoint=<local TorchScript file> (facer's face_parsing.farl.*.pt); "
                "nothing is downloaded"
            )
        if warp not in WARPS:
            raise FaceParseError(f"warp must be one of {', '.join(WARPS)}, got {warp!r}")
        self.label_set = resolve_label_set(label_set, default="lapa")
        self.default_input_size = int(input_size)
        self.input_mean = tuple(float(v) for v in input_mean)
        self.input_std = tuple(float(v) for v in input_std)
        self.warp = warp
        self.warp_factor = float(warp_factor)
        self.net = load_torchscript(checkpoint, map_location=map_location)

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        elif isinstance(out, dict):
            out = out["logits"]
        if not isinstance(out, Tensor) or out.ndim != 4:
            raise FaceParseError(
                f"the FaRL TorchScript network returned {type(out).__name__}; expected logits B x K x H x W "
                "(or a tuple whose first element they are)"
            )
        if out.shape[1] != self.label_set.num_classes:
            raise FaceParseError(
                f"the FaRL TorchScript network returned {out.shape[1]} channels but label set "
                f"'{self.label_set.name}' has {self.label_set.num_classes} classes"
            )
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out

    # ------------------------------------------------------------------ save / load
    def get_config(self) -> dict[str, Any]:
        """The base config plus top-level ``warp`` / ``warp_factor`` (the face crop the network expects)."""
        config = super().get_config()
        config.update(warp=self.warp, warp_factor=self.warp_factor)
        return config

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.torchscript.pt`` (``torch.jit.save`` of the network)."""
        config = self.get_config()
        with atomic_folder(directory) as tmp, _quiet_jit():
            torch.jit.save(self.net, str(tmp / TORCHSCRIPT_NAME))
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return Path(directory)

    @classmethod
    def load_pretrained_folder(
        cls, directory: Path, config: dict[str, Any], map_location: str | torch.device = "cpu"
    ) -> FaRLParser:
        """Rebuild from a folder written by :meth:`save_pretrained` (what :func:`faceparse.load_model` calls)."""
        from faceparse.models.base import _from_jsonable

        path = Path(directory) / TORCHSCRIPT_NAME
        if not path.is_file():
            raise MissingWeightsError(
                f"'{directory}' has {CONFIG_NAME} for a FaRL parser but no {TORCHSCRIPT_NAME}: the network is "
                "missing (copy it there, or convert the facer file again with faceparse convert farl)"
            )
        kwargs = _from_jsonable(config.get("kwargs", {}))
        kwargs.update(checkpoint=str(path), map_location=str(map_location))
        model = cls(**kwargs)
        if config.get("registry_name"):
            model.registry_name = config["registry_name"]
        return model.eval()


def load_torchscript(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """``torch.jit.load`` of a local file, in eval mode; errors name the file (see the module docstring
    for what loading executes)."""
    p = Path(path)
    if not p.is_file():
        raise MissingWeightsError(f"FaRL TorchScript file '{p}' not found; pass a local file (nothing is downloaded)")
    ok, reason = match_farl(p)
    if not ok:
        raise FaceParseError(f"'{p}' is not a TorchScript file: {reason}")
    try:
        with _quiet_jit():
            net = torch.jit.load(str(p), map_location=map_location)
    except Exception as exc:  # TorchScript raises RuntimeError and friends
        raise FaceParseError(f"cannot load TorchScript file '{p}': {type(exc).__name__}: {exc}") from None
    return net.eval()


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    """Silence torch's FutureWarning that TorchScript is deprecated (facer's releases are TorchScript)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\..* is deprecated", category=FutureWarning)
        yield


def match_farl(path: str | os.PathLike) -> tuple[bool, str]:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``), with the reason either way.

    Only the zip's record names are read: nothing is unpickled, compiled or run. A TorchScript archive
    has ``<archive>/constants.pkl`` and ``<archive>/code/...`` records; a ``torch.save`` zip has neither.
    """
    p = Path(path)
    if not p.is_file():
        return False, f"'{p}' is not a file"
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        return False, f"not a zip archive (TorchScript files are zips written by torch.jit.save): {exc}"
    inner = [n.split("/", 1)[1] if "/" in n else n for n in names]
    has_constants = "constants.pkl" in inner
    code = [n for n in inner if n.startswith("code/")]
    if not (has_constants and code):
        found = "no constants.pkl" if not has_constants else "no code/ records"
        kind = " (a torch.save archive)" if "data.pkl" in inner else ""
        return False, f"a zip archive{kind} with {found}: not a TorchScript archive"
    farl_hint = [n for n in code if "farl" in n.lower() or "face_parsing" in n.lower()]
    hint = f"; FaRL modules named in it, e.g. {farl_hint[0]}" if farl_hint else ""
    return True, f"TorchScript archive ({len(code)} code records, constants.pkl){hint}"


def _preset_name(label_set: str | LabelSet | None, src: Path) -> str | None:
    if isinstance(label_set, str) and label_set.lower() in LABEL_SET_ALIASES:
        return LABEL_SET_ALIASES[label_set.lower()]
    if label_set is not None:
        return None
    name = src.name.lower()
    if ".lapa." in name:
        return "lapa"
    if ".celebm." in name:
        return "celebamask_hq"
    return None


def convert_farl(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    label_set: str | LabelSet | None = None,
    input_size: int | None = None,
    warp: str | None = None,
    warp_factor: float | None = None,
    check: bool = True,
) -> FaRLParser:
    """Wrap a FaRL face-parsing TorchScript file (facer's release) as a faceparse model folder.

    Args:
        src: ``face_parsing.farl.lapa.main_ema_136500_jit191.pt`` or
            ``face_parsing.farl.celebm.main_ema_181500_jit.pt`` (or another TorchScript face parser
            with facer's interface: RGB in [0, 1] in, ``(logits, ...)`` out).
        out_dir: the model folder to write (config.json + model.torchscript.pt).
        label_set: ``lapa`` / ``celebm`` (= ``celebamask_hq``, alias ``celebamask_hq_farl``) or any
            label set name. Default: from facer's file name (``.lapa.`` / ``.celebm.``), else from the
            number of classes the network outputs (11: LaPa, 19: CelebAMask-HQ).
        input_size / warp / warp_factor: override the release's (448, ``tanh``/0.8 for LaPa,
            ``similarity``/0 for CelebAMask-HQ).
        check: run the network once on a blank input to check it returns one channel per class
            (the only way to learn its output without trusting the file name).

    Returns the model written to ``out_dir`` (command line: ``faceparse convert farl SRC OUT_DIR``).
    """
    src = Path(src)
    net = load_torchscript(src)
    preset = _preset_name(label_set, src)
    size = int(input_size or (PRESETS[preset]["input_size"] if preset else 448))
    num_out = None
    if check or preset is None:
        with torch.no_grad():
            out = net(torch.zeros(1, 3, size, size))
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(out, Tensor) or out.ndim != 4:
            raise FaceParseError(
                f"'{src}' returned {type(out).__name__} on a 1 x 3 x {size} x {size} input; a FaRL face parser "
                "returns (logits B x K x H x W, ...)"
            )
        num_out = int(out.shape[1])
        if preset is None and label_set is None:
            preset = {11: "lapa", 19: "celebamask_hq"}.get(num_out)
            if preset is None:
                raise FaceParseError(
                    f"'{src}' outputs {num_out} classes; pass --label-set (facer's releases have 11 (lapa) or "
                    "19 (celebm))"
                )
    settings = dict(PRESETS[preset]) if preset else {"input_size": size, "warp": "none", "warp_factor": 0.0}
    labels = get_label_set(settings.pop("label_set") if preset else label_set)
    if num_out is not None and num_out != labels.num_classes:
        raise FaceParseError(
            f"'{src}' outputs {num_out} classes but label set '{labels.name}' has {labels.num_classes}"
        )
    settings["input_size"] = size
    if warp is not None:
        settings["warp"] = warp
    if warp_factor is not None:
        settings["warp_factor"] = float(warp_factor)
    del net
    model = FaRLParser(
        checkpoint=src,
        label_set=labels,
        source_label_names=FACER_LABEL_NAMES.get(preset) if preset else None,
        **settings,
    )
    model.save_pretrained(out_dir)
    return model.eval()
