"""``faceparse predict IMAGE|FOLDER|VIDEO... --model DIR``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from faceparse.cli._args import NonNegativeInt, PositiveInt, out_dir, yes_no
from faceparse.errors import FaceParseError


def predict_arguments(parser) -> None:
    parser.add_argument(
        "images",
        nargs="+",
        help="image files, folders of images (outputs in FOLDER/faceparse_out, resumable) or video files "
        "(per-frame label maps + overlay video)",
    )
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
        "--detector",
        choices=["auto", "skimage", "opencv", "retinaface", "yunet"],
        default="auto",
        help="face detector (faceparse.detection): auto = scikit-image's offline LBP cascade; retinaface/yunet "
        "need --detector-weights",
    )
    parser.add_argument("--detector-weights", default=None, help="local weights file for retinaface / yunet")
    parser.add_argument(
        "--align",
        choices=["auto", "none", "similarity", "tanh"],
        default="auto",
        help="face geometry: none = square crop around the box; similarity = 5-point alignment; tanh = RoI "
        "tanh-warp; auto = what the model records, else similarity with measured landmarks, else none "
        "(aligned modes without measured landmarks parse twice: parse-then-align)",
    )
    parser.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        help="videos: temporal smoothing, exponential moving average weight of past frames' probabilities "
        "(0 = off, 0.5 = each older frame weighs half)",
    )
    parser.add_argument(
        "--resume",
        action=yes_no(),
        default=True,
        help="folders: skip images whose outputs already exist (default: on; --no-resume parses all again)",
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
        help="onnxruntime: run the model's exported model.onnx (or --model FILE.onnx) from `faceparse export`",
    )
    parser.add_argument(
        "--num-workers",
        type=NonNegativeInt,
        default=None,
        help="image files and folders: processes that decode images and detect faces while the model runs "
        "(0: all in one process; default: min(2, cores - 2), so 0 on 2 cores; docs/performance.md)",
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

    A folder: every image directly inside it, outputs in FOLDER/faceparse_out (or --out-dir), images
    already done skipped (--resume). A video: <stem>_labels/frame_NNNNNN.png and <stem>_overlay.mp4.
    Every readable image is written; the unreadable ones are listed and the exit status is 2.
    For an S3POT model folder (or with --occlusion) writes <stem>_occlusion.png masks instead.
    """
    out = out_dir(cfg.out_dir)
    from faceparse.hub import is_hub_id

    if is_hub_id(cfg.model):  # hf-hub:ORG/NAME[@REV]: the cached download folder (docs/hub.md)
        from faceparse.hub import download_model

        cfg.model = str(download_model(cfg.model))
    elif not Path(cfg.model).exists():  # answered before torch is imported
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
    from faceparse.inference import Predictor, predict_files
    from faceparse.media import is_video, predict_folder, predict_video

    def show(path: str, result: object) -> None:
        if isinstance(result, Exception):
            print(f"error: {result}", file=sys.stderr)
            return
        faces = len(result.faces)  # type: ignore[attr-defined]
        how = f"{faces} face{'s' if faces != 1 else ''}" if cfg.detect_faces else "whole image"
        if cfg.detect_faces and not result.face_found:  # type: ignore[attr-defined]
            print(f"warning: no face found in '{path}'; parsed the whole image", file=sys.stderr)
            how = "whole image"
        print(f"{path}: {how} ({result.path})")  # type: ignore[attr-defined]

    inputs = [Path(p) for p in cfg.images]
    folders = [p for p in inputs if p.is_dir()]
    videos = [p for p in inputs if not p.is_dir() and is_video(p)]
    files = [p for p in inputs if p not in folders and p not in videos]
    predictor = Predictor(
        cfg.model,
        input_size=cfg.input_size,
        flip_tta=cfg.flip,
        detect_faces=cfg.detect_faces,
        detector=cfg.detector if cfg.detect_faces else None,
        detector_weights=cfg.detector_weights,
        align=cfg.align,
        no_face="whole" if cfg.no_face == "whole" else "background",
        backend=cfg.backend,
        precision=cfg.precision,
    )
    failed: dict[str, str] = {}
    total = len(files)
    workers = cfg.num_workers
    if workers is None:  # on 2 cores the model's threads fill both: workers measured no faster there
        from faceparse.runtime import available_cpus

        workers = max(0, min(2, available_cpus() - 2))
    if files:
        report = predict_files(predictor, files, out, no_face=cfg.no_face, on_result=show, num_workers=workers)
        for labels, over in report.written:
            print(f"wrote {labels} and {over}")
        failed.update(report.failed)
    for folder in folders:
        report = predict_folder(
            predictor, folder, out / folder.name if out and len(folders) > 1 else out, resume=cfg.resume,
            no_face=cfg.no_face, num_workers=workers,
        )  # fmt: skip
        where = report.written[0][0].parent if report.written else (out or folder / "faceparse_out")
        total += len(report.written) + len(report.failed) + len(report.skipped)
        print(
            f"{folder}: wrote {len(report.written)} image(s) to {where}; skipped {len(report.skipped)} already done"
            + (f"; {len(report.no_face)} without a face (parsed whole)" if report.no_face else "")
            + (f"; {len(report.failed)} unreadable: " + ", ".join(report.failed) if report.failed else "")
        )
        failed.update(report.failed)
    for video in videos:
        total += 1
        try:
            rep = predict_video(predictor, video, out, smooth=cfg.smooth)
        except FaceParseError as exc:
            failed[str(video)] = str(exc)
            print(f"error: {exc}", file=sys.stderr)
            continue
        paths = ", ".join(f"{k}: {v}" for k, v in rep.paths.items())
        print(
            f"{video}: {rep.frames} frames at {rep.frames_per_second:.1f} frames/s ({paths}); wrote "
            f"{rep.labels_dir}/frame_*.png and {rep.overlay}"
        )
    if failed:
        noun = "input(s)" if videos else "image(s)"
        print(f"error: {len(failed)} of {total} {noun} failed: " + ", ".join(failed), file=sys.stderr)
        return 2
    return 0
