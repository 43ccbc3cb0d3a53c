"""The ``faceparse`` command: ``faceparse VERB [METHOD] ...``.

- ``faceparse fit|validate|test --config CONFIG.yaml``: Lightning training (LightningCLI, see
  :mod:`faceparse.cli.lightning`).
- every other command is a row of :data:`COMMANDS` (its words, the module that defines its arguments
  and runs it, a one-line help). Only the chosen command's module is imported, so ``faceparse --help``
  and argument errors answer before torch is loaded.

Arguments are parsed with jsonargparse. Every user error prints ``error: <message>`` to stderr and
exits with status 2; ``--debug`` (anywhere on the line) shows the traceback instead.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from faceparse.cli.lightning import CONFIG_DIR, LIGHTNING_SUBCOMMANDS, resolve_config, run_lightning

if TYPE_CHECKING:
    import argparse

__all__ = [
    "COMMANDS",
    "CONFIG_DIR",
    "LIGHTNING_SUBCOMMANDS",
    "build_parser",
    "entrypoint",
    "main",
    "resolve_config",
    "run_lightning",
]


class Command(NamedTuple):
    """One leaf command: ``module`` defines ``<func>_arguments(parser)`` and ``<func>(cfg) -> int | None``."""

    module: str
    func: str
    help: str


# The static command table: the top-level help and the dispatch read it without importing any command.
COMMANDS: dict[str, Command] = {
    "demo": Command("faceparse.cli.demo", "demo", "train a small model on synthetic faces and report per-class F1"),
    "predict": Command(
        "faceparse.cli.predict", "predict", "parse images: <stem>_labels.png and <stem>_overlay.png (S3POT: masks)"
    ),
    "evaluate": Command("faceparse.cli.evaluate", "evaluate", "score a saved model on a dataset, across label sets"),
    "evaluate consensus": Command(
        "faceparse.cli.evaluate", "consensus", "score a saved model with the consensus paper's protocols"
    ),
    "export": Command("faceparse.cli.export", "export", "export a saved model to ONNX, checked against onnxruntime"),
    "leaderboard": Command(
        "faceparse.cli.leaderboard", "leaderboard", "every model on every dataset under its protocol: one table"
    ),
    "convert segface": Command(
        "faceparse.cli.convert", "segface", "official SegFace checkpoint -> faceparse model folder"
    ),
    "convert consensus": Command(
        "faceparse.cli.convert", "consensus", "official Structure-via-Consensus checkpoint -> faceparse model folder"
    ),
    "convert bisenet": Command(
        "faceparse.cli.convert", "bisenet", "BiSeNet face parser (79999_iter.pth, parsing_bisenet.pth) -> model folder"
    ),
    "convert parsenet": Command(
        "faceparse.cli.convert", "parsenet", "ParseNet face parser (facexlib parsing_parsenet.pth) -> model folder"
    ),
    "convert segformer-hf": Command(
        "faceparse.cli.convert", "segformer_hf", "transformers SegFormer (jonathandinu/face-parsing) -> model folder"
    ),
    "convert farl": Command(
        "faceparse.cli.convert", "farl", "FaRL face-parsing TorchScript file (facer) -> model folder"
    ),
    "convert auto": Command(
        "faceparse.cli.convert", "auto", "recognise a checkpoint's format (says which and why), then convert it"
    ),
    "datasets check": Command("faceparse.cli.datasets", "check", "validate a dataset folder and list every problem"),
    "pseudo-labels cam": Command(
        "faceparse.cli.pseudo_labels", "cam", "FCAM pseudo masks from a trained MCT-ViT (DisFaceRep)"
    ),
    "pseudo-labels score": Command(
        "faceparse.cli.pseudo_labels", "score", "pseudo-mask mean F1 / mIoU against a dataset's true masks (DisFaceRep)"
    ),
    "pseudo-labels occlusion": Command(
        "faceparse.cli.pseudo_labels", "occlusion", "occlusion pseudo-labels (Structure via Consensus, Sec. 3.1)"
    ),
    "pseudo-labels teacher": Command(
        "faceparse.cli.pseudo_labels", "teacher", "teacher labels on detected face crops of a photo folder (Consensus)"
    ),
    "boxes ground": Command(
        "faceparse.cli.boxes", "ground", "CCD component boxes from a local Grounding DINO checkpoint (DisFaceRep)"
    ),
    "references generate": Command(
        "faceparse.cli.references", "generate", "S3POT occlusion-free references from a local diffusers inpainter"
    ),
    "bench": Command("faceparse.cli.bench", "bench", "speed table: parameters, FLOPs, latency, memory per model"),
    "list": Command("faceparse.cli.listing", "list_names", "list registered models, losses, datasets or label sets"),
}
LIGHTNING_HELP = "Lightning {} from a YAML config (--config X.yaml or a packaged config name)"


class UsageError(Exception):
    """A command line that names no command: printed as ``error: ...``, exit 2."""


def _families() -> dict[str, list[str]]:
    fams: dict[str, list[str]] = {}
    for name in COMMANDS:
        verb, _, method = name.partition(" ")
        if method:
            fams.setdefault(verb, []).append(method)
    return fams


def _verbs() -> list[str]:
    return [*LIGHTNING_SUBCOMMANDS, *dict.fromkeys(n.split()[0] for n in COMMANDS)]


def resolve_command(argv: Sequence[str]) -> tuple[str, list[str]]:
    """The command named by the first words of ``argv`` and the arguments that follow it."""
    verb = argv[0]
    rest = list(argv[1:])
    fams = _families()
    if verb in fams and rest and rest[0] in fams[verb]:
        return f"{verb} {rest[0]}", rest[1:]
    if verb in COMMANDS:
        return verb, rest
    if verb in fams:
        methods = ", ".join(fams[verb])
        got = f"unknown method '{rest[0]}'" if rest and not rest[0].startswith("-") else "a method is required"
        if rest and rest[0] in ("-h", "--help"):
            _top_parser().parse_args([verb, "--help"])  # the family's methods with their help; exits 0
        raise UsageError(f"faceparse {verb}: {got}; methods: {methods}")
    import difflib

    close = difflib.get_close_matches(verb, _verbs(), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UsageError(f"unknown command '{verb}'.{hint} Commands: {', '.join(_verbs())} (faceparse --help)")


def _new_parser(prog: str, description: str | None = None) -> argparse.ArgumentParser:
    from jsonargparse import ArgumentParser

    return ArgumentParser(prog=prog, description=description, exit_on_error=False, allow_abbrev=False)


def command_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """The parser of one command (its module imported now) and the function that runs it."""
    import importlib

    cmd = COMMANDS[name]
    module = importlib.import_module(cmd.module)
    run = getattr(module, cmd.func)
    parser = _new_parser(f"faceparse {name}", (run.__doc__ or cmd.help).strip())
    getattr(module, f"{cmd.func}_arguments")(parser)
    return parser, run


def _top_parser(with_commands: bool = False) -> argparse.ArgumentParser:
    """The ``faceparse`` parser; its subcommands are help stubs unless ``with_commands`` (every module)."""
    parser = _new_parser("faceparse", "Face parsing model zoo: faceparse VERB [METHOD] ... (--debug: tracebacks)")
    sub = parser.add_subcommands(dest="command")
    for name in LIGHTNING_SUBCOMMANDS:
        sub.add_subcommand(name, _new_parser(f"faceparse {name}"), help=LIGHTNING_HELP.format(name))
    fams = _families()
    for verb in dict.fromkeys(n.split()[0] for n in COMMANDS):
        p = command_parser(verb)[0] if verb in COMMANDS and with_commands else _new_parser(f"faceparse {verb}")
        sub.add_subcommand(verb, p, help=COMMANDS[verb].help if verb in COMMANDS else ", ".join(fams[verb]))
        if verb in fams:
            methods = p.add_subcommands(dest="method", required=verb not in COMMANDS)
            for method in fams[verb]:
                name = f"{verb} {method}"
                leaf = command_parser(name)[0] if with_commands else _new_parser(f"faceparse {name}")
                methods.add_subcommand(method, leaf, help=COMMANDS[name].help)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree with every command's arguments (imports every command module)."""
    return _top_parser(with_commands=True)


