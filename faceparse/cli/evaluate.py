"""``faceparse evaluate --model DIR --dataset NAME`` and ``faceparse evaluate consensus ...``."""

from __future__ import annotations

from typing import Any

from faceparse.cli._args import NonNegativeInt, PositiveInt, yes_no
from faceparse.errors import FaceParseError


def evaluate_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model folder written by save_pretrained")
    parser.add_argument("--dataset", required=True, help="a registered dataset (faceparse list datasets)")
    parser.add_argument("--root", default=None, help="the dataset's folder (the synthetic dataset needs none)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--image-size", type=PositiveInt, default=512)
    parser.add_argument("--batch-size", type=PositiveInt, default=8)
    parser.add_argument(
        "--unmapped", choices=["background", "ignore"], default="background", help="model classes the dataset lacks"
    )
    parser.add_argument("--flip-tta", action=yes_no(), default=False)
    parser.add_argument("--original-resolution", action=yes_no(), default=False)
    parser.add_argument("--align", action=yes_no(), default=False, help="align faces from the dataset's 5 landmarks")
    parser.add_argument(
        "--align-mode",
        choices=["similarity", "tanh"],
        default="similarity",
        help="with --align: 5-point similarity, or the RoI tanh-warp (LaPa's protocol in SegFace/FaRL)",
    )
    parser.add_argument("--limit", type=NonNegativeInt, default=0, help="score only the first N faces (0: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16", "int8"],
        default="fp32",
        help="bf16: autocast on the CPU's AMX/AVX512-BF16 units (fp32 with a warning without them); "
        "int8: onnxruntime static quantisation calibrated on the first batch (docs/performance.md)",
    )
    parser.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="onnxruntime: run the model's fp32 ONNX export (needs the onnx extra); int8 always runs on onnxruntime",
    )


def evaluate(cfg) -> None:
    """Evaluate a saved model on a dataset, across label sets if needed.

    Example: faceparse evaluate --model runs/celeb_model --dataset lapa --root /data/LaPa --split test;
    the synthetic dataset needs no root (faceparse evaluate --model runs/model --dataset synthetic --split val).
    The consensus paper's protocols (COFW, Part Labels): faceparse evaluate consensus --help.
    """
    import inspect

    import torch

    from faceparse import DATASETS, build_dataset, load_model
    from faceparse.evaluate import evaluate as run_evaluation
    from faceparse.metrics import per_class_table

    factory = DATASETS.get(cfg.dataset)
    model = load_model(cfg.model)
    kwargs: dict[str, Any] = {"split": cfg.split, "image_size": cfg.image_size}
    if cfg.root:
        kwargs["root"] = cfg.root
    else:
        root = inspect.signature(factory).parameters.get("root")
        if root is not None and root.default is inspect.Parameter.empty:
            raise FaceParseError(f"dataset '{cfg.dataset}' needs --root: the folder that holds it")
    kwargs["mean"], kwargs["std"] = tuple(model.input_mean), tuple(model.input_std)
    if cfg.align:
        kwargs["align"] = "tanh" if cfg.align_mode == "tanh" else True
    ds = build_dataset(cfg.dataset, **kwargs)
    res = run_evaluation(
        model,
        ds,
        batch_size=cfg.batch_size,
        unmapped=cfg.unmapped,
        flip_tta=cfg.flip_tta,
        original_resolution=cfg.original_resolution,
        device=cfg.device,
        limit=cfg.limit or None,
        progress=True,
        precision=cfg.precision,
        backend=cfg.backend,
    )
    table = {
        "f1": torch.tensor([res["f1"][c] for c in ds.label_set.classes]),
        "iou": torch.tensor([res["iou"][c] for c in ds.label_set.classes]),
        "mean_f1": torch.tensor(res["mean_f1"]),
        "miou": torch.tensor(res["miou"]),
        "pixel_acc": torch.tensor(res["pixel_acc"]),
    }
    print(f"{res['num_images']} faces of {cfg.dataset} {cfg.split}, scored in the '{res['label_set']}' label set")
    print(per_class_table(table, ds.label_set))


def consensus_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="model folder written by save_pretrained")
    parser.add_argument("--dataset", required=True, help="part_labels, cofw or another registered dataset")
    parser.add_argument("--root", default=None, help="the dataset's folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--protocol", choices=["none", "cofw", "part_labels"], default="none")
    parser.add_argument("--original-resolution", action=yes_no(), default=False)
    parser.add_argument("--batch-size", type=PositiveInt, default=16)
    parser.add_argument("--limit", type=NonNegativeInt, default=0, help="score only the first N faces (0: all)")
    parser.add_argument("--device", default="cpu")


def consensus(cfg) -> None:
    """Evaluate a saved model with the consensus paper's protocols (COFW, Part Labels).

    --protocol cofw: face IoU, pixel accuracy, rec_face, rec_all inside the COFW face box with the
    occlusion class merged into non-face; --protocol part_labels: pixel and superpixel accuracy, IoU
    per class, rec_all; both report the sparsity. --original-resolution scores at the dataset's own
    size (250 x 250 for Part Labels) with nearest-neighbour upsampled predictions; otherwise at the
    model's input size (128).
    """
    from faceparse import build_dataset, load_model
    from faceparse.evaluate import consensus_table, evaluate_consensus
    from faceparse.labels import get_label_set

    model = load_model(cfg.model, map_location=cfg.device)
    kw: dict = {"split": cfg.split, "mean": tuple(model.input_mean), "std": tuple(model.input_std)}
    kw["image_size"] = None if cfg.original_resolution else model.default_input_size
    if cfg.root is not None:
        kw["root"] = cfg.root
    ds = build_dataset(cfg.dataset, **kw)
    proto = None if cfg.protocol == "none" else cfg.protocol
    res = evaluate_consensus(
        model, ds, proto, cfg.batch_size, device=cfg.device, limit=cfg.limit or None, progress=True
    )
    size = model.default_input_size
    where = "original resolution" if cfg.original_resolution else f"{size} x {size}"
    scored = get_label_set("cofw") if proto == "cofw" else ds.label_set
    print(f"{cfg.dataset} {cfg.split}, protocol {cfg.protocol}, {where}:\n" + consensus_table(res, scored))
