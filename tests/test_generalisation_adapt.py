"""benchmarks/generalisation.py --adapt: which images a fold continues on, and that the
adapted run's split keeps the rest of the held-out region out of training."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_scene

from slidewatch.config.train import from_dict
from slidewatch.data.folders import name_group
from slidewatch.meta import ModelMeta, SegmentationSpec

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def gen():
    sys.path.insert(0, str(BENCH))  # generalisation.py imports its neighbour scan_common
    try:
        spec = importlib.util.spec_from_file_location("generalisation", BENCH / "generalisation.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_name_group_names_the_source_image_of_a_split_key():
    assert name_group("tiles/landslide/bijie__10009__r0_c224.png") == "bijie/10009"
    assert name_group("bijie/images/10009.png") == "bijie/10009"
    assert name_group("bijie/landslide/ls_001.jpg") == "bijie/ls_001"


def test_adapt_groups_are_drawn_from_the_region_with_the_seed(gen, tmp_path):
    rng = np.random.default_rng(0)
    scenes = {f"s{i}": (rng.integers(0, 255, (16, 16, 3)).astype(np.uint8),
                        np.zeros((16, 16), bool)) for i in range(6)}
    make_scene(tmp_path / "regions", "north", scenes)
    a = gen.adapt_groups(tmp_path, "north", 2, seed=0)
    assert len(a) == 2 and a <= {f"north/s{i}" for i in range(6)}
    assert a == gen.adapt_groups(tmp_path, "north", 2, seed=0)
    assert len({gen.adapt_groups(tmp_path, "north", 2, seed=s) for s in range(6)}) > 1
    with pytest.raises(SystemExit, match="label fewer"):
        gen.adapt_groups(tmp_path, "north", 6, seed=0)


def test_adapt_config_trains_on_the_chosen_images_and_as_many_others(gen, tmp_path):
    fold = tmp_path / "holdout-north"
    fold.mkdir()
    train = [f"tiles/landslide/south__a{i}__r0_c0.png" for i in range(10)]
    val = ["tiles/landslide/south__v__r0_c0.png"]
    test = [f"tiles/{c}/north__{s}__r0_c{k}.png" for s in ("s0", "s1", "s2")
            for c, k in (("landslide", 0), ("non_landslide", 224))]
    (fold / "split.json").write_text(json.dumps({"format": "slidewatch-split", "version": 1,
                                                 "train": train, "val": val, "test": test}))
    cfg = from_dict({"data": {"paths": ["x"], "holdout_regions": ["north"]},
                     "phase1": {"epochs": 1}, "phase2": {"epochs": 2}})
    out = tmp_path / "holdout-north-adapt1"
    acfg = gen.adapt_config(cfg, fold, out, frozenset({"north/s1"}), 0, 4)
    split = json.loads(Path(acfg.data.split_file).read_text())
    new = [k for k in split["train"] if "north__" in k]
    assert sorted(new) == sorted(k for k in test if "__s1__" in k)  # s0 and s2 stay unseen
    assert len(split["train"]) == 2 * len(new) and set(split["train"]) - set(new) <= set(train)
    assert split["val"] == val and split["test"] == []
    assert acfg.model.init_from == str(fold) and acfg.data.holdout_regions == []
    assert (acfg.phase1.epochs, acfg.phase2.epochs) == (0, 4)
    seg = from_dict({"task": "segment", "data": {"paths": ["x"]}})
    meta = ModelMeta(architecture="unet_tiny", classes=["landslide", "non_landslide"],
                     in_chans=3, input_size=32, mean=[0.5] * 3, std=[0.25] * 3,
                     task="segment", segmentation=SegmentationSpec(64))
    (fold / "slidewatch.json").write_text(json.dumps(meta.to_json()))
    scfg = gen.adapt_config(seg, fold, out, frozenset({"north/s1"}), 0, 4)
    assert scfg.segment.min_area == 64  # the fold's tile area is kept
    with pytest.raises(SystemExit, match="no test item"):
        gen.adapt_config(cfg, fold, out, frozenset({"north/zz"}), 0, 4)


def test_fold_config_trains_a_classifier_on_scene_folders_when_asked_or_tiled_its_own_way(
        gen, tmp_path):
    """--train-scenes, or a recipe whose tiling is not the reference's (a stride of 112): a
    classifier fold's data are the regions' scene folders (tiled by the recipe), the held-out
    region still held out; a recipe with the reference tiling trains on the reference tiles."""
    root, tiles = tmp_path / "data", tmp_path / "tiles"
    reference = {"data": {"stride": 224}, "model": {"name": "test_efficientnet"}}
    assert gen.fold_config(reference, root, tiles, "nepal").data.paths == [str(tiles)]
    asked = gen.fold_config(reference, root, tiles, "nepal", scenes=True)
    assert asked.data.paths == [str(root / "regions" / r) for r in gen.REGIONS]
    own = {"data": {"stride": 112}, "model": {"name": "test_efficientnet"}}
    scenes = gen.fold_config(own, root, tiles, "nepal")
    assert scenes.data.paths == [str(root / "regions" / r) for r in gen.REGIONS]
    assert scenes.data.holdout_regions == ["nepal"] and scenes.data.stride == 112
    assert scenes.task == "classify"
    assert not gen.own_tiling({"data": {"tile": 224, "min_landslide": 0.05}})
    assert gen.own_tiling({"data": {"min_landslide": 0.1}})
