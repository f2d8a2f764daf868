"""`slidewatch evaluate`: metrics checked against scikit-learn on the written predictions,
intervals, per-region blocks, --target-recall, figures and error paths."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _factories import make_class_dataset
from conftest import write_image
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from slidewatch.cli.main import main
from slidewatch.errors import ConfigError, DataError
from slidewatch.evaluation import metrics
from slidewatch.evaluation.evaluate import evaluate, score_block
from slidewatch.evaluation.plots import write_plots
from slidewatch.inference.predict import predict_paths
from slidewatch.meta import read_meta


@pytest.fixture(scope="module")
def test_tiles(tmp_path_factory):
    """Held-out regions with three wrong labels, so that the scores are not all perfect."""
    root = make_class_dataset(tmp_path_factory.mktemp("ev_test") / "held", images=2,
                              per_image=3, regions=("east", "west"), seed=7)
    for src, dst in (("landslide/east__img0__r0_c0", "non_landslide/east__img8__r0_c0"),
                     ("landslide/east__img1__r0_c1", "non_landslide/east__img9__r0_c0"),
                     ("non_landslide/west__img0__r0_c0", "landslide/west__img9__r0_c0")):
        (root / f"{src}.png").rename(root / f"{dst}.png")
    return root


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def cli_run(model_dir, test_tiles, tmp_path_factory):
    out = tmp_path_factory.mktemp("ev_out") / "eval"
    code = main(["evaluate", str(model_dir), "--data", str(test_tiles), "--out", str(out),
                 "--device", "cpu", "--quiet"])
    assert code == 0
    return out, json.loads((out / "metrics.json").read_text())


def read_predictions(out):
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([r["true_label"] == "landslide" for r in rows])
    prob = np.array([float(r["probability"]) for r in rows])
    pred = np.array([r["predicted_label"] == "landslide" for r in rows])
    return rows, y, prob, pred


def check_against_sklearn(block, y, prob, pred):
    assert block["n"] == len(y)
    assert block["accuracy"] == pytest.approx(accuracy_score(y, pred))
    def same(ours, theirs):  # undefined (0/0): null in metrics.json, nan in scikit-learn
        assert (ours is None and np.isnan(theirs)) or ours == pytest.approx(theirs)

    same(block["precision"], precision_score(y, pred, zero_division=np.nan))
    same(block["recall"], recall_score(y, pred, zero_division=np.nan))
    assert block["sensitivity"] == block["recall"]
    same(block["specificity"], recall_score(~y, ~pred, zero_division=np.nan))
    same(block["f1"], f1_score(y, pred, zero_division=np.nan))
    c = block["confusion"]
    assert (c["tp"], c["fp"], c["fn"], c["tn"]) == (
        int(np.sum(y & pred)), int(np.sum(~y & pred)), int(np.sum(y & ~pred)),
        int(np.sum(~y & ~pred)))
    if y.all() or not y.any():
        assert block["roc_auc"] is None and block["pr_auc"] is None and block["auc_note"]
    else:
        assert block["roc_auc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-12)
        assert block["pr_auc"] == pytest.approx(average_precision_score(y, prob), abs=1e-12)


def test_metrics_match_scikit_learn_on_written_predictions(cli_run, model_dir, test_tiles):
    out, m = cli_run
    rows, y, prob, pred = read_predictions(out)
    assert m["model_dir"] == str(model_dir) and m["architecture"] == "baseline_cnn"
    assert m["threshold_source"] == "model" and m["threshold"] == read_meta(model_dir).threshold
    assert np.array_equal(pred, prob >= m["threshold"])
    assert len(rows) == 2 * 2 * 2 * 3
    assert m["overall"]["counts"] == {"landslide": 11, "non_landslide": 13}
    assert 0 < m["overall"]["f1"] < 1 and 0.5 < m["overall"]["roc_auc"] < 1
    check_against_sklearn(m["overall"], y, prob, pred)
    outcomes = {k: sum(r["outcome"] == k.upper() for r in rows) for k in ("tp", "fp", "fn", "tn")}
    assert outcomes == m["overall"]["confusion"]
    assert {r["region"] for r in rows} == {"east", "west"}
    assert rows[0]["source_image"].startswith(rows[0]["region"] + "/")


def test_per_region_blocks_sum_to_total_and_match_sklearn(cli_run):
    out, m = cli_run
    rows, y, prob, pred = read_predictions(out)
    regions = np.array([r["region"] for r in rows])
    assert sorted(m["regions"]) == ["east", "west"]
    assert sum(b["n"] for b in m["regions"].values()) == m["overall"]["n"]
    for key in ("tp", "fp", "fn", "tn"):
        assert sum(b["confusion"][key] for b in m["regions"].values()) == \
            m["overall"]["confusion"][key]
    for name, block in m["regions"].items():
        sel = regions == name
        check_against_sklearn(block, y[sel], prob[sel], pred[sel])


@pytest.mark.parametrize("seed", range(4))
def test_ranking_metrics_match_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60).astype(bool)
    prob = np.round(rng.random(60) * 0.5 + 0.4 * y, 1)  # coarse values: many ties
    assert metrics.roc_auc(y, prob) == pytest.approx(roc_auc_score(y, prob), abs=1e-12)
    assert metrics.average_precision(y, prob) == pytest.approx(
        average_precision_score(y, prob), abs=1e-12)


def test_intervals(cli_run):
    lo, hi = metrics.wilson_interval(8, 10)  # hand-computed: p=0.8, n=10, z=1.96
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert metrics.wilson_interval(0, 0) is None
    c = metrics.Confusion(tp=30, fp=8, fn=6, tn=40)
    ci = metrics.bootstrap_f1_interval(c)
    assert ci == metrics.bootstrap_f1_interval(c)  # fixed seed: deterministic
    assert ci[0] < metrics.fbeta(c) < ci[1] and 0 <= ci[0] and ci[1] <= 1
    _, m = cli_run
    b = m["overall"]
    assert b["ci95"]["accuracy"] == pytest.approx(metrics.wilson_interval(
        b["confusion"]["tp"] + b["confusion"]["tn"], b["n"]))
    for key in ("accuracy", "recall", "f1"):
        assert b["ci95"][key][0] <= b[key] <= b["ci95"][key][1]
    assert "bootstrap" in m["confidence_intervals"]["f1"]


def test_figures_are_pngs(cli_run):
    out, m = cli_run
    assert m["plots"] == {"confusion_matrix": "confusion_matrix.png", "roc": "roc.png",
                          "pr": "pr.png", "reliability": "reliability.png", "note": None}
    for name in ("confusion_matrix.png", "roc.png", "pr.png", "reliability.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG"
            im.verify()
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name]


def test_one_class_absent_and_all_predicted_one_class(tmp_path):
    y = np.ones(6, bool)
    prob = np.linspace(0.1, 0.9, 6)
    block = score_block(y, prob, 0.5, ["landslide"] * 6)
    assert block["roc_auc"] is None and block["pr_auc"] is None and "one class" in block["auc_note"]
    check_against_sklearn(block, y, prob, prob >= 0.5)
    plots = write_plots(tmp_path, y, prob, 0.5, "landslide", "non_landslide")
    assert plots["roc"] is None and "non_landslide" in plots["note"]
    assert (tmp_path / "confusion_matrix.png").is_file() and not (tmp_path / "roc.png").exists()
    y2 = np.array([1, 0, 1, 0, 0], bool)
    for thr in (0.01, 0.99):  # everything predicted positive, then negative
        prob2 = np.array([0.3, 0.4, 0.5, 0.6, 0.7])
        block = score_block(y2, prob2, thr, ["x"] * 5)
        check_against_sklearn(block, y2, prob2, prob2 >= thr)
        assert block["ci95"]["f1"][0] <= block["f1"] <= block["ci95"]["f1"][1]


def test_region_with_one_class_and_flag_threshold(model_dir, test_tiles, tmp_path):
    data = shutil.copytree(test_tiles, tmp_path / "held")
    for f in (data / "non_landslide").glob("west__*"):
        f.unlink()
    m = evaluate(model_dir, [data], tmp_path / "o", threshold=1e-6, device="cpu")
    assert m["threshold_source"] == "flag" and m["threshold"] == 1e-6
    west = m["regions"]["west"]
    assert west["counts"] == {"landslide": 7} and west["roc_auc"] is None and west["auc_note"]
    _, y, prob, pred = read_predictions(tmp_path / "o")
    assert pred.all()  # all predicted landslide
    check_against_sklearn(m["overall"], y, prob, pred)


def test_target_recall_stores_threshold_catching_every_validation_positive(
        model_dir, test_tiles, tmp_path):
    md = shutil.copytree(model_dir, tmp_path / "m")
    m = evaluate(md, [test_tiles], tmp_path / "o", target_recall=1.0, device="cpu")
    meta = read_meta(md)
    assert m["threshold_source"] == "target_recall on validation"
    assert m["threshold"] == meta.threshold
    src = meta.extra["threshold_source"]
    assert src["target_recall"] == 1.0 and src["val_recall"] == 1.0
    assert m["threshold_detail"]["val_recall"] == 1.0
    split = json.loads((md / "split.json").read_text())
    val = [tiles_file(model_dir, k) for k in split["val"]]
    positives = [p for p in val if "/landslide/" in p.as_posix()]
    assert positives
    preds = predict_paths(md, positives, device="cpu")
    assert all(p.probability >= meta.threshold - 1e-6 for p in preds)
    assert read_meta(md).threshold == meta.threshold  # the model now predicts with it


def tiles_file(model_dir, key):
    root = read_meta(model_dir).extra["data"]["paths"][0]
    return Path(root).parent / key


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *needles):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_cli_errors(capsys, model_dir, test_tiles, cli_run, tmp_path):
    code, _, err = run(capsys, "evaluate", model_dir, "--data", test_tiles, "--out",
                       tmp_path / "o", "--threshold", 0.5, "--target-recall", 0.9)
    one_line_error(code, err, "--threshold", "--target-recall")
    out, _ = cli_run
    code, _, err = run(capsys, "evaluate", model_dir, "--data", test_tiles, "--out", out)
    one_line_error(code, err, "metrics.json", "--overwrite")
    md = shutil.copytree(model_dir, tmp_path / "m")
    (md / "split.json").unlink()
    code, _, err = run(capsys, "evaluate", md, "--data", test_tiles, "--out", tmp_path / "o2",
                       "--target-recall", 0.9, "--device", "cpu")
    one_line_error(code, err, "split.json")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_band_mismatch_names_the_file(model_dir, test_tiles, tmp_path):
    data = shutil.copytree(test_tiles, tmp_path / "held")
    bad = write_image(data / "landslide" / "zz.tif", np.zeros((32, 32, 5), np.uint8))
    with pytest.raises(DataError, match="zz.tif"):
        evaluate(model_dir, [data], tmp_path / "o", device="cpu")
    assert bad.is_file() and not (tmp_path / "o").exists()
    with pytest.raises(ConfigError, match="--batch-size"):
        evaluate(model_dir, [data], tmp_path / "o", batch_size=0)


def test_cli_prints_table(cli_run, model_dir, test_tiles, capsys, tmp_path):
    code, out, err = run(capsys, "evaluate", model_dir, "--data", test_tiles, "--out",
                         tmp_path / "o", "--threshold", 0.4, "--device", "cpu", "--quiet")
    assert code == 0
    assert "overall" in out and "east" in out and "west" in out and "F1" in out
    assert str(tmp_path / "o") in err
    code, _, _ = run(capsys, "evaluate", model_dir, "--data", test_tiles, "--out",
                     tmp_path / "o", "--overwrite", "--device", "cpu", "--quiet")
    assert code == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["threshold_source"] == "model"


def test_undefined_scores_are_null_not_zero():
    from slidewatch.evaluation.evaluate import score_block

    y = np.zeros(6, bool)  # no landslide tiles, nothing flagged
    block = score_block(y, np.full(6, 0.1), 0.5, ["non_landslide"] * 6)
    assert block["precision"] is None and block["recall"] is None and block["f1"] is None
    assert block["specificity"] == 1.0 and block["accuracy"] == 1.0
    assert set(block["undefined"]) == {"precision", "recall", "sensitivity", "f1"}
    flagged = score_block(y, np.full(6, 0.9), 0.5, ["non_landslide"] * 6)
    assert flagged["precision"] == 0.0 and flagged["f1"] == 0.0  # defined: 0 of 6 right
    assert flagged["recall"] is None and flagged["specificity"] == 0.0
