"""Every saved model on every dataset, each under the dataset's published protocol: one table.

:func:`run` scores each (model folder, dataset) *cell* with :func:`faceparse.evaluate.evaluate`
(labels translated by class name with ``LabelSet.mapping_to``, dataset-level F1 without background,
per-class F1, mIoU) and returns one row per cell; :func:`markdown_table` and :func:`write_csv`
format the rows. ``faceparse leaderboard`` (:mod:`faceparse.cli.leaderboard`) is the command.

Protocols (:data:`PROTOCOLS`, REFERENCE.md Sec. 1 and 3). Every model sees its own input size and
normalisation (``model.default_input_size``, ``input_mean`` / ``input_std`` from its config.json):

- ``celebamask_hq``: the whole image resized to the model's input size, scored against the label map
  resized (nearest) to that size, as SegFace and FaRL score CelebAMask-HQ (512 x 512 labels).
- ``lapa``: the RoI tanh-warp from the five landmarks (warp factor 0.8, :mod:`faceparse.data.tanh_warp`)
  to the model's input size, logits warped back onto the original image and scored there, as FaRL
  and SegFace score LaPa.
- ``helen``: the whole image resized to the model's input size, logits resized back and scored at
  the original resolution (works for both the SmithCVPR2013 and the HELEN* layouts).
- any other registered dataset: resized to the model's input size and scored at that size.

Each finished cell is stored as one JSON file in a cache folder, named after the cell and keyed by
the model folder, a SHA-256 of the folder's files (config and weights), the dataset, its root, the
split, the limit and the protocol; a rerun reads finished cells back instead of scoring them again,
so an interrupted leaderboard resumes where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from faceparse.errors import FaceParseError

__all__ = [
    "CACHE_VERSION",
    "PROTOCOLS",
    "Protocol",
    "class_columns",
    "markdown_table",
    "model_fingerprint",
    "parse_dataset_spec",
    "run",
    "write_csv",
]

#: Bumped when what a cached cell holds, or how it is computed, changes (older cells are then rescored).
CACHE_VERSION = 1


@dataclass(frozen=True)
class Protocol:
    """How one dataset is scored: alignment, resolution at which predictions are scored, flip TTA."""

    align: bool | str = False  # False, True / "similarity" or "tanh" (faceparse.data.align.ALIGN_MODES)
    original_resolution: bool = False
    flip_tta: bool = False
    note: str = "resized to the model's input size, scored at that size"


PROTOCOLS: dict[str, Protocol] = {
    "celebamask_hq": Protocol(note="whole image resized to the model's input size, labels resized (nearest)"),
    "lapa": Protocol(
        align="tanh",
        original_resolution=True,
        note="RoI tanh-warp from 5 landmarks, logits warped back, scored at the original resolution",
    ),
    "helen": Protocol(
        original_resolution=True, note="whole image resized to the model's input size, scored at original resolution"
    ),
}
DEFAULT_PROTOCOL = Protocol()


# ---------------------------------------------------------------------------- inputs
def parse_dataset_spec(spec: str) -> tuple[str, str | None]:
    """``"NAME:ROOT"`` (or ``"NAME"`` for a dataset that needs no folder) -> ``(name, root)``, checked.

    Raises :class:`FaceParseError` naming the spec when the dataset is not registered, needs a root
    and has none, or the root is not an existing folder.
    """
    from faceparse.registry import DATASETS

    name, sep, root = str(spec).partition(":")
    name = name.strip()
    if not name:
        raise FaceParseError(f"--dataset '{spec}': expected NAME:ROOT, e.g. lapa:/data/LaPa")
    if name not in DATASETS:
        import difflib

        close = difflib.get_close_matches(name, list(DATASETS), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise FaceParseError(
            f"--dataset '{spec}': unknown dataset '{name}'.{hint} Registered: {', '.join(sorted(DATASETS))}"
        )
    if not sep or not root:
        param = inspect.signature(DATASETS.get(name)).parameters.get("root")
        if param is not None and param.default is inspect.Parameter.empty:
            raise FaceParseError(
                f"--dataset '{spec}': dataset '{name}' needs the folder that holds it, as {name}:ROOT "
                f"(e.g. {name}:/data/{name})"
            )
        return name, None
    path = Path(root).expanduser()
    if not path.exists():
        raise FaceParseError(f"--dataset '{spec}': the folder '{root}' does not exist")
    if not path.is_dir():
        raise FaceParseError(f"--dataset '{spec}': '{root}' is a file, expected the dataset's folder")
    return name, str(path.resolve())


def model_fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 over the names and bytes of the files directly in a model folder (config and weights)."""
    from faceparse.models.base import CONFIG_NAME

    path = Path(folder)
    if not (path / CONFIG_NAME).is_file():
        what = "does not exist" if not path.exists() else f"has no {CONFIG_NAME}"
        raise FaceParseError(f"--models '{folder}': the folder {what} (expected a folder written by save_pretrained)")
    digest = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _datasets(datasets: Mapping[str, str | None] | Iterable[str]) -> list[tuple[str, str | None]]:
    if isinstance(datasets, Mapping):
        return [parse_dataset_spec(f"{n}:{r}" if r else n) for n, r in datasets.items()]
    if isinstance(datasets, str):
        datasets = [datasets]
    return [parse_dataset_spec(s) for s in datasets]


