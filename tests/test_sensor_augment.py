"""Sensor and radiometry augmentation (issue 12): each part does what it says, stays in unit
range, touches the image bands only, moves masks with the image on resolution changes, and
recipes without it train exactly as before (no random numbers drawn)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidewatch.config.train import AugmentConfig, from_dict
from slidewatch.data.masks import JointTransform
from slidewatch.data.transforms import (
    TrainTransform,
    change_resolution,
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
])
def test_bad_sensor_settings_are_named(key, value, words):
    with pytest.raises(ConfigError, match=words.replace("+", r"\+")):
        from_dict({"augment": {key: value}})


def test_sensor_settings_read_from_yaml_mapping():
    cfg = from_dict({"augment": {**SENSOR, "resolution": [0.5, 2]}})
    assert cfg.augment.resolution == [0.5, 2.0] and cfg.augment.jpeg == 0.5
    assert np.isclose(cfg.augment.gamma, 0.5)
