"""S3POT Table 2 switches: prompt selection (greedy / fixed threshold / Otsu), FE off, screening off.

Each switch is checked against an independent computation written here (numpy cosine similarities,
an exhaustive Otsu search, a decoder run without the screening layer).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import faceparse
from faceparse.errors import FaceParseError
from faceparse.models.s3pot.model import otsu_threshold, select_prompts, select_prompts_by_threshold

pytest.importorskip("segment_anything")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _np_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _naive_otsu(values: np.ndarray) -> float:
    """Exhaustive Otsu: the cut between sorted values that maximises the between-class variance."""
    v = np.sort(values)
    best, cut = -1.0, v[0]
    for i in range(1, len(v)):
        lo, hi = v[:i], v[i:]
        w0, w1 = len(lo) / len(v), len(hi) / len(v)
        between = w0 * w1 * (lo.mean() - hi.mean()) ** 2
        if between > best:
            best, cut = between, (v[i - 1] + v[i]) / 2
    return float(cut)


def _tokens(n: int = 40, d: int = 64, seed: int = 0):
    g = np.random.default_rng(seed)
    ref = g.normal(size=(n, d)).astype(np.float32)
    img = ref.copy()
    occluded = g.random(n) < 0.3
    # occluded tokens: another direction (similarity ~0.2 +- 0.1), the others near the reference (~0.98)
    img[occluded] = 0.2 * ref[occluded] + g.normal(size=(occluded.sum(), d)).astype(np.float32)
    img[~occluded] += 0.2 * g.normal(size=((~occluded).sum(), d)).astype(np.float32)
    face = g.random(n) < 0.85
    return img, ref, face


def test_fixed_threshold_matches_a_numpy_similarity_map():
    img, ref, face = _tokens()
    occ, fac = select_prompts_by_threshold(torch.from_numpy(img), torch.from_numpy(ref), torch.from_numpy(face), 0.5)
    sim = _np_cos(img, ref)
    want_occ = np.flatnonzero(face & (sim < 0.5))
    want_face = np.flatnonzero(face & (sim >= 0.5))
    assert occ.tolist() == want_occ.tolist() and fac.tolist() == want_face.tolist()
    assert len(want_occ) > 0 and len(want_face) > 0  # the data exercise both sides
    # a higher threshold turns more face tokens into occlusion prompts
    occ9, _ = select_prompts_by_threshold(torch.from_numpy(img), torch.from_numpy(ref), torch.from_numpy(face), 0.99)
    assert set(occ.tolist()) < set(occ9.tolist())


def test_otsu_threshold_matches_an_exhaustive_search():
    img, ref, face = _tokens(n=60, seed=1)
    occ, fac = select_prompts_by_threshold(torch.from_numpy(img), torch.from_numpy(ref), torch.from_numpy(face), None)
    sim = _np_cos(img, ref)
    t = _naive_otsu(sim[face])
    assert occ.tolist() == np.flatnonzero(face & (sim < t)).tolist()
    assert fac.tolist() == np.flatnonzero(face & (sim >= t)).tolist()
    assert 0.0 < len(occ) < face.sum()
    assert otsu_threshold(torch.full((9,), 0.7)) == float("-inf")  # all equal: nothing is below it
    assert otsu_threshold(torch.tensor([0.1, 0.2, 0.9, 1.0])) == pytest.approx(0.55)


@pytest.fixture(scope="module")
def tiny_batch():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    ref = x.clone()
    ref[:, :, 16:40, 20:44] = torch.randn(1, 3, 24, 24)  # the "occluder" differs from the reference
    face = torch.zeros(1, 64, 64, dtype=torch.bool)
    face[:, 8:56, 12:52] = True
    return x, ref, face


def test_feature_enhancement_off_selects_on_raw_sam_tokens(tiny_batch):
    x, ref, face = tiny_batch
    torch.manual_seed(0)
    model = faceparse.build_model("s3pot_tiny", feature_enhancement=False).eval()
    state = model.prepare(x, ref, face)
    z, zr = model.encode(torch.cat([x, ref]))[:1], model.encode(torch.cat([x, ref]))[1:]
    assert torch.equal(state.enhanced, z) and torch.equal(state.enhanced_reference, zr)
    face_tok = torch.nn.functional.interpolate(face[:, None].float(), size=z.shape[-2:], mode="nearest-exact")
    want = select_prompts(z[0].flatten(1).T, zr[0].flatten(1).T, face_tok[0, 0].flatten() > 0.5)
    assert torch.equal(state.occlusion_idx[0], want[0]) and torch.equal(state.face_idx[0], want[1])
    model.set_ablation(feature_enhancement=True)
    on = model.prepare(x, ref, face)
    assert not torch.allclose(on.enhanced, z)  # FE changes the tokens the prompts are chosen on


def test_threshold_and_otsu_run_on_the_enhanced_tokens(tiny_batch):
    x, ref, face = tiny_batch
    torch.manual_seed(0)
    model = faceparse.build_model("s3pot_tiny", prompt_selection="threshold").eval()
    state = model.prepare(x, ref, face)
    ze, zre = state.enhanced[0].flatten(1).T.numpy(), state.enhanced_reference[0].flatten(1).T.numpy()
    face_tok = torch.nn.functional.interpolate(face[:, None].float(), size=state.enhanced.shape[-2:])
    face_tok = (face_tok[0, 0].flatten() > 0.5).numpy()
    sim = _np_cos(ze, zre)
    assert state.occlusion_idx[0].tolist() == np.flatnonzero(face_tok & (sim < 0.5)).tolist()
    model.set_ablation(prompt_selection="otsu")
    otsu = model.prepare(x, ref, face)
    t = _naive_otsu(sim[face_tok])
    assert otsu.occlusion_idx[0].tolist() == np.flatnonzero(face_tok & (sim < t)).tolist()
    assert otsu.occlusion_idx[0].tolist() != state.occlusion_idx[0].tolist()  # Otsu is not the fixed 0.5
    with pytest.raises(FaceParseError, match="prompt_selection"):
        model.set_ablation(prompt_selection="kmeans")


def test_screening_off_skips_the_layer_and_cannot_train(tiny_batch, tmp_path):
    from faceparse.tasks.s3pot import OcclusionPromptTask, per_image_overfit

    x, ref, face = tiny_batch
    torch.manual_seed(0)
    task = OcclusionPromptTask("s3pot_tiny", screening=False, prompt_selection="otsu", feature_enhancement=False)
    model = task.model.eval()
    assert (model.use_screening, model.prompt_selection, model.feature_enhancement) == (False, "otsu", False)
    state = model.prepare(x, ref, face)
    off = model.decode(state)["occlusion_logits"]
    # independent decode: the prompt embeddings go straight to SAM's mask decoder
    pe, dec = model.sam.prompt_encoder, model.sam.mask_decoder
    idx = torch.cat([state.occlusion_idx[0], state.face_idx[0]])
    labels = torch.cat([torch.ones_like(state.occlusion_idx[0]), torch.zeros_like(state.face_idx[0])]).float()
    with torch.no_grad():
        sparse, dense = pe(points=(model._sam_points(idx)[None], labels[None]), boxes=None, masks=None)
        low, _ = dec(state.embeddings, pe.get_dense_pe(), sparse, dense, multimask_output=False)
    want = torch.nn.functional.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.allclose(off, want, atol=1e-5)
    model.set_ablation(prompt_selection="otsu", feature_enhancement=False, screening=True)
    assert not torch.allclose(model.decode(state)["occlusion_logits"], off, atol=1e-4)
    # the switches travel in config.json
    model.set_ablation(prompt_selection="threshold", similarity_threshold=0.3, screening=False)
    model.save_pretrained(tmp_path / "m")
    back = faceparse.load_model(tmp_path / "m")
    assert (back.prompt_selection, back.similarity_threshold, back.use_screening) == ("threshold", 0.3, False)
    with pytest.raises(FaceParseError, match="screening=False"):
        task.training_step({"image": x, "reference": ref, "face_mask": face.long()}, 0)
    with pytest.raises(FaceParseError, match="screening=False"):
        per_image_overfit(model, x, ref, face, steps=1)


def test_defaults_are_the_paper_full_model():
    from faceparse.tasks.s3pot import OcclusionPromptTask

    task = OcclusionPromptTask("s3pot_tiny")
    m = task.model
    assert (m.prompt_selection, m.similarity_threshold, m.feature_enhancement, m.use_screening) == (
        "greedy",
        0.5,
        True,
        True,
    )
