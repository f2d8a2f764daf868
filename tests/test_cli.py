"""The command line: every bad input gives one line naming the file or option, exit 2,
no traceback and nothing half-written."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from _factories import make_class_dataset
from conftest import make_scene, truncate, write_image

from slidewatch.cli.main import main


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def tiles(tiny_tiles):
    return tiny_tiles


@pytest.fixture(scope="module")
def model_dir(tiny_model):
    return tiny_model


def scene(tmp_path, name="r1", size=64, mask_size=None):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((mask_size or size, mask_size or size), bool)
    mask[:32, :32] = True
    return make_scene(tmp_path, name, {"a": (img, mask)})


def test_python_dash_m_runs_and_errors_cleanly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "slidewatch", "data", "info", str(tmp_path / "no")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_models_lists_the_study_architectures(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    for name in ("baseline_cnn", "efficientnet_b3", "efficientnet_b4", "resnet50",
                 "mobilenetv2_100", "mobilenetv3_large_100", "densenet121", "nasnetalarge",
                 "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert name in out


def test_data_tiles_and_info(capsys, tmp_path):
    s = scene(tmp_path)
    code, out, _ = run(capsys, "data", "tiles", s, "--out", tmp_path / "t", "--tile", "32",
                       "--stride", "32", "--quiet")
    assert code == 0
    assert (tmp_path / "t" / "tiles.csv").is_file()
    code, out, _ = run(capsys, "data", "info", tmp_path / "t", "--json")
    info = json.loads(out)
    assert code == 0 and info["per_class"] == {"landslide": 1, "non_landslide": 3}


@pytest.mark.parametrize("args,needle", [
    (["--tile", "0"], "--tile"),
    (["--stride", "-4"], "--stride"),
    (["--min-landslide", "1.5"], "--min-landslide"),
    (["--tile", "abc"], "--tile"),
])
def test_data_tiles_rejects_impossible_numbers(capsys, tmp_path, args, needle):
    s = scene(tmp_path)
    code, _, err = run(capsys, "data", "tiles", s, "--out", tmp_path / "t", *args)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "t").exists()


def test_data_tiles_missing_mask_and_mask_of_another_size(capsys, tmp_path):
    s = scene(tmp_path, "a")
    (s / "masks" / "a.png").unlink()
    code, _, err = run(capsys, "data", "tiles", s, "--out", tmp_path / "t")
    assert_one_line_error(code, err, "a.png")
    s2 = scene(tmp_path, "b", size=64, mask_size=48)
    code, _, err = run(capsys, "data", "tiles", s2, "--out", tmp_path / "t2", "--tile", "32")
    assert_one_line_error(code, err, "a.png")
    assert not (tmp_path / "t").exists() and not (tmp_path / "t2").exists()


def test_missing_and_empty_folders(capsys, tmp_path):
    code, _, err = run(capsys, "data", "tiles", tmp_path / "nope", "--out", tmp_path / "t")
    assert_one_line_error(code, err, "nope")
    (tmp_path / "empty" / "landslide").mkdir(parents=True)
    (tmp_path / "empty" / "non_landslide").mkdir(parents=True)
    code, _, err = run(capsys, "train", "--data", tmp_path / "empty", "--out", tmp_path / "m",
                       "--model", "baseline_cnn", "--weights", "none")
    assert_one_line_error(code, err, "landslide")
    assert not (tmp_path / "m").exists()


def test_train_class_with_no_images(capsys, tmp_path):
    root = make_class_dataset(tmp_path / "d", images=2, per_image=2)
    for f in (root / "non_landslide").iterdir():
        f.unlink()
    code, _, err = run(capsys, "train", "--data", root, "--out", tmp_path / "m",
                       "--model", "baseline_cnn", "--weights", "none")
    assert_one_line_error(code, err, "non_landslide")


@pytest.mark.parametrize("damage", ["truncated", "zero", "text"])
def test_train_with_a_damaged_image_names_it(capsys, tmp_path, damage):
    root = make_class_dataset(tmp_path / "d", images=2, per_image=2)
    bad = sorted((root / "landslide").iterdir())[0]
    if damage == "truncated":
        truncate(bad, 0.5)
    elif damage == "zero":
        bad.write_bytes(b"")
    else:
        bad.write_text("not an image")
    code, _, err = run(capsys, "train", "--data", root, "--out", tmp_path / "m",
                       "--model", "baseline_cnn", "--weights", "none", "--input-size", "32",
                       "--quiet")
    assert_one_line_error(code, err, bad.name)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("args,needle", [
    (["--model", "efficientnet_b33"], "efficientnet_b3"),
    (["--val-fraction", "2"], "val_fraction"),
    (["--batch-size", "0"], "batch_size"),
    (["--phase1-lr", "x"], "--phase1-lr"),
    (["--unfreeze-layers", "-1"], "unfreeze_layers"),
    (["--class-weights", "a,b"], "--class-weights"),
])
def test_train_rejects_bad_options(capsys, tiles, tmp_path, args, needle):
    code, _, err = run(capsys, "train", "--data", tiles, "--out", tmp_path / "m",
                       "--weights", "none", *args)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "m").exists()


def test_train_unknown_config_key(capsys, tiles, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("phase1:\n  epochs: 1\n  learning_rate: 0.1\n")
    code, _, err = run(capsys, "train", "--config", cfg, "--data", tiles, "--out", tmp_path / "m")
    assert_one_line_error(code, err, "phase1.learning_rate")


def test_pickle_weights_are_refused_without_unpickling(capsys, tiles, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (marker.mkdir, ())

    bad = tmp_path / "weights.pth"
    bad.write_bytes(pickle.dumps({"w": Evil()}))
    code, _, err = run(capsys, "train", "--data", tiles, "--out", tmp_path / "m",
                       "--model", "test_efficientnet", "--weights", bad)
    assert_one_line_error(code, err, "weights.pth")
    assert not marker.exists() and not (tmp_path / "m").exists()


def test_weights_of_another_architecture(capsys, tiles, model_dir, tmp_path):
    code, _, err = run(capsys, "train", "--data", tiles, "--out", tmp_path / "m",
                       "--model", "test_resnet", "--weights", model_dir)
    assert_one_line_error(code, err, "baseline_cnn")


def test_predict_writes_csv_and_rejects_bad_files(capsys, tiles, model_dir, tmp_path):
    out = tmp_path / "p.csv"
    code, _, err = run(capsys, "predict", model_dir, tiles / "landslide", "--out", out, "--quiet")
    assert code == 0 and "predicted landslide" in err
    lines = out.read_text().splitlines()
    assert lines[0] == "path,probability,label" and len(lines) == 1 + 3 * 3 * 2
    bad = write_image(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8))
    truncate(bad, 0.3)
    code, _, err = run(capsys, "predict", model_dir, bad, "--out", tmp_path / "q.csv")
    assert_one_line_error(code, err, "x.png")
    assert not (tmp_path / "q.csv").exists()
    code, _, err = run(capsys, "predict", tmp_path / "nomodel", bad, "--out", tmp_path / "q.csv")
    assert_one_line_error(code, err, "nomodel")


def test_predict_refuses_decompression_bombs(capsys, model_dir, tmp_path):
    from PIL import Image

    big = tmp_path / "bomb.png"
    Image.new("1", (17000, 17000)).save(big)  # 289 M pixels in a few kB
    code, _, err = run(capsys, "predict", model_dir, big, "--out", tmp_path / "q.csv")
    assert_one_line_error(code, err, "bomb.png", "pixels")


def test_predict_threshold_changes_labels(capsys, tiles, model_dir, tmp_path):
    run(capsys, "predict", model_dir, tiles, "--out", tmp_path / "a.csv", "--threshold", "0.01",
        "--quiet")
    labels = [ln.split(",")[2] for ln in (tmp_path / "a.csv").read_text().splitlines()[1:]]
    assert set(labels) == {"landslide"}
    code, _, err = run(capsys, "predict", model_dir, tiles, "--out", tmp_path / "b.csv",
                       "--threshold", "1.5")
    assert_one_line_error(code, err, "--threshold")
