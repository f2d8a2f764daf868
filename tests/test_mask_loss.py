"""The training-only mask loss of a classifier (mask_loss): tiles carry their piece of the mask,
the mask follows the image's geometry, only known masks are learnt from, nothing is saved."""

import numpy as np
import pytest
import torch
from _factories import interrupt_after_saves, tiny_config
from conftest import make_scene
from PIL import Image

from slidewatch.cli.main import main
from slidewatch.config.train import AugmentConfig, validate
from slidewatch.data.dataset import TileDataset
from slidewatch.data.folders import scan_class_folders
from slidewatch.data.masks import TileMasks
from slidewatch.data.tiling import tile_scenes
from slidewatch.data.transforms import TrainTransform
from slidewatch.errors import ConfigError
from slidewatch.models import build_model
from slidewatch.training.loop import train
from slidewatch.training.mask_loss import MaskHead


def _scene_with_blobs(rng, size=64):
    """A green image whose landslide pixels are the bright ones (mask = a function of pixels)."""
    image = np.zeros((size, size, 3), np.uint8)
    image[..., 1] = rng.integers(90, 140, (size, size))
    mask = np.zeros((size, size), bool)
    for r, c in ((5, 6), (40, 10), (22, 44)):
        mask[r:r + 12, c:c + 9] = True
    image[mask] = (230, 230, 230)
    return image, mask


def test_tiles_carry_their_piece_of_the_mask(tmp_path, rng):
    image, mask = _scene_with_blobs(rng)
    scene = make_scene(tmp_path, "r", {"a": (image, mask)})
    tile_scenes([scene], tmp_path / "t", tile=16, stride=16, min_landslide=0.05)
    written = sorted((tmp_path / "t" / "masks").iterdir())
    landslide = sorted((tmp_path / "t" / "landslide").iterdir())
    assert [p.stem for p in written] == [p.stem for p in landslide] and written
    for path in written:  # r<row>_c<col>: the mask's own pixels there, 0 / 255
        r, c = (int(x[1:]) for x in path.stem.split("__")[-1].split("_"))
        piece = np.asarray(Image.open(path))
        assert set(np.unique(piece)) <= {0, 255}
        assert np.array_equal(piece > 0, mask[r:r + 16, c:c + 16])


def test_a_class_named_like_the_masks_folder_is_one_line(tmp_path, rng):
    image, mask = _scene_with_blobs(rng)
    scene = make_scene(tmp_path, "r", {"a": (image, mask)})
    with pytest.raises(ConfigError, match="'masks' is the folder of the tiles' masks"):
        tile_scenes([scene], tmp_path / "t", tile=16, classes=("masks", "other"))
    assert not (tmp_path / "t").exists()


def test_masks_of_samples_known_unknown_and_landslide_free(tmp_path, rng):
    image, mask = _scene_with_blobs(rng)
    scene = make_scene(tmp_path, "r", {"a": (image, mask)})
    tiles = tmp_path / "t"
    tile_scenes([scene], tiles, tile=16, stride=16, min_landslide=0.05)
    lost = sorted((tiles / "masks").iterdir())[0]
    lost.unlink()  # a landslide tile without its mask: unknown, not learnt from
    samples = scan_class_folders(tiles)
    masks = TileMasks(samples)
    got = {s.path.stem: masks(i, (16, 16)) for i, s in enumerate(samples)}
    assert got[lost.stem] is None
    positives = sum(s.label == 0 for s in samples)
    assert masks.known() == (positives - 1, positives)
    for i, s in enumerate(samples):
        if s.label == 1:
            assert not got[s.path.stem].any()  # landslide-free: all zero
        elif s.path.stem != lost.stem:
            assert got[s.path.stem].mean() >= 0.05


def test_mask_follows_the_geometry_and_escapes_colour_changes(tmp_path, rng):
    image, mask = _scene_with_blobs(rng)
    scene = make_scene(tmp_path, "r", {"a": (image, mask)})
    tiles = tmp_path / "t"
    tile_scenes([scene], tiles, tile=32, stride=16, min_landslide=0.05)
    samples = scan_class_folders(tiles, allow_empty=True)
    aug = AugmentConfig(resize=40, crop=32, hflip=True, vflip=True, rotate90=True,
                        translate=0.1, brightness=0.0, contrast=0.0, saturation=0.0)
    ds = TileDataset(samples, transform=TrainTransform(aug, 32, color_bands=3),
                     masks=TileMasks(samples))
    torch.manual_seed(0)
    checked = 0
    for i in range(len(ds)):
        item = ds[i]
        bright = item["image"].mean(0) > 0.7  # the landslide pixels, wherever they moved
        inside = (item["mask"][0] > 0.5)
        assert item["mask_known"] == 1.0 and item["image"].shape == (3, 32, 32)
        agree = (bright == inside).float().mean().item()
        assert agree > 0.97, (samples[i].path.name, agree)
        checked += int(inside.any())
    assert checked >= 3
    # colour jitter changes the image bands, never the mask band
    aug = AugmentConfig(resize=32, crop=32, brightness=0.5, contrast=0.5, saturation=0.5)
    ds = TileDataset(samples, transform=TrainTransform(aug, 32, color_bands=3),
                     masks=TileMasks(samples))
    item = ds[0]
    assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}


