"""Import every public module of a package so that their registrations run."""

from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package_name: str, package_path: list[str]) -> None:
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
