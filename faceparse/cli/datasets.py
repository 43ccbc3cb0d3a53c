"""``faceparse datasets check ROOT --dataset NAME``."""

from __future__ import annotations

from typing import Any

from faceparse.cli._args import NonNegativeInt
from faceparse.errors import FaceParseError


def check_arguments(parser) -> None:
    parser.add_argument("root", help="the dataset's folder")
    parser.add_argument("--dataset", required=True, help="which adapter reads ROOT (faceparse list datasets)")
    parser.add_argument("--limit", type=NonNegativeInt, default=0, help="check only the first N faces per split")
    parser.add_argument(
        "--option", nargs="+", default=[], help="adapter arguments key=value (e.g. mask_pattern={index1}.png)"
    )


def check(cfg) -> None:
    """Validate a dataset folder: faces per split, class frequencies, and every problem found."""
    import yaml

    from faceparse.data.check import check_dataset, format_report

    kwargs: dict[str, Any] = {}
    for item in cfg.option or []:
        if "=" not in item:
            raise FaceParseError(f"--option expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        kwargs[key] = yaml.safe_load(value)
    reports = check_dataset(cfg.root, cfg.dataset, limit=cfg.limit, progress=True, **kwargs)
    print(format_report(reports))
    n = len({p for r in reports for p in r.problems})
    if n:
        raise FaceParseError(f"{n} problem(s) found in {cfg.dataset} dataset at '{cfg.root}' (listed above)")
