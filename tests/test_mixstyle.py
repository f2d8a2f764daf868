"""MixStyle (augment.mixstyle): statistics mixed between samples, training mode only, nothing
saved with the model."""

import pytest
import torch

from slidewatch.errors import ConfigError
from slidewatch.models import build_model
from slidewatch.models.mixstyle import attach, mix_statistics, stage_modules
from slidewatch.models.segmentation import build_segmenter


def _styled(b=6, c=4, hw=8):
    """Samples with one shared content pattern and a distinct mean / std per sample."""
    g = torch.Generator().manual_seed(0)
    content = torch.randn(1, c, hw, hw, generator=g)
    content = (content - content.mean((2, 3), keepdim=True)) / content.std((2, 3), keepdim=True)
    mu = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1) * 10.0
    sigma = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1)
    return content * sigma + mu, mu, sigma


def test_mix_keeps_content_and_mixes_statistics_between_samples():
    torch.manual_seed(1)
    x, mu, _ = _styled()
    y = mix_statistics(x, alpha=1.0)
    assert y.shape == x.shape
    # content kept: each output channel is an affine map of the input channel (corr 1)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            a, b = x[i, c].flatten(), y[i, c].flatten()
            r = torch.corrcoef(torch.stack([a, b]))[0, 1]
            assert r > 0.9999
    # statistics: each new mean lies between the sample's and another sample's means, and
    # with alpha 1 (lam uniform) some sample takes another's style
    new_mu = y.mean((2, 3))[:, 0]
    assert torch.all(new_mu >= mu.min() - 1e-3) and torch.all(new_mu <= mu.max() + 1e-3)
    assert (new_mu - mu.flatten()).abs().max() > 1.0


def test_mix_of_a_single_sample_is_the_identity():
    x, _, _ = _styled(b=1)
    assert torch.equal(mix_statistics(x), x)


def test_hooks_act_in_training_mode_only_and_are_not_saved():
    torch.manual_seed(0)
    model = build_model("test_efficientnet", weights="none")
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 32, 32) * 0.5 + torch.arange(4.0).view(4, 1, 1, 1)
    model.eval()
    with torch.no_grad():
        before = model(x)
    handles = attach(model, 1.0)
    assert len(handles) == 3
    with torch.no_grad():
        assert torch.equal(model(x), before)  # eval: untouched
        model.train()
        for m in model.modules():  # BatchNorm frozen as in fine-tuning: only MixStyle differs
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        torch.manual_seed(3)
        mixed = model(x)
    assert not torch.allclose(mixed, before, atol=1e-4)
    assert model.state_dict().keys() == plain.keys()
    for h in handles:
        h.remove()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)  # removed: the plain model again


def test_stages_of_a_classifier_and_of_a_segmentation_encoder():
    names = [n for n, _ in stage_modules(build_model("resnet18", weights="none"))]
    assert names == ["layer1", "layer2", "layer3"]
    seg = [n for n, _ in stage_modules(build_segmenter("unet/efficientnet_lite0"))]
    assert len(seg) == 3 and all(n.startswith("net.encoder.model.blocks.") for n in seg)


class _Flat(torch.nn.Module):
    """One conv and a head: no stages past the stem."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 2)

    def get_classifier(self):
        return self.fc


def test_a_model_without_stages_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="augment.mixstyle: found 0 backbone stages"):
        attach(_Flat(), 0.5)
    with pytest.raises(ConfigError, match="augment.mixstyle: found 0 backbone stages"):
        attach(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), 0.5)  # no get_classifier
    with pytest.raises(ConfigError, match="must be in"):
        attach(build_model("resnet18", weights="none"), 1.5)


def test_training_with_mixstyle_changes_the_weights_not_the_model_folder(tiny_tiles, tmp_path):
    """The same seeded run with and without MixStyle: other weights, the same tensors saved,
    and the saved model predicts with no hook attached (a plain model folder)."""
    from _factories import tiny_config

    from slidewatch.models.checkpoint import load_model
    from slidewatch.training.loop import train

    logs = []
    plain = train(tiny_config(tiny_tiles), tmp_path / "plain", log=logs.append)
    mixed = train(tiny_config(tiny_tiles, **{"augment.mixstyle": 1.0}), tmp_path / "mixed",
                  log=logs.append)
    assert any(line.startswith("mixstyle: p 1") for line in logs)
    a, _ = load_model(plain.out_dir)
    b, _ = load_model(mixed.out_dir)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if sa[k].is_floating_point())
    assert not b._forward_hooks and all(not m._forward_hooks for m in b.modules())


def test_mixstyle_out_of_range_is_a_config_error(tiny_tiles):
    from _factories import tiny_config

    from slidewatch.config.train import validate

    with pytest.raises(ConfigError, match="augment.mixstyle"):
        validate(tiny_config(tiny_tiles, **{"augment.mixstyle": 1.5}))
