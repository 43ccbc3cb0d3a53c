"""Name -> factory registries for models, losses and datasets (commands: ``faceparse.cli.COMMANDS``).

This module is light (standard library only): ``import faceparse`` imports it without torch. A
registry is filled by importing the modules that register into it; each registry names those
modules explicitly (:data:`MODEL_MODULES`...) and imports them the first time it is queried
(``get``, ``list``, ``in``, ``len``...), so listing is always complete and nothing registers as a side
effect of importing an unrelated module.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelCfg:
    """Typed description of one registered model variant (the role of timm's ``PretrainedCfg``).

    Args:
        paper: the paper (or library) the variant comes from.
        input_size: default square input size.
        label_set: default label set name (what the model predicts when built without ``label_set=``).
        exportable: whether :func:`faceparse.export.export_onnx` works for the variant.
        not_exportable_reason: why not (required when ``exportable`` is False; shown in the docs).
        tiny: constructor keyword arguments of a tiny random build for tests (``None``: not given,
            which the zoo-wide tests report as an error).
        tiny_input_size: spatial test size of the tiny build (default ``tiny["input_size"]``, else 64).
        num_classes: fixed number of output classes for models that only have one (S3POT is binary);
            ``None`` for models whose head follows the label set.
        extra: further variant facts shown by ``metadata()`` (e.g. SegFace's ``backbone``).
    """

    paper: str
    input_size: int = 512
    label_set: str = "celebamask_hq"
    exportable: bool = True
    not_exportable_reason: str = ""
    tiny: dict[str, Any] | None = None
    tiny_input_size: int | None = None
    num_classes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.exportable and not self.not_exportable_reason:
            raise ValueError("ModelCfg(exportable=False) needs not_exportable_reason")
        if self.exportable and self.not_exportable_reason:
            raise ValueError("ModelCfg has a not_exportable_reason but exportable=True")

    @property
    def test_input_size(self) -> int:
        """Spatial size of tiny test builds: ``tiny["input_size"]``, else ``tiny_input_size``, else 64."""
        return int((self.tiny or {}).get("input_size") or self.tiny_input_size or 64)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict view (what ``Registry.metadata`` returns): the fields plus ``extra`` flattened."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["tiny"] = dict(self.tiny) if self.tiny is not None else None
        d.update(self.extra)
        return d

    def replace(self, **changes: Any) -> ModelCfg:
        return dataclasses.replace(self, **changes)


class Registry:
    """A small name -> factory mapping with metadata, in the style of timm's model registry.

    >>> REG = Registry("thing")
    >>> @REG.register("a", paper="X")
    ... def make_a(size: int = 1): return size
    >>> REG.build("a", size=3)
    3

    Args:
        kind: what is registered (used in messages).
        modules: modules imported on first query, whose import registers the entries.
    """

    def __init__(self, kind: str, modules: Sequence[str] = ()) -> None:
        self.kind = kind
        self.modules = tuple(modules)
        self._loaded = not self.modules
        self._entries: dict[str, Callable[..., Any]] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._cfgs: dict[str, ModelCfg] = {}

    # ------------------------------------------------------------------ filling
    def load(self) -> None:
        """Import the registering modules (once; re-entrant calls during the imports are no-ops)."""
        if self._loaded:
            return
        self._loaded = True
        try:
            for module in self.modules:
                importlib.import_module(module)
        except BaseException:
            self._loaded = False
            raise

    def register(self, name: str | ModelCfg | None = None, cfg: ModelCfg | None = None, **metadata: Any) -> Callable:
        """Decorator registering a factory (function or class) under ``name`` (default: its ``__name__``).

        ``cfg`` (a :class:`ModelCfg`, also accepted as the only positional argument) is the typed
        config of a model variant; other registries take free ``metadata`` keywords.
        Raises ``ValueError`` when the name is taken.
        """
        if isinstance(name, ModelCfg):
            name, cfg = None, name
        if cfg is not None and metadata:
            raise ValueError(f"give a {self.kind} either cfg= or metadata keywords, not both")

        def deco(obj: Callable[..., Any]) -> Callable[..., Any]:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"cannot infer a {self.kind} name for {obj!r}; pass name=")
            if key in self._entries:
                raise ValueError(
                    f"{self.kind} '{key}' is already registered by {_qualname(self._entries[key])}; choose another name"
                )
            self._entries[key] = obj
            if cfg is not None:
                self._cfgs[key] = cfg
                self._meta[key] = cfg.to_dict()
            else:
                self._meta[key] = dict(metadata)
            return obj

        return deco

    # ------------------------------------------------------------------ queries
    def get(self, name: str) -> Callable[..., Any]:
        """Return the factory registered as ``name``; unknown names raise ``KeyError``."""
        self.load()
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
        """A copy of the metadata of ``name`` (for models: :meth:`ModelCfg.to_dict`)."""
        self.get(name)
        meta = dict(self._meta[name])
        if isinstance(meta.get("tiny"), dict):
            meta["tiny"] = dict(meta["tiny"])
        return meta

    def cfg(self, name: str) -> ModelCfg:
        """The typed :class:`ModelCfg` of ``name``; a ``KeyError`` when it was registered without one."""
        self.get(name)
        try:
            return self._cfgs[name]
        except KeyError:
            raise KeyError(f"{self.kind} '{name}' was registered without a ModelCfg") from None

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell wildcard pattern, sorted."""
        self.load()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        self.load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self.load()
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        self.load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries{'' if self._loaded else ', not loaded yet'})"


class NotExportableView(Mapping):
    """Read-only ``{model name: reason}`` of the models whose :class:`ModelCfg` says ``exportable=False``,
    derived from the registry on every access (``faceparse.export.NOT_EXPORTABLE``)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def _data(self) -> dict[str, str]:
        reg = self._registry
        return {n: reg.cfg(n).not_exportable_reason for n in reg.list() if not reg.cfg(n).exportable}

    def __getitem__(self, name: str) -> str:
        return self._data()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())

    def __repr__(self) -> str:
        return f"NotExportableView({self._data()!r})"


def register_model(cfg: ModelCfg, name: str | None = None) -> Callable:
    """Decorator registering a model entrypoint with its typed config (name: the function's name)."""
    return MODELS.register(name, cfg=cfg)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


# Modules whose import registers the entries of each registry. A new module that registers
# something must be listed here (tests/test_imports.py checks that every registration is found).
MODEL_MODULES = (
    "faceparse.models.smp_zoo",
    "faceparse.models.segface",
    "faceparse.models.rtformer",
    "faceparse.models.consensus.model",
    "faceparse.models.mct_vit.model",
    "faceparse.models.s3pot.model",
    "faceparse.models.bisenet",
    "faceparse.models.parsenet",
    "faceparse.models.segformer_hf",
)
AUX_MODEL_MODULES = ("faceparse.models.maskfpan.landmarks", "faceparse.models.maskfpan.deocclusion")
LOSS_MODULES = (
    "faceparse.losses.standard",
    "faceparse.losses.consensus",
    "faceparse.losses.disfacerep",
    "faceparse.losses.maskfpan",
    "faceparse.losses.s3pot",
)
DATASET_MODULES = (
    "faceparse.data.synthetic",
    "faceparse.data.celebamask_hq",
    "faceparse.data.lapa",
    "faceparse.data.helen",
    "faceparse.data.part_labels",
    "faceparse.data.cofw",
    "faceparse.data.consensus_pseudo",
    "faceparse.data.image_folder",
    "faceparse.data.consensus_teacher",
    "faceparse.data.disfacerep_ccd",
    "faceparse.data.disfacerep_pseudo_masks",
    "faceparse.data.maskfpan_occlusion",
    "faceparse.data.s3pot",
)
MODELS = Registry("model", MODEL_MODULES)
LOSSES = Registry("loss", LOSS_MODULES)
DATASETS = Registry("dataset", DATASET_MODULES)
# Networks that are not face parsers (no B x K x H x W logits): Mask-FPAN's landmark and de-occlusion modules.
AUX_MODELS = Registry("auxiliary model", AUX_MODEL_MODULES)
