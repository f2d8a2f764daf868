"""ONNX export (``slidewatch export``) and ONNX Runtime (``--runtime onnx``, ``.onnx`` files in
predict, evaluate and scan): the model card inside the file, probabilities within 1e-4 of
PyTorch on random inputs and on tiles, the same detections from a scan, int8 exports that run
and stay close, and bad ONNX files as one line."""

from __future__ import annotations

import csv
import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _badinput import run_bad
from _factories import slide_image
from conftest import UTM45, truncate, write_image
from rasterio.transform import from_origin
from test_model_folder_compat import FIXTURES, old_folder, seeded_images

from slidewatch.cli.main import main
from slidewatch.data import raster
from slidewatch.export.card import JSON_KEY, read_card
from slidewatch.export.onnx_export import ExportGraph, example_inputs, max_abs_diff, onnx_bytes
from slidewatch.export.runtime import OnnxModel, load_onnx
from slidewatch.inference.ensemble import load_models
from slidewatch.inference.forward import batch_probabilities
from slidewatch.inference.predict import predict_paths
from slidewatch.meta import META_FILE, ModelMeta, SegmentationSpec, read_meta, write_meta
from slidewatch.models.checkpoint import load_model, save_model
from slidewatch.models.fusion import build_fusion
from slidewatch.models.segmentation import Segmenter, build_segmenter
from slidewatch.scan.run import ScanSettings, scan, scan_with_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZE = 32
CLASSES = ["landslide", "non_landslide"]
TOL = 1e-4  # probabilities of ONNX Runtime against PyTorch (fp32)


def cli(*args) -> int:
    return main([str(a) for a in args])


def export(model_dir: Path, out: Path, *extra) -> Path:
    assert cli("export", model_dir, "--out", out, *extra) == 0
    return out


def probabilities(model_dir, images, **kw) -> np.ndarray:
    return np.array([p.probability for p in predict_paths(model_dir, [images], device="cpu",
                                                          **kw)])


@pytest.fixture(scope="module")
def classifier(tiny_model, tmp_path_factory) -> Path:
    """The session's tiny CNN with a temperature (applied inside the graph)."""
    folder = tmp_path_factory.mktemp("onnx_cls") / "model"
    shutil.copytree(tiny_model, folder)
    meta = read_meta(folder)
    meta.temperature = 1.7
    write_meta(folder, meta)
    return folder


@pytest.fixture(scope="module")
def classifier_onnx(classifier, tmp_path_factory) -> Path:
    return export(classifier, tmp_path_factory.mktemp("onnx_cls_file") / "model.onnx")


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory) -> Path:
    """A U-Net (tiny, random weights) with band statistics, a temperature and a tile rule."""
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("onnx_seg") / "model"
    model = build_segmenter("unet_tiny", in_chans=3).eval()
    meta = ModelMeta("unet_tiny", list(CLASSES), 3, SIZE, [0.4, 0.45, 0.5], [0.2, 0.25, 0.3],
                     threshold=0.45, temperature=0.8, task="segment",
                     segmentation=SegmentationSpec(6, "validation"))
    save_model(folder, model, meta)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("onnx_images")
    rng = np.random.default_rng(0)
    for i in range(10):
        write_image(root / f"t{i}.png", slide_image(rng, i % 2 == 0, SIZE))
    write_image(root / "big.tif", slide_image(rng, True, 48))  # resized to the input size
    return root


def scene(path: Path, bands: int = 3) -> Path:
    rng = np.random.default_rng(5)
    img = np.zeros((96, 128, bands), np.uint8)
    img[...] = rng.integers(30, 90, img.shape)
    img[20:60, 40:90] = rng.integers(180, 240, (40, 50, bands))
    return write_image(path, img, crs=UTM45, transform=from_origin(500000, 3000000, 10, 10))


# ---------------------------------------------------------------- the card


