"""Model ensembles (``--ensemble DIR``): several model folders whose probabilities are averaged
in predict, evaluate and scan; members that do not fit are one line naming the folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _badinput import run_bad
from _factories import make_class_dataset, slide_image
from conftest import write_image
from torch.utils.data import DataLoader

from slidewatch.cli.main import main
from slidewatch.data.inputs import model_dataset
from slidewatch.errors import ModelError
from slidewatch.inference.ensemble import Ensemble, ensemble_meta, load_models
from slidewatch.inference.forward import predict_outputs, tile_scores
from slidewatch.inference.predict import image_samples, predict_paths
from slidewatch.meta import META_FILE, ModelMeta, SegmentationSpec
from slidewatch.models import build_model
from slidewatch.models.checkpoint import save_model
from slidewatch.models.segmentation import build_segmenter

SIZE = 32
CLASSES = ["landslide", "non_landslide"]
FUSED = Path(__file__).parent / "fixtures" / "models_v0_1" / "fused"


def classifier_folder(out: Path, seed: int, *, in_chans: int = 3, size: int = SIZE,
                      mean: float = 0.4, std: float = 0.2, threshold: float = 0.5) -> Path:
    """A baseline CNN with random weights (a wide head, so probabilities spread)."""
    torch.manual_seed(seed)
    model = build_model("baseline_cnn", num_classes=2, in_chans=in_chans, weights="none")
    with torch.no_grad():
        model.classifier.weight.mul_(20)
    meta = ModelMeta("baseline_cnn", list(CLASSES), in_chans, size, [mean] * in_chans,
                     [std] * in_chans, threshold=threshold, drop_rate=0.2)
    save_model(out, model.eval(), meta)
    return out


def segmenter_folder(out: Path, seed: int, *, min_area: int, threshold: float) -> Path:
    torch.manual_seed(seed)
    model = build_segmenter("unet_tiny", in_chans=3).eval()
    meta = ModelMeta("unet_tiny", list(CLASSES), 3, SIZE, [0.4] * 3, [0.2] * 3,
                     threshold=threshold, task="segment",
                     segmentation=SegmentationSpec(min_area))
    save_model(out, model, meta)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Two classifiers (b with other band statistics and threshold) and two segmenters."""
    root = tmp_path_factory.mktemp("ensemble")
    return {"a": classifier_folder(root / "a", 1),
            "b": classifier_folder(root / "b", 2, mean=0.5, std=0.3, threshold=0.3),
            "seg1": segmenter_folder(root / "seg1", 3, min_area=4, threshold=0.4),
            "seg2": segmenter_folder(root / "seg2", 4, min_area=9, threshold=0.6)}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ens_images")
    rng = np.random.default_rng(0)
    for i in range(6):
        write_image(root / f"t{i}.png", slide_image(rng, i % 2 == 0, SIZE))
    return root


def probs(model_dir, images, *more, **kw) -> np.ndarray:
    preds = predict_paths(model_dir, [images], device="cpu", ensemble=list(more), **kw)
    return np.array([p.probability for p in preds])


# ----------------------------------------------------------------- probabilities


def test_one_folder_twice_is_the_model_itself(models, images):
    single = probs(models["a"], images)
    assert single.std() > 1e-3  # the images get different probabilities
    np.testing.assert_allclose(probs(models["a"], images, models["a"]), single, atol=1e-6)
    model, meta = load_models([models["a"]], "cpu")
    assert not isinstance(model, Ensemble) and "ensemble" not in meta.extra


def test_two_models_give_the_mean_of_their_probabilities(models, images):
    pa, pb = probs(models["a"], images), probs(models["b"], images)
    assert np.abs(pa - pb).max() > 1e-3
    np.testing.assert_allclose(probs(models["a"], images, models["b"]), (pa + pb) / 2,
                               atol=1e-6)
    # test-time augmentation averages views of the averaged probabilities: still the mean
    ta, tb = probs(models["a"], images, tta=True), probs(models["b"], images, tta=True)
    np.testing.assert_allclose(probs(models["a"], images, models["b"], tta=True),
                               (ta + tb) / 2, atol=1e-6)
    meta = ensemble_meta([models["a"], models["b"]])
    assert meta.threshold == pytest.approx(0.4) and meta.temperature == 1.0
    assert meta.mean == [0.4] * 3  # the first member's; b sees its own statistics
    assert meta.extra["ensemble"] == [str(models["a"]), str(models["b"])]


def test_labels_use_the_mean_threshold(models, images):
    preds = predict_paths(models["a"], [images], device="cpu", ensemble=[models["b"]])
    assert all(p.positive == (p.probability >= 0.4) for p in preds)


