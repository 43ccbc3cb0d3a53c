"""``faceparse convert segface|consensus CKPT OUT_DIR``: official checkpoints -> faceparse model folders."""

from __future__ import annotations

from faceparse.cli._args import existing_file, out_dir, yes_no


def segface_arguments(parser) -> None:
    parser.add_argument("src", help="official SegFace checkpoint (.pt with state_dict_backbone)")
    parser.add_argument("out_dir", help="model folder to write (config.json + model.safetensors)")
    parser.add_argument(
        "--backbone", default="swin_base", help="our names or the official --model names (mobilenet, resnet...)"
    )
    parser.add_argument("--dataset", default="celebamask_hq", help="celebamask_hq, lapa or helen")
    parser.add_argument("--unsafe-load", action=yes_no(), default=False, help="allow pickled objects in the file")


def segface(cfg) -> None:
    """Convert an official SegFace checkpoint into a faceparse model folder."""
    existing_file(cfg.src, "checkpoint")
    out_dir(cfg.out_dir, "OUT_DIR")
    from faceparse.models.segface import convert_segface

    model = convert_segface(
        cfg.src, cfg.out_dir, backbone=cfg.backbone, dataset=cfg.dataset, unsafe_load=cfg.unsafe_load
    )
    print(
        f"wrote {cfg.out_dir} (segface_{model.backbone_name}, {cfg.dataset}, "
        f"{model.num_parameters() / 1e6:.2f}M parameters)"
    )


def consensus_arguments(parser) -> None:
    parser.add_argument("src", help="official consensus_net checkpoint (e.g. ptlabel_best_model.pth)")
    parser.add_argument("out_dir", help="model folder to write (config.json + model.safetensors)")
    parser.add_argument(
        "--label-set", default="part_labels", help="part_labels (background, face, hair) or cofw_occlusion"
    )
    parser.add_argument("--dropout", type=float, default=0.2, help="0.2 for the regularised release (training only)")
    parser.add_argument("--trust-pickle", action=yes_no(), default=False, help="allow pickled objects in the file")


def consensus(cfg) -> None:
    """Convert an official Structure-via-Consensus checkpoint into a faceparse model folder."""
    existing_file(cfg.src, "checkpoint")
    out_dir(cfg.out_dir, "OUT_DIR")
    from faceparse.models.consensus.model import convert_consensus

    model = convert_consensus(
        cfg.src, cfg.out_dir, label_set=cfg.label_set, dropout=cfg.dropout, trust_pickle=cfg.trust_pickle
    )
    print(f"wrote {cfg.out_dir} ({model.num_parameters():,} parameters, label set {cfg.label_set})")
