"""Terrain from a DEM: planar DEMs with a known slope and aspect, on the DEM's own grid, on a
finer shifted grid, reprojected from a geographic DEM, on a geographic image grid, and as an
un-georeferenced same-size pair; DEMs that do not cover the image are refused."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import UTM45, write_image
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform

from slidewatch.data.terrain import (
    FEATURES,
    Grid,
    terrain_features,
    terrain_for_grid,
    terrain_for_image,
)
from slidewatch.errors import ConfigError, DataError

X0, Y0 = 500_000.0, 3_100_000.0  # UTM 45N, near 87E 28N (zone's central meridian)
GX, GY = 0.1, -0.2  # dz/d(east), dz/d(north): rises to the east, falls to the north
SLOPE = float(np.degrees(np.arctan(np.hypot(GX, GY))))  # 12.60 degrees
ASPECT = float(np.degrees(np.arctan2(-GX, -GY)) % 360)  # faces north-north-west: 333.4


def plane(x, y):
    return 1000.0 + GX * (x - X0) + GY * (y - Y0)


def utm_dem(path, res=30.0, size=40):
    centres = (np.arange(size) + 0.5) * res
    z = plane(X0 + centres[None, :], Y0 - centres[:, None]).astype(np.float32)
    return write_image(path, z, crs=UTM45, transform=from_origin(X0, Y0, res, res))


def geographic_dem(path, size=60):
    """A DEM in EPSG:4326 over the UTM area whose heights follow the same plane in UTM."""
    west, north, step = 86.995, 28.03, 0.0005
    lon = west + (np.arange(size) + 0.5) * step
    lat = north - (np.arange(size) + 0.5) * step
    lons, lats = np.meshgrid(lon, lat)
    xs, ys = warp_transform("EPSG:4326", UTM45, lons.ravel(), lats.ravel())
    z = plane(np.array(xs), np.array(ys)).reshape(size, size).astype(np.float32)
    return write_image(path, z, crs="EPSG:4326", transform=from_origin(west, north, step, step))


def utm_grid(x, y, res, size, source="image.tif"):
    return Grid(size, size, from_origin(x, y, res, res), CRS.from_string(UTM45), source=source)


def assert_plane(terrain, tol_slope=1e-3, tol_aspect=1e-2):
    np.testing.assert_allclose(terrain[..., 1], SLOPE, atol=tol_slope)
    np.testing.assert_allclose(terrain[..., 2], ASPECT, atol=tol_aspect)


def test_same_grid_gives_exact_slope_and_aspect(tmp_path):
    dem = utm_dem(tmp_path / "dem.tif")
    terrain = terrain_for_grid(dem, utm_grid(X0, Y0, 30.0, 40))
    assert terrain.shape == (40, 40, 3) and terrain.dtype == np.float32
    assert_plane(terrain)  # edges included: the border is extrapolated, not repeated
    assert terrain[0, 0, 0] == pytest.approx(plane(X0 + 15, Y0 - 15), abs=1e-3)


def test_finer_shifted_grid_is_resampled(tmp_path):
    dem = utm_dem(tmp_path / "dem.tif")
    terrain = terrain_for_grid(dem, utm_grid(X0 + 107, Y0 - 93, 10.0, 48))
    assert_plane(terrain)
    rows, cols = np.mgrid[0:48, 0:48] + 0.5
    expected = plane(X0 + 107 + cols * 10, Y0 - 93 - rows * 10)
    np.testing.assert_allclose(terrain[..., 0], expected, atol=1e-2)


def test_coarser_grid_averages_the_dem_pixels(tmp_path):
    dem = utm_dem(tmp_path / "dem.tif", res=10.0, size=120)
    terrain = terrain_for_grid(dem, utm_grid(X0 + 40, Y0 - 60, 45.0, 20))
    assert_plane(terrain)  # a plane stays a plane; GDAL's scaled kernel alone bends it
    rows, cols = np.mgrid[0:20, 0:20] + 0.5
    expected = plane(X0 + 40 + cols * 45, Y0 - 60 - rows * 45)
    np.testing.assert_allclose(terrain[..., 0], expected, atol=1e-2)


def test_geographic_dem_is_reprojected_onto_a_utm_image(tmp_path):
    dem = geographic_dem(tmp_path / "dem4326.tif")
    image = write_image(tmp_path / "image.tif", np.zeros((32, 32, 3), np.uint8), crs=UTM45,
                        transform=from_origin(X0 + 200, Y0 - 1500, 20.0, 20.0))
    terrain = terrain_for_image(dem, image)
    assert_plane(terrain, tol_slope=0.05, tol_aspect=0.2)


def test_geographic_image_grid_converts_degrees_to_metres(tmp_path):
    dem = utm_dem(tmp_path / "dem.tif", res=20.0, size=80)
    grid = Grid(24, 24, from_origin(87.0015, 28.0165, 0.0002, 0.0002),
                CRS.from_epsg(4326), source="geo.tif")
    assert_plane(terrain_for_grid(dem, grid), tol_slope=0.05, tol_aspect=0.2)


def test_window_of_a_georeferenced_image(tmp_path):
    dem = utm_dem(tmp_path / "dem.tif")
    image = write_image(tmp_path / "scene.tif", np.zeros((100, 100, 3), np.uint8), crs=UTM45,
                        transform=from_origin(X0, Y0, 10.0, 10.0))
    terrain = terrain_for_image(dem, image, window=(20, 30, 16, 16))
    assert terrain[0, 0, 0] == pytest.approx(plane(X0 + 305, Y0 - 205), abs=1e-2)
    assert_plane(terrain)


def test_ungeoreferenced_pair_uses_the_given_pixel_size(tmp_path):
    z = plane(X0 + np.arange(50)[None, :] * 5.0, Y0 - np.arange(40)[:, None] * 5.0)
    dem = write_image(tmp_path / "dem.tif", z.astype(np.float32))
    image = write_image(tmp_path / "photo.png", np.zeros((40, 50, 3), np.uint8))
    assert_plane(terrain_for_image(dem, image, pixel_size=5.0))
    window = terrain_for_image(dem, image, window=(10, 20, 8, 8), pixel_size=5.0)
    assert window[0, 0, 0] == pytest.approx(float(z[10, 20]), abs=1e-3)
    assert_plane(window)
    with pytest.raises(ConfigError, match="--aux-pixel-size"):
        terrain_for_image(dem, image)
    small = write_image(tmp_path / "small.png", np.zeros((30, 50, 3), np.uint8))
    with pytest.raises(DataError, match=r"dem\.tif: DEM is 50x40 but .*small\.png is 50x30"):
        terrain_for_image(dem, small, pixel_size=5.0)


def test_dem_that_does_not_cover_the_image_is_refused(tmp_path):
    dem = utm_dem(tmp_path / "dem.tif")  # 1200 m square
    grid = utm_grid(X0 + 1000, Y0, 10.0, 40, source=str(tmp_path / "east.tif"))
    with pytest.raises(DataError) as info:
        terrain_for_grid(dem, grid)
    message = str(info.value)
    assert "dem.tif: does not cover" in message and "east.tif" in message
    assert "50.0% of its pixels" in message  # 200 of the 400 m lie east of the DEM
    with pytest.raises(DataError, match="DEM file not found"):
        terrain_for_grid(tmp_path / "none.tif", grid)


def test_terrain_features_summarise_a_tile(tmp_path):
    dem = utm_dem(tmp_path / "dem.tif")
    feats = terrain_features(terrain_for_grid(dem, utm_grid(X0, Y0, 30.0, 40)))
    assert list(feats) == list(FEATURES)
    assert feats["slope_mean"] == pytest.approx(SLOPE, abs=1e-3)
    assert feats["slope_max"] == pytest.approx(SLOPE, abs=1e-3)
    assert feats["relief"] == pytest.approx(abs(GX) * 39 * 30 + abs(GY) * 39 * 30, abs=1e-2)
    weight = np.sin(np.radians(SLOPE))
    assert feats["northness"] == pytest.approx(np.cos(np.radians(ASPECT)) * weight, abs=1e-4)
    assert feats["eastness"] == pytest.approx(np.sin(np.radians(ASPECT)) * weight, abs=1e-4)
