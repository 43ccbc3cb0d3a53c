"""The ``faceparse`` command.

- ``faceparse fit|validate|test --config CONFIG.yaml``: Lightning training (LightningCLI).
  A bare config name (``synthetic_unet``) finds the packaged ``faceparse/configs/<name>.yaml``.
- ``faceparse demo``: train a small model on synthetic faces and show what it learned.
- ``faceparse predict IMAGE... --model DIR``: label PNG and colour overlay next to each image.
- ``faceparse list models|losses|datasets|label-sets [PATTERN]``.
- Commands registered in ``faceparse.registry.COMMANDS`` (``convert segface``, ``datasets check``,
  ``bench``...): their argparse options come from the function signature.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path

from faceparse.errors import FaceParseError

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")
CONFIG_DIR = Path(__file__).parent / "configs"


def resolve_config(value: str) -> str:
    """A config path, or the name of a packaged config (with or without ``.yaml``)."""
    path = Path(value)
    if path.is_file():
        return str(path)
    packaged = CONFIG_DIR / (value if value.endswith((".yaml", ".yml")) else f"{value}.yaml")
    if packaged.is_file():
        return str(packaged)
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise FaceParseError(f"config '{value}' is neither a file nor a packaged config (packaged: {known})")


def run_lightning(argv: list[str]) -> None:
    """Run LightningCLI with faceparse's tasks and data modules (class paths in the config)."""
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

    from faceparse import tasks  # noqa: F401  (register task classes for class_path resolution)
    from faceparse.data import FaceParsingDataModule

    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            argv[i + 1] = resolve_config(argv[i + 1])
        elif arg.startswith("--config="):
            argv[i] = "--config=" + resolve_config(arg.split("=", 1)[1])
    saved_argv = sys.argv
    sys.argv = sys.argv[:1]  # the arguments arrive through args=; LightningCLI warns when both are set
    try:
        LightningCLI(
            pl.LightningModule,
            FaceParsingDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            # logs and checkpoints of configs without their own logger go to runs/, not ./lightning_logs
            trainer_defaults={"default_root_dir": "runs"},
        )
    finally:
        sys.argv = saved_argv


# ---------------------------------------------------------------------------- signature -> argparse
def _add_function_arguments(parser: argparse.ArgumentParser, fn: Callable) -> None:
    hints = typing.get_type_hints(fn)
    for name, param in inspect.signature(fn).parameters.items():
        hint = hints.get(name, str)
        origin = typing.get_origin(hint)
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args else hint
        is_list = typing.get_origin(base) in (list, tuple, Sequence) or base in (list, tuple)
        elem = (typing.get_args(base) or (str,))[0] if is_list else base
        elem = elem if elem in (int, float, str) else str
        flag = "--" + name.replace("_", "-")
        help_text = f"(default: {param.default})" if param.default is not inspect.Parameter.empty else None
        if param.default is inspect.Parameter.empty:
            parser.add_argument(name, type=elem, nargs="+" if is_list else None)
        elif base is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=param.default)
        else:
            parser.add_argument(
                flag, dest=name, type=elem, nargs="+" if is_list else None, default=param.default, help=help_text
            )


def _command_tree() -> dict:
    from faceparse import (  # noqa: F401  (registrations)
        COMMANDS,
        data,
        losses,
        models,
        tasks,  # noqa: F401
    )

    for optional in ("faceparse.bench", "faceparse.export", "faceparse.evaluate"):
        try:
            __import__(optional)
        except ImportError:
            pass
    tree: dict = {}
    for name in COMMANDS:
        node = tree
        *parents, leaf = name.split()
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = COMMANDS.get(name)
    return tree


