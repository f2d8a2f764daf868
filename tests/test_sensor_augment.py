"""Sensor and radiometry augmentation (issue 12): each part does what it says, stays in unit
range, touches the image bands only, moves masks with the image on resolution changes, and
recipes without it train exactly as before (no random numbers drawn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidewatch.config.train import AugmentConfig, from_dict
from slidewatch.data.dataset import TileDataset
from slidewatch.data.folders import Sample
from slidewatch.data.masks import JointTransform
from slidewatch.data.transforms import (
    THIN_HAZE,
    TrainTransform,
    add_clouds,
    change_resolution,
    cloud_shape,
    false_colour,
    jpeg_roundtrip,
    radiometry,
    rotate_hue,
)
from slidewatch.errors import ConfigError

OFF = dict(hflip=False, vflip=False, translate=0.0, brightness=0.0, contrast=0.0,
           saturation=0.0)
SENSOR = dict(gain=0.3, offset=0.1, gamma=0.5, hue=0.1, false_colour=0.5, blur=0.3,
              sharpen=0.3, noise=0.03, jpeg=0.5)


def image(seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, size, size, generator=g)


def test_radiometry_off_is_identity_and_draws_no_random_numbers():
    x = image()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    y = radiometry(x, AugmentConfig(**OFF), torch.default_generator)
    assert torch.equal(x, y)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("part", sorted(SENSOR))
def test_each_part_changes_the_image_and_stays_in_unit_range(part):
    x = image()
    value = 0.99 if part in ("false_colour", "blur", "sharpen", "jpeg") else SENSOR[part]
    cfg = AugmentConfig(**OFF, **{part: value})
    changed = 0
    for seed in range(4):
        torch.manual_seed(seed)
        y = radiometry(x, cfg, torch.default_generator)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        changed += not torch.allclose(x, y, atol=1e-4)
    assert changed >= 3


def test_false_colour_makes_vegetation_bright_in_the_infrared_band():
    veg = torch.tensor([0.15, 0.35, 0.12]).view(3, 1, 1).expand(3, 4, 4)
    scar = torch.tensor([0.60, 0.57, 0.52]).view(3, 1, 1).expand(3, 4, 4)
    x = torch.cat([veg, scar], dim=2)
    seen = set()
    for seed in range(16):
        y = false_colour(x, torch.Generator().manual_seed(seed))
        nir = 0 if torch.allclose(y[1], x[0]) else 1  # NIR-R-G or R-NIR-G
        seen.add(nir)
        v, s = y[:, 0, 0], y[:, 0, -1]
        assert v[nir] > max(v[c] for c in range(3) if c != nir)  # vegetation: NIR brightest
        assert s[nir] < max(s[c] for c in range(3) if c != nir)  # bare scar: NIR dimmer
    assert seen == {0, 1}


def test_hue_rotation_keeps_grey_and_a_full_turn():
    grey = torch.full((3, 4, 4), 0.4)
    assert torch.allclose(rotate_hue(grey, 0.2), grey, atol=1e-5)
    x = image(1) * 0.5 + 0.25
    assert torch.allclose(rotate_hue(x, 1.0), x, atol=1e-5)
    assert not torch.allclose(rotate_hue(x, 0.25), x, atol=1e-2)


def test_jpeg_roundtrip_is_lossy_but_close():
    x = image(2, 64)
    y = jpeg_roundtrip(x, 30)
    assert y.shape == x.shape and not torch.equal(x, y)
    smooth = torch.nn.functional.avg_pool2d(x[None], 9, 1, 4, count_include_pad=False)[0]
    assert float((jpeg_roundtrip(smooth, 90) - smooth).abs().mean()) < 0.02


@pytest.mark.parametrize("factor", [0.5, 0.7, 1.6, 2.0])
def test_resolution_change_keeps_the_size_and_scales_objects(factor):
    x = torch.zeros(1, 64, 64)
    x[:, 24:40, 24:40] = 1.0  # a 16 x 16 square in the centre
    y = change_resolution(x, factor, torch.Generator().manual_seed(0), binary_from=0)
    assert y.shape == x.shape
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    if factor > 1:  # shrunk and reflected at the border: the square's area / factor**2
        centre = y[:, 16:48, 16:48].sum()
        assert abs(float(centre) - 256 / factor**2) <= 0.2 * 256 / factor**2 + 8
    else:
        assert float(y.sum()) > 256  # enlarged


@pytest.mark.parametrize("seed", range(6))
def test_resolution_change_moves_image_and_mask_together(seed):
    g = torch.Generator().manual_seed(seed)
    blocks = (torch.rand(1, 6, 6, generator=g) > 0.5).float()
    mask = torch.nn.functional.interpolate(blocks[None], size=(48, 48), mode="nearest")[0]
    img = torch.cat([0.2 + 0.6 * mask, torch.rand(2, 48, 48, generator=g)])
    cfg = AugmentConfig(**OFF, rotate90=True, resolution=[0.5, 2.0])
    torch.manual_seed(seed)
    out_image, out_mask = JointTransform(cfg)(img, mask)
    assert out_mask.shape == (1, 48, 48) and out_image.shape == (3, 48, 48)
    agree = (out_mask == (out_image[:1] >= 0.5).float()).float().mean()
    assert float(agree) > 0.995


def test_classifier_transform_with_sensor_parts_and_terrain_bands():
    cfg = AugmentConfig(**SENSOR, resolution=[0.5, 2.0], channel_shuffle=0.5)
    x = torch.cat([image(3, 40), torch.full((2, 40, 40), 7.0)])  # 3 colour + 2 terrain bands
    tf = TrainTransform(cfg, size=32, color_bands=3)
    torch.manual_seed(0)
    a = tf(x)
    torch.manual_seed(0)
    b = tf(x)
    assert a.shape == (5, 32, 32) and torch.equal(a, b)
    assert torch.allclose(a[3:], torch.full((2, 32, 32), 7.0))  # terrain keeps its values
    assert float(a[:3].min()) >= 0 and float(a[:3].max()) <= 1


@pytest.mark.parametrize("key,value,words", [
    ("resolution", [2.0, 0.5], "low <= high"),
    ("resolution", [0.1, 2.0], "0.25 <= low"),
    ("gain", 1.5, "augment.gain"),
    ("gamma", -0.1, "augment.gamma"),
    ("noise", 0.9, "augment.noise"),
    ("clouds", 1.0, "augment.clouds"),
])
def test_bad_sensor_settings_are_named(key, value, words):
    with pytest.raises(ConfigError, match=words.replace("+", r"\+")):
        from_dict({"augment": {key: value}})


def test_sensor_settings_read_from_yaml_mapping():
    cfg = from_dict({"augment": {**SENSOR, "resolution": [0.5, 2]}})
    assert cfg.augment.resolution == [0.5, 2.0] and cfg.augment.jpeg == 0.5
    assert np.isclose(cfg.augment.gamma, 0.5)


# ------------------------------------------------------------------------- synthetic clouds


@pytest.mark.parametrize("cover", [0.15, 0.4, 0.7])
def test_cloud_shape_covers_about_the_share_drawn(cover):
    g = torch.Generator().manual_seed(1)
    alpha = cloud_shape(96, 80, g, cover)
    assert alpha.shape == (96, 80) and float(alpha.min()) >= 0 and float(alpha.max()) <= 1
    assert abs(float((alpha > 0).float().mean()) - cover) < 0.1


def test_clouds_are_brighter_than_the_ground_in_every_band_standardised_or_not():
    unit = torch.tensor([0.1, 0.3, 0.2]).view(3, 1, 1).expand(3, 64, 64).clone()
    standardised = torch.tensor([-1.0, 0.5, 2.0]).view(3, 1, 1).expand(3, 64, 64).clone()
    for x in (unit, standardised):
        y = add_clouds(x, torch.Generator().manual_seed(3), thick=True)
        up = y - x
        assert float(up.min()) >= -1e-6  # nothing darker, in any band
        under = up.amin(0) > 1e-4  # under the cloud every band is brighter
        assert 0.1 < float(under.float().mean()) < 0.8
        assert torch.equal(under, up.amax(0) > 1e-4)
    assert float(y.max()) > 2.0  # standardised data is not clipped to unit range
    assert float(add_clouds(unit, torch.Generator().manual_seed(3), thick=True)[0].max()) > 0.5


def test_thin_haze_leaves_most_of_the_ground_visible():
    x = torch.full((3, 48, 48), 0.2)
    x[:, ::2] = 0.3  # some texture, so the image has a standard deviation
    for seed in range(5):
        y = add_clouds(x, torch.Generator().manual_seed(seed), thick=False)
        colour_gap = 1.0 - 0.2  # at most white over the darkest ground
        assert float((y - x).max()) <= THIN_HAZE[1] * colour_gap + 1e-5
        assert float(y.max()) <= 1.0


@pytest.mark.parametrize("seed", range(4))
def test_segmentation_clouds_stay_off_the_landslide_and_the_mask_is_kept(seed):
    mask = torch.zeros(1, 64, 64)
    mask[:, 20:40, 24:44] = 1
    img = 0.3 + 0.2 * image(seed, 64)
    cfg = AugmentConfig(**OFF, clouds=0.99)
    torch.manual_seed(seed)
    out_image, out_mask = JointTransform(cfg)(img.clone(), mask.clone())
    assert torch.equal(out_mask, mask)
    assert torch.equal(out_image[:, 20:40, 24:44], img[:, 20:40, 24:44])
    assert not torch.equal(out_image, img)  # the cloud went somewhere else


def test_classifier_clouds_are_thick_on_landslide_free_tiles_and_haze_on_landslides(tmp_path):
    from PIL import Image

    arr = np.full((48, 48, 3), 50, np.uint8)
    arr[::2] = 80
    paths = []
    for name in ("a", "b"):
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(arr).save(paths[-1])
    cfg = AugmentConfig(**OFF, clouds=0.99)
    tf = TrainTransform(cfg, size=48, positive_index=0)
    ds = TileDataset([Sample(paths[0], 0, "a", "r"), Sample(paths[1], 1, "b", "r")],
                     transform=tf)
    x = torch.from_numpy(arr.transpose(2, 0, 1) / 255.0).float()
    gap = 1.0 - 50 / 255
    for seed in range(4):
        torch.manual_seed(seed)
        landslide, clear = ds[0]["image"], ds[1]["image"]
        assert float((landslide - x).max()) <= THIN_HAZE[1] * gap + 1e-5
        assert float((clear - x).max()) > THIN_HAZE[1] * gap
    # without the label (e.g. a transform called on its own) only haze
    torch.manual_seed(0)
    assert float((tf(x) - x).max()) <= THIN_HAZE[1] * gap + 1e-5