def test_the_card_travels_inside_and_reads_back_as_the_folder(classifier, classifier_onnx):
    card = read_card(classifier_onnx)
    folder = read_meta(classifier)
    assert card.meta.to_json() == folder.to_json()  # the whole slidewatch.json round trip
    assert card.opset >= 17
    p = card.props
    assert p["slidewatch.format"] == "slidewatch-onnx" and p["slidewatch.version"]
    assert json.loads(p["slidewatch.classes"]) == CLASSES
    assert p["slidewatch.positive_class"] == "landslide" and p["slidewatch.bands"] == "3"
    assert p["slidewatch.input_size"] == str(SIZE) and p["slidewatch.task"] == "classify"
    assert "uint8 / 255" in p["slidewatch.pixel_scale"]
    norm = json.loads(p["slidewatch.normalisation"])
    assert norm["where"] == "inside the graph" and norm["mean"] == folder.mean
    assert json.loads(p["slidewatch.temperature"])["value"] == 1.7
    assert float(p["slidewatch.threshold"]) == folder.threshold
    assert p["slidewatch.quantization"] == "none"
    outputs = json.loads(p["slidewatch.outputs"])
    assert outputs["probabilities"]["shape"] == ["batch", 2]
    model = onnx.load(str(classifier_onnx))
    assert model.producer_name == "slidewatch"
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"  # dynamic batch size


def test_segmentation_card_has_its_tile_rule(segmenter, tmp_path):
    card = read_card(export(segmenter, tmp_path / "seg.onnx"))
    rule = json.loads(card.props["slidewatch.tile_rule"])
    assert rule["min_area_pixels"] == 6 and card.meta.task == "segment"
    assert card.meta.segmentation == read_meta(segmenter).segmentation


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize("batch", [1, 5])
def test_random_inputs_give_pytorchs_probabilities(classifier, segmenter, batch):
    for folder in (classifier, segmenter):
        model, meta = load_model(folder)
        data = onnx_bytes(model, meta)
        assert max_abs_diff(model, meta, data, n=batch) < TOL


def test_classifier_tiles_give_pytorchs_probabilities(classifier, classifier_onnx, images,
                                                      tiny_tiles):
    for data in (images, tiny_tiles):
        torch_p = probabilities(classifier, data)
        onnx_p = probabilities(classifier_onnx, data)
        runtime_p = probabilities(classifier, data, runtime="onnx")  # exported in memory
        assert np.abs(onnx_p - torch_p).max() < TOL
        np.testing.assert_array_equal(runtime_p, onnx_p)
    tta = probabilities(classifier_onnx, images, tta=True)
    assert np.abs(tta - probabilities(classifier, images, tta=True)).max() < TOL


def test_the_runtime_meta_leaves_the_temperature_to_the_graph(classifier_onnx):
    model, meta = load_onnx(classifier_onnx)
    card = read_card(classifier_onnx).meta
    assert isinstance(model, OnnxModel)
    assert meta.mean == card.mean and meta.std == card.std and meta.temperature == 1.0
    inside = meta.extra["runtime"]["in_graph"]
    assert inside["temperature"] == 1.7 and inside["mean"] == card.mean
    x = torch.rand(3, 3, SIZE, SIZE)
    a = batch_probabilities(model, {"image": x}, meta, torch.device("cpu"))["probability"]
    restored = pickle.loads(pickle.dumps(model))  # as Ray ships it to a worker
    b = batch_probabilities(restored, {"image": x}, meta, torch.device("cpu"))["probability"]
    torch.testing.assert_close(a, b)


def test_segmentation_maps_and_tile_scores_match(segmenter, images, tmp_path):
    out = export(segmenter, tmp_path / "seg.onnx")
    torch_p = probabilities(segmenter, images)
    onnx_p = probabilities(out, images)
    assert np.abs(onnx_p - torch_p).max() < TOL
    x = torch.rand(4, 3, SIZE, SIZE)
    maps = []
    for m in (segmenter, out):
        model, meta = load_models([m], "cpu")
        maps.append(batch_probabilities(model, {"image": x}, meta,
                                        torch.device("cpu"))["probability"])
    assert maps[0].shape == (4, SIZE, SIZE)
    assert (maps[0] - maps[1]).abs().max() < TOL


def test_a_standardising_model_and_an_ensemble_with_an_onnx_member(classifier, images,
                                                                   tmp_path):
    """The data path's per-image standardisation uses the model's mean/std (kept in the
    runtime metadata); an .onnx member averages with folders as its folder would."""
    folder = tmp_path / "std"
    shutil.copytree(classifier, folder)
    meta = read_meta(folder)
    meta.standardize = "image"
    write_meta(folder, meta)
    out = export(folder, tmp_path / "std.onnx")
    assert "image" in read_card(out).props["slidewatch.standardize"]
    assert np.abs(probabilities(out, images) - probabilities(folder, images)).max() < TOL
    s = scene(tmp_path / "s.tif")
    kw = {"tile": SIZE, "stride": 16, "device": "cpu"}
    scan(folder, [s], tmp_path / "a", **kw)
    scan(out, [s], tmp_path / "b", **kw)
    assert np.abs(scan_outputs(tmp_path / "a", "s")[0]
                  - scan_outputs(tmp_path / "b", "s")[0]).max() < TOL
    other = export(classifier, tmp_path / "cls.onnx")
    a = probabilities(classifier, images, ensemble=[classifier])
    b = probabilities(classifier, images, ensemble=[other])
    assert np.abs(a - b).max() < TOL


