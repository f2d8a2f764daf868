import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from slidewatch.evaluation import metrics


@pytest.mark.parametrize("seed", range(5))
def test_scores_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 50)
    p = rng.integers(0, 2, 50)
    s = metrics.scores(metrics.confusion(y, p))
    assert s["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert s["precision"] == pytest.approx(precision_score(y, p, zero_division=0))
    assert s["recall"] == pytest.approx(recall_score(y, p, zero_division=0))
    assert s["specificity"] == pytest.approx(recall_score(1 - y, 1 - p, zero_division=0))
    assert s["f1"] == pytest.approx(f1_score(y, p, zero_division=0))


def test_edge_cases_one_class_absent_and_all_one_prediction():
    s = metrics.scores(metrics.confusion([0, 0, 0], [1, 1, 1]))
    assert s["precision"] == 0 and s["recall"] == 0 and s["specificity"] == 0
    s = metrics.scores(metrics.confusion([1, 1], [1, 1]))
    assert s["f1"] == 1 and s["specificity"] == 0


def test_threshold_for_recall_reaches_target():
    y = np.array([1, 1, 1, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.4, 0.2, 0.3, 0.1])
    t = metrics.threshold_for_recall(y, p, 0.75)
    assert t == pytest.approx(0.4)
    assert metrics.binary_report(y, p, t)["recall"] >= 0.75


def test_operating_points_of_the_roc_curve_match_scikit_learn():
    from sklearn.metrics import roc_curve as sk_roc

    from slidewatch.evaluation.metrics import fpr_at_recall, recall_at_fpr

    rng = np.random.default_rng(4)
    y = rng.random(300) < 0.4
    prob = np.clip(y * 0.3 + rng.random(300) * 0.7, 0, 1)
    fpr, tpr, _ = sk_roc(y, prob)
    assert recall_at_fpr(y, prob, 0.1) == pytest.approx(tpr[fpr <= 0.1].max())
    assert fpr_at_recall(y, prob, 0.9) == pytest.approx(fpr[tpr >= 0.9].min())
    assert recall_at_fpr(y, y.astype(float), 0.0) == 1.0  # perfect ranking
