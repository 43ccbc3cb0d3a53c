"""S3POT reference generation: face region from a parser (by class name), inpainting masks, a tiny
random diffusers inpainting pipeline saved by the test, the quality score, `references generate`."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from faceparse.errors import MissingWeightsError
from faceparse.labels import get_label_set
from faceparse.models.s3pot.generation import (
    dataset_parsing,
    generate_references,
    inpainting_mask,
    parse_face,
    reference_quality,
)


class StubParser(nn.Module):
    """Returns one-hot logits of a fixed label map (resized), like a faceparse parsing model."""

    def __init__(self, labels: np.ndarray, label_set: str = "lapa") -> None:
        super().__init__()
        self.label_set = get_label_set(label_set)
        self.labels = labels
        self.input_mean, self.input_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        self.default_input_size = labels.shape[0]
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lab = torch.from_numpy(self.labels).long()
        lab = torch.nn.functional.interpolate(lab[None, None].float(), size=x.shape[-2:], mode="nearest")[0, 0].long()
        return torch.nn.functional.one_hot(lab, self.label_set.num_classes).permute(2, 0, 1)[None].float()


def _scene(size: int = 48):
    """A LaPa-labelled face: skin ellipse with eyes, a hand-like hole labelled hair inside, and its image."""
    ls = get_label_set("lapa")
    labels = np.zeros((size, size), np.uint8)
    cv2.ellipse(labels, (24, 24), (14, 18), 0, 0, 360, ls.index("skin"), -1)
    labels = labels.astype(np.int64)
    labels[16:19, 15:20] = ls.index("left_eye")
    labels[16:19, 28:33] = ls.index("right_eye")
    labels[26:34, 18:30] = ls.index("hair")  # an occluder the parser calls something else
    image = np.full((size, size, 3), 40, np.uint8)
    image[labels != 0] = (200, 150, 120)
    image[labels == ls.index("hair")] = (30, 60, 200)
    image[16:19, 15:20] = image[16:19, 28:33] = (20, 20, 20)
    return labels, image


def test_face_region_is_the_union_of_face_classes_by_name_and_its_hull():
    labels, image = _scene()
    ls = get_label_set("lapa")
    parsed = parse_face(StubParser(labels), image)
    face_ids = [ls.index(c) for c in ("skin", "left_eye", "right_eye", "left_brow", "right_brow", "nose")]
    face_ids += [ls.index(c) for c in ("upper_lip", "lower_lip", "mouth")]
    np.testing.assert_array_equal(parsed.face, np.isin(labels, face_ids))
    hole = labels == ls.index("hair")
    assert parsed.hull[hole].all() and not parsed.face[hole].any()  # the hull covers the occluder
    assert not parsed.hull[0, 0] and not parsed.hull[labels == 0].all()
    # the dataset map: CelebAMask-HQ ids by name, the hole filled with skin, outside kept
    cm = get_label_set("celebamask_hq")
    out = dataset_parsing(parsed, cm)
    assert (out[hole] == cm.index("skin")).all()
    assert (out[labels == ls.index("left_eye")] == cm.index("left_eye")).all()
    assert out[0, 0] == 0
    # a parser with one "face" class works too
    single = StubParser(np.where(labels != 0, 1, 0), "cofw_occlusion")
    assert parse_face(single, image).face.sum() == (labels != 0).sum()


def test_inpainting_masks_face_hull_and_occlusion_candidates():
    labels, image = _scene()
    parsed = parse_face(StubParser(labels), image)
    face = inpainting_mask(image, parsed, "face", dilate=0)
    np.testing.assert_array_equal(face, parsed.hull)
    occ = inpainting_mask(image, parsed, "occlusion", dilate=0)
    hole = labels == get_label_set("lapa").index("hair")
    assert occ[hole].all()  # parsed as non-face inside the face
    assert occ.sum() < face.sum() and not occ[~parsed.hull].any()
    assert inpainting_mask(image, parsed, "occlusion", dilate=2).sum() > occ.sum()


def test_reference_quality_against_its_definition():
    from skimage.metrics import structural_similarity

    labels, image = _scene()
    parser = StubParser(labels)
    parsed = parse_face(parser, image)
    region = inpainting_mask(image, parsed, "occlusion", dilate=0)
    same = reference_quality(image, image.copy(), region, parsed.hull)
    assert same["fidelity"] == pytest.approx(1.0) and np.isnan(same["plausibility"])
    assert same["quality"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(image + rng.normal(0, 25, image.shape), 0, 255).astype(np.uint8)
    got = reference_quality(image, noisy, region, parsed.hull, parser)
    _, full = structural_similarity(image, noisy, channel_axis=2, data_range=255, full=True)
    want_fid = full.mean(axis=2)[parsed.hull & ~region].mean()
    # the stub parses the same map on the reference: the hole (inside the region) stays "hair"
    lapa_face = np.isin(labels, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    want_pl = lapa_face[region].mean()
    assert got["fidelity"] == pytest.approx(want_fid, abs=1e-6) and got["fidelity"] < 0.9
    assert got["plausibility"] == pytest.approx(want_pl)
    assert got["quality"] == pytest.approx((want_fid + want_pl) / 2, abs=1e-6)


@pytest.fixture(scope="module")
def inpainter(tmp_path_factory):
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from tiny_diffusers import build_tiny_inpainting_pipeline

    return build_tiny_inpainting_pipeline(tmp_path_factory.mktemp("diffusers"))


def test_references_generate_with_a_tiny_diffusers_pipeline(inpainter, tmp_path, capsys):
    import faceparse
    from faceparse.cli import main

    labels, image = _scene()
    (tmp_path / "images").mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / "images" / f"f{i}.png"), cv2.cvtColor(np.roll(image, i, 1), cv2.COLOR_RGB2BGR))
    # a saved faceparse parsing model: its class 'face' everywhere (head weights 0, bias on 'face')
    parser = faceparse.build_model("consensus_net", width=8, input_size=32)
    head = [m for m in parser.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, 5.0, 0.0]))
    parser.save_pretrained(tmp_path / "parser")
    args = ["references", "generate", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "refs")]
    args += ["--inpainter", str(inpainter), "--parser", str(tmp_path / "parser"), "--mask", "occlusion"]
    args += ["--parsing-out", str(tmp_path / "parsing"), "--steps", "2", "--size", "32"]
    assert main(args) == 0
    assert "2 references" in capsys.readouterr().out
    for i in range(2):
        src = cv2.imread(str(tmp_path / "images" / f"f{i}.png"))
        ref = cv2.imread(str(tmp_path / "refs" / f"f{i}_ref.png"))
        region = cv2.imread(str(tmp_path / "refs" / f"f{i}_inpainted.png"), cv2.IMREAD_GRAYSCALE) > 0
        parsing = cv2.imread(str(tmp_path / "parsing" / f"f{i}.png"), cv2.IMREAD_UNCHANGED)
        assert ref.shape == src.shape and 0 < region.sum() < region.size
        np.testing.assert_array_equal(ref[~region], src[~region])  # kept outside the mask
        assert (ref[region] != src[region]).any(axis=-1).mean() > 0.5  # generated inside it
        assert (parsing == get_label_set("celebamask_hq").index("skin")).all()  # 'face' -> hull -> skin
    rows = list(csv.DictReader(open(tmp_path / "refs" / "quality.csv")))
    assert [r["name"] for r in rows] == ["f0.png", "f1.png"]
    assert all(0.0 <= float(r["quality"]) <= 1.0 and r["plausibility"] != "nan" for r in rows)


def test_missing_or_wrong_inpainter_names_the_argument(tmp_path, capsys):
    from faceparse.cli import main

    _, image = _scene()
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), image)
    with pytest.raises(MissingWeightsError, match="--inpainter"):
        generate_references(tmp_path / "images", tmp_path / "out", None)
    with pytest.raises(MissingWeightsError, match="--inpainter .*model_index.json"):
        generate_references(tmp_path / "images", tmp_path / "out", tmp_path / "nowhere")
    assert main(["references", "generate", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "o")]) == 2
    assert "--inpainter" in capsys.readouterr().err


def test_opencv_inpainter_needs_no_checkpoint(tmp_path):
    labels, image = _scene()
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    summary = generate_references(
        tmp_path / "images", tmp_path / "out", "opencv", parser=StubParser(labels), mask="occlusion"
    )
    ref = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "a_ref.png")), cv2.COLOR_BGR2RGB)
    hole = labels == get_label_set("lapa").index("hair")
    # the blue occluder is repainted from the skin around it
    assert (
        np.abs(ref[hole].astype(int) - (200, 150, 120)).mean()
        < np.abs(image[hole].astype(int) - (200, 150, 120)).mean()
    )
    assert summary["images"] == 1 and summary["quality"] > 0
