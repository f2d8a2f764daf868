"""Bad input, config side (issue 16: items 4, 5, 8, 9 configs, 17, 18): impossible numbers in
flags and YAML (NaN, infinities, out of range, a 100000-pixel input), keys given twice and files
that are not UTF-8, edited or damaged ``slidewatch.json`` files read by predict, scan and
evaluate, experiments whose test set cannot be used or whose grid is too large, and tampered
evaluation and explanation folders given to ``report``.

Every case goes through :func:`_badinput.run_bad` (the real command line: one ``error:`` line
naming the file or option, exit 2, no traceback, nothing written or changed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from _badinput import run_bad
from _factories import make_class_dataset, train_tiny_cnn
from conftest import write_image

from slidewatch.cli.main import main

FIXTURES = Path(__file__).parent / "fixtures" / "models_v0_1"
TRAIN_KW = ["--model", "baseline_cnn", "--weights", "none", "--input-size", "32",
            "--phase1-epochs", "0", "--phase2-epochs", "1", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """The tiny CNN of this module, its training tiles, its evaluation and explanation
    folders and a small scene. Read-only: tests copy what they change."""
    root = tmp_path_factory.mktemp("config_bad")
    tiles = make_class_dataset(root / "d", images=2, per_image=2)
    model = train_tiny_cnn(tiles, root / "m")
    assert main(["evaluate", str(model), "--data", str(tiles), "--out", str(root / "ev"),
                 "--device", "cpu", "--quiet"]) == 0
    assert main(["explain", str(model), str(tiles / "landslide"), "--out", str(root / "ex"),
                 "--quiet"]) == 0
    rng = np.random.default_rng(0)
    scene = write_image(root / "scene" / "s.png",
                        rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return {"root": root, "tiles": tiles, "model": model, "eval": root / "ev",
            "explain": root / "ex", "scene": scene}


# ------------------------------------------------------------------ item 4: impossible numbers


@pytest.mark.parametrize("flags,needle", [
    (["--phase1-lr", "inf"], "--phase1-lr (phase1.lr): must be a finite number, got inf"),
    (["--phase1-lr", "nan"], "--phase1-lr (phase1.lr): must be a finite number, got nan"),
    (["--phase1-lr", "-1"], "--phase1-lr (phase1.lr): must be > 0"),
    (["--phase2-lr", "-inf"], "--phase2-lr (phase2.lr): must be a finite number"),
    (["--phase2-lr", "0"], "--phase2-lr (phase2.lr): must be > 0"),
    (["--weight-decay", "inf"], "--weight-decay (optim.weight_decay): must be a finite"),
    (["--weight-decay", "-0.1"], "--weight-decay (optim.weight_decay): must be >= 0"),
    (["--drop-rate", "nan"], "--drop-rate (model.drop_rate): must be a finite number"),
    (["--drop-rate", "1"], "--drop-rate (model.drop_rate): must be in [0, 1)"),
    (["--val-fraction", "inf"], "--val-fraction (data.val_fraction): must be a finite"),
    (["--val-fraction", "-0.5"], "--val-fraction (data.val_fraction): must be in [0, 1)"),
    (["--target-recall", "nan"], "--target-recall (target_recall): must be a finite number"),
    (["--target-recall", "1.5"], "--target-recall (target_recall): must be in (0, 1]"),
    (["--threshold", "5"], "--threshold (threshold): must be in (0, 1), got 5.0"),
    (["--threshold", "nan"], "--threshold (threshold): must be a finite number, got nan"),
    (["--threshold", "0"], "--threshold (threshold): must be in (0, 1)"),
    (["--scale", "inf"], "--scale (data.scale): must be a finite number, got inf"),
    (["--scale", "nan"], "--scale (data.scale): must be a finite number, got nan"),
    (["--scale", "-1"], "--scale (data.scale): must be > 0"),
    (["--input-size", "100000"], "--input-size (model.input_size): must be from 8 to 4096"),
    (["--input-size", "4097"], "--input-size (model.input_size): must be from 8 to 4096"),
    (["--input-size", "4"], "--input-size (model.input_size): must be from 8 to 4096"),
    (["--aux-pixel-size", "inf"], "--aux-pixel-size (aux.pixel_size): must be a finite"),
    (["--pixel-size", "nan"], "--pixel-size (sizes.pixel_size): must be a finite number"),
    (["--size-weight", "inf"], "--size-weight (sizes.weight): must be a finite number"),
    (["--landslide-weight", "inf"], "--landslide-weight (fusion.weight): must be a finite"),
    (["--landslide-weight", "0"], "--landslide-weight (fusion.weight): must be > 0"),
    (["--class-weights", "1,inf"], "--class-weights (class_weights[1]): must be a finite"),
    (["--class-weights", "1,nan"], "--class-weights (class_weights[1]): must be a finite"),
    (["--size-from", "mask", "--size-edges", "1,inf"],
     "--size-edges (sizes.edges[1]): must be a finite number"),
    (["--fusion-mode", "image", "--mlp-hidden", "1000000000"],
     "--mlp-hidden (fusion.mlp_hidden): must be from 1 to 65536"),
    (["--fusion-mode", "image", "--emb-dim", "1000000000"],
     "--emb-dim (fusion.emb_dim): must be from 1 to 65536"),
    (["--seed", "-1"], "--seed (seed): must be from 0 to 2**63 - 1"),
    (["--seed", str(10**30)], "--seed (seed): must be from 0 to 2**63 - 1"),
    (["--device", "cuda:x"], "--device (device): must be auto, cpu, cuda or cuda:N"),
])
def test_train_refuses_impossible_numbers_in_flags(capsys, work, tmp_path, flags, needle):
    run_bad(capsys, ["train", "--data", work["tiles"], "--out", tmp_path / "m", *TRAIN_KW,
                     *flags], needle, watch=(tmp_path, work["tiles"]))


@pytest.mark.parametrize("text,needle", [
    ("phase1: {lr: .inf}\n", "phase1.lr: must be a finite number, got inf"),
    ("phase2: {lr: .nan}\n", "phase2.lr: must be a finite number, got nan"),
    ("optim: {label_smoothing: .nan}\n", "optim.label_smoothing: must be a finite number"),
    ("optim: {warmup_epochs: .inf}\n", "optim.warmup_epochs: must be a finite number"),
    ("optim: {momentum: -.inf}\n", "optim.momentum: must be a finite number"),
    ("optim: {momentum: 1.5}\n", "optim.momentum: must be in [0, 1)"),
    ("optim: {optimizer: sgd, momentum: 0}\n", "optim.momentum: must be > 0 with optim."),
    ("augment: {brightness: .nan}\n", "augment.brightness: must be a finite number"),
    ("augment: {resize: 100000}\n", "augment.resize: must be from 8 to 4096 pixels"),
    ("augment: {crop: 5000}\n", "augment.crop: must be from 8 to 4096 pixels"),
    ("model: {input_size: 100000}\n", "model.input_size: must be from 8 to 4096 pixels"),
    ("data: {min_landslide: .nan}\n", "data.min_landslide: must be a finite number"),
    ("data: {scale: .inf}\n", "data.scale: must be a finite number, got inf"),
    ("sizes: {source: mask, edges: [0.1, .inf]}\n", "sizes.edges[1]: must be a finite"),
    ("fusion: {dropout: .nan}\n", "fusion.dropout: must be a finite number"),
    ("fusion: {mode: image, fusion_hidden: 100000000}\n", "fusion.fusion_hidden: must be"),
    ("class_weights: [1, .inf]\n", "class_weights[1]: must be a finite number"),
    ("aux: {pixel_size: .inf}\n", "aux.pixel_size: must be a finite number"),
    ("seed: -3\n", "seed: must be from 0 to 2**63 - 1"),
    ("device: 'cuda:'\n", "device: must be auto, cpu, cuda or cuda:N"),
    # item 6: the names --device takes (runtime.check_device_name), not any Unicode digit
    ("device: 'cuda:\u0663'\n", "device: must be auto, cpu, cuda or cuda:N, got 'cuda:\u0663'"),
    ("device: 'cuda:\uff11'\n", "device: must be auto, cpu, cuda or cuda:N, got 'cuda:\uff11'"),
    # item 5: keys given twice (plain YAML keeps the last one silently)
    ("seed: 1\nseed: 2\n", "line 2: key 'seed' appears twice"),
    ("phase1:\n  lr: 0.1\n  epochs: 1\n  lr: 0.2\n", "line 4: key 'lr' appears twice"),
    ("phase1: {lr: 0.1, lr: 0.2}\n", "line 1: key 'lr' appears twice"),
    ("data:\n  tile: 32\nmodel: {name: x}\ndata:\n  tile: 64\n",
     "line 4: key 'data' appears twice"),
    # keys YAML reads as numbers or null are named, not a TypeError
    ("1: a\nfoo: b\n", "unknown config key '1'"),
    ("null: 3\nseed: 1\n", "unknown config key 'None'"),
    ("a: " + "[" * 5000 + "\n", "not valid YAML"),
])
def test_yaml_config_errors_name_the_file_and_key(capsys, work, tmp_path, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text, encoding="utf-8")
    line = run_bad(capsys, ["train", "--config", cfg, "--data", work["tiles"], "--out",
                            tmp_path / "m", "--quiet"], needle, watch=(tmp_path,))
    assert f"{cfg}: " in line


def test_yaml_merge_keys_may_still_be_overridden(work, tmp_path):
    """A key brought in by ``<<: *anchor`` and set again is an override, not a duplicate."""
    from slidewatch.config.train import from_dict, load_yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text("phase1: &p {lr: 0.1, epochs: 2}\nphase2:\n  <<: *p\n  lr: 0.01\n")
    loaded = from_dict(load_yaml(cfg))
    assert (loaded.phase2.lr, loaded.phase2.epochs, loaded.phase1.lr) == (0.01, 2, 0.1)


# ------------------------------------------------------------------ item 9: not UTF-8


@pytest.mark.parametrize("data,needle", [
    (b"phase1:\n  lr: 0.1  # caf\xe9\n", "line 2: not UTF-8 text (byte 0xe9)"),
    (b"\xff\xfes\x00e\x00e\x00d\x00:\x00 \x001\x00\n\x00", "(it looks like UTF-16)"),
    (b"seed: 1\n\x80\x81\n", "line 2: not UTF-8 text (byte 0x80)"),
])
@pytest.mark.parametrize("command", ["train", "experiment"])
def test_config_that_is_not_utf8_names_the_file(capsys, work, tmp_path, data, needle, command):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(data)
    argv = (["train", "--config", cfg, "--data", work["tiles"], "--out", tmp_path / "m"]
            if command == "train" else ["experiment", cfg, "--out", tmp_path / "x"])
    line = run_bad(capsys, argv, needle, watch=(tmp_path,))
    assert f"{cfg}: " in line and "save the file as UTF-8" in line


# ------------------------------------------------------------------ item 17: experiments


def experiment(work: dict, **parts) -> dict:
    base = {"data": {"paths": [str(work["tiles"])], "val_fraction": 0.25},
            "model": {"name": "baseline_cnn", "weights": "none", "input_size": 32},
            "phase1": {"epochs": 0}, "phase2": {"epochs": 1, "unfreeze_layers": 99},
            "batch_size": 8, "device": "cpu", "progress": False}
    return {"base": base, "grid": {"seed": [0]}, **parts}


def empty_dataset(tmp_path: Path) -> Path:
    for name in ("landslide", "non_landslide"):
        (tmp_path / "empty" / name).mkdir(parents=True)
    return tmp_path / "empty"


@pytest.mark.parametrize("case,needle", [
    ("region", "test.regions: 'nowhere' is not a region of the test data (regions: north, "
               "south)"),
    ("no_class_folders", "test.data: "),
    ("empty_class_folders", "no images"),
    ("missing", "test.data: "),
    ("unset_var", "environment variable $SW_NO_SUCH_VAR_16 is not set"),
    ("huge_grid", "grid: 10000000000 runs (100000 x 100000 values); at most 1000 runs"),
    ("grid_1001", "grid: 1001 runs"),
    ("grid_inf", "phase2.lr: must be a finite number, got inf"),
    ("duplicate", "key 'seed' appears twice"),
    ("search_inf", "search.params.phase2.lr: low and high must both be finite numbers"),
    ("search_nan_step", "search.params.phase2.lr.step: must be a positive number"),
])
def test_experiment_refuses_before_training(capsys, work, tmp_path, case, needle):
    """Nothing trains (no output folder appears) when the test set cannot be used, the grid is
    too large, or a value is impossible."""
    test = {"data": [str(work["tiles"])], "regions": ["nowhere"]}
    spec = experiment(work, test=test)
    extra: list = []
    if case == "no_class_folders":
        (tmp_path / "bare").mkdir()
        spec["test"] = [str(tmp_path / "bare")]
    elif case == "empty_class_folders":
        spec["test"] = [str(empty_dataset(tmp_path))]
    elif case == "missing":
        spec["test"] = [str(tmp_path / "no_such_folder")]
    elif case == "unset_var":
        spec["test"] = ["$SW_NO_SUCH_VAR_16/tiles"]
    elif case == "huge_grid":
        spec["grid"] = {"seed": list(range(100000)), "batch_size": list(range(1, 100001))}
    elif case == "grid_1001":
        spec["grid"] = {"seed": list(range(1001))}
    elif case == "grid_inf":
        spec["grid"] = {"phase2.lr": [0.01, float("inf")]}
    elif case == "search_inf":
        spec["search"] = {"params": {"phase2.lr": {"low": 1e-4, "high": float("inf")}}}
        extra = ["--search", "2"]
    elif case == "search_nan_step":
        spec["search"] = {"params": {"phase2.lr": {"low": 1e-4, "high": 1e-2,
                                                   "step": float("nan")}}}
        extra = ["--search", "2"]
    path = tmp_path / "exp.yaml"
    text = yaml.safe_dump(spec, sort_keys=False)
    if case == "duplicate":
        text = text.replace("grid:\n  seed:\n  - 0\n", "grid:\n  seed: [0]\n  seed: [1]\n")
        assert "seed: [1]" in text
    path.write_text(text)
    line = run_bad(capsys, ["experiment", path, "--out", tmp_path / "out", "--quiet", *extra],
                   needle, watch=(tmp_path, work["tiles"]))
    assert str(path) in line


def test_experiment_with_scene_folders_checks_regions_before_tiling(capsys, work, tmp_path):
    """A scene folder's region is its name: a wrong region is refused before anything (not
    even the test tiles) is written."""
    rng = np.random.default_rng(1)
    scene = tmp_path / "hill"
    write_image(scene / "images" / "a.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    write_image(scene / "masks" / "a.png", np.zeros((64, 64), np.uint8))
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment(work, test={"data": [str(scene)],
                                                          "regions": ["valley"]})))
    run_bad(capsys, ["experiment", path, "--out", tmp_path / "out", "--quiet"],
            "test.regions: 'valley' is not a region of the test data (regions: hill)",
            watch=(tmp_path,))


# ------------------------------------------------------------------ item 8: slidewatch.json

NAN, INF = float("nan"), float("inf")


def fused_parts() -> dict:
    """A consistent fusion + tabular pair (the 0.1.0 fused fixture's), to damage one field."""
    stored = json.loads((FIXTURES / "fused" / "slidewatch.json").read_text())
    return {"fusion": stored["fusion"], "tabular": stored["tabular"]}


def set_path(d: dict, dotted: str, value) -> dict:
    *parents, leaf = dotted.split(".")
    node = d
    for p in parents:
        node = node[p]
    node[leaf] = value
    return d


META_EDITS = {
    # the model-folder contract's own fields (meta.validate_meta)
    "input_size_negative": ({"input_size": -5}, "field input_size must be a whole number"),
    "input_size_huge": ({"input_size": 100000}, "field input_size must be a whole number"),
    "input_size_string": ({"input_size": "32"}, "field input_size must be a whole number"),
    "positive_index_out_of_range": ({"positive_index": 5}, "field positive_index must be a "
                                                           "class index from 0 to 1, got 5"),
    "json_list": (None, "must hold a JSON object, got a JSON list"),
    "dropout_string": ({"drop_rate": "0.3"}, "field drop_rate must be a number"),
    "mean_null": ({"mean": None}, "field mean must be a list of 3 finite numbers"),
    "std_null": ({"std": None}, "field std must be a list of 3 finite numbers above 0"),
    "std_zero": ({"std": [0.0, 0.2, 0.2]}, "field std must be a list of 3 finite numbers"),
    "std_nan": ({"std": [NAN, 0.2, 0.2]}, "field std must be a list of 3 finite numbers"),
    "classes_null": ({"classes": None}, "field classes must be a list of two or more"),
    "threshold_5": ({"threshold": 5}, "field threshold must be a number between 0 and 1"),
    "threshold_nan": ({"threshold": NAN}, "field threshold must be a number between 0 and 1"),
    "scale_negative": ({"scale": -1}, "field scale must be null or a finite number above 0"),
    "scale_infinite": ({"scale": INF}, "field scale must be null or a finite number above 0"),
    "in_chans_zero": ({"in_chans": 0}, "field in_chans must be a whole number of bands"),
    "grayscale_string": ({"grayscale": "yes"}, "field grayscale must be true or false"),
    "format_version_fraction": ({"format_version": 1.5}, "field format_version must be a whole"),
    "format_version_newer": ({"format_version": 99}, "upgrade slidewatch"),
    # the typed inputs: fusion, aux (terrain), sizes, tabular
    "fusion_string": ({"fusion": "x"}, "field fusion must be an object"),
    "fusion_mode_unknown": ({"fusion": {"mode": "zzz", "n_numeric": 0, "num_classes": 2}},
                            "field fusion.mode must be one of fused, image, tabular, got 'zzz'"),
    "fusion_n_numeric_string": ({"fusion": {"mode": "fused", "n_numeric": "a",
                                            "num_classes": 2}},
                                "field fusion.n_numeric must be a whole number"),
    "fusion_cardinalities_int": ({"fusion": {"mode": "image", "n_numeric": 0, "num_classes": 2,
                                             "cat_cardinalities": 3}},
                                 "field fusion.cat_cardinalities must be a list"),
    "fusion_emb_dim_huge": ({"fusion": {"mode": "image", "n_numeric": 0, "num_classes": 2,
                                        "emb_dim": 10**9}},
                            "field fusion.emb_dim must be a whole number from 1 to 65536"),
    "fusion_dropout_string": ({"fusion": {"mode": "image", "n_numeric": 0, "num_classes": 2,
                                          "dropout": "0.1"}},
                              "field fusion.dropout must be a number from 0 to below 1"),
    "fusion_num_classes_other": ({"fusion": {"mode": "image", "n_numeric": 0,
                                             "num_classes": 3}},
                                 "field fusion.num_classes must be 2, one per class, got 3"),
    "fusion_size_classes_without_sizes": ({"fusion": {"mode": "image", "n_numeric": 0,
                                                      "num_classes": 2, "size_classes": 3}},
                                          "field fusion.size_classes must be 0"),
    "fusion_fused_without_tabular": ({"fusion": {"mode": "fused", "n_numeric": 2,
                                                 "num_classes": 2}},
                                     "field fusion.mode fused needs field tabular"),
    "aux_names_int": ({"aux": {"use": "channels", "names": 3}}, "field aux.names must be a list"),
    "aux_use_list": ({"aux": {"use": ["x"]}}, "field aux.use must be one of channels, features"),
    "aux_pixel_size_string": ({"aux": {"use": "channels", "names": ["elevation"],
                                       "pixel_size": "x"}},
                              "field aux.pixel_size must be null or a finite number"),
    "aux_channels_no_names": ({"aux": {"use": "channels", "names": []}},
                              "field aux.names must be the terrain channels' names"),
    "aux_channels_leave_no_band": ({"aux": {"use": "channels",
                                            "names": ["elevation", "slope", "aspect"]}},
                                   "field in_chans must be more than the 3 terrain channels"),
    "aux_features_without_fusion": ({"aux": {"use": "features", "names": ["slope"]}},
                                    "field aux needs field fusion"),
    "sizes_names_int": ({"sizes": {"names": 3}}, "field sizes.names must be a list of two"),
    "sizes_join_int": ({"sizes": {"source": "column", "column": "size", "names": ["a", "b"],
                                  "join": 5}}, "field sizes.join must be null or [key, column]"),
    "sizes_counts_strings": ({"sizes": {"source": "column", "column": "size",
                                        "names": ["a", "b"], "train_counts": ["x", "y"]}},
                             "field sizes.train_counts must be null or a list of 2 whole"),
    "sizes_edges_decreasing": ({"sizes": {"source": "mask", "unit": "m2", "names": ["a", "b",
                                                                                   "c"],
                                          "edges": [500, 100]}},
                               "field sizes.edges must be a list of 2 increasing finite"),
    "sizes_without_fusion": ({"sizes": {"source": "column", "column": "size",
                                        "names": ["a", "b"]}}, "field sizes needs field fusion"),
    "tabular_list": ({"tabular": [1]}, "field tabular must be an object"),
    "tabular_empty": ({"tabular": {}}, "field tabular: missing field(s) format"),
    "tabular_without_fusion": ({"tabular": fused_parts()["tabular"]},
                               "field tabular needs field fusion"),
    "tabular_std_zero": (("tabular.numeric.slope.std", 0),
                         "field tabular.numeric.slope.std must be a finite number above 0"),
    "tabular_mean_string": (("tabular.numeric.slope.mean", "high"),
                            "field tabular.numeric.slope.mean must be a finite number"),
    "tabular_spec_key": (("tabular.spec.key", "zzz"),
                         "field tabular.spec.key must be one of path, tile_id, got 'zzz'"),
    "tabular_vocabulary_string": (("tabular.categorical.trigger.vocabulary", "rain"),
                                  "field tabular.categorical.trigger.vocabulary must be a list"),
    "tabular_column_stats_missing": (("tabular.numeric", {}),
                                     "field tabular.numeric: missing field(s) slope"),
}


def edited_model(work: dict, tmp_path: Path, edit) -> Path:
    model = tmp_path / "model"
    shutil.copytree(work["model"], model)
    path = model / "slidewatch.json"
    d = json.loads(path.read_text())
    if edit is None:
        d = [d]
    elif isinstance(edit, tuple):  # (dotted key, value) in a consistent fusion + tabular pair
        d.update(fused_parts())
        set_path(d, *edit)
    else:
        d.update(edit)
    path.write_text(json.dumps(d))
    return model


@pytest.mark.parametrize("command", ["predict", "scan"])
@pytest.mark.parametrize("name", list(META_EDITS))
def test_damaged_model_description_is_one_line_naming_the_field(capsys, work, tmp_path, name,
                                                               command):
    edit, needle = META_EDITS[name]
    model = edited_model(work, tmp_path, edit)
    argv = {"predict": ["predict", model, work["tiles"] / "landslide", "--out",
                        tmp_path / "p.csv", "--quiet", "--device", "cpu"],
            "scan": ["scan", model, work["scene"], "--out", tmp_path / "scan", "--device", "cpu",
                     "--no-progress"]}[command]
    line = run_bad(capsys, argv, needle, watch=(tmp_path, work["scene"].parent))
    assert str(model / "slidewatch.json") in line
    assert not any(flag in line for flag in ("--scale", "--fusion-mode", "--tabular-key",
                                             "--size-classes"))


@pytest.mark.parametrize("name", ["std_zero", "threshold_5", "threshold_nan", "scale_negative",
                                  "input_size_huge", "fusion_mode_unknown", "tabular_spec_key"])
def test_damaged_model_description_refused_by_evaluate(capsys, work, tmp_path, name):
    edit, needle = META_EDITS[name]
    model = edited_model(work, tmp_path, edit)
    line = run_bad(capsys, ["evaluate", model, "--data", work["tiles"], "--out",
                            tmp_path / "ev", "--quiet", "--device", "cpu"], needle,
                   watch=(tmp_path, work["tiles"]))
    assert str(model / "slidewatch.json") in line


@pytest.mark.parametrize("value", ["5", "nan", "inf", "-1", "0", "1"])
@pytest.mark.parametrize("command", ["predict", "evaluate", "scan"])
def test_threshold_options_outside_0_1_are_refused(capsys, work, tmp_path, command, value):
    argv = {"predict": ["predict", work["model"], work["tiles"] / "landslide", "--out",
                        tmp_path / "p.csv", "--quiet", "--device", "cpu"],
            "evaluate": ["evaluate", work["model"], "--data", work["tiles"], "--out",
                         tmp_path / "ev", "--quiet", "--device", "cpu"],
            "scan": ["scan", work["model"], work["scene"], "--out", tmp_path / "scan",
                     "--device", "cpu", "--no-progress"]}[command]
    run_bad(capsys, [*argv, "--threshold", value], "--threshold",
            watch=(tmp_path, work["model"], work["scene"].parent))


# ------------------------------------------------------------------ item 18: report


def tamper_json(path: Path, dotted: str, value) -> None:
    d = json.loads(path.read_text())
    set_path(d, dotted, value)
    path.write_text(json.dumps(d))


def tamper_csv(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


REPORT_CASES = {
    "metrics_f1_string": (lambda w: tamper_json(w["eval"] / "metrics.json", "overall.f1", "abc"),
                          "metrics.json: field overall.f1 must be null or a number from 0 to 1"),
    "metrics_f1_above_1": (lambda w: tamper_json(w["eval"] / "metrics.json", "overall.f1", 7),
                           "metrics.json: field overall.f1 must be null or a number from 0 to 1"),
    "metrics_n_string": (lambda w: tamper_json(w["eval"] / "metrics.json", "regions.north.n",
                                               "many"),
                         "metrics.json: field regions.north.n must be a whole number"),
    "metrics_counts_string": (lambda w: tamper_json(w["eval"] / "metrics.json",
                                                    "overall.counts.landslide", "x"),
                              "metrics.json: field overall.counts must be an object"),
    "metrics_threshold_string": (lambda w: tamper_json(w["eval"] / "metrics.json", "threshold",
                                                       "high"),
                                 "metrics.json: field threshold must be a number from 0 to 1"),
    "metrics_ci_string": (lambda w: tamper_json(w["eval"] / "metrics.json", "overall.ci95.f1",
                                                "wide"),
                          "metrics.json: field overall.ci95.f1 must be null or [low, high]"),
    "metrics_list": (lambda w: (w["eval"] / "metrics.json").write_text("[1, 2]"),
                     "metrics.json: not written by `slidewatch evaluate`"),
    "metrics_overall_list": (lambda w: tamper_json(w["eval"] / "metrics.json", "overall", [1]),
                             "metrics.json: field overall must be an object of scores"),
    "metrics_regions_list": (lambda w: tamper_json(w["eval"] / "metrics.json", "regions", [1]),
                             "metrics.json: field regions must be an object"),
    "metrics_plot_outside": (lambda w: tamper_json(w["eval"] / "metrics.json", "plots.roc",
                                                   "../../m/curves.png"),
                             "metrics.json: field plots.roc must be null or a file name"),
    "metrics_size_confusion": (lambda w: tamper_json(w["eval"] / "metrics.json", "size",
                                                     {"names": ["s", "l"], "n": 3,
                                                      "confusion": "x"}),
                               "metrics.json: field size.confusion must be a 2 x 2 table"),
    "predictions_garbage": (lambda w: (w["eval"] / "predictions.csv").write_text(
        "garbage\n\x01,,\n"), "predictions.csv: missing column(s) path, probability, outcome"),
    "predictions_probability_text": (lambda w: tamper_csv(
        w["eval"] / "predictions.csv", ",landslide,0.", ",landslide,x"),
        "predictions.csv: line 2: column probability must be a number from 0 to 1"),
    "predictions_probability_7": (lambda w: tamper_csv(
        w["eval"] / "predictions.csv", ",landslide,0.", ",landslide,7"),
        "predictions.csv: line 2: column probability must be a number from 0 to 1"),
    "predictions_outcome": (lambda w: tamper_csv(w["eval"] / "predictions.csv", ",TP\n",
                                                 ",maybe\n"),
                            "column outcome must be one of FN, FP, TN, TP, got 'maybe'"),
    "predictions_binary": (lambda w: (w["eval"] / "predictions.csv").write_bytes(
        b"\xff\xfe\x00garbage"), "predictions.csv: not a readable CSV"),
    "model_threshold": (lambda w: tamper_json(w["model"] / "slidewatch.json", "threshold", 5),
                        "slidewatch.json: field threshold must be a number between 0 and 1"),
    "model_data_string": (lambda w: tamper_json(w["model"] / "slidewatch.json", "data", "x"),
                          "slidewatch.json: field data must be an object, got 'x'"),
    "model_split_counts_text": (lambda w: tamper_json(w["model"] / "slidewatch.json",
                                                      "data.train", "many"),
                                "slidewatch.json: field data.train must be an object of class"),
    "model_training_string": (lambda w: tamper_json(w["model"] / "slidewatch.json", "training",
                                                    "x"),
                              "slidewatch.json: field training must be an object"),
    "model_versions_list": (lambda w: tamper_json(w["model"] / "slidewatch.json", "versions",
                                                  [1]),
                            "slidewatch.json: field versions must be an object"),
    "history_text": (lambda w: tamper_csv(w["model"] / "history.csv", "\n1,2,1,", "\nx,2,1,"),
                     "history.csv: line 2: column epoch must be a number, got 'x'"),
    "history_ragged": (lambda w: (w["model"] / "history.csv").write_text(
        "epoch,val_f1\n1,0.5,9\n"), "history.csv: line 2: not as many cells as columns"),
    "cams_overlay_outside": (lambda w: tamper_csv(w["explain"] / "cams.csv", "_overlay.png",
                                                  "/../../../x.png"),
                             "cams.csv: line 2: column overlay_png must be a file name"),
    "cams_no_path": (lambda w: (w["explain"] / "cams.csv").write_text("a,b\n1,2\n"),
                     "cams.csv: missing column(s) path"),
    "localisation_string": (lambda w: tamper_json(w["explain"] / "localisation.json",
                                                  "by_outcome", "all good"),
                            "localisation.json: field by_outcome must be an object"),
    "localisation_mean_text": (lambda w: tamper_json(w["explain"] / "localisation.json",
                                                     "by_outcome.all.iou", {"mean": "x"}),
                               "localisation.json: field by_outcome.all.iou must be null or"),
    "attributions_text": (lambda w: (w["explain"] / "attributions.json").write_text(json.dumps(
        {"images": [{"path": "a.png", "features": [{"name": "slope", "attribution": "x"}]}]})),
        "attributions.json: field images[0].features[0] must be an object with a name"),
    "attributions_probability": (lambda w: (w["explain"] / "attributions.json").write_text(
        json.dumps({"images": [{"path": "a.png", "probability": "high", "features": []}]})),
        "attributions.json: field images[0].probability must be null or a number"),
}


@pytest.mark.parametrize("name", list(REPORT_CASES))
def test_report_on_tampered_outputs_names_the_file_and_field(capsys, work, tmp_path, name):
    tamper, needle = REPORT_CASES[name]
    copies = {key: tmp_path / key for key in ("model", "eval", "explain")}
    for key, folder in copies.items():
        shutil.copytree(work[key], folder)
    tamper(copies)
    run_bad(capsys, ["report", copies["model"], "--eval", copies["eval"], "--explain",
                     copies["explain"], "--out", tmp_path / "r.html"], needle,
            watch=(tmp_path,))


def test_report_on_untouched_outputs_still_works(work, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", str(work["model"]), "--eval", str(work["eval"]), "--explain",
                 str(work["explain"]), "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
