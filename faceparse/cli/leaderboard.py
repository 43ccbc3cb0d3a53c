"""``faceparse leaderboard --models DIR [DIR ...] --dataset NAME:ROOT [NAME:ROOT ...]``."""

from __future__ import annotations

from faceparse.cli._args import NonNegativeInt, PositiveInt


def leaderboard_arguments(parser) -> None:
    parser.add_argument("--models", nargs="+", required=True, help="model folders (save_pretrained / convert)")
    parser.add_argument(
        "--dataset", nargs="+", required=True, help="NAME:ROOT per dataset, e.g. lapa:/data/LaPa (synthetic: no root)"
    )
    parser.add_argument("--out", default=None, help="write the Markdown table there (it is printed too)")
    parser.add_argument("--csv", default=None, help="write the table as CSV there (values in percent)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=NonNegativeInt, default=0, help="score only the first N faces (0: all)")
    parser.add_argument("--batch-size", type=PositiveInt, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cache", default=None, help="one JSON per finished cell (default: <out stem>_cache beside --out or --csv)"
    )


def leaderboard(cfg) -> None:
    """Score every model folder on every dataset under the dataset's protocol; one table.

    Each (model, dataset) cell is scored with the machinery of faceparse evaluate: labels mapped by
    class name, dataset-level mean F1 without background, mIoU, per-class F1 (in %). LaPa: RoI
    tanh-warp from 5 landmarks, scored at the original resolution; Helen: scored at the original resolution;
    CelebAMask-HQ and others: at the model's input size. Finished cells are kept in the cache
    folder, so a rerun skips them and an interrupted run resumes.
    Example: faceparse leaderboard --models runs/a runs/b --dataset lapa:/data/LaPa helen:/data/helen --out board.md
    """
    from faceparse.leaderboard import markdown_table, run

    rows = run(
        cfg.models,
        cfg.dataset,
        split=cfg.split,
        limit=cfg.limit or None,
        out=cfg.out,
        csv_path=cfg.csv,
        cache_dir=cfg.cache,
        batch_size=cfg.batch_size,
        device=cfg.device,
        progress=True,
    )
    print(markdown_table(rows))
    scored = sum(not r["cached"] for r in rows)
    written = [p for p in (cfg.out, cfg.csv) if p]
    print(
        f"{len(rows)} cells: {scored} scored, {len(rows) - scored} from the cache"
        + (f"; written to {', '.join(written)}" if written else "")
    )
