"""``faceparse boxes ground``: component boxes for DisFaceRep's CCD from a local Grounding DINO."""

from __future__ import annotations

from faceparse.cli._args import NonNegativeInt, PositiveInt, yes_no


def ground_arguments(parser) -> None:
    parser.add_argument("--checkpoint", default=None, help="local transformers Grounding DINO folder (save_pretrained)")
    parser.add_argument("--dataset", required=True, help="NAME:ROOT of a registered dataset (NAME alone: synthetic)")
    parser.add_argument("--out", required=True, help="box JSON to write (read by the ccd dataset's boxes=)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--num-samples", type=PositiveInt, default=None, help="for the synthetic dataset")
    parser.add_argument("--box-threshold", type=float, default=0.35)
    parser.add_argument("--text-threshold", type=float, default=0.25)
    parser.add_argument("--top-k", type=PositiveInt, default=3, help="candidates kept per component")
    parser.add_argument("--limit", type=NonNegativeInt, default=0, help="only the first N images (0: all)")
    parser.add_argument("--resume", action=yes_no(), default=True, help="keep the images already in --out")
    parser.add_argument("--device", default="cpu")


def ground(cfg) -> None:
    """Run Grounding DINO (local checkpoint) with the prompt "nose. eye. eyebrow. ear. mouth." over a
    dataset and write {image_key: {component: [{"box": [x0, y0, x1, y1], "score": s}, ...]}}; the
    left/right side of each candidate is decided later by CCD's Eq. 1 filter."""
    from faceparse.data.disfacerep_grounding import ground_boxes

    name, _, root = cfg.dataset.partition(":")
    print(
        ground_boxes(
            cfg.out,
            cfg.checkpoint,
            dataset=name,
            root=root or None,
            split=cfg.split,
            num_samples=cfg.num_samples,
            box_threshold=cfg.box_threshold,
            text_threshold=cfg.text_threshold,
            top_k=cfg.top_k,
            limit=cfg.limit,
            resume=cfg.resume,
            device=cfg.device,
        )
    )
