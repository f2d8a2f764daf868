"""Readers and atomic writes: one pixel rule for every format, one-line errors for bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio
from conftest import UTM45, truncate, write_image
from PIL import Image
from rasterio.transform import Affine

from slidewatch.data.readers import (
    ImageInfo,
    probe,
    read_image,
    read_mask,
    scale_to_unit,
    write_tile,
)
from slidewatch.errors import ConfigError, DataError
from slidewatch.io_utils import atomic_dir, atomic_path, atomic_write_bytes, atomic_write_text

# ------------------------------------------------------------------ atomic writes


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_text(target, "one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_atomic_path_keeps_suffix_and_old_file_on_failure(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".safetensors"
            assert tmp.name == f".model.tmp-{os.getpid()}.safetensors"
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_atomic_dir_builds_refuses_and_overwrites(tmp_path):
    out = tmp_path / "tiles"
    with atomic_dir(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        (tmp / "a.txt").write_text("1")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(ConfigError, match=r"tiles: exists and is not empty; pass --overwrite"):
        with atomic_dir(out):
            pass
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"]


def test_atomic_dir_failure_keeps_old_content_and_removes_temp(tmp_path):
    out = tmp_path / "tiles"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError):
        with atomic_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("y")
            raise ValueError("fail")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"]


# ------------------------------------------------------------------ Pillow formats


def test_png_rgb_round_trip_exact(tmp_path, rng):
    arr = rng.integers(0, 256, (12, 17, 3), dtype=np.uint8)
    out = read_image(write_image(tmp_path / "a.png", arr))
    assert out.dtype == np.uint8 and out.shape == (12, 17, 3)
    np.testing.assert_array_equal(out, arr)


def test_jpeg_and_bmp(tmp_path, rng):
    arr = np.full((16, 16, 3), (200, 100, 50), dtype=np.uint8)
    jpg = read_image(write_image(tmp_path / "a.JPG", arr))
    assert jpg.shape == (16, 16, 3) and jpg.dtype == np.uint8
    assert np.abs(jpg.astype(int) - arr).max() <= 3
    bmp = read_image(write_image(tmp_path / "a.bmp", arr))
    np.testing.assert_array_equal(bmp, arr)


def test_greyscale_8_and_16_bit_repeat_to_three_channels(tmp_path, rng):
    g8 = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    out = read_image(write_image(tmp_path / "g8.png", g8))
    assert out.shape == (9, 7, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g8)
    g16 = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
    out16 = read_image(write_image(tmp_path / "g16.png", g16))
    assert out16.dtype == np.uint16 and out16.shape == (9, 7, 3)
    np.testing.assert_array_equal(out16[:, :, 2], g16)
    assert probe(tmp_path / "g16.png") == ImageInfo(7, 9, 3, "uint16")


def test_alpha_dropped_and_palette_expanded(tmp_path, rng):
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: colours must survive untouched
    out = read_image(write_image(tmp_path / "rgba.png", rgba))
    np.testing.assert_array_equal(out, rgba[..., :3])
    la = np.stack([np.arange(64, dtype=np.uint8).reshape(8, 8), np.full((8, 8), 9, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out_la = read_image(tmp_path / "la.png")
    assert out_la.shape == (8, 8, 3)
    np.testing.assert_array_equal(out_la[..., 1], la[..., 0])
    pal = Image.new("P", (4, 4))
    pal.putpalette([10, 20, 30, 200, 210, 220] + [0] * 762)
    pal.putpixel((1, 2), 1)
    pal.save(tmp_path / "p.png")
    out_p = read_image(tmp_path / "p.png")
    assert out_p.shape == (4, 4, 3)
    assert out_p[2, 1].tolist() == [200, 210, 220] and out_p[0, 0].tolist() == [10, 20, 30]


# ------------------------------------------------------------------ TIFF / GeoTIFF / HDF5


def test_geotiff_uint16_keeps_values_and_dtype(tmp_path, rng):
    arr = rng.integers(0, 65536, (10, 12, 3), dtype=np.uint16)
    transform = Affine(10, 0, 5e5, 0, -10, 3e6)
    path = write_image(tmp_path / "g.tif", arr, crs=UTM45, transform=transform)
    out = read_image(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, arr)
    assert probe(path) == ImageInfo(12, 10, 3, "uint16")


def test_tiff_bands(tmp_path, rng):
    one = rng.integers(0, 65536, (6, 5), dtype=np.uint16)
    out = read_image(write_image(tmp_path / "one.tiff", one))
    assert out.shape == (6, 5, 3) and (out[..., 1] == one).all()
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    path = write_image(tmp_path / "rgba.tif", rgba, alpha=True)
    np.testing.assert_array_equal(read_image(path), rgba[..., :3])
    assert probe(path).bands == 3
    four = rng.integers(0, 65536, (6, 5, 4), dtype=np.uint16)  # B, G, R, NIR: all kept
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "bgrn.tif", four)), four)
    multi = rng.random((6, 5, 14), dtype=np.float32)
    out = read_image(write_image(tmp_path / "s2.tif", multi))
    assert out.dtype == np.float32 and out.shape == (6, 5, 14)
    np.testing.assert_array_equal(out, multi)


def test_palette_tiff_is_expanded_to_rgb(tmp_path):
    idx = np.array([[0, 1], [1, 0]], np.uint8)
    path = tmp_path / "pal.tif"
    meta = {"driver": "GTiff", "height": 2, "width": 2, "count": 1, "dtype": "uint8",
            "crs": UTM45, "transform": Affine(1, 0, 0, 0, -1, 2), "photometric": "palette"}
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(idx, 1)
        dst.write_colormap(1, {0: (10, 20, 30, 255), 1: (200, 100, 50, 255)})
    out = read_image(path)
    assert out.dtype == np.uint8 and out[0, 1].tolist() == [200, 100, 50]
    assert out[1, 1].tolist() == [10, 20, 30]
    assert probe(path) == ImageInfo(2, 2, 3, "uint8")


def test_h5_img_key(tmp_path, rng):
    arr = rng.random((32, 32, 14)).astype(np.float32)
    path = write_image(tmp_path / "l4s.h5", arr)
    out = read_image(path)
    assert out.dtype == np.float32 and out.shape == (32, 32, 14)
    np.testing.assert_array_equal(out, arr)
    assert probe(path) == ImageInfo(32, 32, 14, "float32")


def test_h5_wrong_key_names_file_and_keys(tmp_path):
    path = write_image(tmp_path / "x.h5", np.zeros((4, 4, 2), np.float32), h5_key="data")
    with pytest.raises(DataError, match=r"x\.h5: no dataset 'img' .*keys present: data"):
        read_image(path)
    with pytest.raises(DataError, match="keys present: data"):
        probe(path)


# ------------------------------------------------------------------ bad files


def _assert_clean(excinfo, path):
    msg = str(excinfo.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    exc = excinfo.value
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_images_are_detected(tmp_path, rng, suffix):
    arr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = truncate(write_image(tmp_path / f"t{suffix}", arr), 0.6)
    with pytest.raises(DataError) as excinfo:
        read_image(path)
    _assert_clean(excinfo, path)


def test_truncated_png_probes_from_header_only(tmp_path, rng):
    arr = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    path = truncate(write_image(tmp_path / "t.png", arr), 0.5)
    assert probe(path) == ImageInfo(48, 64, 3, "uint8")


@pytest.mark.parametrize("name, content, what", [
    ("missing.png", None, "file not found"),
    ("empty.png", b"", "empty file"),
    ("text.png", b"this is not an image", "not an image"),
    ("text.tif", b"this is not an image either", "not a raster"),
    ("text.h5", b"nor is this", "cannot read HDF5"),
    ("notes.txt", b"hello", "unsupported file type .txt"),
])
def test_bad_files_raise_one_line_data_error(tmp_path, name, content, what):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=what) as excinfo:
        read_image(path)
    _assert_clean(excinfo, path)
    with pytest.raises(DataError, match=what):
        probe(path)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".h5"])
def test_pixel_limit_checked_before_decoding(tmp_path, suffix):
    path = write_image(tmp_path / f"big{suffix}", np.zeros((20, 30, 3), np.uint8))
    with pytest.raises(DataError, match=r"30x20 = 600 pixels is more than the limit of 599"):
        read_image(path, max_pixels=599)
    assert read_image(path, max_pixels=600).shape == (20, 30, 3)
    with pytest.raises(DataError, match="more than the limit"):
        read_mask(path, max_pixels=599)


# ------------------------------------------------------------------ masks and scaling


def test_read_mask_thresholds_any_channel(tmp_path):
    grey = np.array([[0, 127], [128, 255]], np.uint8)
    np.testing.assert_array_equal(read_mask(write_image(tmp_path / "m.png", grey)),
                                  [[False, False], [True, True]])
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 1, 2] = 200  # only the blue channel marks this pixel
    m = read_mask(write_image(tmp_path / "rgb.png", rgb))
    assert m.dtype == bool and m.tolist() == [[False, True], [False, False]]


def test_read_mask_zero_one_label_masks(tmp_path):
    labels = np.array([[0, 1], [1, 0]], np.uint8)
    expected = [[False, True], [True, False]]
    assert read_mask(write_image(tmp_path / "m01.png", labels)).tolist() == expected
    h5 = write_image(tmp_path / "m.h5", labels, h5_key="mask")
    assert read_mask(h5).tolist() == expected


def test_scale_to_unit():
    assert scale_to_unit(np.array([0, 51, 255], np.uint8)).tolist() == pytest.approx([0, 0.2, 1])
    u16 = scale_to_unit(np.array([65535, 0], np.uint16))
    assert u16.dtype == np.float32 and u16.tolist() == [1.0, 0.0]
    assert scale_to_unit(np.array([32767], np.int16)).tolist() == [1.0]
    f = np.array([0.25, 3.5], np.float64)
    out = scale_to_unit(f)
    assert out.dtype == np.float32 and out.tolist() == [0.25, 3.5]
    assert scale_to_unit(np.array([5000], np.uint16), scale=10000).tolist() == [0.5]
    with pytest.raises(ConfigError, match="--scale"):
        scale_to_unit(f, scale=0)


# ------------------------------------------------------------------ writing tiles


def test_write_tile_png_and_geotiff(tmp_path, rng):
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = write_tile(tmp_path / "a", rgb)
    assert path.name == "a.png"
    np.testing.assert_array_equal(read_image(path), rgb)
    u16 = rng.integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    path16 = write_tile(tmp_path / "b.png", u16)
    assert path16.name == "b.tif"
    np.testing.assert_array_equal(read_image(path16), u16)
    transform = Affine(2.5, 0, 600000, 0, -2.5, 3100000)
    geo = write_tile(tmp_path / "c", rgb, {"crs": UTM45, "transform": transform})
    assert geo.suffix == ".tif"
    with rasterio.open(geo) as ds:
        assert ds.crs.to_epsg() == 32645 and ds.transform == transform
    np.testing.assert_array_equal(read_image(geo), rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.tif", "c.tif"]
