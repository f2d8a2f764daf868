import torch

from slidewatch.config.train import AugmentConfig
from slidewatch.data.transforms import EvalTransform, TrainTransform, normalize, to_grayscale


def test_normalize_per_band():
    x = torch.ones(2, 4, 4)
    y = normalize(x, [0.5, 1.0], [0.5, 2.0])
    assert torch.allclose(y[0], torch.ones(4, 4)) and torch.allclose(y[1], torch.zeros(4, 4))


def test_train_transform_output_size_range_and_seeded():
    tf = TrainTransform(AugmentConfig(resize=40, crop=36), size=32)
    x = torch.rand(3, 50, 50)
    torch.manual_seed(1)
    a = tf(x)
    torch.manual_seed(1)
    b = tf(x)
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


def test_multiband_augmentation_keeps_bands_and_skips_saturation():
    tf = TrainTransform(AugmentConfig(), size=16)
    x = torch.rand(14, 16, 16) * 5  # not unit range: must not be clamped
    y = tf(x)
    assert y.shape == (14, 16, 16) and y.max() > 1.5


def test_augmentation_off_is_plain_resize():
    tf = TrainTransform(AugmentConfig(enabled=False), size=8)
    x = torch.rand(3, 16, 16)
    assert torch.allclose(tf(x), EvalTransform(8)(x))


def test_grayscale_is_applied_in_eval_too():
    x = torch.rand(3, 8, 8)
    g = EvalTransform(8, grayscale=True)(x)
    assert torch.allclose(g[0], g[1]) and torch.allclose(g, to_grayscale(x))


def test_channel_shuffle_and_random_grayscale_always_on():
    x = torch.stack([torch.full((8, 8), v) for v in (0.1, 0.5, 0.9)])
    off = dict(hflip=False, vflip=False, translate=0.0, brightness=0.0, contrast=0.0,
               saturation=0.0)
    tf = TrainTransform(AugmentConfig(channel_shuffle=1.0, **off), size=8)
    seen = set()
    for seed in range(20):
        torch.manual_seed(seed)
        seen.add(tuple(round(v, 1) for v in tf(x)[:, 0, 0].tolist()))
    assert len(seen) > 1 and all(sorted(s) == [0.1, 0.5, 0.9] for s in seen)
    g = TrainTransform(AugmentConfig(random_grayscale=1.0, **off), size=8)(x)
    assert torch.allclose(g[0], g[1]) and torch.allclose(g[1], g[2])
