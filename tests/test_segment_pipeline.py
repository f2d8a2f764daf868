"""Segmentation through the commands: train --task segment, predict, evaluate, test-time
augmentation, on generated images whose landslides are known (bright blobs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _badinput import run_bad
from conftest import make_scene, write_image
from test_scan import StopAfter

from slidewatch.cli.main import main
from slidewatch.config.train import from_dict
from slidewatch.data.inputs import image_dataset
from slidewatch.evaluation.tile_rule import choose_min_area, rule_for_recall
from slidewatch.inference.forward import batch_probabilities, predict_outputs, tile_scores
from slidewatch.meta import ModelMeta, SegmentationSpec, read_meta
from slidewatch.models.segmentation import Segmenter

SIZE = 32


def blob_image(rng, size=SIZE, landslide=True):
    """A dark noisy image with (or without) one bright square: the landslide mask."""
    image = rng.integers(20, 70, (size, size, 3)).astype(np.uint8)
    mask = np.zeros((size, size), bool)
    if landslide:
        h = int(rng.integers(size // 4, size // 2))
        r, c = rng.integers(0, size - h, 2)
        mask[r:r + h, c:c + h] = True
        image[mask] = rng.integers(200, 250, (int(mask.sum()), 3)).astype(np.uint8)
    return image, mask


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    """Class folders with masks/ (the Bijie layout) and a scene folder."""
    root = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    data = root / "cls"
    for i in range(24):
        image, mask = blob_image(rng)
        write_image(data / "landslide" / f"ls{i}.png", image)
        write_image(data / "masks" / f"ls{i}.png", mask.astype(np.uint8) * 255)
        write_image(data / "non_landslide" / f"bg{i}.png", blob_image(rng, landslide=False)[0])
    scenes = {f"s{i}": blob_image(rng, size=80) for i in range(3)}
    make_scene(root, "scene", scenes)
    return root


@pytest.fixture(scope="module")
def seg_model(blobs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("segmodel") / "m"
    code = main(["train", "--task", "segment", "--model", "unet_tiny", "--weights", "none",
                 "--data", str(blobs / "cls"), "--out", str(out), "--input-size", str(SIZE),
                 "--phase1-epochs", "0", "--phase2-epochs", "6", "--phase2-lr", "0.02",
                 "--unfreeze-layers", "100", "--batch-size", "8", "--quiet",
                 "--early-stopping-metric", "val_iou", "--seed", "1"])
    assert code == 0
    return out


def test_train_writes_a_segmentation_model_folder(seg_model):
    meta = read_meta(seg_model)
    assert meta.task == "segment" and meta.architecture == "unet_tiny"
    assert meta.segmentation.min_area_pixels >= 1
    assert meta.segmentation.min_area_source in ("validation", "default")
    history = (seg_model / "history.csv").read_text().splitlines()
    assert "val_iou" in history[0] and "train_iou" in history[0] and len(history) >= 2
    assert (seg_model / "curves.png").stat().st_size > 0
    split = json.loads((seg_model / "split.json").read_text())
    assert split["train"] and split["val"]


def test_the_model_learns_the_blobs(seg_model, blobs, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", str(seg_model), "--data", str(blobs / "cls"), "--data",
                 str(blobs / "scene"), "--out", str(out), "--quiet"]) == 0
    shown = capsys.readouterr().out
    assert "IoU" in shown and "objects found" in shown
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "segment"
    px = m["pixels"]["overall"]
    assert px["iou"] > 0.5, px  # bright squares on a dark background
    assert set(m["pixels"]["regions"]) == {"cls", "scene"}
    assert px["ci95"]["iou"][0] <= px["iou"] <= px["ci95"]["iou"][1]
    assert m["pixels"]["scenes"] == {} or all(v["n_images"] == 1
                                              for v in m["pixels"]["scenes"].values())
    assert m["overall"]["roc_auc"] > 0.8 and m["overall"]["specificity"] is not None
    rows = (out / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,tile,region,true_label,probability")
    assert list((out / "overlays").glob("*.png"))


def test_predict_reports_the_landslide_area(seg_model, blobs, tmp_path):
    out = tmp_path / "p.csv"
    assert main(["predict", str(seg_model), str(blobs / "cls" / "landslide"),
                 str(blobs / "cls" / "non_landslide"), "--out", str(out), "--quiet"]) == 0
    rows = out.read_text().splitlines()
    assert rows[0] == "path,probability,label,landslide_pixels,landslide_share"
    pos = [r.split(",") for r in rows[1:] if "/landslide/" in r]
    neg = [r.split(",") for r in rows[1:] if "/non_landslide/" in r]
    assert np.mean([int(r[3]) for r in pos]) > 5 * max(1.0, np.mean([int(r[3]) for r in neg]))
    assert np.mean([r[2] == "landslide" for r in pos]) > np.mean([r[2] == "landslide"
                                                                  for r in neg])


class Pointwise(torch.nn.Module):
    """A 1x1 convolution: the same map under any flip or rotation of the input."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        torch.nn.init.normal_(self.conv.weight, 0, 3)

    def forward(self, x):
        return self.conv(x)


