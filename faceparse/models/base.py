"""The model contract shared by every zoo model, and save/load as config.json + model.safetensors."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from faceparse.errors import FaceParseError, MissingWeightsError
from faceparse.images import IMAGENET_MEAN, IMAGENET_STD
from faceparse.labels import LabelSet, get_label_set

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

# Constructor arguments naming local weight files: never saved, a loaded model gets weights from disk.
TRANSIENT_ARGS = ("pretrained", "backbone_weights", "checkpoint")


class PretrainedModule(nn.Module):
    """A module that saves as ``config.json`` + ``model.safetensors`` and loads with :func:`load_model`.

    The constructor's arguments of every subclass are recorded automatically (the outermost
    constructor's, keyword-able and JSON-able), so ``save_pretrained`` needs nothing more.
    :class:`FaceParsingModel` (every zoo parser) and the networks of ``AUX_MODELS`` that are not
    parsers (Mask-FPAN's landmark-occlusion and de-occlusion modules) derive from it.
    """

    __jit_ignored_attributes__ = ["registry_name"]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        original = cls.__init__
        signature = inspect.signature(original)

        @functools.wraps(original)
        def __init__(self, *args: Any, **kw: Any) -> None:
            # Record the outermost constructor's arguments (a subclass calling super().__init__
            # must not overwrite what its own caller passed).
            outer = "_fp_init_args" not in self.__dict__
            if outer:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                params = dict(list(bound.arguments.items())[1:])
                for p in signature.parameters.values():
                    if p.kind is inspect.Parameter.VAR_KEYWORD and p.name in params:
                        params.update(params.pop(p.name))
                    elif p.kind is inspect.Parameter.VAR_POSITIONAL and p.name in params:
                        if params.pop(p.name):
                            raise TypeError(f"{cls.__name__}: *args cannot be saved; use keyword arguments")
                object.__setattr__(self, "_fp_init_args", (cls, params))
            original(self, *args, **kw)

        cls.__init__ = __init__  # type: ignore[method-assign]

    def get_config(self) -> dict[str, Any]:
        """JSON-able description from which ``load_model`` rebuilds this module (weights excluded)."""
        cls, params = self.__dict__.get("_fp_init_args", (type(self), {}))
        kwargs = {k: (None if k in TRANSIENT_ARGS else _to_jsonable(v, k)) for k, v in params.items()}
        return {
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "kwargs": kwargs,
            "registry_name": getattr(self, "registry_name", None),
            "faceparse_format": 1,
        }

    def push_to_hub(self, repo_id: str, **kwargs: Any):
        """Upload this model's ``save_pretrained`` folder and a model card to the Hugging Face Hub
        repository ``repo_id``; keyword arguments and return value: :func:`faceparse.hub.push_to_hub`.
        Load it back with ``faceparse.load_model("hf-hub:" + repo_id)``."""
        from faceparse.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created if needed).

        The save is atomic as a whole folder: a complete new folder is written beside the target and
        swapped in (:func:`atomic_folder`), so a save killed at any point leaves the folder loading as
        the old model or the new one. Other files already in the folder are kept.
        """
        from safetensors.torch import save_file

        config = self.get_config()
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_folder(directory) as tmp:
            save_file(_dedupe_shared(state), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        return Path(directory)


class _KeepBatchNormStats:
    """Restore the running statistics of ``module``'s BatchNorm layers on exit.

    ``torch.utils.checkpoint`` reruns a block's forward in the backward pass; in train mode that
    would update each BatchNorm's running mean / variance (and batch count) a second time with the
    same batch. Wrapped around the recomputation, this keeps them as without checkpointing.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> None:
        bns = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.saved = [
            (buf, buf.clone())
            for m in bns
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked)
            if buf is not None
        ]

    def __exit__(self, *exc: Any) -> None:
        # through ``.data``: a BatchNorm node saves its running buffers (unused by its train-mode
        # backward), and a version bump would fail autograd's in-place check in the backward pass
        for buf, value in self.saved:
            buf.data.copy_(value)
        self.saved = []


class FaceParsingModel(PretrainedModule):
    """Base class of zoo models.

    Subclasses implement ``forward(x) -> logits`` (``B x K x H x W`` at the input resolution, in train
    and eval mode) and may override ``forward_train(x) -> dict`` to expose auxiliary outputs. The
    constructor's arguments are recorded automatically, so ``save_pretrained`` needs nothing more.
    """

    # Attributes are documented, not annotated: under ``from __future__ import annotations`` class
    # annotations are strings TorchScript cannot read. ``label_set`` (a LabelSet) and
    # ``registry_name`` are Python-only, so TorchScript skips them.
    input_mean = IMAGENET_MEAN
    input_std = IMAGENET_STD
    default_input_size = 512
    __jit_ignored_attributes__ = ["label_set", "registry_name"]
    __jit_unused_properties__ = ["num_classes"]

    # ------------------------------------------------------------------ contract
    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Training-time outputs: ``{"logits": ...}`` plus named extras (auxiliary heads...)."""
        return {"logits": self(x)}

    @property
    def num_classes(self) -> int:
        return self.label_set.num_classes

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------ activation checkpointing
    grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass instead of storing them (timm's convention).

        Trades compute (about one extra forward pass) for training memory; it changes neither the
        outputs nor the gradients and has no effect in eval mode or under ``torch.no_grad``. Models
        that support it either run their heavy blocks through ``_maybe_checkpoint`` (and return True
        from ``_supports_grad_checkpointing``) or, when built from library modules (smp,
        torchvision), name them in ``_checkpoint_roots``; the others raise :class:`FaceParseError`.
        """
        if enable and not self._supports_grad_checkpointing():
            raise FaceParseError(
                f"{type(self).__name__} does not support activation checkpointing (set_grad_checkpointing)"
            )
        self.grad_checkpointing = bool(enable)
        roots, blocks = self._checkpoint_roots()
        if enable and (roots or blocks):
            wrap_checkpoint_segments(self, *roots, blocks=blocks)

    def _checkpoint_roots(self) -> tuple[Sequence[nn.Module], Sequence[nn.Module]]:
        """``(roots, blocks)``: library modules whose blocks (:func:`checkpoint_segments` of each root)
        and the given ``blocks`` get a checkpointed forward (:func:`wrap_checkpoint_segments`)."""
        return (), ()

    def _supports_grad_checkpointing(self) -> bool:
        roots, blocks = self._checkpoint_roots()
        return bool(roots or blocks)

    @torch.jit.unused
    def _maybe_checkpoint(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)``, through ``torch.utils.checkpoint`` when checkpointing is on and grads flow."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            import contextlib

            from torch.utils.checkpoint import checkpoint

            def contexts() -> tuple[Any, Any]:  # the recomputation must not update BatchNorm statistics twice
                return contextlib.nullcontext(), _KeepBatchNormStats(self)

            return checkpoint(fn, *args, use_reentrant=False, context_fn=contexts)
        return fn(*args)

    # ------------------------------------------------------------------ save / load
    def get_config(self) -> dict[str, Any]:
        """:meth:`PretrainedModule.get_config` plus the label set, input normalisation and size."""
        config = super().get_config()
        fmt = config.pop("faceparse_format")
        config.update(
            label_set=self.label_set.to_dict(),
            input_mean=list(self.input_mean),
            input_std=list(self.input_std),
            input_size=int(self.default_input_size),
            faceparse_format=fmt,
        )
        return config


# ---------------------------------------------------------------------------- checkpointed blocks
# Hand-written: smp and torchvision modules have no activation checkpointing of their own.
def checkpoint_segments(*roots: nn.Module) -> list[nn.Module]:
    """The blocks to checkpoint under ``roots`` (e.g. an smp encoder and decoder): each composite
    child; a Sequential / ModuleList of composite blocks (ResNet's ``layer1``, MiT's ``block1``,
    U-Net's ``blocks``) gives its blocks instead, so that only each block's input is kept."""

    def composite(m: nn.Module) -> bool:
        return next(m.children(), None) is not None

    out = []
    for root in roots:
        for child in root.children():
            if isinstance(child, (nn.Sequential, nn.ModuleList)):
                items = [m for m in child if composite(m)]
                if items:
                    out += items
                    continue
                if isinstance(child, nn.ModuleList):  # not callable itself
                    continue
            if composite(child):
                out.append(child)
    return out


def wrap_checkpoint_segments(owner: FaceParsingModel, *roots: nn.Module, blocks: Sequence[nn.Module] = ()) -> None:
    """Give the blocks of :func:`checkpoint_segments` under ``roots``, and ``blocks``, a forward
    through ``owner._maybe_checkpoint`` (once; inert while ``owner``'s checkpointing is off)."""
    if getattr(owner, "_segments_wrapped", False):
        return
    for block in [*checkpoint_segments(*roots), *blocks]:
        block.forward = _CheckpointedForward(owner, block)
    owner._segments_wrapped = True


class _CheckpointedForward:
    """``module``'s own forward run through ``owner._maybe_checkpoint`` (an instance attribute, so
    ``copy.deepcopy`` and pickling keep it pointing at the copied modules)."""

    def __init__(self, owner: FaceParsingModel, module: nn.Module) -> None:
        self.owner, self.module = owner, module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fn = type(self.module).forward.__get__(self.module)
        return self.owner._maybe_checkpoint(functools.partial(fn, **kwargs) if kwargs else fn, *args)


# ---------------------------------------------------------------------------- atomic folder writes
# Hand-written: neither safetensors nor huggingface_hub replaces a folder atomically.
_TMP_TAG = ".faceparse-tmp-"
_OLD_TAG = ".faceparse-old-"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux's renameat2(RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import os

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange)
    return rc == 0


def _fsync_tree(folder: Path) -> None:
    import os

    for p in folder.rglob("*"):
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _debris(directory: Path) -> list[Path]:
    return [
        p for p in directory.parent.glob(f".{directory.name}.faceparse-*") if _TMP_TAG in p.name or _OLD_TAG in p.name
    ]


def recover_folder(directory: str | Path) -> Path:
    """Finish a swap that was killed between its two renames (only on systems without RENAME_EXCHANGE):
    when ``directory`` is missing, the newest complete folder of the interrupted save takes its place."""
    import os

    directory = Path(directory)
    if directory.exists():
        return directory
    for tag in (_TMP_TAG, _OLD_TAG):  # a complete new folder first, else the old one
        done = sorted(
            (p for p in _debris(directory) if tag in p.name and (p / ".complete").is_file()),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        if done:
            os.rename(done[0], directory)
            (directory / ".complete").unlink(missing_ok=True)
            break
    return directory


class atomic_folder:
    """Context manager yielding a temporary folder beside ``directory`` that replaces it on success.

    Files of an existing ``directory`` that the block does not write are carried over (hard links
    where possible). On an exception the temporary folder is removed and ``directory`` is untouched.
    Leftovers of an earlier interrupted save (``.<name>.faceparse-*`` beside it) are removed first.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def __enter__(self) -> Path:
        import os
        import shutil
        import uuid

        d = self.directory
        if d.exists() and not d.is_dir():
            raise FaceParseError(f"cannot save a model to '{d}': it is a file, not a folder")
        d.parent.mkdir(parents=True, exist_ok=True)
        recover_folder(d)
        for junk in _debris(d):
            shutil.rmtree(junk, ignore_errors=True)
        self.tmp = d.parent / f".{d.name}{_TMP_TAG}{uuid.uuid4().hex[:8]}"
        os.mkdir(self.tmp)
        self.umask = os.umask(0)
        os.umask(self.umask)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        import os
        import shutil
        import uuid

        d, tmp = self.directory, self.tmp
        if exc_type is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        try:
            if d.is_dir():  # keep what else the folder holds (an exported model.onnx, notes...)
                for item in d.iterdir():
                    target = tmp / item.name
                    if target.exists() or item.name == ".complete":
                        continue
                    if item.is_dir():
                        shutil.copytree(item, target, copy_function=_link_or_copy, symlinks=True)
                    else:
                        _link_or_copy(item, target)
            for p in [tmp, *tmp.rglob("*")]:  # ordinary permissions (temp files may be created 0600)
                if not p.is_symlink():
                    os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~self.umask)
            (tmp / ".complete").touch()
            _fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if not d.exists():
            os.rename(tmp, d)
        elif _exchange(tmp, d):  # tmp now holds the old folder
            pass
        else:  # two renames; recover_folder() completes a swap killed between them
            old = d.parent / f".{d.name}{_OLD_TAG}{uuid.uuid4().hex[:8]}"
            (d / ".complete").touch()
            os.rename(d, old)
            os.rename(tmp, d)
            tmp = old
        (d / ".complete").unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    import os
    import shutil

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _dedupe_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing storage (tied weights): store clones.
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen and ptr != -1 else v
        seen.add(ptr)
    return out


def _to_jsonable(value: Any, key: str) -> Any:
    if isinstance(value, LabelSet):
        return {"__labelset__": value.to_dict()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v, key) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v, key) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    raise TypeError(
        f"constructor argument '{key}' of type {type(value).__name__} cannot be saved in config.json; "
        "pass JSON-able values (str, numbers, lists, dicts, LabelSet)"
    )


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__labelset__"}:
            return LabelSet.from_dict(value["__labelset__"])
        return {k: _from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


def load_model(
    directory: str | Path, map_location: str | torch.device = "cpu", strict: bool = True
) -> FaceParsingModel:
    """Rebuild a model saved with ``save_pretrained`` (config.json + model.safetensors): a zoo parser
    (:class:`FaceParsingModel`) or another :class:`PretrainedModule` (Mask-FPAN's LOM and DOM).

    ``directory`` may also be ``"hf-hub:ORG/NAME[@REVISION]"``: the folder is downloaded from the
    Hugging Face Hub into its cache first (:mod:`faceparse.hub`; the only case that uses the network)."""
    from safetensors.torch import load_file

    if isinstance(directory, str) and directory.startswith("hf-hub:"):
        from faceparse.hub import download_model

        directory = download_model(directory)
    directory = recover_folder(directory)
    if not directory.is_dir():
        raise MissingWeightsError(
            f"model directory '{directory}' does not exist (expected a folder written by save_pretrained)"
        )
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file():
        raise MissingWeightsError(f"'{directory}' has no {CONFIG_NAME}: not a faceparse model directory")
    try:
        config = json.loads(config_path.read_text())
        module_name, _, cls_name = config["class"].rpartition(".")
        kwargs = _from_jsonable(config["kwargs"])
    except (json.JSONDecodeError, KeyError) as exc:
        raise FaceParseError(f"'{config_path}' is not a valid faceparse config ({exc})") from exc
    if not module_name.startswith("faceparse."):
        raise FaceParseError(
            f"'{config_path}' names class '{config['class']}' outside faceparse; refusing to import it"
        )
    cls = getattr(importlib.import_module(module_name), cls_name.split(".")[-1], None)
    if not (isinstance(cls, type) and issubclass(cls, PretrainedModule)):
        raise FaceParseError(f"'{config_path}' names '{config['class']}', which is not a faceparse model class")
    loader = getattr(cls, "load_pretrained_folder", None)
    if loader is not None:  # weights kept otherwise than in model.safetensors (FaRL: a TorchScript file)
        return loader(directory, config, map_location=map_location)
    if not weights_path.is_file():
        raise MissingWeightsError(
            f"'{directory}' has {CONFIG_NAME} but no {WEIGHTS_NAME}: the weights are missing "
            "(copy them there or save the model again with save_pretrained)"
        )
    model = cls(**kwargs)
    if config.get("registry_name"):
        model.registry_name = config["registry_name"]
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except Exception as exc:  # safetensors raises its own error types
        raise FaceParseError(f"cannot read weights '{weights_path}': {exc}") from exc
    own = model.state_dict()
    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise FaceParseError(
            f"'{config_path}' does not match the weights in '{weights_path}': {len(wrong)} tensor(s) differ in "
            f"shape, e.g. '{k}' is {tuple(state[k].shape)} in the weights but {tuple(own[k].shape)} for the model "
            f"config.json describes (was config.json edited, or copied from another model?)"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise FaceParseError(
            f"weights in '{weights_path}' do not match {config['class']}: "
            f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return model.eval()


def resolve_label_set(
    label_set: str | LabelSet | dict | None, num_classes: int | None = None, default: str = "celebamask_hq"
) -> LabelSet:
    """Label set from a name/LabelSet, checking an optional explicit class count."""
    ls = get_label_set(label_set if label_set is not None else default)
    if num_classes is not None and num_classes != ls.num_classes:
        raise FaceParseError(
            f"num_classes={num_classes} does not match label set '{ls.name}' ({ls.num_classes} classes)"
        )
    return ls


def checkpoint_label_set(
    label_set: str | LabelSet | None, num_classes: int, default: str, what: str, src: Any
) -> LabelSet:
    """Label set of a converted checkpoint that predicts ``num_classes``: ``label_set`` when given, else
    ``default`` when it has that many classes, else ``generic_<K>``; a count mismatch names the file."""
    if label_set is None:
        label_set = default if get_label_set(default).num_classes == num_classes else f"generic_{num_classes}"
    labels = resolve_label_set(label_set)
    if labels.num_classes != num_classes:
        raise FaceParseError(
            f"{what} '{src}' predicts {num_classes} classes but label set '{labels.name}' has {labels.num_classes}"
        )
    return labels