def _add_tree(subparsers, tree: dict) -> None:
    for name, node in sorted(tree.items()):
        if callable(node):
            doc = inspect.getdoc(node) or ""
            p = subparsers.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc)
            _add_function_arguments(p, node)
            p.set_defaults(_fn=node)
        else:
            p = subparsers.add_parser(name)
            _add_tree(p.add_subparsers(dest=f"_{name}", required=True), node)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="faceparse", description="Face parsing model zoo.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in LIGHTNING_SUBCOMMANDS:
        sub.add_parser(name, help=f"Lightning {name} from a YAML config (--config X.yaml)", add_help=False)

    demo = sub.add_parser("demo", help="train a small model on synthetic faces and report per-class F1")
    demo.add_argument("--out-dir", default="demo_output")
    demo.add_argument("--model", default="unet")
    demo.add_argument("--encoder", default="resnet18")
    demo.add_argument("--image-size", type=int, default=128)
    demo.add_argument("--epochs", type=int, default=4)
    demo.add_argument("--num-train", type=int, default=1200)
    demo.add_argument("--num-val", type=int, default=200)
    demo.add_argument("--batch-size", type=int, default=8)
    demo.add_argument("--lr", type=float, default=2e-3)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--balanced", action=argparse.BooleanOptionalAction, default=True, help="class-balanced CE weights"
    )

    pred = sub.add_parser("predict", help="parse images; writes <stem>_labels.png and <stem>_overlay.png")
    pred.add_argument("images", nargs="+")
    pred.add_argument("--model", required=True, help="model directory written by save_pretrained")
    pred.add_argument("--out-dir", default=None, help="write outputs here instead of next to each image")
    pred.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    pred.add_argument("--input-size", type=int, default=None)
    pred.add_argument(
        "--detect-faces",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="find faces (scikit-image's offline LBP cascade) and parse each in its own crop (default: on; "
        "--no-detect-faces parses the whole image, e.g. for pre-cropped faces)",
    )
    pred.add_argument(
        "--no-face",
        choices=["whole", "skip"],
        default="whole",
        help="when no face is found: parse the whole image with a warning (default) or skip the image",
    )
    pred.add_argument("--occlusion", action="store_true", help="S3POT model: write <stem>_occlusion.png masks instead")
    pred.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="onnxruntime: run the model's exported model.onnx (or --model FILE.onnx) from `faceparse export`",
    )

    lst = sub.add_parser("list", help="list registered models, losses, datasets or label sets")
    lst.add_argument("what", choices=["models", "losses", "datasets", "label-sets"])
    lst.add_argument("pattern", nargs="?", default="*")

    _add_tree(sub, _command_tree())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
            run_lightning(argv)
            return 0
        args = build_parser().parse_args(argv)
        if args.command == "demo":
            from faceparse.demo import run_demo

            run_demo(**{k: v for k, v in vars(args).items() if k != "command"})
        elif args.command == "predict" and args.occlusion:
            from faceparse.tasks.s3pot import predict_occlusion

            for path in predict_occlusion(args.model, args.images, args.out_dir):
                print(f"wrote {path}")
        elif args.command == "predict":
            return _predict(args)
        elif args.command == "list":
            _list(args.what, args.pattern)
        else:
            kwargs = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
            result = args._fn(**kwargs)
            if result is not None:
                print(result)
        return 0
    except (FaceParseError, KeyError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {msg}", file=sys.stderr)
        return 2


def _predict(args: argparse.Namespace) -> int:
    """``faceparse predict``: every readable image is written; the unreadable ones are listed (exit 2)."""
    from faceparse.inference import predict_files

    def show(path: str, result: object) -> None:
        if isinstance(result, Exception):
            print(f"error: {result}", file=sys.stderr)
            return
        faces = len(result.faces)  # type: ignore[attr-defined]
        how = f"{faces} face{'s' if faces != 1 else ''}" if args.detect_faces else "whole image"
        if args.detect_faces and not result.face_found:  # type: ignore[attr-defined]
            print(f"warning: no face found in '{path}'; parsed the whole image", file=sys.stderr)
            how = "whole image"
        print(f"{path}: {how}")

    report = predict_files(
        args.model,
        args.images,
        args.out_dir,
        flip_tta=args.flip,
        input_size=args.input_size,
        detect_faces=args.detect_faces,
        no_face=args.no_face,
        on_result=show,
        backend=args.backend,
    )
    for labels, over in report.written:
        print(f"wrote {labels} and {over}")
    if report.failed:
        print(
            f"error: {len(report.failed)} of {len(args.images)} image(s) failed: " + ", ".join(report.failed),
            file=sys.stderr,
        )
        return 2
    return 0


def _list(what: str, pattern: str) -> None:
    import fnmatch

    from faceparse import DATASETS, LOSSES, MODELS, list_label_sets

    if what == "label-sets":
        names = [n for n in list_label_sets() if fnmatch.fnmatchcase(n, pattern)]
        if not names:
            raise FaceParseError(f"no label set matches '{pattern}'; label sets: {', '.join(list_label_sets())}")
        print("\n".join(names))
        return
    reg = {"models": MODELS, "losses": LOSSES, "datasets": DATASETS}[what]
    if not reg.list(pattern):
        raise FaceParseError(
            f"no {what} match '{pattern}' (shell wildcards, e.g. 'segface_*'); {what}: {', '.join(reg.list())}"
        )
    for name in reg.list(pattern):
        meta = reg.metadata(name)
        extra = f"  ({meta['paper']})" if "paper" in meta else ""
        print(f"{name}{extra}")


def entrypoint() -> None:  # console script
    sys.exit(main())


if __name__ == "__main__":
    entrypoint()
