"""S3POT reference generation (paper Sec. 3.1, "Reference Generation") and reference quality (Sec. 4.3).

The paper makes an occlusion-free reference ``I_r`` with E4S regional GAN inversion, conditioned on
the image ``I`` (texture) and its parsing mask ``M_r`` (structure). faceparse does the same job with
any local diffusers inpainting checkpoint (Stable Diffusion inpainting or alike), never downloaded:

1. **Face region from a face parser** (:func:`parse_face`): any faceparse parsing model
   (``faceparse.load_model(DIR)``) parses the image; ``M_f`` is the union of the classes named in
   :data:`faceparse.labels.S3POT_FACE_CLASSES` (or ``face``) that the model's label set has (by
   name, so CelebAMask-HQ, LaPa, Helen, COFW-occlusion... parsers all work). ``face_hull`` is its filled convex hull: it
   also covers occluders inside the face that the parser labels as something else (hand, hair,
   background), as E4S's structure mask does.
2. **Inpainting mask** (:func:`inpainting_mask`): ``"face"`` repaints the whole face hull (the
   generator keeps only the surroundings, as E4S regenerates the face); ``"occlusion"`` repaints
   only the parsed occlusion candidates: hull pixels the parser does not call face, plus colour
   outliers inside each face part (:meth:`InpaintReferences.outliers`), dilated.
3. **Inpainting** (:class:`DiffusersInpainter`): the pipeline fills the mask; pixels outside the
   mask are copied from the image, so the non-occluded face stays pixel-aligned.
4. **Quality** (:func:`reference_quality`): the paper's composite score (Sec. 4.3) is the mean of
   (a) the landmark-detection confidence in the reconstructed region and (b) the SSIM of reference
   and image in the non-occluded region. faceparse computes (b) as written (scikit-image SSIM map,
   averaged over the face hull outside the inpainting mask, or over the whole image outside it when
   the mask covers the hull) and, since no detector here gives per-landmark confidences, replaces
   (a) by a parser-based plausibility: the fraction of the inpainted region that the face parser
   labels as face classes on the reference. ``quality`` is the mean of the two.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from faceparse.errors import FaceParseError, MissingWeightsError, require
from faceparse.labels import S3POT_FACE_CLASSES
from faceparse.models.s3pot.references import IMAGE_EXTENSIONS, InpaintReferences

MASK_MODES = ("face", "occlusion")
# The face region M_f by class name: the paper's set F plus "face" (parsers with a single face class).
PARSER_FACE_CLASSES: tuple[str, ...] = (*S3POT_FACE_CLASSES, "face")
DEFAULT_PROMPT = "a photo of a face, natural skin, no occlusion, high quality"
DEFAULT_NEGATIVE = "hand, glasses, mask, hat, microphone, occlusion, text"


# --------------------------------------------------------------------------- face region
@dataclass
class ParsedFace:
    """A face parser's view of one image (all ``H x W`` at the image's size)."""

    labels: np.ndarray  # int64 parser label ids
    face: np.ndarray  # bool: union of the face classes (M_f)
    hull: np.ndarray  # bool: filled convex hull of ``face`` (covers occluders inside the face)
    label_set: Any  # the parser's LabelSet


def face_class_ids(label_set: Any, classes: Sequence[str] = PARSER_FACE_CLASSES) -> list[int]:
    """Ids of ``classes`` (names) in ``label_set``; a clear error when it has none of them."""
    ids = [label_set.index(c) for c in classes if c in label_set]
    if not ids:
        raise FaceParseError(
            f"the face parser's label set '{label_set.name}' has none of the face classes {list(classes)}; "
            "use a face-parsing model (CelebAMask-HQ, LaPa, Helen... labels)"
        )
    return ids


@torch.no_grad()
def parse_labels(parser: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """``H x W`` int64 labels of a faceparse parsing model on an RGB uint8 face crop.

    The image is resized to the model's ``default_input_size``, normalised with its ``input_mean`` /
    ``input_std``, and the arg-max of the logits resized back (nearest). For photos with several or
    small faces, crop the face first (``faceparse predict`` detects and aligns).
    """
    import cv2

    h, w = image.shape[:2]
    s = int(getattr(parser, "default_input_size", 512))
    x = cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA if min(h, w) > s else cv2.INTER_LINEAR)
    dev = next(parser.parameters()).device
    mean = torch.tensor(parser.input_mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(parser.input_std, device=dev).view(1, 3, 1, 1)
    t = torch.from_numpy(np.ascontiguousarray(x)).to(dev).permute(2, 0, 1)[None].float() / 255.0
    labels = (
        parser((t - mean) / std).argmax(1)[0].to(torch.uint8 if parser.label_set.num_classes < 256 else torch.int32)
    )
    labels = labels.cpu().numpy()
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int64)


def filled_hull(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull of a bool mask (``cv2.convexHull`` + ``cv2.fillConvexPoly``)."""
    import cv2

    out = np.zeros(mask.shape, dtype=np.uint8)
    pts = cv2.findNonZero(mask.astype(np.uint8))
    if pts is not None:
        cv2.fillConvexPoly(out, cv2.convexHull(pts), 1)
    return out.astype(bool) | mask.astype(bool)


