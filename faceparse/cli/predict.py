"""``faceparse predict IMAGE... --model DIR``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from faceparse.cli._args import PositiveInt, out_dir, yes_no
from faceparse.errors import FaceParseError


def predict_arguments(parser) -> None:
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--model", required=True, help="model folder written by save_pretrained (or a .onnx file)")
    parser.add_argument("--out-dir", default=None, help="write outputs here instead of next to each image")
    parser.add_argument("--flip", action=yes_no(), default=False, help="flip test-time augmentation")
    parser.add_argument("--input-size", type=PositiveInt, default=None, help="default: the model's input size")
    parser.add_argument(
        "--detect-faces",
        action=yes_no(),
        default=True,
        help="find faces (scikit-image's offline LBP cascade) and parse each in its own crop (default: on; "
        "--no-detect-faces parses the whole image, e.g. for pre-cropped faces)",
    )
    parser.add_argument(
        "--no-face",
        choices=["whole", "skip"],
        default="whole",
        help="when no face is found: parse the whole image with a warning (default) or skip the image",
    )
    parser.add_argument(
        "--occlusion",
        action=yes_no(),
        default=None,
        help="write S3POT <stem>_occlusion.png masks (default: on for an S3POT model folder, off otherwise)",
    )
    parser.add_argument("--references", default=None, help="S3POT: folder of occlusion-free references")
    parser.add_argument("--face-masks", default=None, help="S3POT: folder of face-region masks / parsing maps")
    parser.add_argument("--per-image-steps", type=int, default=0, help="S3POT: per-image overfitting steps (0: off)")
    parser.add_argument(
        "--backend",
        choices=["torch", "onnxruntime"],
        default="torch",
        help="onnxruntime: run the model's exported model.onnx (or --model FILE.onnx) from `faceparse export`",
    )


def is_s3pot_folder(model: str | Path) -> bool:
    """Whether ``model`` is a save_pretrained folder of an S3POT model (read from its config.json only)."""
    config = Path(model) / "config.json"
    try:
        return json.loads(config.read_text()).get("class", "").startswith("faceparse.models.s3pot.")
    except (OSError, ValueError, AttributeError):
        return False


def predict(cfg) -> int:
    """Parse images; writes <stem>_labels.png and <stem>_overlay.png next to each image (or in --out-dir).

    Every readable image is written; the unreadable ones are listed and the exit status is 2.
    For an S3POT model folder (or with --occlusion) writes <stem>_occlusion.png masks instead.
    """
    out = out_dir(cfg.out_dir)
    if not Path(cfg.model).exists():  # answered before torch is imported
        raise FaceParseError(
            f"--model '{cfg.model}' does not exist (expected a folder written by save_pretrained"
            + (", or a .onnx file)" if cfg.backend == "onnxruntime" else ")")
        )
    occlusion = cfg.occlusion if cfg.occlusion is not None else is_s3pot_folder(cfg.model)
    if occlusion:
        from faceparse.tasks.s3pot import predict_occlusion

        paths = predict_occlusion(
            cfg.model, cfg.images, out, cfg.references, cfg.face_masks, per_image_steps=cfg.per_image_steps
        )
        for path in paths:
            print(f"wrote {path}")
        return 0
    s3pot_only = {
        "--references": cfg.references,
        "--face-masks": cfg.face_masks,
        "--per-image-steps": cfg.per_image_steps,
    }
    for option, value in s3pot_only.items():
        if value:
            raise FaceParseError(
                f"{option} applies to S3POT occlusion masks, but '{cfg.model}' is not an S3POT model folder "
                "(pass --occlusion to force it)"
            )
    from faceparse.inference import predict_files

    def show(path: str, result: object) -> None:
        if isinstance(result, Exception):
            print(f"error: {result}", file=sys.stderr)
            return
        faces = len(result.faces)  # type: ignore[attr-defined]
        how = f"{faces} face{'s' if faces != 1 else ''}" if cfg.detect_faces else "whole image"
        if cfg.detect_faces and not result.face_found:  # type: ignore[attr-defined]
            print(f"warning: no face found in '{path}'; parsed the whole image", file=sys.stderr)
            how = "whole image"
        print(f"{path}: {how}")

    report = predict_files(
        cfg.model,
        cfg.images,
        out,
        flip_tta=cfg.flip,
        input_size=cfg.input_size,
        detect_faces=cfg.detect_faces,
        no_face=cfg.no_face,
        on_result=show,
        backend=cfg.backend,
    )
    for labels, over in report.written:
        print(f"wrote {labels} and {over}")
    if report.failed:
        print(
            f"error: {len(report.failed)} of {len(cfg.images)} image(s) failed: " + ", ".join(report.failed),
            file=sys.stderr,
        )
        return 2
    return 0
