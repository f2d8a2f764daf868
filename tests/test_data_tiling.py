"""Tiling scenes by their masks: exact tile counts, fractions, names, georeferencing, errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import rasterio
from conftest import UTM45, make_scene, truncate, write_image
from rasterio.transform import Affine

from slidewatch.data.readers import read_image
from slidewatch.data.tiling import TILING_COLUMNS, tile_positions, tile_scenes
from slidewatch.errors import ConfigError, DataError


def _known_scene(rng):
    """80x100 image, 20 px tiles: (0,0) full, (0,20) 10%, (0,40) one pixel, (60,80) 5%."""
    image = rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)
    mask = np.zeros((80, 100), bool)
    mask[0:20, 0:20] = True  # fraction 1.0
    mask[0:2, 20:40] = True  # 40 px = 0.1
    mask[5, 45] = True  # 1 px = 0.0025: dropped
    mask[60:80, 80:81] = True  # 20 px = 0.05: exactly the threshold
    return image, mask


def _rows(out):
    with open(out / "tiles.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_known_scene_counts_fractions_and_pixels(tmp_path, rng):
    image, mask = _known_scene(rng)
    scene = make_scene(tmp_path, "alps", {"s1": (image, mask)})
    calls = []
    summary = tile_scenes([scene], tmp_path / "out", tile=20, stride=20,
                          progress=lambda done, total: calls.append((done, total)))
    assert summary.counts == {"alps": {"landslide": 3, "non_landslide": 16}}
    assert summary.dropped == 1 and summary.total == 19 and calls == [(1, 1)]
    out = tmp_path / "out"
    rows = _rows(out)
    assert list(rows[0]) == list(TILING_COLUMNS) and len(rows) == 19
    by_pos = {(int(r["row"]), int(r["col"])): r for r in rows}
    assert (0, 40) not in by_pos
    assert by_pos[(0, 0)]["landslide_fraction"] == "1.000000"
    assert by_pos[(0, 20)]["landslide_fraction"] == "0.100000"
    assert by_pos[(60, 80)]["label"] == "landslide"
    scene_stats = {k: by_pos[(20, 20)].pop(k) for k in ("scene_mean", "scene_std")}
    assert by_pos[(20, 20)] == {
        "path": "non_landslide/alps__s1__r20_c20.png", "label": "non_landslide",
        "source_image": "alps/s1", "row": "20", "col": "20",
        "landslide_fraction": "0.000000", "region": "alps",
    }
    unit = image.reshape(-1, 3) / 255  # the whole scene's statistics (tests/test_standardize)
    assert np.allclose([float(v) for v in scene_stats["scene_mean"].split()], unit.mean(0))
    assert np.allclose([float(v) for v in scene_stats["scene_std"].split()], unit.std(0))
    np.testing.assert_array_equal(read_image(out / "landslide/alps__s1__r0_c20.png"),
                                  image[0:20, 20:40])
    assert len(list((out / "landslide").iterdir())) == 3
    assert len(list((out / "non_landslide").iterdir())) == 16


def test_threshold_and_min_landslide_zero(tmp_path, rng):
    image, mask = _known_scene(rng)
    scene = make_scene(tmp_path, "alps", {"s1": (image, mask)})
    strict = tile_scenes([scene], tmp_path / "a", tile=20, stride=20, min_landslide=0.1)
    assert strict.counts["alps"] == {"landslide": 2, "non_landslide": 16} and strict.dropped == 2
    anything = tile_scenes([scene], tmp_path / "b", tile=20, stride=20, min_landslide=0.0)
    assert anything.counts["alps"] == {"landslide": 4, "non_landslide": 16}
    assert anything.dropped == 0


def test_positions_stay_inside_the_image():
    assert tile_positions(80, 100, 20, 30) == [(r, c) for r in (0, 30, 60) for c in (0, 30, 60)]
    assert tile_positions(20, 20, 20, 5) == [(0, 0)]
    assert tile_positions(19, 40, 20, 20) == []


def test_stride_overlap_and_custom_classes(tmp_path, rng):
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    mask = np.zeros((40, 40), bool)
    scene = make_scene(tmp_path, "r", {"a": (image, mask)})
    summary = tile_scenes([scene], tmp_path / "o", tile=20, stride=10, classes=("pos", "neg"))
    assert summary.counts == {"r": {"pos": 0, "neg": 9}}
    listed = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert listed == ["masks", "neg", "pos", "tiles.csv"]
    assert not any((tmp_path / "o" / "masks").iterdir())  # no landslide tile: no mask piece


def test_jpeg_image_with_tif_rgb_mask_and_two_regions(tmp_path, rng):
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    scene_a = tmp_path / "north"
    write_image(scene_a / "images" / "x.jpg", image)
    rgb_mask = np.zeros((40, 60, 3), np.uint8)
    rgb_mask[:20, :20, 1] = 255  # only green marks the landslide
    write_image(scene_a / "masks" / "x.tif", rgb_mask)
    scene_b = make_scene(tmp_path, "south", {"x": (image[:20, :20], np.ones((20, 20), bool))})
    summary = tile_scenes([scene_a, scene_b], tmp_path / "o", tile=20, stride=20)
    assert summary.counts == {"north": {"landslide": 1, "non_landslide": 5},
                              "south": {"landslide": 1, "non_landslide": 0}}
    names = sorted(r["path"] for r in _rows(tmp_path / "o") if r["label"] == "landslide")
    assert names == ["landslide/north__x__r0_c0.png", "landslide/south__x__r0_c0.png"]


def test_geotiff_scene_keeps_dtype_and_georeferencing(tmp_path, rng):
    image = rng.integers(0, 65536, (40, 60, 4), dtype=np.uint16)
    transform = Affine(10, 0, 500000, 0, -10, 3000000)
    scene = tmp_path / "nepal"
    write_image(scene / "images" / "s2.tif", image, crs=UTM45, transform=transform)
    write_image(scene / "masks" / "s2.png", np.zeros((40, 60), np.uint8))
    tile_scenes([scene], tmp_path / "o", tile=20, stride=20)
    tile = tmp_path / "o" / "non_landslide" / "nepal__s2__r20_c40.tif"
    with rasterio.open(tile) as ds:
        assert ds.crs.to_epsg() == 32645 and ds.count == 4 and ds.dtypes[0] == "uint16"
        assert ds.transform == Affine(10, 0, 500000 + 40 * 10, 0, -10, 3000000 - 20 * 10)
    np.testing.assert_array_equal(read_image(tile), image[20:40, 40:60])


def test_small_images_skipped_but_not_all(tmp_path, rng):
    big = (rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), np.zeros((20, 20), bool))
    small = (rng.integers(0, 256, (10, 30, 3), dtype=np.uint8), np.zeros((10, 30), bool))
    scene = make_scene(tmp_path, "r", {"big": big, "small": small})
    summary = tile_scenes([scene], tmp_path / "o", tile=20, stride=20)
    assert summary.total == 1 and summary.skipped_images == ["r/small"]
    with pytest.raises(DataError, match="--tile 40: larger than every image"):
        tile_scenes([scene], tmp_path / "o2", tile=40)


@pytest.mark.parametrize("kwargs, option", [
    ({"tile": 0}, "--tile"), ({"tile": -5}, "--tile"), ({"tile": 2.5}, "--tile"),
    ({"stride": 0}, "--stride"), ({"stride": -1}, "--stride"),
    ({"min_landslide": -0.01}, "--min-landslide"), ({"min_landslide": 1.5}, "--min-landslide"),
    ({"classes": ("landslide",)}, "--classes"), ({"classes": ("a", "a")}, "--classes"),
])
def test_bad_options(tmp_path, rng, kwargs, option):
    scene = make_scene(tmp_path, "r", {"a": (np.zeros((20, 20, 3), np.uint8),
                                             np.zeros((20, 20), bool))})
    with pytest.raises(ConfigError, match=f"^{option}: "):
        tile_scenes([scene], tmp_path / "o", **kwargs)
    assert not (tmp_path / "o").exists()


def _scene(tmp_path, rng, size=(20, 20), mask_size=None):
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    mask = np.zeros(mask_size or size, bool)
    return make_scene(tmp_path, "r", {"a": (image, mask)})


def test_bad_scene_folders(tmp_path, rng):
    out = tmp_path / "o"
    with pytest.raises(DataError, match="nowhere: scene folder not found"):
        tile_scenes([tmp_path / "nowhere"], out)
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match="bare: no 'images' folder"):
        tile_scenes([tmp_path / "bare"], out)
    (tmp_path / "bare" / "images").mkdir()
    with pytest.raises(DataError, match="bare: no 'masks' folder"):
        tile_scenes([tmp_path / "bare"], out)
    (tmp_path / "bare" / "masks").mkdir()
    (tmp_path / "bare" / "images" / "readme.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"bare/images: no images"):
        tile_scenes([tmp_path / "bare"], out)
    assert not out.exists()


def test_image_without_mask_and_mask_of_other_size(tmp_path, rng):
    scene = _scene(tmp_path, rng)
    write_image(scene / "images" / "b.png", np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(DataError, match=r"images/b\.png: no mask with the stem 'b'"):
        tile_scenes([scene], tmp_path / "o", tile=10)
    (scene / "images" / "b.png").unlink()
    write_image(scene / "masks" / "a.png", np.zeros((20, 21), np.uint8))
    with pytest.raises(DataError, match=r"masks/a\.png: mask is 21x20 but its image .*images/a\.png"
                                        r" is 20x20"):
        tile_scenes([scene], tmp_path / "o", tile=10)
    assert not (tmp_path / "o").exists()


def test_unreadable_image_leaves_no_output(tmp_path, rng):
    good = _scene(tmp_path, rng, size=(40, 40))
    bad = make_scene(tmp_path, "z", {"b": (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                                          np.zeros((64, 64), bool))})
    truncate(bad / "images" / "b.png", 0.5)
    with pytest.raises(DataError, match=r"z/images/b\.png: cannot decode image"):
        tile_scenes([good, bad], tmp_path / "o", tile=20)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "z"]


def test_existing_output_needs_overwrite_and_scene_is_protected(tmp_path, rng):
    scene = _scene(tmp_path, rng)
    out = tmp_path / "o"
    tile_scenes([scene], out, tile=10)
    with pytest.raises(ConfigError, match="exists and is not empty; pass --overwrite"):
        tile_scenes([scene], out, tile=10)
    summary = tile_scenes([scene], out, tile=20, overwrite=True)
    assert summary.total == 1 and len(_rows(out)) == 1
    with pytest.raises(ConfigError, match="must not hold the scene folder"):
        tile_scenes([scene], tmp_path, tile=10, overwrite=True)
    assert (scene / "images" / "a.png").exists()


def test_duplicate_region_names_refused(tmp_path, rng):
    a = _scene(tmp_path / "one", rng)
    b = _scene(tmp_path / "two", rng)
    with pytest.raises(DataError, match="same name 'r'"):
        tile_scenes([a, b], tmp_path / "o", tile=10)
