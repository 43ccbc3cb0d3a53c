"""``faceparse datasets check ROOT --dataset NAME``: validate a dataset folder.

Every split is indexed in non-strict mode and every face is read once, so that all problems
(missing files, label maps of the wrong size, unknown label values or colours, unreadable or truncated
images) are listed together instead of stopping at the first. Prints the number of faces per split
and the class frequencies (share of labelled pixels), then the problems; exits with status 2 when
there are any.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from faceparse.errors import FaceParseError
from faceparse.labels import IGNORE_INDEX
from faceparse.registry import DATASETS

SPLITS: dict[str, tuple[str, ...]] = {
    "celebamask_hq": ("train", "val", "test"),
    "lapa": ("train", "val", "test"),
    "helen": ("train", "val", "test"),
    "cofw": ("train", "test"),
    "part_labels": ("train", "val", "test"),
}
# CelebAMask-HQ: the check builds (or refreshes) the label cache, which merges -- and so validates --
# every part file whose size/mtime changed since it was last merged; training then reuses it.
_CHECK_OPTIONS: dict[str, dict[str, Any]] = {"celebamask_hq": {"progress": True}}


@dataclass
class SplitReport:
    split: str
    count: int = 0
    pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    problems: list[str] = field(default_factory=list)
    label_set: Any = None


def _splits_for(dataset: str, root: str) -> tuple[str, ...]:
    if dataset == "helen":
        from faceparse.data.helen import detect_layout

        try:
            layout, _ = detect_layout(Path(root))
        except FaceParseError:
            return ("train",)
        return ("train", "val", "test") if layout == "smith" else ("train", "test")
    return SPLITS.get(dataset, ("train", "val", "test"))


def check_dataset(
    root: str,
    dataset: str,
    splits: tuple[str, ...] | list[str] | None = None,
    limit: int = 0,
    progress: bool = False,
    **kwargs: Any,
) -> list[SplitReport]:
    """Index and read every face of each split; return one report per split (never raises on data
    problems, only on an unknown dataset name)."""
    from tqdm.auto import tqdm

    cls = DATASETS.get(dataset)
    if not Path(root).is_dir():
        return [SplitReport("-", problems=[f"dataset root '{root}' does not exist (expected a folder)"])]
    reports = []
    for split in splits or _splits_for(dataset, root):
        rep = SplitReport(split)
        reports.append(rep)
        opts = {**_CHECK_OPTIONS.get(dataset, {}), **kwargs}
        try:
            ds = cls(root=root, split=split, image_size=None, strict=False, **opts)
        except FaceParseError as exc:
            rep.problems.append(str(exc))
            continue
        except Exception as exc:
            rep.problems.append(f"{dataset} {split} at '{root}': cannot index the split: {type(exc).__name__}: {exc}")
            continue
        rep.problems.extend(getattr(ds, "problems", []))
        rep.label_set = ds.label_set
        k = ds.label_set.num_classes
        n = len(ds) if not limit else min(limit, len(ds))
        for i in tqdm(range(n), desc=f"{dataset} {split}", disable=not progress):
            try:
                raw = ds.load_raw(i)
            except FaceParseError as exc:
                rep.problems.append(str(exc))
                continue
            except Exception as exc:
                rep.problems.append(f"{_describe(ds, i)}: cannot read: {type(exc).__name__}: {exc}")
                continue
            found = _sample_problems(raw, k, ds.label_set.background, _describe(ds, i, raw))
            if found:
                rep.problems.extend(found)
                continue
            mask = np.asarray(raw["mask"]).astype(np.int64).ravel()
            rep.pixels += np.bincount(mask.clip(0, 255), minlength=256)
            rep.count += 1
    return reports


def _describe(ds: Any, i: int, raw: dict | None = None) -> str:
    """The files of face ``i`` as far as they can be found (for problems that do not name them)."""
    meta = (raw or {}).get("meta", {}) or {}
    files = [str(meta[key]) for key in ("label_file", "mask_file", "image_file", "mat_file") if meta.get(key)]
    if files:
        return "'" + "', '".join(files) + "'"
    for attr in ("names", "ids", "items", "indices"):
        seq = getattr(ds, attr, None)
        if isinstance(seq, (list, tuple)) and i < len(seq):
            return f"face {seq[i]!r} (#{i}) under '{getattr(ds, 'root', getattr(ds, 'base', '?'))}'"
    return f"face #{i} under '{getattr(ds, 'root', '?')}'"


def _sample_problems(raw: dict, k: int, background: int, where: str) -> list[str]:
    """What is wrong with a sample an adapter returned (a second line of defence: adapters raise on
    these themselves): label values outside the set, a label map of another size than its image or
    with no face pixel, NaN/inf landmarks."""
    out = []
    image, mask = np.asarray(raw["image"]), np.asarray(raw["mask"])
    if mask.size == 0 or image.size == 0:
        return [f"{where}: empty image or label map (image {image.shape}, label map {mask.shape})"]
    if mask.shape[:2] != image.shape[:2]:
        out.append(
            f"{where}: label map is {mask.shape[1]}x{mask.shape[0]} but its image {image.shape[1]}x{image.shape[0]}"
        )
    m = mask.astype(np.int64)
    unknown = np.unique(m[((m >= k) & (m != IGNORE_INDEX)) | (m < 0)])
    if unknown.size:
        out.append(f"{where}: unknown label values {unknown[:10].tolist()} (expected 0..{k - 1} or 255)")
    elif not np.any(m == IGNORE_INDEX) and not np.any(m != background):
        out.append(f"{where}: the label map labels no face pixel (all background)")
    lmk = raw.get("landmarks")
    if lmk is not None and not np.isfinite(np.asarray(lmk, dtype=np.float64)).all():
        bad = np.nonzero(~np.isfinite(np.asarray(lmk, dtype=np.float64)).reshape(len(lmk), -1).all(axis=1))[0]
        out.append(f"{where}: landmarks hold NaN or infinite values at point index {bad[0]}")
    return out


def format_report(reports: list[SplitReport]) -> str:
    ls = next((r.label_set for r in reports if r.label_set is not None), None)
    lines = ["faces per split: " + ", ".join(f"{r.split} {r.count}" for r in reports)]
    total = sum((r.pixels for r in reports), np.zeros(256, np.int64))
    labelled = total[:IGNORE_INDEX].sum()
    if labelled:
        lines.append("class frequencies (share of labelled pixels, all splits):")
        k = ls.num_classes if ls is not None else int(np.nonzero(total[:IGNORE_INDEX])[0].max()) + 1
        for c in range(k):
            name = ls.classes[c] if ls is not None else str(c)
            lines.append(f"  {c:3d} {name:<12s} {100.0 * total[c] / labelled:7.3f} %")
        if total[IGNORE_INDEX]:
            lines.append(f"  ignore (255)     {total[IGNORE_INDEX]} pixels")
    problems = list(dict.fromkeys(p for r in reports for p in r.problems))  # a root problem once, not per split
    lines.append(f"{len(problems)} problem(s)" + (":" if problems else ""))
    lines.extend(f"  - {p}" for p in problems)
    return "\n".join(lines)