def _meta(task="segment", size=SIZE) -> ModelMeta:
    return ModelMeta(architecture="unet_tiny", classes=["landslide", "non_landslide"],
                     in_chans=3, input_size=size, mean=[0.5] * 3, std=[0.25] * 3, task=task,
                     segmentation=SegmentationSpec(4) if task == "segment" else None)


def test_tta_leaves_a_flip_symmetric_model_unchanged_and_averages_views():
    torch.manual_seed(0)
    model = Segmenter(Pointwise(), "unet_tiny").eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    meta = _meta()
    plain = batch_probabilities(model, {"image": x}, meta, torch.device("cpu"))["probability"]
    tta = batch_probabilities(model, {"image": x}, meta, torch.device("cpu"),
                              tta=True)["probability"]
    assert torch.allclose(plain, tta, atol=1e-6)

    class Asymmetric(torch.nn.Module):  # depends on the column: flips change it
        def forward(self, x):
            ramp = torch.linspace(-3, 3, x.shape[-1])
            return (x[:, :1] * 0 + ramp).expand(x.shape[0], 1, *x.shape[-2:])

    model = Segmenter(Asymmetric(), "unet_tiny").eval()
    tta = batch_probabilities(model, {"image": x}, meta, torch.device("cpu"),
                              tta=True)["probability"]
    assert torch.allclose(tta, torch.full_like(tta, tta.mean()), atol=1e-5)  # averaged out


def test_tile_score_is_the_min_area_rule():
    prob = torch.zeros(2, 8, 8)
    prob[0, :2, :2] = 0.9  # 4 pixels above 0.5
    prob[1, 0, :3] = 0.9  # 3 pixels above 0.5
    valid = torch.ones(2, 8, 8)
    score = tile_scores(prob, valid, 4)
    assert score[0] >= 0.5 > score[1]
    valid[0, 0, 0] = 0  # a padded pixel does not count
    assert tile_scores(prob, valid, 4)[0] < 0.5


def test_min_area_is_chosen_by_youden_on_validation():
    # positives have >= 8 pixels above 0.5, negatives up to 3: areas 4 and 8 separate them
    top = np.zeros((6, 64))
    top[:3, :8] = 0.9
    top[3:, :3] = 0.9
    labels = np.array([1, 1, 1, 0, 0, 0])
    k, source, table = choose_min_area(top, labels, 0.5, 64)
    assert (k, source) == (4, "validation")
    assert table[4] == {"recall": 1.0, "specificity": 1.0}
    assert choose_min_area(top, np.ones(6, int), 0.5, 64)[1] == "default"
    assert choose_min_area(np.zeros((6, 64)), labels, 0.5, 64)[1] == "default"  # no signal


