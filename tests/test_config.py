import pytest

from slidewatch.config.train import TrainConfig, dump_yaml, from_dict, load_yaml, merge
from slidewatch.errors import ConfigError


def test_defaults_roundtrip_through_yaml(tmp_path):
    cfg = TrainConfig()
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert from_dict(load_yaml(path)) == cfg


def test_flags_override_file_and_none_is_ignored():
    base = {"phase2": {"epochs": 7, "lr": 0.01}, "seed": 3}
    merged = merge(base, {"phase2": {"epochs": 2, "lr": None}, "seed": None})
    cfg = from_dict(merged)
    assert cfg.phase2.epochs == 2 and cfg.phase2.lr == 0.01 and cfg.seed == 3


@pytest.mark.parametrize("data,key", [
    ({"phase3": {}}, "phase3"),
    ({"model": {"nmae": "x"}}, "model.nmae"),
])
def test_unknown_keys_are_errors_that_name_the_key(data, key):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
        from_dict(data)


@pytest.mark.parametrize("data,key", [
    ({"batch_size": "big"}, "batch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"phase1": {"epochs": -1}}, "phase1.epochs"),
    ({"phase2": {"lr": 0}}, "phase2.lr"),
    ({"augment": {"hflip": "yes"}}, "augment.hflip"),
    ({"data": {"val_fraction": 1.5}}, "data.val_fraction"),
    ({"optim": {"optimizer": "lion"}}, "optim.optimizer"),
    ({"threshold": 1.0}, "threshold"),
    ({"class_weights": [1.0]}, "class_weights"),
    ({"data": {"split_by": "pixel"}}, "data.split_by"),
    ({"phase2": {"unfreeze_layers": 3, "unfreeze_blocks": 1}}, "phase2"),
])
def test_bad_values_name_their_key(data, key):
    with pytest.raises(ConfigError, match=f"^{key}"):
        from_dict(data)


def test_ints_widen_to_floats_but_bools_are_not_numbers():
    assert from_dict({"phase1": {"lr": 1}}).phase1.lr == 1.0
    with pytest.raises(ConfigError):
        from_dict({"phase1": {"lr": True}})


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("phase1: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_yaml(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(p)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_shipped_configs_are_valid():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        if "grid" in load_yaml(path):  # an experiment: every grid point must be a valid config
            from slidewatch.experiments.grid import expand, load_experiment

            assert expand(load_experiment(path)), path
            continue
        cfg = from_dict(load_yaml(path))
        assert cfg.data.paths or path.name.startswith("demo-"), path  # demo-*: paths per fold


def test_benchmark_recipes_are_the_demos():
    """configs/demo-*.yaml (benchmarks/generalisation.py) are the demo's recipes."""
    from pathlib import Path

    from slidewatch.config.train import to_dict
    from slidewatch.experiments.demo import demo_config, segment_config

    root = Path(__file__).parents[1] / "configs"
    tiles, extra, scenes = Path("t"), (Path("b"),), [Path("s1"), Path("s2")]
    paths = {"paths": [str(tiles), *map(str, extra)], "holdout_regions": ["nepal"]}
    cls = load_yaml(root / "demo-classify.yaml")
    cls["data"].update(paths)
    assert to_dict(from_dict({**cls, "progress": True})) == \
        to_dict(demo_config(tiles, "nepal", extra=extra))
    seg = load_yaml(root / "demo-segment.yaml")
    seg["data"].update({"paths": [str(p) for p in scenes], "holdout_regions": ["nepal"]})
    assert to_dict(from_dict({**seg, "progress": True})) == \
        to_dict(segment_config(scenes, "nepal"))


def test_reference_recipe_is_the_benchmarked_variant():
    """configs/sample-regions.yaml is the benchmark's variant `cls-std-s112` (README table):
    the demo's classifier recipe plus per-scene standardisation and training tiles at stride
    112, on all the sample data."""
    from pathlib import Path

    from slidewatch.config.train import to_dict

    root = Path(__file__).parents[1] / "configs"
    fold = {"paths": ["t", "b"], "holdout_regions": ["nepal"]}
    demo = load_yaml(root / "demo-classify.yaml")
    demo["data"].update({**fold, "standardize": "image", "stride": 112})
    ref = load_yaml(root / "sample-regions.yaml")
    assert len(ref["data"]["paths"]) == 5  # four scene regions and the Bijie dataset
    ref["data"].update(fold)
    assert to_dict(from_dict(ref)) == to_dict(from_dict(demo))
