"""Pixel and object metrics against scikit-learn and hand-counted cases; segmentation losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    f1_score,
    jaccard_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
)

from slidewatch.evaluation.pixels import (
    PixelCounts,
    bootstrap_pixel_ci,
    object_counts,
    object_scores,
    pixel_counts,
    pixel_scores,
)
from slidewatch.training.losses import lovasz_hinge, segmentation_loss, soft_dice_loss


@pytest.mark.parametrize("seed", range(5))
def test_pixel_scores_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    truth = rng.random((3, 20, 30)) < 0.2
    pred = truth ^ (rng.random(truth.shape) < 0.15)
    total = sum((pixel_counts(p, t) for p, t in zip(pred, truth)), PixelCounts())
    s = pixel_scores(total)
    y, p = truth.ravel(), pred.ravel()
    assert s["iou"] == pytest.approx(jaccard_score(y, p))
    assert s["f1"] == pytest.approx(f1_score(y, p))
    assert s["precision"] == pytest.approx(precision_score(y, p))
    assert s["recall"] == pytest.approx(recall_score(y, p))
    assert s["mcc"] == pytest.approx(matthews_corrcoef(y, p))


def test_pooled_not_averaged_and_undefined_is_none():
    big = pixel_counts(np.ones((10, 10), bool), np.ones((10, 10), bool))  # IoU 1 on 100 px
    small = pixel_counts(np.array([[True, False]]), np.array([[False, True]]))  # IoU 0 on 2
    assert pixel_scores(big + small)["iou"] == pytest.approx(100 / 102)
    empty = pixel_scores(pixel_counts(np.zeros((4, 4), bool), np.zeros((4, 4), bool)))
    assert empty["iou"] is None and empty["f1"] is None and empty["mcc"] is None
    valid = np.array([[True, False]])
    c = pixel_counts(np.array([[True, True]]), np.array([[True, False]]), valid)
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 0, 0, 0)


def test_bootstrap_interval_contains_the_pooled_value():
    rng = np.random.default_rng(3)
    per_image = [pixel_counts(rng.random((8, 8)) < 0.3, rng.random((8, 8)) < 0.3)
                 for _ in range(12)]
    pooled = pixel_scores(sum(per_image, PixelCounts()))["iou"]
    lo, hi = bootstrap_pixel_ci(per_image, resamples=300)["iou"]
    assert lo <= pooled <= hi and hi - lo > 0


def test_objects_found_by_iou_and_counted_by_size():
    truth = np.zeros((20, 20), bool)
    truth[1:5, 1:5] = True  # 16 px, found (predicted exactly)
    truth[10:18, 10:18] = True  # 64 px, missed (prediction covers a quarter: IoU 0.25)
    pred = np.zeros_like(truth)
    pred[1:5, 1:5] = True
    pred[10:14, 10:14] = True
    pred[0, 19] = True  # a false object
    c = object_counts(pred, truth, size_edges=[20])
    assert (c["true"], c["found"], c["predicted"], c["correct"]) == (2, 1, 3, 1)
    assert c["by_size"] == [{"true": 1, "found": 1}, {"true": 1, "found": 0}]
    s = object_scores([c, object_counts(truth, truth, size_edges=[20])])
    assert s["recall"] == pytest.approx(3 / 4) and s["precision"] == pytest.approx(3 / 5)
    assert s["by_size"][1]["recall"] == pytest.approx(1 / 2)
    assert object_counts(pred, truth, match_iou=0.2)["found"] == 2


def test_lovasz_hinge_of_a_hard_map_is_twice_its_jaccard_loss():
    """On logits of +-1 the Lovasz extension equals the set function: 2 * (1 - IoU)."""
    rng = np.random.default_rng(3)
    for _ in range(5):
        truth = rng.random((2, 1, 12, 12)) < 0.2
        pred = truth ^ (rng.random(truth.shape) < 0.15)
        logits = torch.tensor(np.where(pred, 1.0, -1.0), dtype=torch.float32)
        target = torch.tensor(truth, dtype=torch.float32)
        iou = jaccard_score(truth.ravel(), pred.ravel())
        assert float(lovasz_hinge(logits, target)) == pytest.approx(2 * (1 - iou), abs=1e-5)
        # pixels outside ``valid`` count for nothing
        valid = torch.ones_like(target, dtype=torch.bool)
        valid[1] = False
        iou0 = jaccard_score(truth[0].ravel(), pred[0].ravel())
        assert float(lovasz_hinge(logits, target, valid)) == pytest.approx(2 * (1 - iou0),
                                                                           abs=1e-5)
    # a confident right map costs nothing; a batch without landslides pays its worst pixel
    target = torch.zeros(1, 1, 4, 4)
    target[..., :2, :2] = 1
    assert float(lovasz_hinge((target * 2 - 1) * 3, target)) == 0.0
    logits = torch.full((1, 1, 4, 4), -2.0)
    logits[..., 0, 0] = 0.5
    assert float(lovasz_hinge(logits, torch.zeros(1, 1, 4, 4))) == pytest.approx(1.5)
    logits.requires_grad_(True)
    lovasz_hinge(logits, torch.zeros(1, 1, 4, 4)).backward()
    assert logits.grad[0, 0, 0, 0] > 0 and float(logits.grad.abs().sum()) == pytest.approx(1.0)


def test_losses_fall_as_the_map_improves_and_handle_empty_masks():
    target = torch.zeros(2, 1, 8, 8)
    target[0, 0, 2:5, 2:5] = 1
    good, bad = (target * 2 - 1) * 6, -(target * 2 - 1) * 6
    for kind in ("bce_dice", "focal_dice", "bce", "dice", "bce_lovasz"):
        assert segmentation_loss(good, target, kind) < segmentation_loss(bad, target, kind)
    empty = torch.zeros(1, 1, 8, 8)
    assert float(soft_dice_loss(torch.full((1, 1, 8, 8), -10.0), empty)) < 0.01
    assert float(soft_dice_loss(torch.full((1, 1, 8, 8), 10.0), empty)) > 0.9
    weighted = segmentation_loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), "bce",
                                 pos_weight=3.0)
    assert float(weighted) == pytest.approx(3 * float(np.log(2)), rel=1e-5)
    valid = torch.zeros(1, 1, 2, 2, dtype=torch.bool)
    valid[..., 0, 0] = True
    only = segmentation_loss(torch.tensor([[[[5.0, -5.0], [-5.0, -5.0]]]]),
                             torch.ones(1, 1, 2, 2), "bce", valid=valid)
    assert float(only) < 0.01
