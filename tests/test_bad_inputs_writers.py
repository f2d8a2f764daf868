"""Bad input, writers side (issue 16: items 1, 2, 3, 7, 10a, 12, 13, 14, 16a): output paths that
are inputs, model folders or folders; NaN and inf in statistics, probabilities and training;
output folders that are not ours; full disks; foreign, damaged or changed ``resume.pt``; the
temporaries that killed runs leave behind.

Every refusal goes through :func:`_badinput.run_bad` (the real command line: one ``error:`` line
naming the file or option, exit 2, no traceback, nothing written or left behind). A full disk is
a low-level write (``os.fsync``, ``torch.save``, a PNG or GeoTIFF write) monkeypatched to raise
``ENOSPC``, or libtiff itself failing under a file-size limit; no disk is filled. The cleanup of
stale temporaries (item 14) and the outputs that must still be accepted are checked directly.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _badinput import run_bad, snapshot
from _factories import interrupt_after_saves, make_class_dataset, slide_image, train_tiny_cnn
from conftest import UTM45, make_scene, truncate, write_image
from rasterio.transform import from_origin
from safetensors.torch import load_file, save_file

from slidewatch import io_utils
from slidewatch.cli.main import main
from slidewatch.errors import DataError

QUIET = ["--quiet", "--device", "cpu"]
SCAN = ["--tile", "32", "--stride", "16", "--device", "cpu", "--no-progress"]
# train_tiny_cnn's recipe with two epochs (an interrupted run can be resumed after the first)
TRAIN = ["--model", "baseline_cnn", "--weights", "none", "--input-size", "32",
         "--phase1-epochs", "0", "--phase2-epochs", "2", "--unfreeze-layers", "99",
         "--batch-size", "8", "--quiet", "--device", "cpu"]
ENOSPC = "No space left on device"


def dead_pid() -> int:
    """A pid no process can have (above the kernel's pid_max)."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except (OSError, ValueError):
        return 2**22 + 1


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, ENOSPC)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A dataset, the tiny CNN trained on it, its evaluation, and an interrupted run of the
    same recipe (``resume.pt`` after one of two epochs). Read-only."""
    root = tmp_path_factory.mktemp("writers")
    tiles = make_class_dataset(root / "d", images=3, per_image=2)
    model = train_tiny_cnn(tiles, root / "m")
    assert main(["evaluate", str(model), "--data", str(tiles), "--out", str(root / "ev"),
                 *QUIET]) == 0
    with pytest.MonkeyPatch.context() as mp:
        interrupt_after_saves(mp, 1)
        assert main(["train", "--data", str(tiles), "--out", str(root / "cut"), *TRAIN]) == 130
    assert (root / "cut" / "resume.pt").is_file()
    image = next((tiles / "landslide").iterdir())
    return {"root": root, "tiles": tiles, "model": model, "eval": root / "ev",
            "cut": root / "cut", "image": image}


def copy_model(env: dict, tmp_path: Path) -> Path:
    return Path(shutil.copytree(env["model"], tmp_path / "m"))


# ------------------------------------------------------------ 1, 16a: --out FILE


PREDICT_OUT = {
    "model metadata": ("model/slidewatch.json", "inside the model folder"),
    "model weights": ("model/model.safetensors", "inside the model folder"),
    "new file in model": ("model/preds.csv", "inside the model folder"),
    "input image": ("image", "is one of the inputs"),
    "image of input folder": ("folder-image", "is one of the inputs"),
    "tabular input": ("rows.csv", "is one of the inputs"),
    "a folder": ("folder", "is a folder; give a CSV file name"),
    "link to the image": ("link", "is one of the inputs"),
}


@pytest.mark.parametrize("case", PREDICT_OUT, ids=list(PREDICT_OUT))
def test_predict_out_is_an_input_a_model_or_a_folder(env, tmp_path, capsys, case):
    where, needle = PREDICT_OUT[case]
    model = copy_model(env, tmp_path)
    data = Path(shutil.copytree(env["tiles"], tmp_path / "d"))
    image = data / "landslide" / env["image"].name
    rows = tmp_path / "rows.csv"
    rows.write_text("tile_id,slope\nx,1\n")
    out = {"image": image, "folder-image": image, "rows.csv": rows, "folder": data,
           "link": tmp_path / "link.csv"}.get(where) or tmp_path / where.replace("model", "m")
    if where == "link":
        out.symlink_to(image)
    paths = [data] if where in ("folder-image", "folder") else [image]
    extra = ["--tabular", rows] if where == "rows.csv" else []
    line = run_bad(capsys, ["predict", model, *paths, "--out", out, *extra, *QUIET], needle,
                   watch=(model, data, tmp_path))
    assert f"--out {out}" in line


REPORT_OUT = {
    "model metadata": ("m/slidewatch.json", "inside the model folder"),
    "evaluation metrics": ("ev/metrics.json", "is one of the inputs"),
    "evaluation figure": ("ev/confusion_matrix.png", "is one of the inputs"),
    "a folder": ("ev", "is a folder; give an HTML file name"),
}


@pytest.mark.parametrize("case", REPORT_OUT, ids=list(REPORT_OUT))
def test_report_out_is_an_input_a_model_or_a_folder(env, tmp_path, capsys, case):
    where, needle = REPORT_OUT[case]
    model = copy_model(env, tmp_path)
    ev = Path(shutil.copytree(env["eval"], tmp_path / "ev"))
    run_bad(capsys, ["report", model, "--eval", ev, "--out", tmp_path / where], needle,
            watch=(tmp_path,))


def test_outputs_beside_the_inputs_are_still_written(env, tmp_path, capsys):
    """A CSV in a folder of input images, a report (again) in the evaluation folder."""
    data = Path(shutil.copytree(env["tiles"], tmp_path / "d"))
    for _ in range(2):
        assert main(["predict", str(env["model"]), str(data), "--out", str(data / "p.csv"),
                     *QUIET]) == 0
    ev = Path(shutil.copytree(env["eval"], tmp_path / "ev"))
    for _ in range(2):
        assert main(["report", str(env["model"]), "--eval", str(ev), "--out",
                     str(ev / "report.html")]) == 0
    assert (data / "p.csv").read_text().startswith("path,probability")
    assert io_utils.check_output_file(tmp_path / "new.csv", "a CSV file name", (".csv",),
                             inputs=[data]) == tmp_path / "new.csv"


SPLIT_OUT = {
    "tiles.csv of the dataset": ("d/tiles.csv", "is one of the inputs"),
    "an image of the dataset": ("image", "is one of the inputs"),
    "model metadata": ("m/slidewatch.json", "inside the model folder"),
    "the model's split": ("m/split.json", "inside the model folder"),
    "a folder": ("d", "is a folder; give a JSON file name"),
}


@pytest.mark.parametrize("case", SPLIT_OUT, ids=list(SPLIT_OUT))
def test_data_split_out_is_an_input_a_model_or_a_folder(env, tmp_path, capsys, case):
    """``data split --out`` is checked as predict's and report's ``--out`` are (before: the
    dataset's tiles.csv or an image was overwritten with the split's JSON)."""
    where, needle = SPLIT_OUT[case]
    copy_model(env, tmp_path)
    data = Path(shutil.copytree(env["tiles"], tmp_path / "d"))
    out = data / "landslide" / env["image"].name if where == "image" else tmp_path / where
    line = run_bad(capsys, ["data", "split", data, "--out", out], needle, watch=(tmp_path,))
    assert f"--out {out}" in line


def test_data_split_out_beside_the_inputs_is_still_written(env, tmp_path, capsys):
    """A split file in the dataset folder (again: an earlier split is no input)."""
    data = Path(shutil.copytree(env["tiles"], tmp_path / "d"))
    for _ in range(2):
        assert main(["data", "split", str(data), "--out", str(data / "split.json")]) == 0
    assert json.loads((data / "split.json").read_text())["format"] == "slidewatch-split"


# ------------------------------------------------------------ 2: NaN and inf


def nan_weights(model: Path) -> None:
    state = load_file(str(model / "model.safetensors"))
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key][0] = float("nan")
    save_file(state, str(model / "model.safetensors"))


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_nan_weights_stop_the_forward_pass(env, tmp_path, capsys, command):
    model = copy_model(env, tmp_path)
    nan_weights(model)
    args = ([env["image"], "--out", tmp_path / "p.csv"] if command == "predict" else
            ["--data", env["tiles"], "--out", tmp_path / "ev"])
    line = run_bad(capsys, [command, model, *args, *QUIET], str(model),
                   watch=(tmp_path, env["tiles"]))
    assert "nan" in line.lower()


@pytest.mark.parametrize("case", ["nan weights", "overflowing pixels"])
def test_non_finite_window_probabilities_stop_a_scan(env, tmp_path, capsys, case):
    """A window the model gives NaN for is no window without valid pixels (before: it was
    counted as skipped and the scan wrote an empty map): the model folder (its weights) or
    the scene (its pixels) is named."""
    model = copy_model(env, tmp_path)
    if case == "nan weights":
        nan_weights(model)
        scene = scene_file(tmp_path)
        needle = f"{model}: the weights hold NaN or inf values"
    else:
        scene = write_image(tmp_path / "scenes" / "huge.tif",
                            np.full((64, 64, 3), 3e38, np.float32))
        needle = f"{scene}: the model gives a non-finite probability"
    line = run_bad(capsys, ["scan", model, scene, "--out", tmp_path / "o", *SCAN], needle,
                   watch=(tmp_path,))
    if case == "overflowing pixels":
        assert str(model) in line


def test_score_windows_refuses_non_finite_probabilities(env, tmp_path):
    """What the Ray workers call: the same check, naming the model folder given."""
    from rasterio.windows import Window

    from slidewatch.errors import WeightsError
    from slidewatch.models.checkpoint import load_model
    from slidewatch.scan.score import score_windows

    model_dir = copy_model(env, tmp_path)
    nan_weights(model_dir)
    model, meta = load_model(model_dir)
    scene = scene_file(tmp_path)
    with pytest.raises(WeightsError, match="^" + re.escape(f"{model_dir}: the weights hold NaN")):
        score_windows(model, meta, scene, [Window(0, 0, 32, 32)], [1, 2, 3], 4,
                      torch.device("cpu"), source=model_dir)


@pytest.mark.parametrize("value", [3e38, -3e38])
def test_pixels_overflowing_the_model_name_the_image(env, tmp_path, capsys, value):
    """Finite float32 pixels so large that normalising them overflows: the image is named."""
    image = write_image(tmp_path / "huge.tif", np.full((32, 32, 3), value, np.float32))
    run_bad(capsys, ["predict", env["model"], image, "--out", tmp_path / "p.csv", *QUIET],
            str(image), watch=(tmp_path,))


@pytest.mark.parametrize("phase, lr", [(1, "1e38"), (2, "1e30"), (2, "1e38")],
                         ids=["phase1-overflow", "phase2-nan-loss", "phase2-overflow"])
def test_diverging_training_stops_before_writing_a_model(env, tmp_path, capsys, phase, lr):
    epochs = ["--phase1-epochs", "1", "--phase2-epochs", "0"] if phase == 1 else []
    out = tmp_path / "runs" / "m"
    (tmp_path / "runs").mkdir()
    line = run_bad(capsys, ["train", "--data", env["tiles"], "--out", out, *TRAIN, *epochs,
                            f"--phase{phase}-lr", lr], f"--phase{phase}-lr",
                   watch=(tmp_path / "runs",), progress_lines=True)
    assert "learning rate" in line and not out.exists()


class _Images:
    """A dataset whose one image has non-finite values (as terrain from a broken DEM could)."""

    dem = None

    def __init__(self, value: float):
        self.value = value
        self.samples = [type("S", (), {"path": Path("tiles/landslide/a.png")})()]

    def __len__(self):
        return 1

    def unit_image(self, i: int) -> np.ndarray:
        x = np.full((4, 4, 3), 0.5, np.float32)
        x[0, 0, 1] = self.value
        return x


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_band_statistics_name_the_image(value):
    from slidewatch.training.setup import band_statistics

    with pytest.raises(DataError, match=r"tiles/landslide/a.png: band 2 of 3"):
        band_statistics(_Images(value))


# ------------------------------------------------------------ 3: output folders not ours


def foreign_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    return folder


@pytest.mark.parametrize("case", ["foreign files", "the dataset itself", "above the dataset"])
def test_train_out_not_a_training_run_is_refused(env, tmp_path, capsys, case):
    data = Path(shutil.copytree(env["tiles"], tmp_path / "d"))
    out = {"foreign files": foreign_folder(tmp_path), "the dataset itself": data,
           "above the dataset": tmp_path}[case]
    run_bad(capsys, ["train", "--data", data, "--out", out, *TRAIN],
            f"--out {out}: exists and holds files that are not a slidewatch training run",
            watch=(tmp_path,))


def test_train_resume_into_a_model_folder_is_still_refused_as_before(env, tmp_path, capsys):
    model = copy_model(env, tmp_path)
    run_bad(capsys, ["train", "--data", env["tiles"], "--out", model, *TRAIN],
            "already holds a model or an interrupted run", watch=(tmp_path,))


EVAL_OUT = {
    "foreign files": (False, "exists and is not empty"),
    "half an evaluation": (False, "exists and is not empty"),
    "the model --overwrite": (True, "an input of this evaluation"),
    "the dataset --overwrite": (True, "an input of this evaluation"),
    "above the dataset --overwrite": (True, "an input of this evaluation"),
    "a class folder --overwrite": (True, "an input of this evaluation"),
}


@pytest.mark.parametrize("case", EVAL_OUT, ids=list(EVAL_OUT))
def test_evaluate_out_not_ours_is_refused(env, tmp_path, capsys, case):
    overwrite, needle = EVAL_OUT[case]
    model = copy_model(env, tmp_path)
    data = Path(shutil.copytree(env["tiles"], tmp_path / "d"))
    out = {"foreign files": foreign_folder(tmp_path), "half an evaluation": tmp_path / "ev",
           "the model --overwrite": model, "the dataset --overwrite": data,
           "above the dataset --overwrite": tmp_path,
           "a class folder --overwrite": data / "landslide"}[case]
    if case == "half an evaluation":
        out.mkdir()
        shutil.copy(env["eval"] / "predictions.csv", out)
    run_bad(capsys, ["evaluate", model, "--data", data, "--out", out, *QUIET,
                     *(["--overwrite"] if overwrite else [])], needle, watch=(tmp_path,))


# ------------------------------------------------------------ 7, 13: a full disk


def test_train_disk_full_saving_resume_pt_names_it(env, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch, "save", full_disk)
    (tmp_path / "runs").mkdir()
    out = tmp_path / "runs" / "m"
    line = run_bad(capsys, ["train", "--data", env["tiles"], "--out", out, *TRAIN],
                   str(out / "resume.pt"), watch=(tmp_path / "runs",), progress_lines=True)
    assert ENOSPC in line


def png_full(*args, **kwargs):
    full_disk()


@pytest.mark.parametrize("target", ["fsync", "figure", "target-recall"])
def test_evaluate_disk_full_leaves_nothing(env, tmp_path, capsys, monkeypatch, target):
    """Item 13: no predictions.csv or figure without metrics.json, and a model whose
    threshold was not stored."""
    import matplotlib.figure

    model = copy_model(env, tmp_path)
    if target == "figure":
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", png_full)
    else:
        monkeypatch.setattr(os, "fsync", full_disk)
    (tmp_path / "runs").mkdir()
    out = tmp_path / "runs" / "ev"
    recall = ["--target-recall", "0.9"] if target == "target-recall" else []
    needle = {"fsync": "predictions.csv", "figure": "confusion_matrix.png",
              "target-recall": "predictions.csv"}[target]
    line = run_bad(capsys, ["evaluate", model, "--data", env["tiles"], "--out", out, *recall,
                            *QUIET], f"{out / needle}: cannot write it",
                   watch=(tmp_path / "runs", model))
    assert ENOSPC in line and ".tmp-" not in line


@pytest.mark.parametrize("target", ["png", "tiles.csv"])
def test_data_tiles_disk_full_names_the_file(tmp_path, capsys, monkeypatch, target):
    from PIL import Image

    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), bool)
    mask[:32, :32] = True
    scene = make_scene(tmp_path / "scenes", "r1", {"a": (slide_image(rng, True, 64), mask)})
    if target == "png":
        monkeypatch.setattr(Image.Image, "save", png_full)
    else:
        monkeypatch.setattr(os, "fsync", full_disk)
    out = tmp_path / "out" / "tk"
    (tmp_path / "out").mkdir()
    needle = str(out / "tiles.csv") if target == "tiles.csv" else str(out / "landslide")
    line = run_bad(capsys, ["data", "tiles", scene, "--out", out, "--tile", "32", "--quiet"],
                   needle, watch=(tmp_path,))
    assert ENOSPC in line and ".tmp-" not in line


def fsync_full_for(suffix: str):
    """``os.fsync`` that fails with ENOSPC for files whose name ends with ``suffix`` only."""
    real = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(suffix):
            full_disk()
        return real(fd)

    return fsync


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_train_disk_full_saving_the_weights_names_them(env, tmp_path, capsys, monkeypatch):
    """The last write of a run: the error names model.safetensors (its temporary is gone, no
    slidewatch.json without weights) and resume.pt stays, so ``--resume`` finishes the run."""
    monkeypatch.setattr(os, "fsync", fsync_full_for(".safetensors"))
    out = tmp_path / "m"
    line = run_bad(capsys, ["train", "--data", env["tiles"], "--out", out, *TRAIN],
                   f"{out / 'model.safetensors'}: cannot write it", watch=(env["tiles"],),
                   progress_lines=True)
    assert ENOSPC in line and ".tmp-" not in line
    assert not [p.name for p in out.iterdir() if p.suffix == ".safetensors" or
                ".tmp-" in p.name or p.name == "slidewatch.json"]
    assert (out / "resume.pt").is_file()
    monkeypatch.undo()
    assert main(["train", "--data", str(env["tiles"]), "--out", str(out), *TRAIN,
                 "--resume"]) == 0
    assert load_file(str(out / "model.safetensors"))


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_FSIZE")
def test_save_model_past_a_file_size_limit_is_one_line(env, tmp_path):
    """safetensors' own writer raised a SafetensorError (no OSError: a traceback) when the
    disk filled; the weights are now written through io_utils like every other file."""
    import resource

    from slidewatch.models.checkpoint import load_model, save_model

    model, meta = load_model(env["model"])
    out = tmp_path / "m"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2500, hard))
    try:
        with pytest.raises(DataError, match=re.escape(f"{out / 'model.safetensors'}: cannot "
                                                      "write it (File too large)")):
            save_model(out, model, meta)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert sorted(p.name for p in out.iterdir()) == []


def inventory_scene(tmp_path: Path, noise: bool = False) -> tuple[Path, Path]:
    """A georeferenced scene (``noise``: random uint16 pixels, chips that do not compress) and
    an inventory with one point in the middle of it."""
    from rasterio.warp import transform as warp

    if noise:
        pixels = np.random.default_rng(0).integers(0, 65535, (96, 192, 3)).astype(np.uint16)
        scene = write_image(tmp_path / "scenes" / "scene.tif", pixels, crs=UTM45,
                            transform=from_origin(500000, 3000000, 10, 10))
    else:
        scene = scene_file(tmp_path)
    (lon,), (lat,) = warp(UTM45, "EPSG:4326", [500000 + 48.5 * 10], [3000000 - 48.5 * 10])
    inv = tmp_path / "scenes" / "inv.csv"
    inv.write_text(f"id,latitude,longitude\n1,{lat!r},{lon!r}\n")
    return scene, inv


@pytest.mark.parametrize("target", ["geotiff write", "tiles.csv"])
def test_inventory_chips_disk_full_names_the_file(tmp_path, capfd, monkeypatch, target):
    """Before: a GDAL error of a chip write (no OSError) came out as a traceback, and
    tiles.csv was never synced to disk (a full disk passed unnoticed)."""
    import rasterio.io
    from rasterio._err import CPLE_FileIOError

    scene, inv = inventory_scene(tmp_path)
    out = tmp_path / "out" / "inv"
    (tmp_path / "out").mkdir()
    if target == "geotiff write":
        def write(*args, **kwargs):
            raise CPLE_FileIOError(3, 3, f"Write failed: {ENOSPC}")
        monkeypatch.setattr(rasterio.io.DatasetWriter, "write", write)
        needle = f"{out / 'landslide' / 'scene__scene__r'}"
    else:
        monkeypatch.setattr(os, "fsync", full_disk)
        needle = f"{out / 'tiles.csv'}: cannot write it"
    line = run_bad(capfd, ["data", "from-inventory", inv, scene, "--out", out, "--size", "32",
                           "--negatives", "1"], needle, watch=(tmp_path / "out",))
    assert ENOSPC in line and ".tmp-" not in line and "cannot write it" in line


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EROFS", "EACCES", "EIO"])
def test_predict_failed_write_names_the_csv(env, tmp_path, capsys, monkeypatch, code):
    number = getattr(errno, code)

    def fail(*args, **kwargs):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(os, "fsync", fail)
    out = tmp_path / "p.csv"
    run_bad(capsys, ["predict", env["model"], env["image"], "--out", out, *QUIET],
            f"{out}: cannot write it ({os.strerror(number)})", watch=(tmp_path,))


def scene_file(tmp_path: Path, size: int = 96) -> Path:
    rng = np.random.default_rng(0)
    pixels = np.concatenate([slide_image(rng, i % 2 == 0, size) for i in range(2)], 1)
    return write_image(tmp_path / "scenes" / "scene.tif", pixels, crs=UTM45,
                       transform=from_origin(500000, 3000000, 10, 10))


@pytest.mark.parametrize("target", ["geotiff write", "quick-look"])
def test_scan_disk_full_names_the_file(env, tmp_path, capfd, monkeypatch, target):
    import rasterio.io
    from PIL import Image
    from rasterio.errors import RasterioIOError

    scene = scene_file(tmp_path)
    if target == "geotiff write":
        def write(*args, **kwargs):
            raise RasterioIOError(f"Write failed: {ENOSPC}")
        monkeypatch.setattr(rasterio.io.DatasetWriter, "write", write)
        needle = ".scene_probability.partial.tif: cannot write it"
    else:
        monkeypatch.setattr(Image.Image, "save", png_full)
        needle = "scene_quicklook.png: cannot write it"
    (tmp_path / "out").mkdir()
    run_bad(capfd, ["scan", env["model"], scene, "--out", tmp_path / "out" / "s", *SCAN],
            needle, watch=(tmp_path / "out",))


@pytest.mark.skipif(sys.platform == "win32", reason="no RLIMIT_FSIZE")
@pytest.mark.parametrize("command", ["scan", "data tiles", "data from-inventory"])
def test_libtiff_failure_prints_nothing_but_the_error(env, tmp_path, capfd, command):
    """libtiff itself fails (a file-size limit: EFBIG at its write()); what it prints on file
    descriptor 2 stays off the terminal and the error names the GeoTIFF (before: exit 0 with
    damaged tiles for ``data tiles`` and damaged chips for ``data from-inventory``)."""
    import resource

    (tmp_path / "out").mkdir()
    if command == "scan":
        argv = ["scan", env["model"], scene_file(tmp_path), "--out", tmp_path / "out" / "s",
                *SCAN]
        needle = "scene_probability.partial.tif: cannot write it"
    elif command == "data from-inventory":
        scene, inv = inventory_scene(tmp_path, noise=True)
        argv = ["data", "from-inventory", inv, scene, "--out", tmp_path / "out" / "inv",
                "--size", "32", "--negatives", "0"]
        needle = f"{tmp_path / 'out' / 'inv' / 'landslide' / 'scene__scene__r'}"
    else:
        rng = np.random.default_rng(0)
        mask = np.zeros((64, 64), bool)
        mask[:32, :32] = True
        pixels = rng.integers(0, 65535, (64, 64, 3)).astype(np.uint16)  # GeoTIFF tiles
        scene = make_scene(tmp_path / "scenes", "r1", {"a": (pixels, mask)}, ".tif")
        argv = ["data", "tiles", scene, "--out", tmp_path / "out" / "tk", "--tile", "32",
                "--stride", "32", "--quiet"]
        needle = f"{tmp_path / 'out' / 'tk' / 'landslide' / 'r1__a__r0_c0.tif'}: cannot write it"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (2500, hard))
    try:
        line = run_bad(capfd, argv, needle, watch=(tmp_path / "out",))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert "too large" in line.lower()


def test_a_write_failure_libtiff_only_prints_is_an_error(tmp_path, capfd):
    """libtiff reports a block it could not flush at close only on stderr: that is a failed
    write too (the resume state must not claim those rows); other lines pass through."""
    from slidewatch.scan.mosaic import gdal_writing

    with gdal_writing(tmp_path / "p.tif"):
        os.write(2, b"a line of somebody else\n")
    assert capfd.readouterr().err == "a line of somebody else\n"
    with pytest.raises(DataError, match=r"p.tif: cannot write it \(_tiffWriteProc: No space"):
        with gdal_writing(tmp_path / "p.tif"):
            os.write(2, f"_tiffWriteProc: {ENOSPC}.\n".encode())
    assert capfd.readouterr().err == ""


# ------------------------------------------------------------ 10a, 12: --resume


def _foreign(path: Path) -> None:
    torch.save({"weights": torch.zeros(3)}, path)


def _truncated(path: Path) -> None:
    truncate(path, 0.5)


def _not_torch(path: Path) -> None:
    path.write_bytes(b"not a torch file at all")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _malicious(path: Path) -> None:
    torch.save({"config": Evil()}, path)


def _plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"config": "x"}))


def _wrong_model(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["model"] = {"nothing": torch.zeros(1)}
    torch.save(state, path)


def _wrong_types(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["phase"] = "two"
    torch.save(state, path)


RESUME = {
    "foreign": (_foreign, "not an interrupted slidewatch run (no valid 'config')"),
    "truncated": (_truncated, "cannot read the interrupted run"),
    "not a torch file": (_not_torch, "cannot read the interrupted run"),
    "malicious pickle": (_malicious, "cannot read the interrupted run"),
    "plain pickle": (_plain_pickle, "cannot read the interrupted run"),
    "weights of another model": (_wrong_model, "does not fit this run"),
    "wrong types": (_wrong_types, "not an interrupted slidewatch run (no valid 'phase')"),
}


@pytest.mark.parametrize("case", RESUME, ids=list(RESUME))
def test_resume_with_a_resume_pt_not_ours(env, tmp_path, capsys, case):
    damage, needle = RESUME[case]
    cut = Path(shutil.copytree(env["cut"], tmp_path / "cut"))
    damage(cut / "resume.pt")
    (cut / "split.json").write_text("{}")  # would be rewritten if anything were written
    run_bad(capsys, ["train", "--data", env["tiles"], "--out", cut, *TRAIN, "--resume"],
            f"{cut / 'resume.pt'}: {needle}", watch=(tmp_path,), progress_lines=True)


@pytest.mark.parametrize("change", [["--val-fraction", "0.5"], ["--seed", "3"]],
                         ids=["val-fraction", "seed"])
def test_refused_resume_leaves_split_json_alone(env, tmp_path, capsys, change):
    cut = Path(shutil.copytree(env["cut"], tmp_path / "cut"))
    run_bad(capsys, ["train", "--data", env["tiles"], "--out", cut, *TRAIN, *change,
                     "--resume"], "--resume: the settings differ", watch=(tmp_path,))


# ------------------------------------------------------------ 14: temporaries of killed runs


def plant(folder: Path, names: list[str]) -> list[Path]:
    out = []
    for name in names:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if "." in name.rsplit("-", 1)[-1]:
            p.write_text("half")
        else:
            p.mkdir()
            (p / "x.png").write_text("half")
        out.append(p)
    return out


def test_stale_temporaries_of_dead_runs_go_live_ones_stay(tmp_path):
    dead, live = dead_pid(), os.getppid()
    stale = plant(tmp_path, [f".a.tmp-{dead}.csv", f".b.tmp-{dead}", f".b.old-{dead}",
                             f".curves.tmp-{dead}.png"])
    kept = plant(tmp_path, [f".a.tmp-{live}.csv", f".b.tmp-{live}", "a.csv", ".hidden",
                            f".a.tmp-{os.getpid()}.csv", "x.tmp-1.csv"])
    assert not io_utils.pid_alive(dead) and io_utils.pid_alive(live)
    assert sorted(io_utils.remove_stale_temporaries(tmp_path, "a")) == [stale[0]]
    assert sorted(io_utils.remove_stale_temporaries(tmp_path)) == sorted(stale[1:])
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def reaped_pid() -> int:
    """The pid of a child process that has exited and been waited for."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_writes_remove_stale_temporaries(tmp_path):
    pid = reaped_pid()
    stale = plant(tmp_path, [f".p.tmp-{pid}.csv", f".other.tmp-{dead_pid()}.png"])
    live = plant(tmp_path, [f".p.tmp-{os.getppid()}.csv"])
    with io_utils.atomic_path(tmp_path / "p.csv") as tmp:
        tmp.write_text("ok")
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live)