# ---------------------------------------------------------------- fused models


def fused_folder(tmp_path: Path) -> Path:
    return old_folder("fused", tmp_path)


def tabular_sized_folder(tmp_path: Path) -> Path:
    """A tabular-only FusionModel with a size head (no image input in its graph)."""
    meta = read_meta(FIXTURES / "fused")
    fusion = {**meta.inputs.fusion.to_json(), "mode": "tabular", "size_classes": 2}
    d = meta.to_json()
    d.update(fusion=fusion, sizes={"names": ["small", "large"], "source": "mask",
                                   "unit": "m2", "edges": [500.0]})
    meta = ModelMeta.from_json(d, "test")
    torch.manual_seed(0)
    model = build_fusion(fusion, None).eval()
    with torch.no_grad():
        model.head.weight.mul_(10)
    save_model(tmp_path / "tabular", model, meta)
    return tmp_path / "tabular"


@pytest.mark.parametrize("kind", ["fused", "tabular+size"])
def test_fused_models_predict_the_same_from_the_onnx_file_alone(kind, tmp_path):
    folder = fused_folder(tmp_path) if kind == "fused" else tabular_sized_folder(tmp_path)
    out = export(folder, tmp_path / "fused.onnx")
    card = read_card(out)
    assert json.loads(card.props["slidewatch.tabular_encoder"]) == dict(
        read_meta(folder).inputs.tabular)
    model, meta = load_model(folder)
    assert max_abs_diff(model, meta, card.data) < TOL
    images = seeded_images(tmp_path / "images")
    rows = FIXTURES / "rows.csv"
    a = predict_paths(folder, [images], device="cpu", tabular=rows)
    b = predict_paths(out, [images], device="cpu", tabular=rows)
    assert np.abs(np.array([p.probability for p in a])
                  - np.array([p.probability for p in b])).max() < TOL
    if kind != "fused":
        assert [p.size for p in a] == [p.size for p in b]
        assert np.abs(np.array([p.size_probability for p in a])
                      - np.array([p.size_probability for p in b])).max() < TOL
    assert cli("predict", out, images, "--out", tmp_path / "p.csv", "--tabular", rows,
               "--quiet") == 0


def test_a_fused_onnx_model_without_its_rows_is_one_line(capsys, tmp_path):
    out = export(fused_folder(tmp_path), tmp_path / "fused.onnx")
    images = seeded_images(tmp_path / "images")
    run_bad(capsys, ["scan", out, scene(tmp_path / "s.tif"), "--out", tmp_path / "o"],
            "needs tabular inputs", watch=(tmp_path / "o",))
    assert not (tmp_path / "o").exists()
    run_bad(capsys, ["predict", out, images, "--out", tmp_path / "p.csv"], "--tabular")


# ---------------------------------------------------------------- the commands


def test_evaluate_with_the_onnx_file_matches_pytorch(classifier, classifier_onnx, tiny_tiles,
                                                     tmp_path):
    for name, model in (("torch", classifier), ("onnx", classifier_onnx)):
        assert cli("evaluate", model, "--data", tiny_tiles, "--out", tmp_path / name,
                   "--quiet", "--device", "cpu") == 0
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("torch", "onnx"))
    assert a["overall"] == b["overall"]
    with open(tmp_path / "torch" / "predictions.csv") as fa, \
            open(tmp_path / "onnx" / "predictions.csv") as fb:
        pa, pb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert [r["path"] for r in pa] == [r["path"] for r in pb]
    assert max(abs(float(x["probability"]) - float(y["probability"]))
               for x, y in zip(pa, pb)) < TOL