def _cell_key(model: Path, fingerprint: str, dataset: str, root: str | None, split: str, limit, proto) -> str:
    desc = {
        "version": CACHE_VERSION,
        "model": str(model),
        "fingerprint": fingerprint,
        "dataset": dataset,
        "root": root,
        "split": split,
        "limit": limit,
        "protocol": asdict(proto),
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "x"


def default_cache_dir(out: str | os.PathLike | None, csv_path: str | os.PathLike | None) -> Path:
    """``<out stem>_cache`` beside the Markdown (else CSV) output; ``leaderboard_cache`` without either."""
    target = out or csv_path
    if target is None:
        return Path("leaderboard_cache")
    target = Path(target)
    return target.with_name(f"{target.stem}_cache")


# ---------------------------------------------------------------------------- scoring
def _score(model: Any, name: str, root: str | None, split: str, limit, proto: Protocol, batch_size, device, progress):
    from faceparse import build_dataset
    from faceparse.evaluate import evaluate

    kwargs: dict[str, Any] = {
        "split": split,
        "image_size": int(model.default_input_size),
        "mean": tuple(model.input_mean),
        "std": tuple(model.input_std),
    }
    if root is not None:
        kwargs["root"] = root
    if proto.align:
        kwargs["align"] = proto.align
    ds = build_dataset(name, **kwargs)
    return evaluate(
        model,
        ds,
        batch_size=batch_size,
        flip_tta=proto.flip_tta,
        original_resolution=proto.original_resolution,
        device=device,
        limit=limit,
        progress=progress,  # a second bar for the faces of the cell being scored
    )


def run(
    models: Sequence[str | os.PathLike],
    datasets: Mapping[str, str | None] | Iterable[str],
    split: str = "test",
    limit: int | None = None,
    out: str | os.PathLike | None = None,
    csv_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Score every model folder on every dataset; returns one row per (model, dataset), model-major.

    Args:
        models: folders written by ``save_pretrained`` (or ``faceparse convert``).
        datasets: ``"NAME:ROOT"`` strings (``"NAME"`` for a dataset that needs no folder), or a
            ``{name: root}`` mapping.
        split, limit: the split scored and at most ``limit`` faces of it (``None`` / 0: all).
        out, csv_path: write the Markdown table / the CSV there (optional).
        cache_dir: one JSON file per finished cell (default: :func:`default_cache_dir`); cells found
            there are not scored again.
        log: called with one line per cell read from the cache (``None``: silent).

    Row keys: ``model`` (folder name), ``model_path``, ``dataset``, ``root``, ``split``,
    ``num_images``, ``mean_f1``, ``miou``, ``pixel_acc`` (fractions), ``f1`` / ``iou`` (dataset class ->
    fraction), ``classes`` (dataset classes some model class maps to, background excluded),
    ``mapping``, ``label_set``, ``protocol``, ``cached`` (read from the cache), ``cache_file``.
    """
    from tqdm.auto import tqdm

    if not models:
        raise FaceParseError("leaderboard: give at least one model folder (--models DIR ...)")
    cells_ds = _datasets(datasets)
    if not cells_ds:
        raise FaceParseError("leaderboard: give at least one dataset (--dataset NAME:ROOT ...)")
    limit = int(limit) if limit else None
    folders = [Path(m).expanduser().resolve() for m in models]
    prints = [model_fingerprint(f) for f in folders]  # checks every folder before anything runs
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(out, csv_path)
    cache.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    cells = [(i, name, root) for i in range(len(folders)) for name, root in cells_ds]
    bar = tqdm(cells, desc="leaderboard", unit="cell", disable=not progress)
    loaded: dict[int, Any] = {}
    for i, name, root in bar:
        folder = folders[i]
        proto = PROTOCOLS.get(name, DEFAULT_PROTOCOL)
        key = _cell_key(folder, prints[i], name, root, split, limit, proto)
        path = cache / f"{_slug(folder.name)}__{_slug(name)}__{split}__{key[:16]}.json"
        bar.set_postfix_str(f"{folder.name} on {name}")
        row = _read_cell(path, key)
        if row is not None:
            row["cached"] = True
            message = f"cached: {folder.name} on {name} {split}, not scored again (from {path})"
            if log is print and progress:
                tqdm.write(message)  # print() would break the progress bar's line
            elif log is not None:
                log(message)
        else:
            if i not in loaded:
                from faceparse import load_model

                loaded.clear()  # one model in memory at a time
                loaded[i] = load_model(folder, map_location=device)
            model = loaded[i]
            try:
                res = _score(model, name, root, split, limit, proto, batch_size, device, progress)
            except FaceParseError as exc:
                raise FaceParseError(f"{folder.name} on {name} ({root or 'no root'}): {exc}") from exc
            background = _background(res["label_set"])
            classes = {c for c in res["mapping"].values() if c not in ("ignore", background)}
            row = {
                "model": folder.name,
                "model_path": str(folder),
                "dataset": name,
                "root": root,
                "split": split,
                "limit": limit,
                "num_images": res["num_images"],
                "mean_f1": res["mean_f1"],
                "miou": res["miou"],
                "pixel_acc": res["pixel_acc"],
                "f1": res["f1"],
                "iou": res["iou"],
                "classes": [c for c in res["f1"] if c in classes],
                "mapping": res["mapping"],
                "label_set": res["label_set"],
                "protocol": asdict(proto),
                "key": key,
            }
            _write_cell(path, row)
            row["cached"] = False
        row["cache_file"] = str(path)
        rows.append(row)
    bar.close()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(markdown_table(rows) + "\n")
    if csv_path is not None:
        write_csv(rows, csv_path)
    return rows


def _background(label_set: str) -> str:
    from faceparse.labels import get_label_set

    ls = get_label_set(label_set)
    return ls.classes[ls.background]


def _read_cell(path: Path, key: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        row = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged cell is scored again
    return row if isinstance(row, dict) and row.get("key") == key else None


def _write_cell(path: Path, row: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(row, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, path)  # a run killed mid-write leaves no half cell


# ---------------------------------------------------------------------------- tables
def class_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per-class F1 columns: the classes of each row (present in the model's and the dataset's label
    sets), in order of first appearance."""
    return list(dict.fromkeys(c for r in rows for c in r["classes"]))


def _pct(v: Any) -> str:
    return "" if v is None else ("n/a" if isinstance(v, float) and math.isnan(v) else f"{100 * float(v):.2f}")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One Markdown table: a row per cell with mean F1 (no background), mIoU and per-class F1, in %.

    A blank per-class cell: that class is not in the row's model or dataset; ``n/a``: neither the
    labels nor the predictions of the scored faces hold it.
    """
    cols = class_columns(rows)
    head = ["model", "dataset", "split", "faces", "mean F1", "mIoU", *(f"F1 {c}" for c in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
    for r in rows:
        per = [_pct(r["f1"].get(c)) if c in r["classes"] else "" for c in cols]
        cells = [r["model"], r["dataset"], r["split"], str(r["num_images"]), _pct(r["mean_f1"]), _pct(r["miou"]), *per]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """The table as CSV, values in % (full precision); per-class columns ``f1_<class>``."""
    cols = class_columns(rows)
    fields = ["model", "model_path", "dataset", "root", "split", "num_images", "mean_f1", "miou", "pixel_acc"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*fields, *(f"f1_{c}" for c in cols)])
        for r in rows:
            vals = [r[k] if k not in ("mean_f1", "miou", "pixel_acc") else 100 * r[k] for k in fields]
            per = [100 * r["f1"][c] if c in r["classes"] else "" for c in cols]
            w.writerow([*vals, *per])
    return path
