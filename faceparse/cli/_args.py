"""Argument types and helpers shared by the command modules (jsonargparse types, checks of paths)."""

from __future__ import annotations

from pathlib import Path

from jsonargparse import ActionYesNo
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt

from faceparse.errors import FaceParseError

__all__ = ["NonNegativeInt", "PositiveFloat", "PositiveInt", "out_dir", "yes_no"]


def yes_no() -> ActionYesNo:
    """``--flag`` / ``--no-flag`` for a boolean option."""
    return ActionYesNo(no_prefix="no-")


def out_dir(value: str | Path | None, option: str = "--out-dir") -> Path | None:
    """An output folder: may not exist yet, but must not be a file."""
    if value is None or value == "":
        return None
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise FaceParseError(f"{option} '{path}' is a file, not a folder")
    return path


def existing_file(value: str | Path, option: str) -> Path:
    path = Path(value)
    if not path.exists():
        raise FaceParseError(f"{option} '{path}' does not exist")
    if path.is_dir():
        raise FaceParseError(f"{option} '{path}' is a folder, expected a file")
    return path