def test_evaluate_a_segmentation_onnx_model(segmenter, tmp_path):
    from conftest import make_scene
    from test_segment_pipeline import blob_image

    rng = np.random.default_rng(1)
    data = make_scene(tmp_path, "scene", {f"s{i}": blob_image(rng, size=SIZE) for i in range(4)})
    out = export(segmenter, tmp_path / "seg.onnx")
    for name, model in (("torch", segmenter), ("onnx", out)):
        assert cli("evaluate", model, "--data", data, "--out", tmp_path / name, "--quiet",
                   "--device", "cpu") == 0
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("torch", "onnx"))
    assert a["task"] == b["task"] == "segment" and a["overall"]["n"] == b["overall"]["n"]


def scan_outputs(out: Path, stem: str) -> tuple[np.ndarray, list]:
    with raster.open_raster(out / f"{stem}_probability.tif") as ds:
        prob = ds.read(1)
    feats = json.loads((out / f"{stem}_detections.geojson").read_text())["features"]
    return prob, feats


def same_detections(a: list, b: list) -> None:
    from shapely.geometry import shape

    assert len(a) == len(b) and a
    for fa, fb in zip(a, b):
        assert fa["properties"]["area_px"] == fb["properties"]["area_px"]
        assert shape(fa["geometry"]).symmetric_difference(shape(fb["geometry"])).area < 1e-6
        assert abs(fa["properties"]["mean_prob"] - fb["properties"]["mean_prob"]) < TOL


def test_scan_with_the_onnx_file_finds_the_same_detections(classifier, classifier_onnx,
                                                           tmp_path, capsys):
    s = scene(tmp_path / "s.tif")
    kw = {"tile": SIZE, "stride": 16, "device": "cpu", "threshold": 0.5}
    a = scan(classifier, [s], tmp_path / "torch", **kw)
    b = scan(classifier_onnx, [s], tmp_path / "onnx", batch=5, **kw)  # other batches: same
    c = scan(classifier, [s], tmp_path / "rt", runtime="onnx", **kw)
    pa, fa = scan_outputs(tmp_path / "torch", "s")
    for out in ("onnx", "rt"):
        pb, fb = scan_outputs(tmp_path / out, "s")
        assert np.abs(pa - pb).max() < TOL
        same_detections(fa, fb)
    assert a.windows == b.windows == c.windows
    # the fingerprint knows the runtime: a torch scan is not resumed or reused by onnx
    code = cli("scan", classifier, s, "--out", tmp_path / "torch", "--tile", SIZE,
               "--stride", 16, "--runtime", "onnx", "--no-progress", "--device", "cpu")
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert cli("scan", classifier_onnx, s, "--out", tmp_path / "onnx", "--tile", SIZE,
               "--stride", 16, "--batch", 5, "--no-progress", "--device", "cpu") == 0
    assert "already done" in capsys.readouterr().err


