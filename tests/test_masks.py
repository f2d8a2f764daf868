"""Images with masks for segmentation: pairing, crops centred on landslides, augmentation that
moves image and mask together, and the bad masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_scene, write_image

from slidewatch.config.train import AugmentConfig
from slidewatch.data.masks import (
    JointTransform,
    MaskedImages,
    SceneCrops,
    fit_to_size,
    masked_samples,
    read_binary_mask,
)
from slidewatch.errors import DataError

GEOMETRY_ONLY = AugmentConfig(hflip=True, vflip=True, rotate90=True, translate=0.2,
                              brightness=0.0, contrast=0.0, saturation=0.0)


def pattern(rng, h=48, w=40):
    """An image whose mask is a function of its pixels: landslide where band 0 > 0.5."""
    image = torch.from_numpy(rng.uniform(0, 1, (3, h, w)).astype(np.float32))
    return image, (image[:1] > 0.5).float()


@pytest.mark.parametrize("seed", range(8))
def test_geometric_augmentation_moves_image_and_mask_together(seed):
    rng = np.random.default_rng(seed)
    image, mask = pattern(rng)
    torch.manual_seed(seed)
    out_image, out_mask = JointTransform(GEOMETRY_ONLY)(image, mask)
    assert out_mask.shape[-2:] == out_image.shape[-2:]
    assert torch.equal(out_mask, (out_image[:1] > 0.5).float())


def test_augmentation_changes_something_and_photometric_leaves_the_mask():
    rng = np.random.default_rng(0)
    image, mask = pattern(rng, 32, 32)
    cfg = AugmentConfig(hflip=True, vflip=True, rotate90=True, translate=0.0, brightness=0.3,
                        contrast=0.3, saturation=0.3)
    changed = 0
    for seed in range(6):
        torch.manual_seed(seed)
        out_image, out_mask = JointTransform(cfg)(image, mask)
        assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
        assert out_mask.sum() == mask.sum()  # flips and rotations keep every mask pixel
        changed += not torch.equal(out_image, image)
    assert changed >= 4


def scene(tmp_path, name="s1", size=96, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (size, size, 3)).astype(np.uint8)
    mask = np.zeros((size, size), bool)
    mask[60:66, 10:16] = True
    return make_scene(tmp_path / "scenes", name, {"a": (image, mask)})


def test_crops_centred_on_landslides_by_share(tmp_path):
    samples = masked_samples(scene(tmp_path), ("landslide", "non_landslide"))
    torch.manual_seed(0)
    always = SceneCrops(samples, 32, crops_per_image=20, positive_share=1.0)
    assert len(always) == 20
    assert all(always[i]["mask"].sum() > 0 for i in range(20))
    never = SceneCrops(samples, 32, crops_per_image=40, positive_share=0.0)
    hits = sum(bool(never[i]["mask"].sum() > 0) for i in range(40))
    assert hits < 30  # the landslide covers a small corner: most random crops miss it
    item = always[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].shape == (1, 32, 32)


def test_class_folders_with_masks_and_their_rules(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "bijie"
    big = rng.integers(0, 255, (80, 100, 3)).astype(np.uint8)
    small = rng.integers(0, 255, (20, 30, 3)).astype(np.uint8)
    write_image(root / "landslide" / "ls_1.jpg", big)
    mask = np.zeros((80, 100), np.uint8)
    mask[10:30, 20:60] = 255
    write_image(root / "masks" / "ls_1.png", mask)
    write_image(root / "non_landslide" / "nls_1.jpg", small)
    samples = masked_samples(root, ("landslide", "non_landslide"))
    assert [(s.image.name, s.mask.name if s.mask else None) for s in samples] == \
        [("ls_1.jpg", "ls_1.png"), ("nls_1.jpg", None)]
    ds = MaskedImages(samples, 64)
    a, b = ds[0], ds[1]
    assert a["image"].shape == (3, 64, 64) and a["mask"].shape == (1, 64, 64)
    assert a["mask"].sum() > 0 and b["mask"].sum() == 0
    assert torch.all(b["image"][:, 20:, :] == 0)  # the small image is padded, not stretched
    write_image(root / "landslide" / "ls_2.jpg", big)
    with pytest.raises(DataError, match="ls_2.jpg: a landslide image without a mask"):
        masked_samples(root, ("landslide", "non_landslide"))


def test_bad_masks_are_named(tmp_path):
    odd = np.zeros((8, 8), np.uint8)
    odd[0, 0] = 128
    path = write_image(tmp_path / "m.png", odd)
    with pytest.raises(DataError, match=r"m.png: mask values must be 0 and 255 .* found 0, 128"):
        read_binary_mask(path)
    ok = write_image(tmp_path / "ok.png", np.full((8, 8), 255, np.uint8))
    with pytest.raises(DataError, match="mask is 8x8 pixels, its image 10x8"):
        read_binary_mask(ok, (8, 10))
    assert read_binary_mask(write_image(tmp_path / "one.png", np.ones((4, 4), np.uint8))).all()


def test_data_without_masks_is_refused(tmp_path):
    write_image(tmp_path / "d" / "landslide" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="class folders without masks/"):
        masked_samples(tmp_path / "d", ("landslide", "non_landslide"))


def test_fit_to_size_pads_small_and_shrinks_large():
    image, mask = torch.ones(3, 10, 20), torch.ones(1, 10, 20)
    pi, pm = fit_to_size(image, mask, 32)
    assert pi.shape == (3, 32, 32) and pm[:, :10, :20].all() and pm.sum() == 200
    ri, rm = fit_to_size(torch.ones(3, 50, 100), torch.ones(1, 50, 100), 32)
    assert ri.shape == (3, 32, 32) and rm[:, :16, :].all() and rm[:, 16:, :].sum() == 0


def test_scene_windows_follow_the_reference_tiling_plus_edge_windows():
    from slidewatch.data.masks import grid_starts
    from slidewatch.data.tiling import tile_positions

    assert grid_starts(100, 32) == ([0, 32, 64, 68], True)
    assert grid_starts(96, 32) == ([0, 32, 64], False)
    assert grid_starts(20, 32) == ([0], False)
    # the regular part is the tiler's grid at stride = tile (`slidewatch data tiles`)
    rows = sorted({r for r, _ in tile_positions(100, 70, 32, 32)})
    cols = sorted({c for _, c in tile_positions(100, 70, 32, 32)})
    assert rows == grid_starts(100, 32)[0][:-1] and cols == grid_starts(70, 32)[0][:-1]
