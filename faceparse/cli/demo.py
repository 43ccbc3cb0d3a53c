"""``faceparse demo``."""

from __future__ import annotations

from faceparse.cli._args import PositiveFloat, PositiveInt, out_dir, yes_no


def demo_arguments(parser) -> None:
    parser.add_argument("--out-dir", default="demo_output")
    parser.add_argument("--model", default="unet", help="a registered model name (faceparse list models)")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--image-size", type=PositiveInt, default=128)
    parser.add_argument("--epochs", type=PositiveInt, default=4)
    parser.add_argument("--num-train", type=PositiveInt, default=1200)
    parser.add_argument("--num-val", type=PositiveInt, default=200)
    parser.add_argument("--batch-size", type=PositiveInt, default=8)
    parser.add_argument("--lr", type=PositiveFloat, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--balanced", action=yes_no(), default=True, help="class-balanced CE weights")


def demo(cfg) -> None:
    """Train a small model on synthetic faces and show what it learned (model/, overlay.png, metrics.json)."""
    out_dir(cfg.out_dir)
    from faceparse.demo import run_demo

    run_demo(**{k: v for k, v in vars(cfg).items() if not k.startswith("_")})