def test_head_learns_from_known_masks_only_and_reaches_the_backbone():
    torch.manual_seed(0)
    model = build_model("test_efficientnet", weights="none")
    head = MaskHead(model, 1.0)
    model.train()
    x = torch.randn(4, 3, 32, 32)
    mask = (torch.rand(4, 1, 32, 32) > 0.5).float()
    model(x)
    unknown = head.loss({"mask": mask, "mask_known": torch.zeros(4)}, torch.device("cpu"))
    assert unknown.item() == 0.0
    model(x)
    loss = head.loss({"mask": mask, "mask_known": torch.tensor([1.0, 0, 0, 0])},
                     torch.device("cpu"))
    loss.backward()
    assert loss.item() > 0
    assert head.conv.weight.grad.abs().sum() > 0
    last = [p for n, p in model.named_parameters() if n.startswith("conv_head")][0]
    assert last.grad is not None and last.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        model(x)  # evaluation keeps no features
    with pytest.raises(RuntimeError):
        head.loss({"mask": mask, "mask_known": torch.ones(4)}, torch.device("cpu"))
    head.remove()


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    out = []
    for k, region in enumerate(("north", "south")):
        pairs = {f"s{j}": _scene_with_blobs(np.random.default_rng(10 * k + j), size=96)
                 for j in range(3)}
        out.append(make_scene(root, region, pairs))
    return [str(s) for s in out]


def _config(scenes, **over):
    return tiny_config(scenes[0], **{"data.paths": scenes, "data.tile": 32, "data.stride": 32,
                                     **over})


def test_training_with_the_mask_loss_saves_a_plain_classifier(scenes, tmp_path):
    train(_config(scenes, mask_loss=2.0), tmp_path / "with")
    history = (tmp_path / "with" / "history.csv").read_text().splitlines()
    assert "train_loss_mask" in history[0].split(",")
    train(_config(scenes), tmp_path / "without")
    from safetensors.torch import load_file

    a = load_file(tmp_path / "with" / "model.safetensors")
    b = load_file(tmp_path / "without" / "model.safetensors")
    assert a.keys() == b.keys()  # no head saved: a plain classifier's folder
    assert any(not torch.equal(a[k], b[k]) for k in a)  # and the loss did change the weights
    tiles = tmp_path / "with" / "tiles" / "north"
    code = main(["predict", str(tmp_path / "with"), str(tiles), "--out", str(tmp_path / "p.csv"),
                 "--device", "cpu", "--quiet"])
    assert code == 0  # the tile folder's masks/ are labels, not images to predict
    rows = (tmp_path / "p.csv").read_text().splitlines()[1:]
    assert rows and not any("/masks/" in r for r in rows)
    assert len(rows) == sum(1 for p in tiles.rglob("*.png") if p.parent.name != "masks")


def test_an_interrupted_run_resumes_its_mask_head(scenes, tmp_path, monkeypatch):
    import slidewatch.training.loop as T

    cfg = _config(scenes, mask_loss=1.0, **{"phase2.epochs": 2})
    full = train(cfg, tmp_path / "full")
    real = interrupt_after_saves(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut")
    monkeypatch.setattr(T, "save_resume", real)
    resumed = train(cfg, tmp_path / "cut", resume=True)
    last, again = full.history[-1], resumed.history[-1]
    assert again["train_loss_mask"] == pytest.approx(last["train_loss_mask"], rel=1e-5)
    assert again["train_loss"] == pytest.approx(last["train_loss"], rel=1e-5)


@pytest.mark.parametrize("over, words", [
    ({"mask_loss": -1.0}, "mask_loss: must be >= 0"),
    ({"mask_loss": 1.0, "task": "segment", "model.name": "unet_tiny",
      "early_stopping_metric": "val_iou"}, "mask_loss: is for classifiers"),
    ({"mask_loss": 1.0, "augment.grayscale": True}, "augment.grayscale"),
])
def test_mask_loss_settings_that_cannot_work_are_one_line(tmp_path, over, words):
    with pytest.raises(ConfigError, match=words):
        validate(tiny_config(tmp_path, **over))


def test_mask_loss_without_any_mask_is_one_line(tmp_path, capsys):
    from _factories import make_class_dataset

    data = make_class_dataset(tmp_path / "d", images=3, per_image=2)
    cfg = tiny_config(data, mask_loss=1.0)
    from slidewatch.errors import DataError

    with pytest.raises(DataError, match="no landslide training image has a mask"):
        train(cfg, tmp_path / "out")


def test_a_tile_folder_is_a_segmentation_dataset_too(tmp_path, rng):
    from slidewatch.data.masks import masked_samples

    image, mask = _scene_with_blobs(rng, size=96)
    scene = make_scene(tmp_path, "r", {"a": (image, mask)})
    tiles = tmp_path / "t"
    tile_scenes([scene], tiles, tile=32, stride=32, min_landslide=0.05)
    found = masked_samples(tiles, ["landslide", "non_landslide"])
    positives = [s for s in found if s.mask is not None]
    assert len(found) == len(list((tiles / "landslide").iterdir())) + len(
        list((tiles / "non_landslide").iterdir()))
    assert positives and all(s.image.parent.name == "landslide" for s in positives)