def test_min_area_never_exceeds_the_cap_even_when_validation_prefers_more():
    # at 224 px the cap is 0.5% of the input (251 pixels -> candidates up to 128); validation
    # tiles that only a 2,048-pixel rule separates perfectly still get a rule within the cap
    from slidewatch.evaluation.tile_rule import MAX_MIN_AREA, area_candidates

    assert area_candidates(224)[-1] == 128 and MAX_MIN_AREA * 224 * 224 < 256
    top = np.zeros((6, 4096))
    top[:3, :3000] = 0.9  # landslide tiles: 3,000 pixels above the threshold
    top[3:, :1500] = 0.9  # landslide-free tiles: 1,500
    k, source, table = choose_min_area(top, np.array([1, 1, 1, 0, 0, 0]), 0.5, 224)
    assert k <= round(MAX_MIN_AREA * 224 * 224) and max(table) == 128
    assert source == "default"  # no area within the cap separates them: the default share
    assert k == round(MAX_MIN_AREA * 224 * 224)


def test_rule_for_recall_reaches_the_target_with_the_fewest_false_alarms():
    # 4 landslide tiles, 4 landslide-free; scores by area (the k-th largest probability).
    # One or two pixels: every landslide-free tile has three bright specks (0.95), so reaching
    # recall 0.75 flags them all; with 4 pixels the specks drop out and 0.8 separates them.
    top = np.zeros((8, 64))
    top[:4, :16] = [[0.9], [0.8], [0.85], [0.3]]  # landslides: 16 pixels each
    top[4:, :3] = 0.95  # landslide-free: three bright pixels, then two fainter
    top[4:, 3:5] = 0.6
    scores = {k: top[:, k - 1] for k in (1, 2, 4, 8)}
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    k, thr, table = rule_for_recall(scores, labels, 0.75, 8)
    assert table[1]["specificity"] == table[2]["specificity"] == 0.0
    assert table[1]["recall"] >= 0.75
    assert (k, thr) == (4, 0.8) and table[4] == {"threshold": 0.8, "recall": 0.75,
                                                 "specificity": 1.0}
    # recall 1.0 must take the faint fourth landslide too: the threshold falls to 0.3
    assert rule_for_recall(scores, labels, 1.0, 8)[1] == pytest.approx(0.3)
    # one area given: only the threshold is chosen
    assert rule_for_recall({1: top[:, 0]}, labels, 0.75, 8)[:2] == (1, 0.8)
    # left-out tiles (-1) do not count; without landslide-free tiles, the default area
    labels[3] = -1
    assert rule_for_recall(scores, labels, 1.0, 8)[1] == pytest.approx(0.8)
    assert rule_for_recall(scores, np.array([1, 1, 1, 1, -1, -1, -1, -1]), 1.0, 8)[0] == 8
    with pytest.raises(Exception, match="no landslide tiles"):
        rule_for_recall(scores, np.zeros(8, int), 0.9, 8)


def test_train_with_target_recall_sets_the_tile_threshold_not_the_maps(blobs, tmp_path):
    out = tmp_path / "m"
    assert main(["train", "--task", "segment", "--model", "unet_tiny", "--weights", "none",
                 "--data", str(blobs / "cls"), "--out", str(out), "--input-size", str(SIZE),
                 "--phase1-epochs", "0", "--phase2-epochs", "2", "--phase2-lr", "0.02",
                 "--unfreeze-layers", "100", "--batch-size", "8", "--quiet",
                 "--target-recall", "0.9", "--seed", "1"]) == 0
    meta = read_meta(out)
    src, spec = meta.extra["threshold_source"], meta.segmentation
    assert spec.min_area_source == "target_recall" and meta.threshold == 0.5
    assert src["tile_threshold"] == spec.tile_threshold == meta.tile_threshold() != 0.5
    chosen = src["areas"][str(spec.min_area_pixels)]
    assert chosen["threshold"] == pytest.approx(spec.tile_threshold, abs=1e-6)
    assert chosen["recall"] >= 0.9
    assert all(chosen["specificity"] >= a["specificity"] for a in src["areas"].values())
    # predict: labels by the tile threshold, landslide pixels at the model's threshold
    csv_out = tmp_path / "p.csv"
    assert main(["predict", str(out), str(blobs / "cls" / "landslide"),
                 str(blobs / "cls" / "non_landslide"), "--out", str(csv_out), "--quiet"]) == 0
    rows = [r.split(",") for r in csv_out.read_text().splitlines()[1:]]
    assert all((r[2] == "landslide") == (float(r[1]) >= spec.tile_threshold) for r in rows)
    assert any((float(r[1]) >= 0.5) != (float(r[1]) >= spec.tile_threshold) for r in rows)
    # the rule survives a round trip through the metadata; a user's --threshold sets both
    assert meta.tile_threshold(0.3) == 0.3
    assert SegmentationSpec.from_json(spec.to_json()) == spec
    with pytest.raises(Exception, match="tile_threshold"):
        SegmentationSpec.from_json({**spec.to_json(), "tile_threshold": 1.5})


