"""``faceparse list models|losses|datasets|label-sets [PATTERN]``."""

from __future__ import annotations

import fnmatch

from faceparse.errors import FaceParseError


def list_names_arguments(parser) -> None:
    parser.add_argument("what", choices=["models", "losses", "datasets", "label-sets"])
    parser.add_argument("pattern", nargs="?", default="*", help="shell wildcards, e.g. 'segface_*'")


def list_names(cfg) -> None:
    """List registered models (with their paper), losses, datasets or label sets matching PATTERN."""
    from faceparse import DATASETS, LOSSES, MODELS, list_label_sets

    what, pattern = cfg.what, cfg.pattern
    if what == "label-sets":
        names = [n for n in list_label_sets() if fnmatch.fnmatchcase(n, pattern)]
        if not names:
            raise FaceParseError(f"no label set matches '{pattern}'; label sets: {', '.join(list_label_sets())}")
        print("\n".join(names))
        return
    reg = {"models": MODELS, "losses": LOSSES, "datasets": DATASETS}[what]
    if not reg.list(pattern):
        raise FaceParseError(
            f"no {what} match '{pattern}' (shell wildcards, e.g. 'segface_*'); {what}: {', '.join(reg.list())}"
        )
    for name in reg.list(pattern):
        meta = reg.metadata(name)
        extra = f"  ({meta['paper']})" if "paper" in meta else ""
        print(f"{name}{extra}")
