"""Structure via Consensus (CVPR 2020): encoder-decoder, consensus loss, checkpoint conversion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

import faceparse
from faceparse.errors import FaceParseError
from faceparse.losses.consensus import ConsensusLoss, compute_blobs, consensus_loss
from faceparse.models.consensus.model import ConsensusNet, convert_consensus

# ----------------------------------------------------------------------------------- model


def test_parameter_count_matches_paper():
    model = faceparse.build_model("consensus_net")
    assert model.num_classes == 3
    assert model.num_parameters() == 4_524_323
    assert faceparse.build_model("consensus_net", label_set="part_labels").num_parameters() == 4_524_323
    # the width option (quick experiments) scales every layer; 64 is the published network
    assert faceparse.build_model("consensus_net", width=32).num_parameters() == 1_133_203
    with pytest.raises(FaceParseError, match="width"):
        faceparse.build_model("consensus_net", width=7)


def test_forward_shapes_and_dropout():
    torch.manual_seed(0)
    model = faceparse.build_model("consensus_net", label_set="part_labels", dropout=0.2)
    x = torch.randn(2, 3, 32, 48)
    model.train()
    assert model(x).shape == (2, 3, 32, 48)
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)  # dropout off in eval
    assert model.forward_train(x)["logits"].shape == (2, 3, 32, 48)
    with pytest.raises(FaceParseError):
        model(torch.randn(1, 3, 30, 30))
    assert model.input_mean == (0.5, 0.5, 0.5) and model.input_std == (0.5, 0.5, 0.5)


# Key layout of the official release (module names and Sequential indices).
OFFICIAL_CONV_KEYS = [
    "model_enc.1",
    "model_enc.4",
    "model_enc.8",
    "model_enc.12",
    "model_enc.16",
    "model_dilation.1",
    "model_dilation.5",
    "model_dec.1",
    "model_dec.6",
    "model_dec.10",
    "model_dec.15",
    "model_dec.18",
    "model_class",
]
OFFICIAL_BN_KEYS = [
    "model_enc.6",
    "model_enc.10",
    "model_enc.14",
    "model_enc.18",
    "model_dilation.3",
    "model_dilation.7",
    "model_dec.3",
    "model_dec.8",
    "model_dec.12",
]


def test_state_dict_has_official_layout():
    sd = ConsensusNet().state_dict()
    expected = {f"{k}.{p}" for k in OFFICIAL_CONV_KEYS for p in ("weight", "bias")}
    expected |= {
        f"{k}.{p}"
        for k in OFFICIAL_BN_KEYS
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    assert set(sd) == expected
    assert sd["model_dilation.1.weight"].shape == (256, 256, 3, 3)
    assert sd["model_dec.1.weight"].shape == (512, 512, 3, 3)
    assert sd["model_dec.15.weight"].shape == (32, 32, 3, 3)
    assert sd["model_class.weight"].shape == (3, 32, 3, 3)


def test_initialisation_follows_paper():
    torch.manual_seed(0)
    model = ConsensusNet()
    conv = model.model_dec.get_submodule("1")
    fan_in, fan_out = 512 * 9, 512 * 9
    expected_std = math.sqrt(2.0) * math.sqrt(2.0 / (fan_in + fan_out))
    assert abs(conv.weight.std().item() - expected_std) / expected_std < 0.02
    assert torch.count_nonzero(conv.bias) == 0
    bn = model.model_dec.get_submodule("3")
    assert abs(bn.weight.mean().item() - 1.0) < 0.01 and 0.01 < bn.weight.std().item() < 0.03
    assert torch.count_nonzero(bn.bias) == 0


def test_convert_official_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(1)
    src = ConsensusNet(label_set="part_labels")
    for m in src.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ckpt = {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "iteration": 7}
    torch.save(ckpt, tmp_path / "ptlabel_best_model.pth")
    convert_consensus(str(tmp_path / "ptlabel_best_model.pth"), str(tmp_path / "out"), label_set="part_labels")
    loaded = faceparse.load_model(tmp_path / "out")
    assert loaded.label_set.name == "part_labels"
    x = torch.randn(1, 3, 32, 32)
    src.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x))
    # CLI path and errors
    from faceparse.cli import main

    assert main(["convert", "consensus", str(tmp_path / "ptlabel_best_model.pth"), str(tmp_path / "o2")]) == 0
    assert (
        main(
            [
                "convert",
                "consensus",
                str(tmp_path / "ptlabel_best_model.pth"),
                str(tmp_path / "o3"),
                "--label-set",
                "cofw",
            ]
        )
        == 2
    )
    torch.save({"state_dict": {"encoder.weight": torch.zeros(1)}}, tmp_path / "bad.pth")
    with pytest.raises(FaceParseError, match="official consensus_net layout"):
        convert_consensus(str(tmp_path / "bad.pth"), str(tmp_path / "o4"))
    with pytest.raises(FaceParseError, match="not found"):
        convert_consensus(str(tmp_path / "missing.pth"), str(tmp_path / "o5"))


# ------------------------------------------------------------------------------------ loss


def _reference_blobs(target: torch.Tensor, k: int, mode: str, ignore: int = 255) -> list[list[torch.Tensor]]:
    """Per image, the list of boolean blob masks (scipy labelling, independent of the module)."""
    out = []
    for t in target:
        masks = []
        for c in range(k):
            cls = (t == c).numpy()
            if not cls.any():
                continue
            if mode == "class":
                masks.append(torch.from_numpy(cls))
            else:
                lab, n = ndimage.label(cls, structure=np.ones((3, 3)))
                masks += [torch.from_numpy(lab == i) for i in range(1, n + 1)]
        out.append(masks)
    return out


def _loop_loss(logits, target, alpha, beta, mode="class", reduction="image"):
    """Eq. 8 written blob by blob with plain tensor ops."""
    k = logits.shape[1]
    per_image, all_blobs = [], []
    for b, masks in enumerate(_reference_blobs(target, k, mode)):
        p = torch.softmax(logits[b].double(), 0)
        vals = []
        for m in masks:
            ps = p[:, m]  # K x n
            y = int(target[b][m][0])
            pc = ps.mean(1)
            kl_y = -torch.log(pc[y])
            kl_s = (pc[:, None] * (torch.log(pc[:, None]) - torch.log(ps))).sum(0).mean()
            vals.append(alpha * kl_y + beta * kl_s)
        if vals:
            per_image.append(torch.stack(vals).mean())
            all_blobs += vals
    if reduction == "image":
        return torch.stack(per_image).mean()
    return torch.stack(all_blobs).mean()


def _blobby_target(b=3, k=3, h=24, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(b, k, h // 4, w // 4, generator=g)
    t = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False).argmax(1)
    t[0, :3, :3] = 255  # ignore pixels belong to no blob
    return t


@pytest.mark.parametrize("mode", ["class", "components"])
@pytest.mark.parametrize("reduction", ["image", "blob"])
def test_loss_equals_per_blob_loop(mode, reduction):
    torch.manual_seed(0)
    target = _blobby_target()
    logits = torch.randn(3, 3, 24, 20) * 2
    got = consensus_loss(logits, target, alpha=10.0, beta=5.0, blobs=mode, reduction=reduction)["loss"]
    ref = _loop_loss(logits, target, 10.0, 5.0, mode, reduction)
    assert abs(got.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    if mode == "components":  # more blobs than classes: the component split is in effect
        assert compute_blobs(target, 3, "components").num_blobs > compute_blobs(target, 3, "class").num_blobs


def test_loss_gradient_matches_loop():
    torch.manual_seed(1)
    target = _blobby_target(b=2, h=16, w=16, seed=3)
    logits = torch.randn(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    consensus_loss(logits, target, blobs="components")["loss"].backward()
    g1 = logits.grad.clone()
    logits.grad = None
    _loop_loss(logits, target, 10.0, 5.0, "components").backward()
    torch.testing.assert_close(g1, logits.grad, rtol=1e-6, atol=1e-9)


def test_fast_and_stable_paths_agree():
    from faceparse.losses.consensus import consensus_loss_terms

    torch.manual_seed(3)
    target = _blobby_target(b=2, h=16, w=16, seed=1)
    logits = torch.randn(2, 3, 16, 16, dtype=torch.float64) * 8
    idx = compute_blobs(target, 3, "components")
    for a, b in zip(consensus_loss_terms(logits, idx, stable=False), consensus_loss_terms(logits, idx, stable=True)):
        torch.testing.assert_close(a, b)


def test_every_pixel_its_own_blob_is_cross_entropy():
    torch.manual_seed(0)
    b, k, h, w = 2, 4, 8, 8
    logits = torch.randn(b, k, h, w) * 3
    target = torch.randint(0, k, (b, h, w))
    ids = torch.arange(h * w).reshape(1, h, w).expand(b, -1, -1)
    out = consensus_loss(logits, target, alpha=1.0, beta=5.0, blobs="given", blob_ids=ids)
    torch.testing.assert_close(out["loss"], F.cross_entropy(logits, target), rtol=1e-5, atol=1e-6)
    assert abs(out["consensus_term"].item()) < 1e-6
    out10 = ConsensusLoss(blobs="given")(logits, {"mask": target, "blobs": ids})
    torch.testing.assert_close(out10["loss"], 10 * F.cross_entropy(logits, target), rtol=1e-5, atol=1e-5)


def test_gradient_finite_for_empty_classes_and_single_pixel_blobs():
    k = 5  # classes 3 and 4 never occur
    target = torch.zeros(2, 12, 12, dtype=torch.long)
    target[:, ::3, ::3] = 1  # isolated single pixels: one blob each with 8-connectivity
    target[1, 6:, 6:] = 2
    target[1, 0, 0] = 255
    for scale in (1.0, 1e4):  # 1e4: probabilities underflow to exactly 0
        logits = (torch.randn(2, k, 12, 12) * scale).requires_grad_(True)
        for mode in ("class", "components"):
            for norm in ("paper", "official"):
                out = consensus_loss(logits, target, blobs=mode, normalization=norm)
                assert torch.isfinite(out["loss"])
                (grad,) = torch.autograd.grad(out["loss"], logits)
                assert torch.isfinite(grad).all()
                assert grad[:, 3:].abs().sum() > 0 or scale > 1  # empty classes still get pushed down
    idx = compute_blobs(target, k, "components")
    # image 0: 16 single pixels + background; image 1: 11 singles left (4 under the class-2 square,
    # 1 ignored) + background + the class-2 square
    assert idx.num_blobs == (16 + 1) + (11 + 1 + 1)


def test_all_ignored_batch_gives_zero_with_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    out = consensus_loss(logits, torch.full((1, 4, 4), 255))
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def _official_loop(logits, target, alpha, beta):
    """The released normalisation written as a loop over class ids shared by the batch."""
    n, k = logits.shape[:2]
    p = torch.softmax(logits.double(), 1)
    losses = []
    for c in torch.unique(target[target != 255]):
        label_terms, kl_sum, pix = [], 0.0, 0
        for b in range(n):
            m = target[b] == c
            if not m.any():
                label_terms.append(torch.zeros((), dtype=torch.float64))
                continue
            ps = p[b][:, m]
            pc = ps.mean(1)
            label_terms.append(-torch.log(pc[c]))
            kl_sum = kl_sum + (pc[:, None] * (torch.log(pc[:, None]) - torch.log(ps))).sum()
            pix += int(m.sum())
        losses.append(alpha * torch.stack(label_terms).mean() + beta * kl_sum / (k * pix))
    return torch.stack(losses).mean()


def test_official_normalisation_matches_its_loop():
    torch.manual_seed(2)
    target = _blobby_target(b=3, k=3, seed=5)
    target[2][target[2] == 2] = 0  # a class missing from one image
    logits = torch.randn(3, 3, 24, 20)
    got = consensus_loss(logits, target, normalization="official")["loss"]
    ref = _official_loop(logits, target, 10.0, 5.0)
    assert abs(got.item() - ref.item()) <= 1e-5 * max(1.0, abs(ref.item()))
    assert abs(got.item() - consensus_loss(logits, target)["loss"].item()) > 1e-3  # it does differ


def test_loss_registry_and_errors():
    loss = faceparse.build_loss("consensus", blobs="components")
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    out = loss({"logits": logits}, {"mask": target})
    assert set(out) == {"loss", "label_term", "consensus_term"}
    out["loss"].backward()
    with pytest.raises(ValueError, match="blobs"):
        faceparse.build_loss("consensus", blobs="superpixels")
    with pytest.raises(ValueError, match="blobs"):
        faceparse.build_loss("consensus", blobs="given")(logits, {"mask": target})
    fallback = faceparse.build_loss("consensus", blobs="given", missing_blobs="components")
    torch.testing.assert_close(fallback(logits, {"mask": target})["loss"], out["loss"])
    with pytest.raises(ValueError, match="same size"):
        consensus_loss(logits, target[:, :4])


# ------------------------------------------------------------------------------ evaluation


def test_consensus_evaluate_part_labels_at_250_and_cofw(tmp_path):
    from fixture_trees import write_cofw, write_part_labels

    from faceparse.cli import main
    from faceparse.evaluate import evaluate_consensus
    from faceparse.metrics import upsample_labels

    torch.manual_seed(0)
    model = faceparse.build_model("consensus_net", label_set="part_labels", width=8, input_size=32).eval()
    model.save_pretrained(tmp_path / "m")
    write_part_labels(tmp_path / "pl", {"train": 1, "val": 1, "test": 2}, size=250)
    ds = faceparse.build_dataset(
        "part_labels", root=str(tmp_path / "pl"), split="test", image_size=None, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    res = evaluate_consensus(model, ds, "part_labels")
    # independent check of the pixel accuracy at 250 with nearest-upsampled 32 x 32 predictions
    correct = total = 0
    for i in range(len(ds)):
        s = ds[i]
        x = F.interpolate(s["image"][None], size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        with torch.no_grad():
            pred = upsample_labels(model(x).argmax(1)[0], 250)
        correct += int((pred == s["mask"]).sum())
        total += s["mask"].numel()
    assert res["pixel_acc"].item() == pytest.approx(correct / total, abs=1e-6)
    assert {"superpixel_acc", "sparsity", "rec_all", "face_iou"} <= set(res)
    args = ["evaluate", "consensus", "--model", str(tmp_path / "m"), "--dataset", "part_labels",
            "--root", str(tmp_path / "pl")]  # fmt: skip
    assert main([*args, "--protocol", "part_labels", "--original-resolution"]) == 0
    # COFW protocol with a 3-class model
    cofw_model = faceparse.build_model("consensus_net", width=8, input_size=32)
    cofw_model.save_pretrained(tmp_path / "c")
    write_cofw(tmp_path / "cofw", n_train=1, n_test=2, size=64)
    args = [
        "evaluate",
        "consensus",
        "--model",
        str(tmp_path / "c"),
        "--dataset",
        "cofw",
        "--root",
        str(tmp_path / "cofw"),
        "--protocol",
        "cofw",
    ]
    assert main(args) == 0