def test_ray_workers_run_the_onnx_file_as_the_local_backend(classifier_onnx, tmp_path):
    """The OnnxModel travels to each worker as its bytes and opens its session there, with the
    worker's threads: the same probabilities as a local scan with as many threads."""
    ray = pytest.importorskip("ray")
    import logging

    from slidewatch.scan.run import Backend

    s = scene(tmp_path / "s.tif")
    kw = {"tile": SIZE, "stride": 16, "batch": 8, "device": "cpu"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scan(classifier_onnx, [s], tmp_path / "local", **kw)
    finally:
        torch.set_num_threads(threads)
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    except Exception as exc:  # any failure to start means: Ray cannot be tested here
        pytest.skip(f"a local Ray instance cannot start here ({' '.join(str(exc).split())})")
    try:
        scan(classifier_onnx, [s], tmp_path / "ray",
             backend=Backend("ray", workers=2, worker_cpus=1), **kw)
    finally:
        ray.shutdown()
    a, b = scan_outputs(tmp_path / "local", "s"), scan_outputs(tmp_path / "ray", "s")
    assert np.abs(a[0] - b[0]).max() < TOL
    same_detections(a[1], b[1])


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


def test_segmentation_scan_with_an_onnx_file_finds_the_same_polygons(segmenter, tmp_path):
    meta = ModelMeta("unet_tiny", list(CLASSES), 3, SIZE, [0.0] * 3, [1.0] * 3,
                     task="segment", segmentation=SegmentationSpec(4))
    model = Segmenter(Threshold(), "unet_tiny").eval()
    out = tmp_path / "known.onnx"
    out.write_bytes(onnx_bytes(model, meta))
    s = scene(tmp_path / "s.tif")
    settings = ScanSettings(tile=SIZE, stride=SIZE // 2, batch=4, blend="hann", threshold=0.5)
    scan_with_model(model, meta, [s], tmp_path / "torch", settings, model_id="t")
    summary = scan(out, [s], tmp_path / "onnx", tile=SIZE, stride=SIZE // 2, batch=4,
                   blend="hann", device="cpu")
    assert summary.scenes[0].detections_count == 1
    pa, fa = scan_outputs(tmp_path / "torch", "s")
    pb, fb = scan_outputs(tmp_path / "onnx", "s")
    assert np.abs(pa - pb).max() < TOL
    same_detections(fa, fb)
    # a trained-like U-Net: the maps of both runtimes agree
    kw = {"tile": SIZE, "stride": 16, "device": "cpu"}
    scan(segmenter, [s], tmp_path / "u-torch", **kw)
    scan(segmenter, [s], tmp_path / "u-onnx", runtime="onnx", **kw)
    assert np.abs(scan_outputs(tmp_path / "u-torch", "s")[0]
                  - scan_outputs(tmp_path / "u-onnx", "s")[0]).max() < TOL


# ---------------------------------------------------------------- int8


def test_quantised_exports_run_and_stay_close(classifier, tiny_tiles, tmp_path, capsys):
    base = probabilities(classifier, tiny_tiles)
    diffs = {}
    sizes = {"fp32": export(classifier, tmp_path / "fp32.onnx").stat().st_size}
    for how, extra in (("dynamic", []), ("static", ["--calibration-data", tiny_tiles])):
        capsys.readouterr()
        out = export(classifier, tmp_path / f"{how}.onnx", "--quantize", how, *extra)
        line = capsys.readouterr().err
        assert f"int8 {how}" in line and "max |diff|" in line
        assert read_card(out).props["slidewatch.quantization"] == how
        sizes[how] = out.stat().st_size
        diffs[how] = float(np.abs(probabilities(out, tiny_tiles) - base).max())
    print(f"int8 max |p - p_torch| on the tiles: {diffs}; bytes: {sizes}")
    assert diffs["dynamic"] < 0.05 and diffs["static"] < 0.1
    assert sizes["dynamic"] < sizes["fp32"] / 2 and sizes["static"] < sizes["fp32"] / 2


def test_static_quantisation_of_a_segmentation_model(segmenter, images, tmp_path):
    out = export(segmenter, tmp_path / "q.onnx", "--quantize", "static",
                 "--calibration-data", images)
    diff = np.abs(probabilities(out, images) - probabilities(segmenter, images)).max()
    assert diff < 0.1


# ---------------------------------------------------------------- bad input


def test_onnx_without_slidewatch_metadata_is_one_line(capsys, classifier, images, tmp_path):
    model, meta = load_model(classifier)
    bare = tmp_path / "bare.onnx"
    torch.onnx.export(ExportGraph(model, meta).eval(), example_inputs(meta), str(bare),
                      input_names=["image"], opset_version=17, dynamo=False)
    run_bad(capsys, ["predict", bare, images, "--out", tmp_path / "p.csv"],
            f"without slidewatch metadata (metadata_props key '{JSON_KEY}' is missing",
            watch=(tmp_path,))


def test_metadata_cut_short_or_broken_is_one_line(capsys, classifier_onnx, images, tmp_path):
    model = onnx.load(str(classifier_onnx))
    props = [(p.key, p.value) for p in model.metadata_props]
    assert props[-1][0] == JSON_KEY  # written last: a file cut there loses it
    onnx.helper.set_model_props(model, dict(props[:-1]))
    onnx.save(model, str(tmp_path / "cut.onnx"))
    run_bad(capsys, ["predict", tmp_path / "cut.onnx", images, "--out", tmp_path / "p.csv"],
            "ends before key 'slidewatch.json'")
    onnx.helper.set_model_props(model, {**dict(props), JSON_KEY: json.dumps(
        {**json.loads(dict(props)[JSON_KEY]), "in_chans": 0})})
    onnx.save(model, str(tmp_path / "bad.onnx"))
    run_bad(capsys, ["predict", tmp_path / "bad.onnx", images, "--out", tmp_path / "p.csv"],
            "field in_chans must be")


def test_truncated_onnx_file_is_one_line(capsys, classifier_onnx, images, tmp_path):
    cut = truncate(shutil.copy(classifier_onnx, tmp_path / "cut.onnx"))
    for argv in (["predict", cut, images, "--out", tmp_path / "p.csv"],
                 ["scan", cut, scene(tmp_path / "s.tif"), "--out", tmp_path / "o"],
                 ["evaluate", cut, "--data", images, "--out", tmp_path / "e"]):
        run_bad(capsys, argv, "truncated or damaged", watch=(tmp_path / "o", tmp_path / "e"))
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists()


def test_an_opset_the_runtime_cannot_run_is_one_line(capsys, classifier_onnx, tmp_path):
    model = onnx.load(str(classifier_onnx))
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 99
    onnx.save(model, str(tmp_path / "future.onnx"))
    line = run_bad(capsys, ["scan", tmp_path / "future.onnx", scene(tmp_path / "s.tif"),
                            "--out", tmp_path / "o"], "opset 99 is newer than this ONNX Runtime",
                   watch=(tmp_path / "o",))
    assert "upgrade onnxruntime" in line
    assert not (tmp_path / "o").exists()


def test_a_scene_with_other_bands_is_one_line(capsys, classifier_onnx, tmp_path):
    s = scene(tmp_path / "five.tif", bands=5)
    run_bad(capsys, ["scan", classifier_onnx, s, "--out", tmp_path / "o"],
            "five.tif: has 5 bands; the model takes 3", watch=(tmp_path / "o",))
    assert not (tmp_path / "o").exists()


def test_wrong_options_are_one_line(capsys, classifier, classifier_onnx, images, tiny_tiles,
                                    tmp_path):
    run_bad(capsys, ["predict", classifier_onnx, images, "--out", tmp_path / "p.csv",
                     "--runtime", "torch"], "is an ONNX file; it runs with --runtime onnx")
    run_bad(capsys, ["evaluate", classifier_onnx, "--data", tiny_tiles, "--out", tmp_path / "e",
                     "--target-recall", "0.9"], "is an ONNX file")
    run_bad(capsys, ["export", classifier, "--out", tmp_path / "q.onnx", "--quantize",
                     "static"], "needs --calibration-data", watch=(tmp_path,))
    run_bad(capsys, ["export", classifier, "--out", tmp_path / "q.onnx", "--calibration-data",
                     images], "only used with --quantize static", watch=(tmp_path,))
    run_bad(capsys, ["export", classifier, "--out", tmp_path / "m.txt"], "ending in .onnx",
            watch=(tmp_path,))
    run_bad(capsys, ["export", classifier, "--out", tmp_path / "m.onnx", "--opset", "12"],
            "--opset: must be from 17", watch=(tmp_path,))
    run_bad(capsys, ["export", classifier, "--out", classifier / "m.onnx"],
            "inside the model folder", watch=(classifier,))
    run_bad(capsys, ["export", tmp_path / "nothing", "--out", tmp_path / "m.onnx"],
            "model folder not found", watch=(tmp_path,))
    run_bad(capsys, ["predict", tmp_path / "missing.onnx", images, "--out", tmp_path / "p.csv"],
            "ONNX file not found")
    run_bad(capsys, ["explain", classifier_onnx, images, "--out", tmp_path / "cams"],
            "an ONNX file (slidewatch export); this needs the model folder", watch=(tmp_path,))
    empty = tmp_path / "empty"
    empty.mkdir()
    run_bad(capsys, ["export", classifier, "--out", tmp_path / "s.onnx", "--quantize", "static",
                     "--calibration-data", empty], "no images", watch=(tmp_path,))
    (tmp_path / "text.onnx").write_text("not a model\n")
    run_bad(capsys, ["predict", tmp_path / "text.onnx", images, "--out", tmp_path / "p.csv"],
            "text.onnx: not a readable ONNX model")


def test_the_model_folder_is_unchanged_and_meta_file_untouched(classifier):
    assert (classifier / META_FILE).is_file()
    assert not any(p.suffix == ".onnx" for p in classifier.iterdir())


def test_meta_fields_dataclass_round_trip_is_complete(classifier_onnx, classifier):
    """Every ModelMeta field comes back from the card (nothing dropped on the way)."""
    a, b = read_card(classifier_onnx).meta, read_meta(classifier)
    for f in dataclasses.fields(ModelMeta):
        assert getattr(a, f.name) == getattr(b, f.name), f.name
