"""`slidewatch explain`: class-activation maps that a frozen model cannot silently break, and
localisation scores with known answers."""

import csv
import json

import numpy as np
import pytest
import torch
from _factories import make_class_dataset, train_tiny_cnn
from conftest import make_scene
from PIL import Image

from slidewatch.cli.main import main
from slidewatch.explain.cams import METHODS, compute_cam, default_target_layer
from slidewatch.explain.localisation import (
    border_bias,
    cam_iou,
    energy_inside,
    pointing_game,
    uniform_reference,
)
from slidewatch.models import build_model
from slidewatch.models.checkpoint import load_model
from slidewatch.models.freezing import freeze_backbone, set_batchnorm_eval


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    tiles = make_class_dataset(root / "tiles", images=2, per_image=3)
    out = root / "model"
    train_tiny_cnn(tiles, out)
    return out


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(model_dir, "cpu")


def _image(seed=0, size=32):
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- CAMs


@pytest.mark.parametrize("method", METHODS)
def test_cam_has_input_size_and_unit_range(loaded, method):
    model, meta = loaded
    cam = compute_cam(model, meta, _image(), method, None)
    assert cam.shape == (32, 32)
    assert cam.dtype == np.float32
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    assert cam.max() > 0.0


def test_frozen_model_still_gets_a_cam_and_keeps_its_flags_and_modes(loaded):
    model, meta = loaded
    reference = compute_cam(model, meta, _image(1), "gradcam", "conv3")
    freeze_backbone(model)
    model.train()
    model.conv1.eval()  # mixed modes, as set_batchnorm_eval leaves them
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    assert not model.conv3.weight.requires_grad
    try:
        cam = compute_cam(model, meta, _image(1), "gradcam", "conv3")
        assert cam.max() > 0.0
        np.testing.assert_allclose(cam, reference, atol=1e-5)
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert {n: m.training for n, m in model.named_modules()} == modes
        assert all(p.grad is None for p in model.parameters())
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
        model.eval()


def test_default_target_layer_per_architecture():
    import timm

    assert default_target_layer(build_model("baseline_cnn", num_classes=2, in_chans=3,
                                            weights="none", drop_rate=0.0)) == "conv3"
    effnet = timm.create_model("test_efficientnet", num_classes=2)
    assert default_target_layer(effnet) == "conv_head"
    set_batchnorm_eval(effnet)
    freeze_backbone(effnet)
    from slidewatch.meta import ModelMeta

    meta = ModelMeta("test_efficientnet", ["landslide", "non_landslide"], 3, 64,
                     [0.5] * 3, [0.5] * 3)
    cam = compute_cam(effnet, meta, _image(2, 64), "gradcam", None)
    assert cam.shape == (64, 64) and cam.max() > 0
    assert not any(p.requires_grad for n, p in effnet.named_parameters()
                   if not n.startswith("classifier"))


# ----------------------------------------------------------------------------- localisation


def test_scores_of_a_cam_exactly_on_the_mask():
    mask = np.zeros((20, 20), bool)
    mask[5:10, 8:14] = True
    cam = mask.astype(float)
    assert energy_inside(cam, mask) == 1.0
    assert pointing_game(cam, mask) is True
    assert cam_iou(cam, mask) == 1.0
    assert energy_inside(1 - cam, mask) == 0.0
    assert pointing_game(1 - cam, mask) is False
    assert cam_iou(1 - cam, mask) == 0.0
    half = cam.copy()
    half[5:10, 8:11] = 0.4  # below the threshold: half of the mask's pixels drop out
    assert cam_iou(half, mask) == pytest.approx(0.5)


def test_uniform_map_border_share_is_the_band_area():
    figures = border_bias(np.full((40, 50), 0.3), band=0.1)  # 4 rows, 5 columns of band
    assert figures["border"] == pytest.approx(1 - (32 * 40) / (40 * 50))
    corners = [figures[k] for k in ("top_left", "top_right", "bottom_left", "bottom_right")]
    assert corners == pytest.approx([4 * 5 / (40 * 50)] * 4)
    assert uniform_reference((40, 50), 0.1) == pytest.approx(figures)


def test_cam_in_one_corner():
    cam = np.zeros((30, 30))
    cam[27:, :3] = 1.0
    figures = border_bias(cam, band=0.1)
    assert figures["bottom_left"] == 1.0 and figures["border"] == 1.0
    assert figures["top_left"] == figures["top_right"] == figures["bottom_right"] == 0.0
    assert np.isnan(energy_inside(np.zeros((4, 4)), np.ones((4, 4), bool)))


# ----------------------------------------------------------------------------- CLI


def _tiles_from_scene(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[:24, :24] = True  # a landslide in the top-left tile only
    scene = make_scene(tmp_path, "r1", {"a": (img, mask)})
    tiles = tmp_path / "tiles"
    assert main(["data", "tiles", str(scene), "--out", str(tiles), "--tile", "32",
                 "--stride", "32", "--quiet"]) == 0
    return scene, tiles, mask


def test_cli_writes_pictures_csv_and_localisation(model_dir, tmp_path):
    scene, tiles, mask = _tiles_from_scene(tmp_path)
    out = tmp_path / "cams"
    code = main(["explain", str(model_dir), str(tiles), "--out", str(out), "--quiet",
                 "--masks-from", str(tiles), "--scenes", str(scene)])
    assert code == 0
    rows = list(csv.DictReader(open(out / "cams.csv")))
    assert len(rows) == 4
    for row in rows:
        with Image.open(out / row["cam_png"]) as cam_png:
            assert cam_png.mode == "RGB" and cam_png.size[0] >= 8  # conv3 of 32 px is 8x8
        with Image.open(out / row["overlay_png"]) as overlay:
            assert overlay.size == (32, 32)
        assert row["method"] == "gradcam" and row["target_layer"] == "conv3"
        assert 0 <= float(row["probability"]) <= 1 and row["outcome"] in ("TP", "FP", "FN", "TN")
    slide = [r for r in rows if r["true_class"] == "landslide"]
    assert len(slide) == 1 and int(slide[0]["mask_pixels"]) == 24 * 24
    assert 0 <= float(slide[0]["energy_inside"]) <= 1 and slide[0]["iou"] != ""
    assert all(r["energy_inside"] == "" for r in rows if r["true_class"] != "landslide")
    summary = json.loads((out / "localisation.json").read_text())
    assert summary["by_outcome"]["all"]["energy_inside"]["n"] == 1
    assert summary["by_class"]["all"]["border_share"]["n"] == 4


def test_cli_unknown_target_layer_is_one_line_exit_2(model_dir, tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    code = main(["explain", str(model_dir), str(img), "--out", str(tmp_path / "o"),
                 "--target-layer", "conv9"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: --target-layer 'conv9'") and "conv3" in lines[0]
    assert not (tmp_path / "o").exists()
