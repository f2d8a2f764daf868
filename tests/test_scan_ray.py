"""`slidewatch scan --backend ray`: on a local Ray instance the windows of two scenes give the
same probability rasters and polygons as the local backend, an interrupted Ray scan resumes to
the same output, and a missing Ray is one clear line."""

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import UTM45, write_image
from rasterio.transform import from_origin
from test_scan import StopAfter, add_slide, vegetation

from slidewatch.cli.main import main
from slidewatch.data import raster
from slidewatch.errors import ConfigError
from slidewatch.scan import mosaic
from slidewatch.scan.run import Backend, scan

ray = pytest.importorskip("ray", reason="the Ray backend is an optional extra (slidewatch[ray])")

KW = {"tile": 32, "stride": 16, "batch": 8, "device": "cpu"}
RAY = Backend("ray", workers=2, worker_cpus=1)
RAY1 = Backend("ray", workers=1, worker_cpus=1)


@pytest.fixture(scope="module")
def ray_instance():
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    except Exception as exc:  # any failure to start means: Ray cannot be tested on this machine
        pytest.skip(f"a local Ray instance cannot start here ({' '.join(str(exc).split())})")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two GeoTIFFs over more than one 256-row block row: one with two landslides, one with a
    nodata corner (skipped windows)."""
    root, rng = tmp_path_factory.mktemp("ray_scenes"), np.random.default_rng(11)
    slides = add_slide(add_slide(vegetation(rng, 300, 160), rng, 40, 30, 48), rng, 230, 80, 50)
    a = write_image(root / "a.tif", slides, crs=UTM45,
                    transform=from_origin(500000, 3000000, 10, 10))
    img = add_slide(vegetation(rng, 280, 120), rng, 150, 40, 40)
    img[:80, :70] = 0
    b = write_image(root / "b.tif", img, crs=UTM45, transform=from_origin(600000, 3000000, 10, 10))
    with rasterio.open(b, "r+") as ds:
        ds.nodata = 0
    return [a, b]


def local_scan(model_dir, scenes, out):
    """The local backend with the workers' thread count: CPU math libraries may split a sum
    differently with another count (differences ~1e-7), the same count gives the same bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(RAY.worker_cpus)
    try:
        return scan(model_dir, scenes, out, **KW)
    finally:
        torch.set_num_threads(threads)


def outputs(out: Path, stem: str):
    with raster.open_raster(out / f"{stem}_probability.tif") as ds:
        prob = ds.read(1)
    feats = [json.loads((out / f"{stem}_detections{s}.geojson").read_text())["features"]
             for s in ("", "_wgs84")]
    return prob, feats


def test_ray_gives_the_probabilities_and_polygons_of_the_local_backend(
        tmp_path, ray_instance, model_dir, scenes):
    local = local_scan(model_dir, scenes, tmp_path / "local")
    far = scan(model_dir, scenes, tmp_path / "ray", backend=RAY, **KW)
    assert [r.status for r in far.scenes] == ["scanned", "scanned"]
    assert (far.windows, far.skipped_windows) == (local.windows, local.skipped_windows)
    assert far.skipped_windows > 0
    for stem in ("a", "b"):
        prob_local, feats_local = outputs(tmp_path / "local", stem)
        prob_ray, feats_ray = outputs(tmp_path / "ray", stem)
        np.testing.assert_array_equal(prob_ray, prob_local)
        assert feats_ray == feats_local
    assert len(outputs(tmp_path / "ray", "a")[1][0]) == 2  # both landslides, one polygon each
    assert ray.is_initialized()  # a Ray instance it did not start is left running


def test_interrupted_ray_scan_resumes_to_the_same_output(tmp_path, ray_instance, model_dir,
                                                         scenes):
    full = local_scan(model_dir, scenes[:1], tmp_path / "full")
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        scan(model_dir, scenes[:1], out, backend=RAY1, progress=StopAfter(16), **KW)
    state = json.loads((out / ".a_scan-state.json").read_text())
    assert state["rows_written"] == mosaic.OUT_BLOCK and state["next_row"] < 18
    again = scan(model_dir, scenes[:1], out, backend=RAY1, **KW)
    assert again.scenes[0].status == "resumed" and 0 < again.windows < full.windows
    np.testing.assert_array_equal(outputs(out, "a")[0], outputs(tmp_path / "full", "a")[0])
    assert outputs(out, "a")[1] == outputs(tmp_path / "full", "a")[1]


@pytest.mark.parametrize("args,needle", [
    (["--backend", "ray"], "--backend ray: Ray is not installed; install slidewatch[ray]"),
    (["--workers", "2"], "--ray-address, --workers and --worker-cpus need --backend ray"),
])
def test_ray_options_errors_are_one_line(capsys, monkeypatch, tmp_path, model_dir, scenes,
                                        args, needle):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    monkeypatch.delitem(sys.modules, "slidewatch.scan.ray_backend", raising=False)
    code = main(["scan", str(model_dir), str(scenes[0]), "--out", str(tmp_path / "out"),
                 "--no-progress", *args])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_a_cluster_address_that_does_not_answer_fails_fast():
    from slidewatch.scan.ray_backend import check_reachable

    with pytest.raises(ConfigError, match="--ray-address 127.0.0.1:1: no Ray cluster answers"):
        check_reachable("127.0.0.1:1")  # instead of minutes of Ray's retries


@pytest.fixture(scope="module")
def segment_model_dir(tmp_path_factory):
    """A tiny U-Net folder (random weights: the maps only need to be the same everywhere)."""
    from slidewatch.meta import ModelMeta, SegmentationSpec
    from slidewatch.models.checkpoint import save_model
    from slidewatch.models.segmentation import build_segmenter

    torch.manual_seed(3)
    model = build_segmenter("unet_tiny", in_chans=3).eval()
    meta = ModelMeta(architecture="unet_tiny", classes=["landslide", "non_landslide"],
                     in_chans=3, input_size=32, mean=[0.4] * 3, std=[0.2] * 3, task="segment",
                     segmentation=SegmentationSpec(8))
    out = tmp_path_factory.mktemp("seg") / "m"
    save_model(out, model, meta)
    return out


def test_ray_blends_segmentation_maps_as_the_local_backend(tmp_path, ray_instance,
                                                           segment_model_dir, scenes):
    kw = {**KW, "blend": "hann"}
    threads = torch.get_num_threads()
    torch.set_num_threads(RAY.worker_cpus)
    try:
        local = scan(segment_model_dir, scenes, tmp_path / "local", **kw)
    finally:
        torch.set_num_threads(threads)
    far = scan(segment_model_dir, scenes, tmp_path / "ray", backend=RAY, **kw)
    assert (far.windows, far.skipped_windows) == (local.windows, local.skipped_windows)
    for stem in ("a", "b"):
        prob_local, feats_local = outputs(tmp_path / "local", stem)
        prob_ray, feats_ray = outputs(tmp_path / "ray", stem)
        np.testing.assert_array_equal(prob_ray, prob_local)
        assert feats_ray == feats_local
    prob_b = outputs(tmp_path / "local", "b")[0]
    assert (prob_b[:80, :70] == mosaic.NODATA).all()  # the nodata corner stays unscanned
    assert (prob_b[100:, 80:] >= 0).all()
