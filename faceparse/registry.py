"""Name -> factory registries for models, losses, datasets and command-line commands."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any


class Registry:
    """A small name -> factory mapping with metadata, in the style of timm's model registry.

    >>> REG = Registry("thing")
    >>> @REG.register("a", paper="X")
    ... def make_a(size: int = 1): return size
    >>> REG.build("a", size=3)
    3
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str | None = None, **metadata: Any) -> Callable:
        """Decorator registering a factory (function or class) under ``name``.

        Raises ``ValueError`` when the name is taken.
        """

        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"cannot infer a {self.kind} name for {obj!r}; pass name=")
            if key in self._entries:
                raise ValueError(
                    f"{self.kind} '{key}' is already registered by {_qualname(self._entries[key])}; choose another name"
                )
            self._entries[key] = obj
            self._meta[key] = dict(metadata)
            return obj

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        """Return the factory registered as ``name``; unknown names raise ``KeyError``."""
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=5, cutoff=0.4)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.kind} '{name}'.{hint} Registered {self.kind}s: {known}") from None

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the factory registered as ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def metadata(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell wildcard pattern, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


MODELS = Registry("model")
LOSSES = Registry("loss")
DATASETS = Registry("dataset")
COMMANDS = Registry("command")
# Networks that are not face parsers (no B x K x H x W logits): Mask-FPAN's landmark and de-occlusion modules.
AUX_MODELS = Registry("auxiliary model")
