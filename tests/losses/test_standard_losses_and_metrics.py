import numpy as np
import pytest
import torch

import faceparse
from faceparse.metrics import FaceParsingMetrics, OcclusionIoU


def numpy_face_parsing_metrics(preds, targets, k, ignore=255):
    """Independent reference: per-class TP/|GT|/|Pred| summed over the dataset, loops per class."""
    tp, gt, pr = np.zeros(k), np.zeros(k), np.zeros(k)
    for p, t in zip(preds, targets):
        valid = t != ignore
        for c in range(k):
            tp[c] += np.sum((p == c) & (t == c) & valid)
            gt[c] += np.sum((t == c) & valid)
            pr[c] += np.sum((p == c) & valid)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * tp / (gt + pr)
        iou = tp / (gt + pr - tp)
    return {
        "f1": f1,
        "iou": iou,
        "mean_f1": np.nanmean(f1[1:]),
        "miou": np.nanmean(iou),
        "pixel_acc": tp.sum() / gt.sum(),
    }


def test_metrics_match_numpy_reference():
    rng = np.random.default_rng(0)
    k = 11
    metric = FaceParsingMetrics("lapa")
    preds, targets = [], []
    for _ in range(4):
        t = rng.integers(0, k, (2, 16, 16))
        t[:, :2] = 255
        p = np.where(rng.random(t.shape) < 0.7, t, rng.integers(0, k, t.shape))
        p[p == 255] = 0
        preds.append(p)
        targets.append(t)
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
    ours = metric.compute()
    ref = numpy_face_parsing_metrics(preds, targets, k)
    np.testing.assert_allclose(ours["f1"].numpy(), ref["f1"], rtol=1e-5)
    np.testing.assert_allclose(ours["iou"].numpy(), ref["iou"], rtol=1e-5)
    for key in ("mean_f1", "miou", "pixel_acc"):
        assert float(ours[key]) == pytest.approx(ref[key], rel=1e-5)


def test_metrics_accept_logits_and_absent_classes():
    metric = FaceParsingMetrics("part_labels")
    target = torch.tensor([[[0, 1], [1, 1]]])
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 1.0
    metric.update(logits, target)
    res = metric.compute()
    assert float(res["f1"][1]) == pytest.approx(2 * 3 / (3 + 4))
    assert torch.isnan(res["f1"][2])  # hair absent in GT and prediction: excluded from the mean
    assert float(res["mean_f1"]) == pytest.approx(6 / 7)
    with pytest.raises(ValueError, match="outside"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    assert "hair" in metric.per_class_table()


def test_occlusion_iou():
    m = OcclusionIoU()
    m.update(torch.tensor([[1, 1, 0, 0]]), torch.tensor([[1, 0, 1, 255]]))
    assert float(m.compute()) == pytest.approx(1 / 3)


def test_ce_dice_losses():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 8, 8, requires_grad=True)
    mask = torch.randint(0, 5, (2, 8, 8))
    mask[0, 0] = 255
    batch = {"mask": mask}
    ce = faceparse.build_loss("ce")(logits, batch)
    valid = mask != 255
    ref_ce = -torch.log_softmax(logits, 1).gather(1, mask.clamp(max=4)[:, None])[:, 0][valid].mean()
    assert float(ce) == pytest.approx(float(ref_ce), rel=1e-5)
    # softmax Dice reference: 1 - mean over classes present of 2|P.G| / (|P| + |G|)
    dice = faceparse.build_loss("dice")(logits, batch)
    p = logits.softmax(1).permute(1, 0, 2, 3)[:, valid]
    g = torch.nn.functional.one_hot(mask[valid], 5).T.float()
    per = 2 * (p * g).sum(1) / (p.sum(1) + g.sum(1)).clamp(min=1e-7)
    ref_dice = (1 - per)[g.sum(1) > 0].mean()
    assert float(dice) == pytest.approx(float(ref_dice), rel=1e-4)
    out = faceparse.build_loss("ce_dice")(logits, batch)
    assert float(out["loss"]) == pytest.approx(0.5 * float(ce) + 0.5 * float(dice), rel=1e-5)
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all()
    aux = faceparse.build_loss("ce_dice")({"logits": logits, "aux_logits": logits[..., ::2, ::2]}, batch)
    assert float(aux["loss"]) > float(out["loss"])


def test_class_frequencies_and_balanced_weights():
    from faceparse.data.stats import balanced_class_weights, class_pixel_frequencies

    ds = faceparse.build_dataset("synthetic", split="val", num_samples=6, image_size=32)
    freq = class_pixel_frequencies(ds)
    masks = np.stack([ds.load_raw(i)["mask"] for i in range(6)])
    np.testing.assert_allclose(freq, np.bincount(masks.ravel(), minlength=19) / masks.size)
    w = balanced_class_weights(np.array([0.4, 0.25, 0.2, 0.1, 0.05, 0.0]), power=1.0, max_weight=3.0)
    assert w[2] == pytest.approx(1.0)  # the median of the classes that occur
    assert w[0] == pytest.approx(0.5) and w[3] == pytest.approx(2.0)
    assert w[4] == pytest.approx(3.0) and w[5] == 3.0  # clipped / never seen


def test_ce_dice_class_weights_change_the_ce_term():
    logits = torch.randn(1, 3, 4, 4)
    batch = {"mask": torch.randint(0, 3, (1, 4, 4))}
    plain = faceparse.build_loss("ce_dice")(logits, batch)
    weighted = faceparse.build_loss("ce_dice", class_weights=[1.0, 1.0, 1.0])(logits, batch)
    assert float(weighted["ce"]) == pytest.approx(float(plain["ce"]))
    skewed = faceparse.build_loss("ce_dice", class_weights=[0.1, 5.0, 1.0])(logits, batch)
    ref = torch.nn.functional.cross_entropy(logits, batch["mask"], weight=torch.tensor([0.1, 5.0, 1.0]))
    assert float(skewed["ce"]) == pytest.approx(float(ref), rel=1e-5)