def test_a_member_with_a_temperature_is_calibrated_before_averaging(models, images,
                                                                    tmp_path):
    warm = tmp_path / "warm"
    shutil.copytree(models["a"], warm)
    card = json.loads((warm / META_FILE).read_text())
    card["temperature"] = 2.0
    (warm / META_FILE).write_text(json.dumps(card))
    pa, pw, pb = (probs(m, images) for m in (models["a"], warm, models["b"]))
    assert np.abs(pw - pa).max() > 1e-3
    assert (np.abs(pw - 0.5) < np.abs(pa - 0.5) + 1e-7).all()  # softer, same side
    np.testing.assert_allclose(probs(warm, images, models["b"]), (pw + pb) / 2, atol=1e-6)


def test_segmentation_ensemble_averages_the_maps(models, images):
    dirs = [models["seg1"], models["seg2"]]
    model, meta = load_models(dirs, "cpu")
    assert meta.segmentation.min_area_pixels == round((4 + 9) / 2)
    assert meta.threshold == pytest.approx(0.5)
    assert meta.segmentation.tile_threshold is None and meta.tile_threshold() == meta.threshold

    def outputs(model, meta):
        samples = image_samples([images], sorted(images.glob("*.png")), meta.classes)
        loader = DataLoader(model_dataset(meta, samples), batch_size=4)
        return predict_outputs(model, meta, loader, torch.device("cpu"), maps=True)

    one = [outputs(*load_models([d], "cpu")) for d in dirs]
    both = outputs(model, meta)
    mean_map = (one[0]["maps"] + one[1]["maps"]) / 2
    assert np.abs(one[0]["maps"] - one[1]["maps"]).max() > 1e-3
    np.testing.assert_allclose(both["maps"], mean_map, atol=1e-6)
    scores = tile_scores(torch.from_numpy(mean_map), torch.from_numpy(both["valid"]).float(),
                         meta.segmentation.min_area_pixels).numpy()
    np.testing.assert_allclose(both["probability"], scores, atol=1e-6)
    assert (both["landslide_pixels"] == ((mean_map >= 0.5) & both["valid"]).sum((1, 2))).all()
    preds = predict_paths(dirs[0], [images], device="cpu", ensemble=dirs[1:])
    np.testing.assert_allclose([p.probability for p in preds], both["probability"], atol=1e-6)


# ----------------------------------------------------------------- members that do not fit


@pytest.mark.parametrize("kind, needle", [
    ("bands", "bands (in_chans) 4, but"),
    ("size", "input size (pixels) 64, but"),
    ("task", "task segment, but"),
    ("fused", "takes tabular/fusion inputs; an ensemble takes image-only models"),
])
def test_a_member_that_does_not_fit_is_one_line_naming_it(capsys, models, images, tmp_path,
                                                          kind, needle):
    if kind == "bands":
        other = classifier_folder(tmp_path / "m", 5, in_chans=4)
    elif kind == "size":
        other = classifier_folder(tmp_path / "m", 5, size=64)
    elif kind == "task":
        other = models["seg1"]
    else:
        other = tmp_path / "m"
        other.mkdir()
        shutil.copy(FUSED / META_FILE, other / META_FILE)  # refused before weights are read
    line = run_bad(capsys, ["predict", models["a"], images, "--out", tmp_path / "p.csv",
                            "--ensemble", other, "--device", "cpu", "--quiet"],
                   needle, watch=(images,))
    assert line.startswith(f"error: {other}: ")
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(ModelError, match="ensemble members need the same|image-only"):
        ensemble_meta([models["a"], other])


def test_target_recall_is_refused_with_an_ensemble(capsys, models, tmp_path):
    data = make_class_dataset(tmp_path / "d", images=1, per_image=1)
    run_bad(capsys, ["evaluate", models["a"], "--data", data, "--out", tmp_path / "ev",
                     "--ensemble", models["b"], "--target-recall", "0.9", "--quiet"],
            "--target-recall: stores a threshold in one model folder")


# ----------------------------------------------------------------- commands


