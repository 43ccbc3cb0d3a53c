"""``faceparse references generate``: S3POT occlusion-free references (paper Sec. 3.1) and their quality."""

from __future__ import annotations

from faceparse.cli._args import PositiveInt


def generate_arguments(parser) -> None:
    parser.add_argument("--images", required=True, help="folder of face crops (the occluded faces)")
    parser.add_argument("--out", required=True, help="folder for <stem>_ref.png, <stem>_inpainted.png, quality.csv")
    parser.add_argument(
        "--inpainter",
        default=None,
        help="local diffusers inpainting pipeline folder (model_index.json; never downloaded), or 'opencv'",
    )
    parser.add_argument("--mask", default="face", choices=["face", "occlusion"], help="what the generator repaints")
    parser.add_argument("--parser", default=None, help="faceparse parsing-model folder: the face region M_f")
    parser.add_argument("--parsing-out", default=None, help="also write the parser's maps (S3POT data parsing/)")
    parser.add_argument("--label-set", default="celebamask_hq", help="label ids of the --parsing-out maps")
    parser.add_argument("--steps", type=PositiveInt, default=30, help="denoising steps")
    parser.add_argument("--size", type=PositiveInt, default=512, help="square size the pipeline runs at")
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")


def generate(cfg) -> None:
    """Repaint the face (or its parsed occlusion candidates) of every image with a local diffusers
    inpainting pipeline, keep the rest of the image, and score each reference (S3POT Sec. 4.3:
    SSIM fidelity outside the repainted region, parser plausibility inside it, their mean)."""
    from faceparse.models.s3pot.generation import generate_references

    summary = generate_references(
        cfg.images,
        cfg.out,
        cfg.inpainter,
        parser=cfg.parser,
        mask=cfg.mask,
        parsing_out=cfg.parsing_out,
        label_set=cfg.label_set,
        steps=cfg.steps,
        size=cfg.size,
        seed=cfg.seed,
        guidance_scale=cfg.guidance_scale,
        device=cfg.device,
    )
    print(
        f"{summary['images']} references in {summary['out']}: quality {summary['quality']:.3f} "
        f"(fidelity {summary['fidelity']:.3f}, plausibility {summary['plausibility']:.3f}); per image: "
        f"{summary['out']}/quality.csv"
    )
