"""Size classes: from generated masks with known areas (m² from the georeference, or tile
fractions), from a NASA-style ``landslide_size`` column, edge checks and the size metrics."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import UTM45, write_image
from rasterio.transform import from_origin
from sklearn.metrics import confusion_matrix, f1_score

from slidewatch.data.folders import scan_class_folders
from slidewatch.data.geometry import pixel_area_m2
from slidewatch.data.sizes import (
    IGNORE_INDEX,
    SizeClasses,
    SizeColumn,
    image_pixel_area,
    size_label_for_sample,
    size_label_from_mask,
    size_scheme_from_json,
)
from slidewatch.data.tiling import tile_scenes
from slidewatch.errors import ConfigError, DataError
from slidewatch.evaluation.sizes import size_report

M2 = SizeClasses(edges=(1_000, 10_000, 100_000), names=("small", "medium", "large", "huge"))


def square_mask(size: int, side: int, at: tuple[int, int] = (0, 0)) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[at[0]:at[0] + side, at[1]:at[1] + side] = True
    return mask


@pytest.mark.parametrize("pixels, expected", [(0, IGNORE_INDEX), (1, 0), (9, 0), (10, 1),
                                              (99, 1), (100, 2), (999, 2), (1000, 3)])
def test_mask_area_in_square_metres(pixels, expected):
    # 10 m pixels (100 m² each): 9 px = 900 m² -> small; 10 px = 1,000 m², on an edge -> the
    # class above; 1,000 px = 100,000 m² -> the last class
    mask = np.zeros(64 * 64, bool)
    mask[np.random.default_rng(pixels).permutation(mask.size)[:pixels]] = True
    assert size_label_from_mask(mask.reshape(64, 64), M2, pixel_area=100.0) == expected


def test_fraction_classes_without_a_ground_resolution():
    classes = SizeClasses(edges=(0.1, 0.5), names=("s", "m", "l"), unit="fraction")
    labels = [size_label_from_mask(square_mask(10, side), classes) for side in (0, 2, 4, 8)]
    assert labels == [IGNORE_INDEX, 0, 1, 2]  # 0, .04, .16, .64
    with pytest.raises(DataError, match=r"t\.png: no ground resolution.*--size-unit fraction"):
        size_label_from_mask(square_mask(10, 3), M2, pixel_area=None, where="t.png")


def test_pixel_area_from_georeference(tmp_path):
    utm = write_image(tmp_path / "utm.tif", np.zeros((8, 8, 3), np.uint8), crs=UTM45,
                      transform=from_origin(500_000, 3_100_000, 10.0, 10.0))
    assert image_pixel_area(utm) == pytest.approx(100.0)
    assert image_pixel_area(utm, pixel_size=3.0) == pytest.approx(9.0)
    png = write_image(tmp_path / "plain.png", np.zeros((8, 8, 3), np.uint8))
    assert image_pixel_area(png) is None
    from rasterio.crs import CRS

    # 1e-4 degree at 28 N: about 9.83 m (longitude) x 11.08 m (latitude)
    area = pixel_area_m2(from_origin(87.0, 28.0, 1e-4, 1e-4), CRS.from_epsg(4326))
    assert area == pytest.approx(9.832 * 11.086, rel=2e-3)


def test_size_labels_of_tiles_cut_from_a_georeferenced_scene(tmp_path):
    # one 10 m scene, 64 px tiles: landslides of 8x8 (6,400 m²), 20x20 (40,000 m²) and
    # 40x40 px (160,000 m²) in three tiles, none in the fourth
    image = np.full((128, 128, 3), 90, np.uint8)
    mask = np.zeros((128, 128), bool)
    mask |= square_mask(128, 8, (4, 4))
    mask |= square_mask(128, 20, (10, 70))
    mask |= square_mask(128, 40, (70, 10))
    scene = tmp_path / "scene" / "valley"
    write_image(scene / "images" / "s1.tif", image, crs=UTM45,
                transform=from_origin(500_000, 3_100_000, 10.0, 10.0))
    write_image(scene / "masks" / "s1.png", mask.astype(np.uint8) * 255)
    tile_scenes([scene], tmp_path / "tiles", tile=64, stride=64, min_landslide=0.01)
    samples = scan_class_folders(tmp_path / "tiles")
    got = {(s.row, s.col): size_label_for_sample(s, M2) for s in samples}
    assert got == {(0, 0): 1, (0, 64): 2, (64, 0): 3, (64, 64): IGNORE_INDEX}
    fractions = SizeClasses(edges=(0.05, 0.2), names=("s", "m", "l"), unit="fraction")
    got = {(s.row, s.col): size_label_for_sample(s, fractions) for s in samples}
    assert got == {(0, 0): 0, (0, 64): 1, (64, 0): 2, (64, 64): IGNORE_INDEX}


def test_nasa_size_column():
    col = SizeColumn()
    values = ["small", "Medium", "large", "very large", "Very_Large", "catastrophic",
              "unknown", "", None, float("nan")]
    assert [col.label(v) for v in values] == [0, 1, 2, 3, 3, 4, -1, -1, -1, -1]
    with pytest.raises(DataError, match=r"line 7, column 'landslide_size': size 'huge'"):
        col.label("huge", where="line 7")
    rows = [{"landslide_size": "large"}, None, {"other": 1}]
    assert col.labels(rows).tolist() == [2, -1, -1]
    merged = SizeColumn(names=("small", "medium", "large"),
                        aliases={"very_large": "large", "catastrophic": "large"})
    assert merged.label("Catastrophic") == 2
    assert size_scheme_from_json(merged.to_json()) == merged
    assert size_scheme_from_json(M2.to_json()) == M2


@pytest.mark.parametrize("edges, names, unit, message", [
    ((), ("a",), "m2", "at least one edge"),
    ((10, 5), ("a", "b", "c"), "m2", "increase strictly"),
    ((-1, 5), ("a", "b", "c"), "m2", "finite and > 0"),
    ((0.5, 1.5), ("a", "b", "c"), "fraction", "below 1"),
    ((10,), ("a", "b", "c"), "m2", "1 edge.* make 2 classes, got 3 names"),
    ((10,), ("a", "a"), "m2", "distinct"),
    ((10,), ("a", "b"), "acres", "--size-unit"),
])
def test_bad_size_classes_are_config_errors(edges, names, unit, message):
    with pytest.raises(ConfigError, match=message):
        SizeClasses(edges=edges, names=names, unit=unit)


def test_size_report_matches_scikit_learn_and_skips_ignored():
    truth = [0, 0, 1, 1, 2, 2, -1, -1, 3]
    pred = [0, 1, 1, 1, 2, 0, 3, 0, 3]
    report = size_report(truth, pred, ["s", "m", "l", "xl"])
    keep = [i for i, t in enumerate(truth) if t != -1]
    t, p = [truth[i] for i in keep], [pred[i] for i in keep]
    assert report["n"] == 7
    assert report["confusion"] == confusion_matrix(t, p, labels=[0, 1, 2, 3]).tolist()
    assert report["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))