def test_evaluate_with_an_ensemble(capsys, models, tmp_path):
    data = make_class_dataset(tmp_path / "d", images=1, per_image=2)
    assert main(["evaluate", str(models["a"]), "--data", str(data), "--out",
                 str(tmp_path / "ev"), "--ensemble", str(models["b"]), "--quiet",
                 "--device", "cpu"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["ensemble"] == [str(models["a"]), str(models["b"])]
    assert m["threshold"] == pytest.approx(0.4) and m["overall"]["n"] == 8
    pa, pb = (probs(d, data) for d in (models["a"], models["b"]))
    rows = (tmp_path / "ev" / "predictions.csv").read_text().splitlines()[1:]
    got = sorted(float(r.split(",")[4]) for r in rows)
    np.testing.assert_allclose(got, sorted((pa + pb) / 2), atol=1e-6)


def test_evaluate_a_segmentation_ensemble(capsys, models, tmp_path):
    rng = np.random.default_rng(2)
    data = tmp_path / "cls"
    for i in range(3):
        image = rng.integers(20, 70, (SIZE, SIZE, 3)).astype(np.uint8)
        mask = np.zeros((SIZE, SIZE), bool)
        mask[8:20, 10:24] = True
        image[mask] = 220
        write_image(data / "landslide" / f"ls{i}.png", image)
        write_image(data / "masks" / f"ls{i}.png", mask.astype(np.uint8) * 255)
        write_image(data / "non_landslide" / f"bg{i}.png",
                    rng.integers(20, 70, (SIZE, SIZE, 3)).astype(np.uint8))
    assert main(["evaluate", str(models["seg1"]), "--data", str(data), "--out",
                 str(tmp_path / "ev"), "--ensemble", str(models["seg2"]), "--quiet",
                 "--device", "cpu"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["task"] == "segment" and len(m["ensemble"]) == 2
    assert m["tile_rule"]["min_area_pixels"] == 6 and m["threshold"] == pytest.approx(0.5)


def test_scan_with_an_ensemble_writes_outputs_and_resumes_only_with_the_same_members(
        capsys, models, tmp_path):
    rng = np.random.default_rng(3)
    scene = write_image(tmp_path / "scene.png", slide_image(rng, True, 80))
    out = tmp_path / "out"
    args = ["scan", models["a"], scene, "--out", out, "--device", "cpu", "--no-progress",
            "--tile", SIZE, "--stride", 16]
    assert main([str(a) for a in [*args, "--ensemble", models["b"]]]) == 0
    for name in ("scene_probability.tif", "scene_detections.geojson", "scene_quicklook.png"):
        assert (out / name).is_file(), name
    assert main([str(a) for a in [*args, "--ensemble", models["b"]]]) == 0
    assert "already done" in capsys.readouterr().err
    # other members: the earlier outputs are not this scan's
    run_bad(capsys, [*args, "--ensemble", models["a"]], "exists from a scan with other settings")
    run_bad(capsys, args, "exists from a scan with other settings")
    assert main([str(a) for a in [*args, "--ensemble", models["a"], "--overwrite"]]) == 0


def test_scan_probabilities_are_the_members_mean(models, tmp_path):
    from slidewatch.data.raster import open_raster
    from slidewatch.scan.run import scan

    rng = np.random.default_rng(4)
    scene = write_image(tmp_path / "s.png", slide_image(rng, True, 64))
    kw = {"tile": SIZE, "stride": 16, "device": "cpu"}
    maps = []
    for name, more in (("a", []), ("b", []), ("ab", [models["b"]])):
        first = models["b"] if name == "b" else models["a"]
        scan(first, [scene], tmp_path / name, ensemble=more, **kw)
        with open_raster(tmp_path / name / "s_probability.tif") as ds:
            maps.append(ds.read(1))
    np.testing.assert_allclose(maps[2], (maps[0] + maps[1]) / 2, atol=1e-5)


def test_ray_workers_score_an_ensemble_as_the_local_backend(models, tmp_path):
    ray = pytest.importorskip("ray")
    import logging

    from slidewatch.data.raster import open_raster
    from slidewatch.scan.run import Backend, scan

    scene = write_image(tmp_path / "s.png", slide_image(np.random.default_rng(4), True, 64))
    kw = {"tile": SIZE, "stride": 16, "batch": 8, "device": "cpu", "ensemble": [models["b"]]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray worker: the same sums, the same numbers
    try:
        scan(models["a"], [scene], tmp_path / "local", **kw)
    finally:
        torch.set_num_threads(threads)
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    except Exception as exc:  # any failure to start means: Ray cannot be tested here
        pytest.skip(f"a local Ray instance cannot start here ({' '.join(str(exc).split())})")
    try:
        scan(models["a"], [scene], tmp_path / "ray", backend=Backend("ray", workers=2,
                                                                      worker_cpus=1), **kw)
    finally:
        ray.shutdown()
    with open_raster(tmp_path / "local" / "s_probability.tif") as a, \
            open_raster(tmp_path / "ray" / "s_probability.tif") as b:
        np.testing.assert_array_equal(b.read(1), a.read(1))


def test_ensemble_tile_threshold_is_the_mean_of_the_members_tile_thresholds(models):
    # a member with a tile threshold chosen for a target recall (0.8) and one without (its
    # threshold, 0.6, decides its tiles): the ensemble decides tiles at 0.7, pixels at 0.5
    from slidewatch.inference.ensemble import combine
    from slidewatch.meta import read_meta

    a, b = read_meta(models["seg1"]), read_meta(models["seg2"])
    a.segmentation = SegmentationSpec(4, "target_recall", 0.8)
    meta = combine([a, b], [models["seg1"], models["seg2"]])
    assert meta.segmentation.tile_threshold == pytest.approx(0.7)
    assert meta.threshold == pytest.approx(0.5)