def parse_face(parser: torch.nn.Module, image: np.ndarray, classes: Sequence[str] = PARSER_FACE_CLASSES) -> ParsedFace:
    """Face region ``M_f`` of an RGB uint8 image from any faceparse parsing model (classes by name)."""
    labels = parse_labels(parser, image)
    face = np.isin(labels, face_class_ids(parser.label_set, classes))
    return ParsedFace(labels, face, filled_hull(face), parser.label_set)


def dataset_parsing(parsed: ParsedFace, label_set: Any, fill_class: str = "skin") -> np.ndarray:
    """The parsing map for an S3POT data folder (``parsing/<stem>.png``) in ``label_set`` ids.

    The parser's labels are mapped to ``label_set`` by class name; pixels of the face hull that the
    parser does not call face get ``fill_class``, so the face region ``M_f`` read back includes the
    occluded face parts (the model takes occlusion prompts only inside it).
    """
    lut = parsed.label_set.mapping_to(label_set)
    out = lut[parsed.labels].astype(np.int64)
    face_ids = [label_set.index(c) for c in S3POT_FACE_CLASSES if c in label_set]
    out[parsed.hull & ~np.isin(out, face_ids)] = label_set.index(fill_class)
    return out


def inpainting_mask(image: np.ndarray, parsed: ParsedFace, mode: str = "face", dilate: int = 3) -> np.ndarray:
    """Bool ``H x W`` region the generator repaints: the face hull or the parsed occlusion candidates."""
    import cv2

    if mode not in MASK_MODES:
        raise FaceParseError(f"--mask must be one of {list(MASK_MODES)}, got '{mode}'")
    if mode == "face":
        mask = parsed.hull.copy()
    else:
        regions = np.where(parsed.face, parsed.labels + 1, 0)
        mask = (parsed.hull & ~parsed.face) | InpaintReferences(dilate=0).outliers(image, regions)
    if dilate > 0 and mask.any():
        k = 2 * dilate + 1
        mask = cv2.dilate(mask.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
    return mask


# --------------------------------------------------------------------------- inpainters
class DiffusersInpainter:
    """A local diffusers inpainting pipeline as a reference generator.

    Args:
        checkpoint: folder written by ``pipeline.save_pretrained`` (``model_index.json`` inside),
            e.g. a local copy of a Stable Diffusion inpainting checkpoint. Never downloaded.
        prompt, negative_prompt: text conditions (defaults ask for an unoccluded face).
        steps: denoising steps; guidance_scale: classifier-free guidance; seed: generator seed.
        size: the square size the pipeline runs at (SD inpainting: 512); results are resized back.
        device, dtype: where the pipeline runs.
    """

    def __init__(
        self,
        checkpoint: str | Path | None,
        prompt: str = DEFAULT_PROMPT,
        negative_prompt: str | None = DEFAULT_NEGATIVE,
        steps: int = 30,
        guidance_scale: float = 7.5,
        seed: int = 0,
        size: int = 512,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        if checkpoint is None:
            raise MissingWeightsError(
                "references generate needs a local diffusers inpainting checkpoint: pass --inpainter DIR (a folder "
                "with model_index.json, e.g. a Stable Diffusion inpainting pipeline saved with save_pretrained; never "
                "downloaded), or --inpainter opencv for the OpenCV fallback"
            )
        path = Path(checkpoint)
        if not (path / "model_index.json").is_file():
            raise MissingWeightsError(
                f"--inpainter '{path}' is not a diffusers pipeline folder (no model_index.json there); pass the "
                "folder a diffusers inpainting pipeline was saved to with save_pretrained"
            )
        diffusers = require("diffusers", "s3pot-ref")
        pipe = diffusers.AutoPipelineForInpainting.from_pretrained(
            str(path), local_files_only=True, **({"torch_dtype": dtype} if dtype is not None else {})
        )
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)
        self.prompt, self.negative_prompt = prompt, negative_prompt
        self.steps, self.guidance_scale, self.seed = int(steps), float(guidance_scale), int(seed)
        self.size = int(size)
        self.device = device

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Inpaint ``mask`` (bool ``H x W``) of an RGB uint8 image; outside the mask the image is kept."""
        import cv2
        from PIL import Image

        h, w = image.shape[:2]
        if not mask.any():
            return image.copy()
        s = self.size
        img = Image.fromarray(cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA))
        m = Image.fromarray(cv2.resize(mask.astype(np.uint8) * 255, (s, s), interpolation=cv2.INTER_NEAREST))
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        out = self.pipe(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            image=img,
            mask_image=m,
            height=s,
            width=s,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance_scale,
            generator=gen,
            output_type="np",
        ).images[0]
        gen_rgb = (np.clip(out, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        gen_rgb = cv2.resize(gen_rgb, (w, h), interpolation=cv2.INTER_CUBIC)
        return np.where(mask[..., None], gen_rgb, image)


class OpenCVInpainter:
    """``cv2.inpaint`` (Telea) of the mask: the no-checkpoint fallback of ``references generate``."""

    def __init__(self, radius: int = 5) -> None:
        self.radius = radius

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import cv2

        if not mask.any():
            return image.copy()
        return cv2.inpaint(np.ascontiguousarray(image), mask.astype(np.uint8) * 255, self.radius, cv2.INPAINT_TELEA)


# --------------------------------------------------------------------------- quality
def reference_quality(
    image: np.ndarray,
    reference: np.ndarray,
    inpainted: np.ndarray,
    face: np.ndarray | None = None,
    parser: torch.nn.Module | None = None,
    classes: Sequence[str] = PARSER_FACE_CLASSES,
) -> dict[str, float]:
    """Reference quality after S3POT Sec. 4.3 (composite "Quality Score"; see the module docstring).

    Args:
        image, reference: RGB uint8 ``H x W x 3``.
        inpainted: bool ``H x W``, the region the generator reconstructed.
        face: bool ``H x W`` face hull; fidelity is measured on ``face & ~inpainted`` (default: the
            whole image outside ``inpainted``; also used when that set is empty).
        parser: a faceparse parsing model for the plausibility term (None: ``plausibility`` NaN and
            ``quality`` = ``fidelity``).

    Returns:
        ``fidelity``: mean SSIM (:func:`skimage.metrics.structural_similarity`, 7 x 7 window,
        channel-averaged map) of reference vs image in the non-occluded region (paper's second
        term); ``plausibility``: fraction of ``inpainted`` that ``parser`` labels as face classes on
        the reference (stands in for the paper's landmark confidence); ``quality``: their mean.
    """
    from skimage.metrics import structural_similarity

    if image.shape != reference.shape or inpainted.shape != image.shape[:2]:
        raise FaceParseError(
            f"reference_quality: image {image.shape}, reference {reference.shape} and mask {inpainted.shape} differ"
        )
    _, ssim_map = structural_similarity(image, reference, channel_axis=2, data_range=255, full=True)
    ssim_map = ssim_map.mean(axis=2)
    keep = ~inpainted if face is None else (face & ~inpainted)
    if not keep.any():
        keep = ~inpainted
    fidelity = float(ssim_map[keep].mean()) if keep.any() else float("nan")
    plausibility = float("nan")
    if parser is not None and inpainted.any():
        labels = parse_labels(parser, reference)
        plausibility = float(np.isin(labels[inpainted], face_class_ids(parser.label_set, classes)).mean())
    terms = [v for v in (fidelity, plausibility) if not np.isnan(v)]
    return {
        "fidelity": fidelity,
        "plausibility": plausibility,
        "quality": float(np.mean(terms)) if terms else float("nan"),
    }


# --------------------------------------------------------------------------- folder driver
def generate_references(
    images: str | Path,
    out: str | Path,
    inpainter: str | Path | None,
    parser: str | Path | torch.nn.Module | None = None,
    mask: str = "face",
    parsing_out: str | Path | None = None,
    label_set: str = "celebamask_hq",
    suffix: str = "_ref",
    steps: int = 30,
    size: int = 512,
    seed: int = 0,
    prompt: str = DEFAULT_PROMPT,
    guidance_scale: float = 7.5,
    device: str = "cpu",
) -> dict[str, Any]:
    """Occlusion-free references for a folder of face crops (``faceparse references generate``).

    Writes ``out/<stem><suffix>.png`` (the reference, read by ``FolderReferences`` and the
    ``occlusion_folder`` dataset's ``references/``), ``out/<stem>_inpainted.png`` (the repainted
    region, 0/255) and ``out/quality.csv`` (name, fidelity, plausibility, quality per image); with
    ``parsing_out``, ``parsing_out/<stem>.png``: the parser's map in ``label_set`` ids with the
    face hull filled (:func:`dataset_parsing`), the ``occlusion_folder`` dataset's ``parsing/``.

    ``inpainter``: a diffusers pipeline folder, or ``"opencv"`` (``cv2.inpaint``, no checkpoint).
    ``parser``: a faceparse parsing-model folder or model; without it the face region is the
    whole image (``mask="face"``) or the colour outliers of the whole image (``mask="occlusion"``).

    Returns a summary: number of images, mean fidelity / plausibility / quality, the paths.
    """
    import cv2

    from faceparse.images import read_image
    from faceparse.labels import get_label_set

    src, dst = Path(images), Path(out)
    if not src.is_dir():
        raise FaceParseError(f"--images '{src}' is not a folder of face images")
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FaceParseError(f"--images '{src}' has no images ({', '.join(IMAGE_EXTENSIONS)})")
    if mask not in MASK_MODES:
        raise FaceParseError(f"--mask must be one of {list(MASK_MODES)}, got '{mask}'")
    if inpainter is not None and str(inpainter) == "opencv":
        fill: Any = OpenCVInpainter()
    else:
        fill = DiffusersInpainter(
            inpainter, prompt=prompt, steps=steps, guidance_scale=guidance_scale, seed=seed, size=size, device=device
        )
    model = None
    if parser is not None:
        from faceparse.models.base import load_model

        model = parser if isinstance(parser, torch.nn.Module) else load_model(parser)
        model = model.to(device).eval()
        face_class_ids(model.label_set)  # fail before any work when the parser has no face classes
    elif parsing_out is not None:
        raise FaceParseError("--parsing-out needs --parser (the parsing maps come from the face parser)")
    target_ls = get_label_set(label_set)
    dst.mkdir(parents=True, exist_ok=True)
    if parsing_out is not None:
        Path(parsing_out).mkdir(parents=True, exist_ok=True)
    rows = []
    from tqdm import tqdm

    for path in tqdm(files, desc="references", disable=len(files) < 2):
        image = read_image(path, expected="a face image")
        if model is not None:
            parsed = parse_face(model, image)
        else:
            whole = np.ones(image.shape[:2], dtype=bool)
            parsed = ParsedFace(np.ones(image.shape[:2], dtype=np.int64), whole, whole, None)
        region = inpainting_mask(image, parsed, mask)
        reference = fill(image, region)
        score = reference_quality(image, reference, region, parsed.hull if model is not None else None, model)
        cv2.imwrite(str(dst / f"{path.stem}{suffix}.png"), cv2.cvtColor(reference, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(dst / f"{path.stem}_inpainted.png"), region.astype(np.uint8) * 255)
        if parsing_out is not None:
            cv2.imwrite(
                str(Path(parsing_out) / f"{path.stem}.png"), dataset_parsing(parsed, target_ls).astype(np.uint8)
            )
        rows.append({"name": path.name, **score})
    with open(dst / "quality.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "fidelity", "plausibility", "quality"])
        writer.writeheader()
        writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)

    def mean(key: str) -> float:
        vals = [r[key] for r in rows if not np.isnan(r[key])]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "images": len(rows),
        "fidelity": mean("fidelity"),
        "plausibility": mean("plausibility"),
        "quality": mean("quality"),
        "out": str(dst),
        "parsing_out": None if parsing_out is None else str(parsing_out),
    }
