"""The one loader of local weight files given as ``pretrained=`` / ``backbone_weights=`` / ``checkpoint=``.

Two steps, both naming the file in every error:

- :func:`read_state_dict` reads a ``.safetensors`` file or a ``torch.save`` file (``weights_only=True``:
  nothing is unpickled beyond tensors and plain containers), unwraps ``{"state_dict": ...}`` /
  ``{"model": ...}`` and strips DataParallel ``module.`` prefixes. A missing file is a
  :class:`~faceparse.errors.MissingWeightsError`; a corrupt file, a bad safetensors header, an
  unpicklable object or a file that holds no dict of tensors is a :class:`~faceparse.errors.FaceParseError`.
- :func:`load_weights` puts it into a module. Strict by default: a missing key, an unexpected key or a
  tensor of the wrong shape is an error listing how many and a few example keys. ``strict=False`` is
  an explicit opt-in (model constructors expose it as ``pretrained_strict=False``): the matching keys
  load, the rest is reported as a warning -- but a file that fits fewer than ``min_match`` of the
  module's keys is still an error, because then it is almost certainly the wrong file.

Hand-written because ``nn.Module.load_state_dict(strict=False)`` silently ignores a file for another
architecture, and its strict mode raises a RuntimeError that names no file and stops at shape errors.
"""

from __future__ import annotations

import fnmatch
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from faceparse.errors import FaceParseError, MissingWeightsError

#: Fraction of the module's keys a non-strict load must still fill.
DEFAULT_MIN_MATCH = 0.5
_EXAMPLES = 5


@dataclass
class LoadReport:
    """What :func:`load_weights` did: keys loaded, and the ones left out (after the allow lists)."""

    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "key: file (shape) vs model (shape)"


def _examples(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _EXAMPLES} more)" if len(keys) > _EXAMPLES else ""
    return ", ".join(keys[:_EXAMPLES]) + more


def read_state_dict(
    path: str | os.PathLike,
    what: str = "weights file",
    hint: str = "pass the path of a local state-dict file (nothing is downloaded)",
    unwrap: Iterable[str] = ("state_dict", "model"),
) -> dict[str, torch.Tensor]:
    """Read a local ``.safetensors`` or torch state-dict file; every failure names ``path``."""
    p = Path(path)
    if not p.is_file():
        raise MissingWeightsError(f"{what} '{p}' not found; {hint}")
    is_safetensors = p.suffix == ".safetensors"
    if not is_safetensors:
        # a safetensors file under another name: 8-byte little-endian header length, then '{'
        with open(p, "rb") as fh:
            head = fh.read(9)
        is_safetensors = len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 10**8
    try:
        if is_safetensors:
            from safetensors.torch import load_file

            state = load_file(str(p), device="cpu")
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        kind = "safetensors" if is_safetensors else "weights-only torch"
        raise FaceParseError(f"cannot read {what} '{p}' as a {kind} file: {type(exc).__name__}: {exc}") from None
    for key in unwrap:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not state:
        raise FaceParseError(
            f"{what} '{p}' holds no state dict: expected a dict of tensors (or {{'state_dict': ...}}), "
            f"found {type(state).__name__}{' (empty)' if isinstance(state, Mapping) else ''}"
        )
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FaceParseError(f"{what} '{p}': entries that are not tensors: {_examples(bad)}")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def layout_mismatch(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    optional_suffixes: Iterable[str] = ("num_batches_tracked",),
) -> str:
    """How ``state`` differs from the key -> shape layout ``expected``; ``""`` when it matches.

    Used by the checkpoint-format matchers (``match_bisenet``, ``match_parsenet``,
    ``match_consensus``...): counts of missing, unexpected and wrongly shaped keys, each with an
    example. Keys ending in one of ``optional_suffixes`` (BatchNorm counters, which old PyTorch
    versions did not save) may be absent.
    """
    keys = set(state)
    optional = {k for k in expected if k.endswith(tuple(optional_suffixes))}
    missing = sorted(set(expected) - keys - optional)
    unexpected = sorted(keys - set(expected))
    wrong = sorted(k for k in keys & set(expected) if tuple(state[k].shape) != tuple(expected[k]))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        parts.append(f"{len(wrong)} of another shape (e.g. {k} {tuple(state[k].shape)} vs {tuple(expected[k])})")
    return ", ".join(parts)


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pat) for pat in patterns)


def load_weights(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    what: str = "weights file",
    strict: bool = True,
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
    min_match: float = DEFAULT_MIN_MATCH,
) -> LoadReport:
    """Load ``state`` (read from ``path``) into ``module``.

    Args:
        allow_missing / allow_unexpected: shell-style key patterns that may be absent from the file /
            present in it without being an error (e.g. a fresh classifier head, an ImageNet ``fc.*``).
        strict: any other missing, unexpected or wrongly shaped key raises; ``False`` loads what fits
            and warns.
        min_match: even with ``strict=False``, at least this fraction of the module's keys (not
            counting ``allow_missing``) must load.
    """
    allow_missing, allow_unexpected = tuple(allow_missing), tuple(allow_unexpected)
    own = module.state_dict()
    report = LoadReport(str(path))
    usable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            if not _matches(key, allow_unexpected):
                report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            if not _matches(key, allow_unexpected):
                report.mismatched.append(f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}")
        else:
            usable[key] = value
    report.missing = [k for k in own if k not in usable and not _matches(k, allow_missing)]
    report.missing = [k for k in report.missing if not any(m.startswith(k + ":") for m in report.mismatched)]
    report.loaded = list(usable)
    name = type(module).__name__
    wanted = [k for k in own if not _matches(k, allow_missing)]
    n_fit = sum(1 for k in wanted if k in usable)
    problems = []
    if report.missing:
        problems.append(
            f"{len(report.missing)} missing key(s) (in the model, not in the file): {_examples(report.missing)}"
        )
    if report.unexpected:
        problems.append(
            f"{len(report.unexpected)} unexpected key(s) (in the file, not in the model): {_examples(report.unexpected)}"
        )
    if report.mismatched:
        problems.append(f"{len(report.mismatched)} key(s) of the wrong shape: {_examples(report.mismatched)}")
    summary = f"{what} '{path}' does not fit {name} ({n_fit} of {len(wanted)} model keys fit)"
    if strict and problems:
        raise FaceParseError(
            summary + ": " + "; ".join(problems) + ". If this is intended, opt in to a partial load with "
            "pretrained_strict=False."
        )
    if wanted and n_fit < min_match * len(wanted):
        raise FaceParseError(
            f"{summary}: fewer than {min_match:.0%} of the keys match, so it is probably a file for another "
            "model. " + "; ".join(problems)
        )
    module.load_state_dict(usable, strict=False)
    if problems:
        warnings.warn(f"partial load (strict=False): {summary}: " + "; ".join(problems), stacklevel=2)
    return report


def load_weights_file(
    module: nn.Module,
    path: str | os.PathLike,
    what: str = "weights file",
    hint: str = "pass the path of a local state-dict file (nothing is downloaded)",
    strict: bool = True,
    allow_missing: Iterable[str] = (),
    allow_unexpected: Iterable[str] = (),
    min_match: float = DEFAULT_MIN_MATCH,
) -> LoadReport:
    """:func:`read_state_dict` then :func:`load_weights`."""
    state = read_state_dict(path, what=what, hint=hint)
    return load_weights(
        module,
        state,
        path,
        what=what,
        strict=strict,
        allow_missing=allow_missing,
        allow_unexpected=allow_unexpected,
        min_match=min_match,
    )
