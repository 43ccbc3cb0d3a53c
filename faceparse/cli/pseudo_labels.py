"""``faceparse pseudo-labels cam|occlusion|teacher``: pseudo-label generation (DisFaceRep, Structure via Consensus)."""

from __future__ import annotations

from faceparse.cli._args import NonNegativeInt, PositiveFloat, PositiveInt, out_dir, yes_no


def cam_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="save_pretrained folder of a trained MCT-ViT (stage 1)")
    parser.add_argument("--out-dir", default="pseudo_masks")
    parser.add_argument("--dataset", default="synthetic", help="a registered dataset")
    parser.add_argument("--root", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--num-samples", type=PositiveInt, default=None)
    parser.add_argument("--dataset-kwargs", default=None, help="JSON object of more dataset arguments")
    parser.add_argument("--image-size", type=PositiveInt, default=None, help="default: the model's input size")
    parser.add_argument("--scales", type=PositiveFloat, nargs="+", default=[1.0, 0.75, 1.25])
    parser.add_argument("--flip", action=yes_no(), default=True)
    parser.add_argument("--refine", action=yes_no(), default=True, help="affinity refinement")
    parser.add_argument("--theta", type=float, default=0.5, help="FCAM threshold")
    parser.add_argument(
        "--use-labels", action=yes_no(), default=True, help="restrict to the image-level labels (else: predicted)"
    )
    parser.add_argument("--batch-size", type=PositiveInt, default=8)
    parser.add_argument("--device", default="cpu")
    _subset_arguments(parser)


def _subset_arguments(parser) -> None:
    parser.add_argument(
        "--subset", choices=["uniform", "random"], default=None, help="only a subset of the split (with --n)"
    )
    parser.add_argument(
        "--n", type=PositiveInt, default=None, help="subset size (DisFaceRep: --subset uniform --n 3820)"
    )
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of --subset random")


def cam(cfg) -> None:
    """Write FCAM pseudo masks (one label PNG per image) from a trained MCT-ViT.

    FCAMs: multi-scale (--scales) + flip, affinity refinement, threshold --theta, restricted to the
    image-level labels (--use-labels) or to the classes the model predicts (--no-use-labels).
    """
    out_dir(cfg.out_dir)
    from faceparse.data.disfacerep_pseudo_masks import pseudo_labels_cam

    print(
        pseudo_labels_cam(
            model=cfg.model,
            out_dir=cfg.out_dir,
            data=cfg.dataset,
            root=cfg.root,
            split=cfg.split,
            num_samples=cfg.num_samples,
            dataset_kwargs=cfg.dataset_kwargs,
            image_size=cfg.image_size,
            scales=list(cfg.scales),
            flip=cfg.flip,
            refine=cfg.refine,
            theta=cfg.theta,
            use_labels=cfg.use_labels,
            batch_size=cfg.batch_size,
            device=cfg.device,
            subset=cfg.subset,
            n=cfg.n,
            subset_seed=cfg.subset_seed,
        )
    )


def score_arguments(parser) -> None:
    parser.add_argument("--pred", required=True, help="folder of pseudo masks (<key>.png label maps)")
    parser.add_argument(
        "--dataset", required=True, help="NAME:ROOT of a registered dataset with true masks (synthetic: NAME alone)"
    )
    parser.add_argument("--split", default="train")
    parser.add_argument("--dataset-kwargs", default=None, help="JSON object of more dataset arguments")
    parser.add_argument("--image-size", type=PositiveInt, default=None, help="passed to the dataset (synthetic)")
    parser.add_argument(
        "--unmapped",
        choices=["background", "ignore"],
        default="background",
        help="pseudo-mask classes the dataset lacks",
    )
    parser.add_argument("--out", default=None, help="also write the table to this Markdown file")
    _subset_arguments(parser)


def score(cfg) -> None:
    """Score pseudo masks against a dataset's true masks: mean F1 (no background) and mIoU, per class.

    DisFaceRep's Table 1/3 protocol on CelebAMask-HQ: faceparse pseudo-labels score --pred runs/pseudo
    --dataset celebamask_hq:/data/CelebAMask-HQ --split train --subset uniform --n 3820
    """
    import json
    from pathlib import Path

    from faceparse.data.disfacerep_pseudo_masks import score_pseudo_masks
    from faceparse.errors import FaceParseError
    from faceparse.metrics import per_class_table

    name, _, root = cfg.dataset.partition(":")
    try:
        extra = json.loads(cfg.dataset_kwargs) if cfg.dataset_kwargs else {}
    except json.JSONDecodeError as exc:
        raise FaceParseError(f"--dataset-kwargs is not a JSON object: {exc}") from exc
    res = score_pseudo_masks(
        cfg.pred,
        dataset=name,
        root=root or None,
        split=cfg.split,
        subset=cfg.subset,
        n=cfg.n,
        subset_seed=cfg.subset_seed,
        dataset_kwargs=extra,
        image_size=cfg.image_size,
        unmapped=cfg.unmapped,
    )
    which = f"subset {cfg.subset} n={cfg.n}" if cfg.subset else "all"
    head = (
        f"{res['count']} pseudo masks of {name} {cfg.split} ({which}) in the '{res['label_set'].name}' label set: "
        f"mean F1 {100 * float(res['mean_f1']):.2f}, mIoU {100 * float(res['miou']):.2f}"
    )
    text = head + "\n\n" + per_class_table(res, res["label_set"])
    print(text)
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(text + "\n")


def occlusion_arguments(parser) -> None:
    parser.add_argument("out_dir", help="folder to write <key>.png, blobs/<key>.png and pseudo_labels.json")
    parser.add_argument("--dataset", default="synthetic", help="a registered dataset with landmarks")
    parser.add_argument("--root", default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--model", default=None, help="teacher model folder (default: the dataset's label maps)")
    parser.add_argument("--face-classes", nargs="+", default=None, help="classes that make up the face mask")
    parser.add_argument("--contour-indices", type=int, nargs="+", default=None, help="landmarks on the face contour")
    parser.add_argument("--hull-scale", type=PositiveFloat, default=1.0)
    parser.add_argument("--kernel-scale", type=PositiveFloat, default=1.0)
    parser.add_argument("--min-area", type=NonNegativeInt, default=0)
    parser.add_argument("--image-size", type=PositiveInt, default=None)
    parser.add_argument("--num-samples", type=PositiveInt, default=None)
    parser.add_argument("--limit", type=NonNegativeInt, default=0)
    parser.add_argument("--device", default="cpu")


def occlusion(cfg) -> None:
    """Write occlusion pseudo-labels (consensus paper Sec. 3.1) for a dataset.

    The face mask comes from a teacher model (--model) or, without one, from the dataset's label maps;
    the full face is the convex hull of the landmarks (--contour-indices selects contour points,
    --hull-scale enlarges the hull).
    """
    out_dir(cfg.out_dir, "OUT_DIR")
    from faceparse.data.consensus_pseudo import pseudo_labels_occlusion

    print(pseudo_labels_occlusion(**{k: v for k, v in vars(cfg).items() if not k.startswith("_")}))


def teacher_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="teacher model folder (save_pretrained / faceparse convert)")
    parser.add_argument("--images", required=True, help="folder of photos (searched recursively)")
    parser.add_argument("--out", required=True, help="folder for labels/, faces.jsonl and pseudo_labels.json")
    parser.add_argument("--soft", action="store_true", help="write K x S x S float16 probabilities (.npy)")
    parser.add_argument("--detector", default="auto", help="auto, opencv, retinaface or yunet")
    parser.add_argument("--detector-weights", default=None, help="local weights file of retinaface / yunet")
    parser.add_argument("--crop-scale", type=PositiveFloat, default=1.2, help="square crop side / detection side")
    parser.add_argument("--crop-size", type=PositiveInt, default=128, help="crop and label size (paper: 128)")
    parser.add_argument("--faces", default="largest", choices=["largest", "all"])
    parser.add_argument("--min-score", type=float, default=0.0)
    parser.add_argument("--limit", type=NonNegativeInt, default=0, help="at most this many new photos (0: all)")
    parser.add_argument("--batch-size", type=PositiveInt, default=32, help="crops per teacher forward pass")
    parser.add_argument("--device", default="cpu")


def teacher(cfg) -> None:
    """Label the faces of a photo folder with a teacher (Structure via Consensus, "+Transf." data).

    Detects faces, crops the adjusted square box (--crop-scale) at --crop-size, runs the teacher and
    writes OUT/labels/<key>.png (or .npy with --soft), OUT/faces.jsonl (one line per photo: its faces
    or why it was skipped) and OUT/pseudo_labels.json. A rerun resumes after the photos already listed.
    """
    out_dir(cfg.out, "--out")
    from faceparse.data.consensus_teacher import pseudo_labels_teacher

    kw = {k: v for k, v in vars(cfg).items() if not k.startswith("_")}
    kw["out_dir"] = kw.pop("out")
    print(pseudo_labels_teacher(**kw))
