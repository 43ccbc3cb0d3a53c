"""``faceparse pseudo-labels cam|occlusion``: pseudo-label generation (DisFaceRep, Structure via Consensus)."""

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
        )
    )


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