def test_data_tiles_removes_its_stale_temporary_folders(tmp_path, capsys):
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), bool)
    mask[:32, :32] = True
    scene = make_scene(tmp_path / "scenes", "r1", {"a": (slide_image(rng, True, 64), mask)})
    dead = dead_pid()
    stale = plant(tmp_path, [f".tk.tmp-{dead}", f".tk.old-{dead}"])
    live = plant(tmp_path, [f".tk.tmp-{os.getppid()}"])
    assert main(["data", "tiles", str(scene), "--out", str(tmp_path / "tk"), "--tile", "32",
                 "--quiet"]) == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live)


def test_train_into_a_killed_runs_folder_cleans_it(env, tmp_path, capsys):
    """A run killed before its first checkpoint left split.json, tiles/.<region>.tmp-PID and
    .curves.tmp-PID.png: the folder is ours, a new run goes ahead and removes the rest."""
    out = tmp_path / "m"
    out.mkdir()
    shutil.copy(env["model"] / "split.json", out)
    dead = dead_pid()
    stale = plant(out, [f"tiles/.r1.tmp-{dead}", f".curves.tmp-{dead}.png",
                        f".history.tmp-{dead}.csv"])
    assert main(["train", "--data", str(env["tiles"]), "--out", str(out), *TRAIN,
                 "--phase2-epochs", "1"]) == 0
    assert (out / "model.safetensors").is_file() and not any(p.exists() for p in stale)


def test_scan_removes_stale_detection_temporaries(env, tmp_path, capsys):
    scene = scene_file(tmp_path)
    out = tmp_path / "s"
    assert main(["scan", str(env["model"]), str(scene), "--out", str(out), *SCAN]) == 0
    before = snapshot(out)
    dead = dead_pid()
    stale = plant(out, [f".scene_detections.tmp-{dead}.geojson",
                        f".scene_detections_wgs84.tmp-{dead}.geojson",
                        f".scene_quicklook.tmp-{dead}.png"])
    live = plant(out, [f".scene_detections.tmp-{os.getppid()}.geojson"])
    assert main(["scan", str(env["model"]), str(scene), "--out", str(out), *SCAN]) == 0
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live)
    live[0].unlink()
    assert snapshot(out) == before


def test_evaluate_removes_its_stale_temporary_folder(env, tmp_path):
    dead = dead_pid()
    stale = plant(tmp_path, [f".ev.tmp-{dead}", f".metrics.tmp-{dead}.json"])
    assert main(["evaluate", str(env["model"]), "--data", str(env["tiles"]), "--out",
                 str(tmp_path / "ev"), *QUIET]) == 0
    assert not any(p.exists() for p in stale)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["overall"]["n"] > 0