def _fail(message: object) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _error_message(exc: BaseException) -> str | None:
    """The message of a user error, looked for along the exception chain (None: a bug)."""
    import argparse

    from faceparse.errors import FaceParseError

    seen: set[int] = set()
    x: BaseException | None = exc
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, FaceParseError):
            return str(x)
        if isinstance(x, KeyError) and x.args and isinstance(x.args[0], str) and x.args[0].startswith("unknown "):
            return x.args[0]  # a registry's "unknown model 'x'. Did you mean ..." message
        x = x.__cause__ or x.__context__
    if isinstance(exc, argparse.ArgumentError):
        # jsonargparse nests the useful part (a union's per-type errors) in the exceptions it chains
        texts = [str(exc)]
        x = exc.__cause__
        while x is not None and len(texts) < 20:
            texts.append(str(x))
            x = x.__cause__
        detail = max(texts, key=lambda t: t.count("\n  -") + t.count("\n-"))
        key = re.match(r'Parser key "([\w.]+)":', texts[0])
        if key and not detail.startswith("Parser key"):
            detail = f'Parser key "{key.group(1)}":\n{detail}'
        return _argument_message(detail)
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return str(exc)
    return None


def _argument_message(text: str) -> str:
    """jsonargparse's 'Parser key "batch_size":\n  Not of type PositiveInt: 0 does not conform to restriction v>0'
    as '--batch-size must be > 0, got 0' (the option as typed, one line).

    Hand-written: jsonargparse has no option for one-line messages; its text is multi-line (type
    reprs, union members) and names the key, not the option the user typed.
    """
    m = re.match(r'Parser key "([\w.]+)":\s*(.*)', text, flags=re.S)
    if not m:
        return " ".join(text.split())
    option, detail = "--" + m.group(1).replace("_", "-"), m.group(2)
    bound = re.search(r"Not of type \w+: (.*?) does not conform to restriction v(>=?)0", detail)
    if bound:
        return f"{option} must be {bound.group(2)} 0, got {bound.group(1) or 'nothing'}"
    errors = re.search(r"Errors:\n(.*?)(?:\n\s*Given value type|\Z)", detail, flags=re.S)
    if errors:
        items = [" ".join(e.split()) for e in re.split(r"\n\s*- ", "\n" + errors.group(1)) if e.strip()]
        items = [e for e in items if not e.startswith("Expected a <class 'NoneType'>")]
        if items:
            return f"{option}: " + "; ".join(items)
    first = detail.strip().splitlines()[0].strip()
    given = re.search(r"Given value: (.*)", detail)
    return f"{option}: {first}" + (f" (got {given.group(1).strip()})" if given and "Given" not in first else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``faceparse`` command line; returns the exit status (0 ok, 2 user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    where = ""
    try:
        if not argv or argv[0] in ("-h", "--help"):
            _top_parser().print_help()
            return 0 if argv else 2
        if argv[0] in LIGHTNING_SUBCOMMANDS:
            where = _config_of(argv)
            run_lightning(argv, exit_on_error=False)
            return 0
        name, rest = resolve_command(argv)
        where = f"faceparse {name}: "
        parser, run = command_parser(name)
        cfg = parser.parse_args(rest)
        status = run(cfg)
        return int(status or 0)
    except SystemExit as exc:  # --help of a command
        return exc.code if isinstance(exc.code, int) else _fail(exc.code)
    except UsageError as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        return _fail("interrupted")
    except Exception as exc:
        if debug:
            raise
        message = _error_message(exc)
        if message is None:
            raise
        return _fail(f"{where}{message}" if where and not message.startswith(where.rstrip(": ")) else message)


def _config_of(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            return f"config '{argv[i + 1]}': "
        if arg.startswith("--config="):
            return f"config '{arg.split('=', 1)[1]}': "
    return f"faceparse {argv[0]}: "


def entrypoint() -> None:  # console script
    sys.exit(main())
