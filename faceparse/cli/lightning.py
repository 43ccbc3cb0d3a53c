"""``faceparse fit|validate|test --config CONFIG.yaml``: Lightning's own CLI (LightningCLI).

A bare config name (``synthetic_unet``) finds the packaged ``faceparse/configs/<name>.yaml``.
Lightning and the tasks are imported only when one of these commands runs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from faceparse.errors import FaceParseError

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config(value: str) -> str:
    """A config path, or the name of a packaged config (with or without ``.yaml``)."""
    path = Path(value)
    if path.is_file():
        return str(path)
    if path.is_dir():
        raise FaceParseError(f"--config '{value}' is a folder, not a YAML file")
    packaged = CONFIG_DIR / (value if value.endswith((".yaml", ".yml")) else f"{value}.yaml")
    if packaged.is_file():
        return str(packaged)
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    raise FaceParseError(f"config '{value}' is neither a file nor a packaged config (packaged: {known})")


# Keys of the tasks' and data modules' init_args that must be positive: checked after parsing and
# before anything is built, so a wrong value is named with its key instead of failing deep in torch.
POSITIVE_KEYS = {"model": ("lr",), "data": ("batch_size", "image_size")}


def check_config_numbers(config) -> None:
    """Raise a FaceParseError naming ``section.init_args.key`` when a value of :data:`POSITIVE_KEYS` is <= 0."""
    for section, keys in POSITIVE_KEYS.items():
        init_args = config.get(f"{section}.init_args") if hasattr(config, "get") else None
        if init_args is None:
            continue
        for key in keys:
            value = init_args.get(key) if hasattr(init_args, "get") else None
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0 for v in values):
                raise FaceParseError(f"{section}.init_args.{key} must be > 0, got {value}")


def run_lightning(argv: list[str], exit_on_error: bool = True) -> None:
    """Run LightningCLI with faceparse's tasks and data modules (class paths in the config).

    ``exit_on_error=False`` raises argument errors instead of printing jsonargparse's usage text
    (``faceparse.cli.main`` prints them in its own ``error: ...`` style).
    """
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

    class FaceParseCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            check_config_numbers(self.config[self.subcommand] if self.subcommand else self.config)

    # The arguments arrive through args=. sys.argv stays as it is: Lightning's DDP launcher starts the
    # other ranks by re-running sys.argv. Only LightningCLI's warning about seeing both is silenced.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args.*command line.*")
        FaceParseCLI(
            pl.LightningModule,
            FaceParsingDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=argv,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            # logs and checkpoints of configs without their own logger go to runs/, not ./lightning_logs
            trainer_defaults={"default_root_dir": "runs"},
            parser_kwargs={
                "exit_on_error": exit_on_error,
                **{name: {"exit_on_error": exit_on_error} for name in LIGHTNING_SUBCOMMANDS},
            },
        )