def test_evaluate_target_recall_stores_the_tile_rule_of_a_segmentation_model(
        seg_model, blobs, tmp_path, capsys):
    import shutil

    md = shutil.copytree(seg_model, tmp_path / "m")
    before = read_meta(md)
    assert main(["evaluate", str(md), "--data", str(blobs / "cls"), "--out",
                 str(tmp_path / "ev"), "--target-recall", "1.0", "--quiet"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    meta = read_meta(md)
    spec = meta.segmentation
    assert m["threshold_source"] == "target_recall on validation"
    assert m["threshold"] == pytest.approx(spec.tile_threshold)
    assert m["pixel_threshold"] == meta.threshold == before.threshold  # maps unchanged
    assert spec.min_area_source == "target_recall"
    assert meta.extra["threshold_source"]["target_recall"] == 1.0
    # every landslide image of the validation split reaches the stored tile rule
    split = json.loads((md / "split.json").read_text())
    val = [blobs / k for k in split["val"] if "/landslide/" in k]
    assert val
    out = tmp_path / "p.csv"
    assert main(["predict", str(md), *map(str, val), "--out", str(out), "--quiet"]) == 0
    rows = [r.split(",") for r in out.read_text().splitlines()[1:]]
    assert len(rows) == len(val) and all(r[2] == "landslide" for r in rows)
    # a validation image that cannot be found is named, and the model is left as it was
    md2 = shutil.copytree(seg_model, tmp_path / "m2")
    (md2 / "split.json").write_text(json.dumps({**split, "val": ["cls/landslide/gone.png"]}))
    capsys.readouterr()
    assert main(["evaluate", str(md2), "--data", str(blobs / "cls"), "--out",
                 str(tmp_path / "ev2"), "--target-recall", "0.9", "--quiet"]) != 0
    err = capsys.readouterr().err.strip()
    assert "split.json" in err and "gone.png" in err and len(err.splitlines()) == 1
    assert read_meta(md2).segmentation == read_meta(seg_model).segmentation
    assert not (tmp_path / "ev2").exists()


def test_segment_inputs_are_fitted_with_valid_pixels(tmp_path):
    from slidewatch.data.folders import Sample

    path = write_image(tmp_path / "a.png", np.full((20, 10, 3), 128, np.uint8))
    ds = image_dataset(_meta(), [Sample(path=path, label=0, group="", region="")])
    item = ds[0]
    assert item["image"].shape == (3, SIZE, SIZE) and item["valid"].shape == (1, SIZE, SIZE)
    assert int(item["valid"].sum()) == 200  # padded, not stretched


def test_predict_outputs_of_a_segmenter_has_areas():
    torch.manual_seed(0)
    model = Segmenter(Pointwise(), "unet_tiny").eval()
    batch = {"image": torch.rand(3, 3, SIZE, SIZE), "valid": torch.ones(3, 1, SIZE, SIZE)}
    out = predict_outputs(model, _meta(), [batch], torch.device("cpu"), maps=True)
    assert out["maps"].shape == (3, SIZE, SIZE)
    assert (out["landslide_pixels"] == (out["maps"] >= 0.5).reshape(3, -1).sum(1)).all()


def test_segment_config_rules():
    assert from_dict({"task": "segment"}).segment.loss == "bce_dice"
    for bad, needle in (({"task": "segment", "early_stopping_metric": "val_accuracy"},
                         "early_stopping_metric"),
                        ({"task": "segment", "segment": {"min_area": 0}}, "segment.min_area"),
                        ({"task": "segment", "segment": {"pos_weight": -1.0}},
                         "segment.pos_weight"),
                        ({"early_stopping_metric": "val_iou"}, "early_stopping_metric")):
        with pytest.raises(Exception, match=needle):
            from_dict(bad)


def test_init_from_continues_a_segmentation_model(seg_model, blobs, tmp_path):
    """A few more epochs from a trained segmenter (e.g. on a new region's labelled images):
    its architecture and band normalisation are kept; with a learning rate near 0 its
    weights stay the old ones (a model built afresh would start from random weights)."""
    from safetensors.torch import load_file

    out = tmp_path / "more"
    assert main(["train", "--task", "segment", "--init-from", str(seg_model), "--data",
                 str(blobs / "cls"), "--out", str(out), "--phase1-epochs", "0",
                 "--phase2-epochs", "1", "--phase2-lr", "1e-12", "--unfreeze-layers", "100",
                 "--batch-size", "8", "--quiet", "--early-stopping-metric", "val_iou"]) == 0
    old, new = read_meta(seg_model), read_meta(out)
    assert new.architecture == old.architecture == "unet_tiny"
    assert new.weights_source == f"init_from:{seg_model}"
    assert new.extra["init_from"] == str(seg_model)
    assert (new.mean, new.std, new.input_size) == (old.mean, old.std, old.input_size)
    a, b = load_file(seg_model / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    # and with a learning rate it learns on: the weights move
    out2 = tmp_path / "more2"
    assert main(["train", "--task", "segment", "--init-from", str(seg_model), "--data",
                 str(blobs / "cls"), "--out", str(out2), "--phase1-epochs", "0",
                 "--phase2-epochs", "1", "--phase2-lr", "0.01", "--unfreeze-layers", "100",
                 "--batch-size", "8", "--quiet", "--early-stopping-metric", "val_iou"]) == 0
    c = load_file(out2 / "model.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("case, needle", [("classifier", "a classify model"),
                                           ("standardize", "data.standardize")])
def test_init_from_refuses_a_model_that_does_not_fit(capsys, tmp_path, blobs, seg_model,
                                                       tiny_model, case, needle):
    src, extra = (tiny_model, []) if case == "classifier" else \
        (seg_model, ["--standardize", "image"])
    run_bad(capsys, ["train", "--task", "segment", "--init-from", src, "--data",
                     blobs / "cls", "--out", tmp_path / "m", "--quiet", *extra],
            needle, watch=(blobs,), progress_lines=True)
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_a_classifier_does_not_continue_a_segmentation_model(capsys, tmp_path, blobs,
                                                             seg_model):
    run_bad(capsys, ["train", "--init-from", seg_model, "--data", blobs / "cls", "--out",
                     tmp_path / "m", "--quiet"], "continue it with --task segment",
            watch=(blobs,), progress_lines=True)
    assert not (tmp_path / "m" / "model.safetensors").exists()


def test_segment_on_data_without_masks_is_one_line(capsys, tmp_path):
    data = tmp_path / "d"
    rng = np.random.default_rng(0)
    for c in ("landslide", "non_landslide"):
        for i in range(3):
            write_image(data / c / f"{c}{i}.png", blob_image(rng)[0])
    run_bad(capsys, ["train", "--task", "segment", "--model", "unet_tiny", "--weights", "none",
                     "--data", data, "--out", tmp_path / "m", "--quiet"],
            "needs landslide masks", watch=(tmp_path,))
    assert not (tmp_path / "m").exists()


def test_class_folder_landslide_without_mask_is_named(capsys, tmp_path, blobs):
    import shutil

    data = tmp_path / "cls"
    shutil.copytree(blobs / "cls", data)
    (data / "masks" / "ls3.png").unlink()
    run_bad(capsys, ["train", "--task", "segment", "--model", "unet_tiny", "--weights", "none",
                     "--data", data, "--out", tmp_path / "m", "--quiet"], "ls3.png",
            watch=(tmp_path,))


def test_explain_shows_where_the_segmentation_model_looks(seg_model, blobs, tmp_path):
    import csv

    out = tmp_path / "cams"
    assert main(["explain", str(seg_model), str(blobs / "cls" / "landslide"), "--out", str(out),
                 "--masks-from", str(blobs / "cls"), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "cams.csv").open()))
    assert len(rows) == 24 and rows[0]["target_layer"] == "net.decoder.1"
    inside = np.mean([float(r["energy_inside"]) for r in rows])
    share = np.mean([int(r["mask_pixels"]) / SIZE ** 2 for r in rows])
    assert inside > 1.5 * share  # the CAM concentrates on the landslide, not uniformly
    assert (out / f"{Path(rows[0]['path']).stem}_overlay.png").is_file()


class Threshold(torch.nn.Module):
    """Landslide where band 1 (unit scale) is above 0.5: a model whose map is known."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 40.0
            self.conv.bias.fill_(-20.0)

    def forward(self, x):
        return self.conv(x)


def _known_model():
    meta = ModelMeta(architecture="unet_tiny", classes=["landslide", "non_landslide"],
                     in_chans=3, input_size=SIZE, mean=[0.0] * 3, std=[1.0] * 3,
                     task="segment", segmentation=SegmentationSpec(4))
    return Segmenter(Threshold(), "unet_tiny").eval(), meta


def _scene_with_blob(path, crs=None):
    from rasterio.transform import from_origin

    image = np.full((96, 160, 3), 40, np.uint8)
    image[30:62, 70:110] = 220  # a 32 x 40 landslide
    transform = from_origin(500000, 3000000, 10, 10) if crs else None
    return write_image(path, image, crs=crs, transform=transform)


def test_scan_blends_pixel_maps_into_the_blob_polygon(tmp_path):
    from conftest import UTM45
    from shapely.geometry import box, shape

    from slidewatch.scan.run import ScanSettings, scan_with_model

    model, meta = _known_model()
    scene = _scene_with_blob(tmp_path / "s.tif", crs=UTM45)
    settings = ScanSettings(tile=SIZE, stride=SIZE // 2, batch=4, blend="hann", threshold=0.5)
    summary = scan_with_model(model, meta, [scene], tmp_path / "out", settings, model_id="t")
    r = summary.scenes[0]
    assert r.detections_count == 1
    feats = json.loads((tmp_path / "out" / "s_detections.geojson").read_text())["features"]
    props = feats[0]["properties"]
    assert props["area_px"] == 32 * 40 and props["area_m2"] == pytest.approx(32 * 40 * 100)
    assert props["max_prob"] > 0.99 and props["mean_prob"] > 0.99
    truth = box(500000 + 70 * 10, 3000000 - 62 * 10, 500000 + 110 * 10, 3000000 - 30 * 10)
    got = shape(feats[0]["geometry"])
    assert got.symmetric_difference(truth).area < 1e-6
    import rasterio

    with rasterio.open(tmp_path / "out" / "s_probability.tif") as ds:
        prob = ds.read(1)
    assert (prob[30:62, 70:110] > 0.99).all() and (prob[:20] < 0.01).all()
    # test-time augmentation of a pointwise model gives the same map
    tta = ScanSettings(tile=SIZE, stride=SIZE // 2, batch=4, blend="hann", threshold=0.5,
                       tta=True)
    scan_with_model(model, meta, [scene], tmp_path / "tta", tta, model_id="t")
    with rasterio.open(tmp_path / "tta" / "s_probability.tif") as ds:
        np.testing.assert_allclose(ds.read(1), prob, atol=1e-6)


def test_scan_polygons_are_simplified_to_the_pixel_size(tmp_path):
    """A round landslide: the outline traced along pixel edges (a staircase) is simplified
    to the pixel size: far fewer vertices, every one within a pixel of the traced outline."""
    from conftest import UTM45
    from rasterio.features import shapes
    from rasterio.transform import from_origin
    from shapely.geometry import shape

    from slidewatch.scan.run import ScanSettings, scan_with_model

    image = np.full((96, 160, 3), 40, np.uint8)
    yy, xx = np.mgrid[:96, :160]
    disc = (yy - 48) ** 2 + (xx - 80) ** 2 <= 30 ** 2
    image[disc] = 220
    transform = from_origin(500000, 3000000, 10, 10)
    scene = write_image(tmp_path / "d.tif", image, crs=UTM45, transform=transform)
    model, meta = _known_model()
    settings = ScanSettings(tile=SIZE, stride=SIZE // 2, batch=4, blend="hann", threshold=0.5)
    scan_with_model(model, meta, [scene], tmp_path / "out", settings, model_id="t")
    feats = json.loads((tmp_path / "out" / "d_detections.geojson").read_text())["features"]
    assert len(feats) == 1 and feats[0]["properties"]["area_px"] == int(disc.sum())
    got = shape(feats[0]["geometry"])
    traced = shape(next(g for g, v in shapes(disc.astype(np.uint8), mask=disc,
                                             transform=transform)))
    assert len(got.exterior.coords) < len(traced.exterior.coords) / 3
    assert got.hausdorff_distance(traced) <= 10.0 + 1e-6  # one pixel = 10 m
    assert abs(got.area - traced.area) / traced.area < 0.03


def test_interrupted_segmentation_scan_resumes_to_the_same_map(seg_model, tmp_path):
    import rasterio

    from slidewatch.scan.run import scan

    rng = np.random.default_rng(5)
    image = rng.integers(20, 70, (600, 96, 3)).astype(np.uint8)
    for r in (40, 300, 520):
        image[r:r + 20, 30:60] = 230
    scene = write_image(tmp_path / "tall.png", image)
    kw = {"tile": SIZE, "stride": SIZE // 2, "device": "cpu", "blend": "hann"}
    full = scan(seg_model, [scene], tmp_path / "full", **kw)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        scan(seg_model, [scene], out, progress=StopAfter(20), **kw)
    state = json.loads((out / ".tall_scan-state.json").read_text())
    assert state["rows_written"] == 256 and state["replay"]
    assert all(v is None for row in state["replay"].values() for v in row)  # no maps in JSON
    again = scan(seg_model, [scene], out, **kw)
    assert again.scenes[0].status == "resumed" and 0 < again.windows < full.windows
    with rasterio.open(out / "tall_probability.tif") as a, \
            rasterio.open(tmp_path / "full" / "tall_probability.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    assert (out / "tall_detections.geojson").read_text() == \
        (tmp_path / "full" / "tall_detections.geojson").read_text()


@pytest.mark.parametrize("bad, needle", [
    ("size", "mask is 16x16 pixels, its image 32x32"),
    ("values", "mask values must be 0 and 255 (or 0 and 1), found 0, 7"),
])
def test_bad_masks_are_one_line_naming_the_mask(capsys, tmp_path, bad, needle):
    rng = np.random.default_rng(0)
    images = {f"a{i}": blob_image(rng) for i in range(4)}
    scene = make_scene(tmp_path, "scene", images)
    mask = np.zeros((16, 16), np.uint8) if bad == "size" else np.full((SIZE, SIZE), 7, np.uint8)
    if bad == "values":
        mask[0, 0] = 0
    write_image(scene / "masks" / "a2.png", mask)
    line = run_bad(capsys, ["train", "--task", "segment", "--model", "unet_tiny", "--weights",
                            "none", "--data", scene, "--out", tmp_path / "m", "--quiet",
                            "--input-size", "16"], needle, watch=(tmp_path,),
                   progress_lines=True)
    assert "a2.png" in line


def test_report_of_a_segmentation_model(seg_model, blobs, tmp_path):
    ev, cams, page = tmp_path / "ev", tmp_path / "cams", tmp_path / "r.html"
    assert main(["evaluate", str(seg_model), "--data", str(blobs / "cls"), "--data",
                 str(blobs / "scene"), "--out", str(ev), "--quiet"]) == 0
    assert main(["explain", str(seg_model), str(blobs / "cls" / "landslide"), "--out",
                 str(cams), "--masks-from", str(blobs / "cls"), "--quiet"]) == 0
    assert main(["report", str(seg_model), "--eval", str(ev), "--explain", str(cams), "--out",
                 str(page)]) == 0
    html = page.read_text()
    assert "Pixels and objects" in html and "Best and worst images" in html
    assert html.count('class="seg"') == len(json.loads((ev / "metrics.json").read_text())
                                            ["plots"]["overlays"])
    assert "Grad-CAM of the prediction" in html
    m = json.loads((ev / "metrics.json").read_text())
    m["pixels"]["overall"]["iou"] = "high"
    (ev / "metrics.json").write_text(json.dumps(m))
    assert main(["report", str(seg_model), "--eval", str(ev), "--out",
                 str(tmp_path / "r2.html")]) == 2


def test_training_draws_show_landslides_at_the_configured_share(blobs):
    from slidewatch.data.masks import MaskedImages, masked_samples
    from slidewatch.training.segment import balanced_sampler, shows_landslide

    samples = masked_samples(blobs / "cls", ["landslide", "non_landslide"])
    few = [s for s in samples if s.mask is not None][:3] + [s for s in samples
                                                           if s.mask is None]
    ds = MaskedImages(few, SIZE)
    pos = shows_landslide(ds)
    assert pos.sum() == 3 and len(pos) == 27
    draws = list(balanced_sampler(ds, 0.5, torch.Generator().manual_seed(0)))
    share = np.mean(pos[draws])
    assert len(draws) == 27 and 0.25 < share < 0.8  # 3 of 27 without balancing
    assert balanced_sampler(MaskedImages(few[:3], SIZE), 0.5, torch.Generator()) is None


def test_split_keys_of_segmentation_samples_match_the_classifiers(blobs):
    from slidewatch.data.folders import scan_class_folders
    from slidewatch.data.masks import masked_samples
    from slidewatch.training.segment import as_split_samples

    seg = {s.key for s in as_split_samples(masked_samples(blobs / "cls",
                                                          ["landslide", "non_landslide"]))}
    cls = {s.key for s in scan_class_folders(blobs / "cls")}
    assert seg == cls and "cls/landslide/ls0.png" in seg
    scene = as_split_samples(masked_samples(blobs / "scene", ["landslide"]))
    assert scene[0].key == "scene/images/s0.png"


def test_tile_scores_of_other_areas_come_from_the_same_windows(seg_model, blobs):
    from slidewatch.data.masks import class_folder_samples, scene_samples
    from slidewatch.evaluation.segment import score_images
    from slidewatch.inference.ensemble import load_models
    from slidewatch.runtime import no_progress

    model, meta = load_models([seg_model], "cpu")
    samples = scene_samples(blobs / "scene") + class_folder_samples(
        blobs / "cls", list(meta.classes), region="cls")[:6]
    areas = (1, 4, meta.segmentation.min_area_pixels, 64)
    _, tiles = score_images(model, meta, samples, batch_size=4, device=torch.device("cpu"),
                            progress=no_progress, areas=areas)
    assert len(tiles) > 6
    for t in tiles:
        by_area = t["scores_by_area"]
        assert by_area[meta.segmentation.min_area_pixels] == pytest.approx(t["score"])
        assert [by_area[k] for k in sorted(by_area)] == sorted(by_area.values(), reverse=True)
