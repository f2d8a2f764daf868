"""Class folders, group-aware splits, dataset info and the torch dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_scene, truncate, write_image

from slidewatch.data.dataset import TileDataset, class_counts
from slidewatch.data.folders import Sample, load_datasets, scan_class_folders
from slidewatch.data.info import dataset_info, format_info
from slidewatch.data.splits import load_split, save_split, split_samples
from slidewatch.data.tiling import tile_scenes
from slidewatch.errors import ConfigError, DataError


@pytest.fixture
def tiles(tmp_path, rng):
    """Two regions, three 40x40 scenes, 20 px tiles: 12 tiles, 4 landslide."""
    scenes = []
    for region, stems in (("east", ("a", "b")), ("west", ("c",))):
        images = {}
        for k, stem in enumerate(stems):
            mask = np.zeros((40, 40), bool)
            mask[: 20, : 20 * (k + 1)] = True  # a: 1 landslide tile, b: 2
            images[stem] = (rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), mask)
        scenes.append(make_scene(tmp_path / "scenes", region, images))
    tile_scenes(scenes, tmp_path / "tiles", tile=20, stride=20)
    return tmp_path / "tiles"


# ------------------------------------------------------------------ class folders


def test_scan_uses_tiles_csv(tiles):
    samples = scan_class_folders(tiles)
    assert len(samples) == 12
    assert [s.label for s in samples] == [0] * 4 + [1] * 8
    first = samples[0]
    assert first.path == (tiles / "landslide" / "east__a__r0_c0.png").resolve()
    assert (first.group, first.region, first.row, first.col) == ("east/a", "east", 0, 0)
    assert first.landslide_fraction == 1.0 and first.key == "tiles/landslide/east__a__r0_c0.png"
    assert {s.group for s in samples} == {"east/a", "east/b", "west/c"}
    assert scan_class_folders(tiles) == samples  # deterministic


def test_scan_without_csv_recursive_and_skips_non_images(tmp_path, rng):
    root = tmp_path / "set1"
    px = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    write_image(root / "landslide" / "deep" / "z.jpg", px)
    write_image(root / "landslide" / "b.png", px)
    write_image(root / "landslide" / ".hidden.png", px)
    (root / "landslide" / "notes.txt").write_text("x")
    write_image(root / "non_landslide" / "nepal__img7__r224_c0.png", px)
    samples = scan_class_folders(root)
    names = [s.path.relative_to(root.resolve()).as_posix() for s in samples]
    assert names == ["landslide/b.png", "landslide/deep/z.jpg",
                     "non_landslide/nepal__img7__r224_c0.png"]
    assert (samples[0].group, samples[0].region) == ("set1/b", "set1")
    assert (samples[2].group, samples[2].region, samples[2].row) == ("nepal/img7", "nepal", 224)


def test_scan_errors(tmp_path, rng):
    with pytest.raises(DataError, match="nope: dataset folder not found"):
        scan_class_folders(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="file.png: not a folder"):
        scan_class_folders(tmp_path / "file.png")
    root = tmp_path / "d"
    write_image(root / "Landslides" / "a.png", np.zeros((4, 4, 3), np.uint8))
    (root / "other").mkdir()
    with pytest.raises(DataError, match=r"no class folder 'landslide' \(sub-folders found: "
                                        r"Landslides, other\); .*--classes"):
        scan_class_folders(root)
    (root / "non_landslide").mkdir()
    (root / "non_landslide" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"d/non_landslide: no images"):
        scan_class_folders(root, ("Landslides", "non_landslide"))
    with pytest.raises(ConfigError, match="--classes"):
        scan_class_folders(root, ("Landslides",))


def test_load_datasets_merges_and_refuses_the_same_root_twice(tiles, tmp_path, rng):
    other = tmp_path / "set2"
    write_image(other / "landslide" / "x.png", np.zeros((4, 4, 3), np.uint8))
    write_image(other / "non_landslide" / "y.png", np.zeros((4, 4, 3), np.uint8))
    merged = load_datasets([tiles, other])
    assert len(merged) == 14 and merged[-1].group == "set2/y"
    with pytest.raises(DataError, match="list it once"):
        load_datasets([tiles, tiles])


# ------------------------------------------------------------------ splits


def _synthetic(n_images=30, tiles_per_image=6, regions=("a", "b", "c")):
    samples = []
    for i in range(n_images):
        region = regions[i % len(regions)]
        for t in range(tiles_per_image):
            label = 0 if (i % 4 == 0 and t < 3) else 1
            samples.append(Sample(Path(f"/d/{i}_{t}.png"), label, f"{region}/img{i}", region))
    return samples


def _groups(samples, idx, attr="group"):
    return {getattr(samples[i], attr) for i in idx}


@pytest.mark.parametrize("by, attr", [("image", "group"), ("region", "region")])
def test_split_is_group_disjoint_complete_and_seeded(by, attr):
    samples = _synthetic()
    split = split_samples(samples, by=by, val_fraction=0.2, test_fraction=0.2, seed=3)
    parts = [split.train, split.val, split.test]
    assert sorted(i for p in parts for i in p) == list(range(len(samples)))
    g = [_groups(samples, p, attr) for p in parts]
    assert not (g[0] & g[1]) and not (g[0] & g[2]) and not (g[1] & g[2])
    assert all(parts)
    assert split_samples(samples, by=by, val_fraction=0.2, test_fraction=0.2, seed=3) == split


def test_split_fractions_and_seeds():
    samples = _synthetic(n_images=50)
    splits = [split_samples(samples, val_fraction=0.2, test_fraction=0.1, seed=s) for s in range(4)]
    for split in splits:
        assert len(split.val) == pytest.approx(0.2 * len(samples), abs=12)
        assert len(split.test) == pytest.approx(0.1 * len(samples), abs=12)
        for part in (split.val, split.test):  # both classes present in every part
            assert {samples[i].label for i in part} == {0, 1}
    assert len({tuple(s.val) for s in splits}) > 1


def test_split_gives_val_the_rare_class():
    samples = [Sample(Path(f"/d/n{i}.png"), 1, f"neg{i}", "r") for i in range(18)]
    samples += [Sample(Path(f"/d/p{i}.png"), 0, f"pos{i}", "r") for i in range(2)]
    for seed in range(5):
        split = split_samples(samples, val_fraction=0.2, seed=seed)
        assert {samples[i].label for i in split.val} == {0, 1}
        assert {samples[i].label for i in split.train} == {0, 1}


def test_split_by_tile_is_stratified_random():
    samples = _synthetic(n_images=4, tiles_per_image=10)
    split = split_samples(samples, by="tile", val_fraction=0.25, seed=0)
    assert len(split.val) == 10 and not set(split.val) & set(split.train)
    assert _groups(samples, split.val) & _groups(samples, split.train)  # leaks, as documented


def test_holdout_regions():
    samples = _synthetic()
    split = split_samples(samples, holdout_regions=("c",), val_fraction=0.25, seed=1)
    assert _groups(samples, split.test, "region") == {"c"}
    assert split.test == [i for i, s in enumerate(samples) if s.region == "c"]
    assert _groups(samples, split.train + split.val, "region") == {"a", "b"}
    with pytest.raises(ConfigError, match=r"--holdout-region: unknown region\(s\) x; .*a, b, c"):
        split_samples(samples, holdout_regions=("x",))
    with pytest.raises(ConfigError, match="every region is held out"):
        split_samples(samples, holdout_regions=("a", "b", "c"))
    with pytest.raises(ConfigError, match="--test-fraction: cannot be combined"):
        split_samples(samples, holdout_regions=("c",), test_fraction=0.1)


@pytest.mark.parametrize("kwargs, match", [
    ({"val_fraction": -0.1}, "--val-fraction"), ({"val_fraction": 1.0}, "--val-fraction"),
    ({"test_fraction": 1.2}, "--test-fraction"),
    ({"val_fraction": 0.6, "test_fraction": 0.4}, r"--val-fraction \+ --test-fraction"),
    ({"by": "pixel"}, "--split-by"),
])
def test_split_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        split_samples(_synthetic(), **kwargs)


def test_split_needs_enough_groups():
    samples = _synthetic(regions=("only",))
    with pytest.raises(ConfigError, match="--split-by region: only 1 group"):
        split_samples(samples, by="region")
    with pytest.raises(DataError, match="no samples"):
        split_samples([])


def test_save_and_load_split(tiles, tmp_path):
    samples = scan_class_folders(tiles)
    split = split_samples(samples, val_fraction=0.3, seed=0)
    path = tmp_path / "split.json"
    save_split(path, samples, split)
    data = json.loads(path.read_text())
    assert all(k.startswith("tiles/") for k in data["train"] + data["val"])
    assert load_split(path, samples) == split
    assert load_split(path, list(reversed(samples))).val == sorted(
        len(samples) - 1 - i for i in split.val)
    with pytest.raises(DataError, match=r"split.json: 1 file\(s\) of the train part are not in"):
        load_split(path, [s for s in samples if s.key != data["train"][0]])
    data["val"].append(data["train"][0])
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="listed in two parts"):
        load_split(path, samples)
    path.write_text("{not json")
    with pytest.raises(DataError, match="split.json: not a split file"):
        load_split(path, samples)
    with pytest.raises(DataError, match="split file not found"):
        load_split(tmp_path / "none.json", samples)


# ------------------------------------------------------------------ info and dataset


def test_dataset_info_lists_every_unreadable_file(tiles):
    truncate(tiles / "landslide" / "east__a__r0_c0.png", 0.5)
    (tiles / "non_landslide" / "junk.png").write_bytes(b"not an image")
    info = dataset_info(tiles)
    assert info["per_class"] == {"landslide": 4, "non_landslide": 9}
    assert info["per_region"]["west"] == {"landslide": 1, "non_landslide": 3}
    assert info["sizes"] == {"20x20": 11} and info["bands"] == {"3": 11}
    assert info["dtypes"] == {"uint8": 11} and info["groups"] == 4
    bad = sorted(Path(row["path"]).name for row in info["unreadable"])
    assert bad == ["east__a__r0_c0.png", "junk.png"]
    text = format_info(info)
    assert "landslide 4, non_landslide 9" in text and "unreadable: 2" in text
    assert len(dataset_info(tiles, decode=False)["unreadable"]) == 1  # the header is intact


def test_tile_dataset_items_cache_and_transform(tmp_path, rng):
    px = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    u16 = rng.integers(0, 65536, (6, 5, 4), dtype=np.uint16)
    samples = [Sample(write_image(tmp_path / "a.png", px), 0, "a", "r"),
               Sample(write_image(tmp_path / "b.tif", u16), 1, "b", "r")]
    ds = TileDataset(samples, transform=lambda x: x * 2)
    item = ds[0]
    assert item["label"] == 0 and item["index"] == 0
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 6, 5)
    expected = torch.from_numpy(px.transpose(2, 0, 1).astype(np.float32) / 255 * 2)
    assert torch.allclose(item["image"], expected)
    item1 = TileDataset(samples)[1]
    assert item1["image"].shape == (4, 6, 5) and item1["label"] == 1
    assert torch.allclose(item1["image"], torch.from_numpy(u16.transpose(2, 0, 1) / 65535).float())
    assert ds[-1]["index"] == 1 and ds.targets == [0, 1]
    samples[0].path.unlink()
    assert torch.equal(ds[0]["image"], item["image"])  # served from the cache
    with pytest.raises(DataError, match="file not found"):
        TileDataset(samples, cache=False)[0]
    with pytest.raises(IndexError):
        ds[2]
    with pytest.raises(ValueError, match="transform"):
        TileDataset(samples, transform="flip")


def test_class_counts():
    samples = _synthetic(n_images=8, tiles_per_image=6)
    assert class_counts(samples, 2) == [6, 42]
    with pytest.raises(ValueError, match="label 1 outside"):
        class_counts(samples, 1)


def test_merged_datasets_may_lack_a_class_in_one_root_but_not_overall(tmp_path):
    from _factories import make_class_dataset

    from slidewatch.data.folders import load_datasets
    from slidewatch.errors import DataError

    a = make_class_dataset(tmp_path / "a", images=1, per_image=1)
    b = make_class_dataset(tmp_path / "b", images=1, per_image=1)
    for f in (b / "landslide").iterdir():
        f.unlink()  # a region without landslide tiles, like nepal at stride 224
    samples = load_datasets([a, b])
    assert {s.label for s in samples if s.root.name == "b"} == {1}
    for f in (a / "landslide").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="no images of class 'landslide'"):
        load_datasets([a, b])
