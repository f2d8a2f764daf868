"""Registry, baseline CNN and freezing (tiny timm test models; big ones on the meta device)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from slidewatch.errors import ConfigError, ModelError, WeightsError
from slidewatch.models import (
    DEFAULT_MODEL,
    MODELS,
    BaselineCNN,
    backbone_parameters,
    blocks,
    build_model,
    check_model_name,
    freeze_backbone,
    get_head,
    list_models,
    model_data_config,
    set_batchnorm_eval,
    trainable_summary,
    unfreeze_top_blocks,
    unfreeze_top_layers,
    weighted_layers,
)

STUDY_NAMES = {"baseline_cnn", "efficientnet_b3", "efficientnet_b4", "resnet50", "mobilenetv2_100",
               "mobilenetv3_large_100", "densenet121", "nasnetalarge", "efficientnet_lite0",
               "efficientnet_lite1", "efficientnet_lite2"}
TIMM_NAMES = sorted(STUDY_NAMES - {"baseline_cnn"})


def _head_dropout(model: nn.Module) -> float:
    drop = getattr(model, "head_drop", None)
    return drop.p if isinstance(drop, nn.Dropout) else model.drop_rate


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------- registry


def test_registry_lists_the_study_models_with_timm_sizes():
    assert set(MODELS) == STUDY_NAMES and DEFAULT_MODEL == "efficientnet_b3"
    assert {n for n, s in MODELS.items() if s.offline_imagenet} == {
        "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}
    for name in TIMM_NAMES:
        assert timm.is_model(name)
        cfg = timm.models.get_pretrained_cfg(name)
        assert MODELS[name].default_input_size == cfg.input_size[-1]
    rows = list_models()
    assert [r["name"] for r in rows if r["default"]] == ["efficientnet_b3"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["efficientnet_lite1"]["imagenet"] == "packaged"
    assert by_name["baseline_cnn"]["imagenet"] == "none"
    assert {"name", "description", "default_input_size", "offline_imagenet"} <= set(rows[0])


@pytest.mark.parametrize("name", TIMM_NAMES)
def test_every_study_model_gets_avgpool_dropout_linear_head(name):
    with torch.device("meta"):  # structure only: no memory, no init cost
        model = build_model(name, num_classes=2, drop_rate=0.3)
    assert model.global_pool.pool_type == "avg"
    assert _head_dropout(model) == pytest.approx(0.3)
    head_name, head = get_head(model)
    assert isinstance(head, nn.Linear) and head.out_features == 2
    assert head_name == model.pretrained_cfg["classifier"]


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ModelError, match="efficientnet_b3.*slidewatch models"):
        build_model("efficientnet-b3")
    with pytest.raises(ModelError, match="unknown architecture"):
        check_model_name("no_such_net_at_all")
    assert check_model_name("test_resnet.r160_in1k") == "test_resnet.r160_in1k"


def test_bad_build_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("baseline_cnn", num_classes=0)
    with pytest.raises(ConfigError, match="--drop-rate"):
        build_model("baseline_cnn", drop_rate=1.0)
    with pytest.raises(WeightsError, match="baseline_cnn has no ImageNet weights"):
        build_model("baseline_cnn", weights="imagenet")


@pytest.mark.parametrize("name", ["baseline_cnn", "test_efficientnet", "test_resnet"])
@pytest.mark.parametrize("bands", [3, 4, 14])
def test_models_take_any_band_count(name, bands):
    model = build_model(name, num_classes=2, in_chans=bands, input_size=48).eval()
    with torch.no_grad():
        assert model(torch.randn(2, bands, 48, 48)).shape == (2, 2)
    dc = model_data_config(name, model)
    assert dc["input_size"] == (bands, 48, 48)
    assert len(dc["mean"]) == len(dc["std"]) == bands


def test_model_data_config_defaults():
    lite = model_data_config("efficientnet_lite0", build_model("efficientnet_lite0"))
    assert lite["input_size"] == (3, 224, 224)
    assert lite["mean"] == pytest.approx((0.485, 0.456, 0.406))
    base = model_data_config("baseline_cnn", build_model("baseline_cnn"))
    assert base == {"input_size": (3, 224, 224), "mean": (0.5,) * 3, "std": (0.5,) * 3,
                    "interpolation": "bilinear"}


@pytest.mark.parametrize("name", ["baseline_cnn", "test_efficientnet"])
def test_head_dropout_is_active_in_training_only(name):
    model = build_model(name, drop_rate=0.5).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.rand(2, 3, 32, 32))
    model.train()
    assert not torch.equal(model.forward_head(feats), model.forward_head(feats))
    model.eval()
    assert torch.equal(model.forward_head(feats), model.forward_head(feats))


def test_head_and_backbone_parameters_partition_the_model():
    model = build_model("test_resnet")
    name, head = get_head(model)
    assert name == "fc"
    backbone = backbone_parameters(model)
    assert len(backbone) + len(list(head.parameters())) == len(list(model.parameters()))


# ----------------------------------------------------------------------------- baseline


def test_baseline_cnn_interface():
    model = BaselineCNN(in_chans=3, num_classes=2, width=8, hidden=16, drop_rate=0.5).eval()
    x = torch.rand(2, 3, 41, 57)  # any size >= 8 px
    feats = model.forward_features(x)
    assert feats.shape == (2, 32, 5, 7)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 16)
    assert model(x).shape == (2, 2)
    assert isinstance(model.get_submodule(model.feature_layer), nn.Conv2d)
    last_conv = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][-1]
    assert model.feature_layer == last_conv
    model.reset_classifier(5)
    assert model(x).shape == (2, 5) and model.get_classifier().in_features == 16
    with pytest.raises(ValueError, match="drop_rate"):
        BaselineCNN(drop_rate=1.5)


# ----------------------------------------------------------------------------- freezing


def test_weighted_layers_count_like_keras():
    model = build_model("test_efficientnet")
    layers = weighted_layers(model)
    kinds = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
    expected = [n for n, m in model.named_modules() if isinstance(m, kinds)]
    assert [n for n, _ in layers] == [n for n in expected if n != "classifier"]


@pytest.mark.parametrize("n", [0, 3, 7])
def test_unfreeze_top_layers_counts_batchnorm_but_keeps_it_frozen(n):
    model = build_model("test_efficientnet")
    named = unfreeze_top_layers(model, n)
    top = weighted_layers(model)[len(weighted_layers(model)) - n:] if n else []
    want = {f"{name}.{p}" for name, m in top if not isinstance(m, nn.BatchNorm2d)
            for p, _ in m.named_parameters(recurse=False)}
    assert _trainable(model) == want | {"classifier.weight", "classifier.bias"}
    assert named == [name for name, m in top if not isinstance(m, nn.BatchNorm2d)]
    if n == 3:  # blocks.4.0.bn3, conv_head, bn2
        assert named == ["conv_head"]


def test_batchnorm_stays_in_eval_mode_after_train():
    model = build_model("test_efficientnet")
    unfreeze_top_layers(model, 3)
    model.train()
    assert set_batchnorm_eval(model) == 13
    before = model.bn2.running_mean.clone()
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert not model.bn2.training and model.classifier.training
    assert torch.equal(model.bn2.running_mean, before)
    assert model.bn2.weight.grad is None and model.conv_head.weight.grad is not None


def test_unfreeze_more_than_available_unfreezes_all_and_negative_is_an_error():
    model = build_model("test_resnet")
    unfreeze_top_layers(model, 10_000)
    non_bn = {f"{n}.{p}" for n, m in model.named_modules()
              if not isinstance(m, nn.BatchNorm2d) for p, _ in m.named_parameters(recurse=False)}
    assert _trainable(model) == non_bn
    with pytest.raises(ConfigError, match="--unfreeze-layers"):
        unfreeze_top_layers(model, -1)
    with pytest.raises(ConfigError, match="--unfreeze-blocks"):
        unfreeze_top_blocks(model, -2)


def test_unfreeze_top_blocks_uses_timm_stages():
    model = build_model("test_resnet")
    unfreeze_top_blocks(model, 1)
    assert {n.split(".")[0] for n in _trainable(model)} == {"layer4", "fc"}
    assert not any(".bn" in n for n in _trainable(model))
    eff = build_model("test_efficientnet")
    names = unfreeze_top_blocks(eff, 1)
    assert names[0] == "blocks.4.0.conv_pw" and names[-1] == "conv_head"  # head conv joins
    base = build_model("baseline_cnn")
    assert unfreeze_top_blocks(base, 1) == ["hidden"]
    assert unfreeze_top_blocks(base, 2) == ["conv3", "hidden"]
    assert len(blocks(base)) == 4


@pytest.mark.parametrize("name,last", [("densenet121", "features.norm5"),
                                       ("mobilenetv3_large_100", "conv_head")])
def test_blocks_merge_head_groups_into_last_stage(name, last):
    with torch.device("meta"):
        model = build_model(name)
    stages = blocks(model)
    assert stages[-1][-1][0] == last
    assert all(n != "classifier" for stage in stages for n, _ in stage)


def test_trainable_summary_counts_head_only_after_freezing():
    model = build_model("test_resnet", num_classes=3)
    freeze_backbone(model)
    summary = trainable_summary(model)
    assert summary["trainable_params"] == sum(p.numel() for p in model.fc.parameters())
    assert summary["trainable_layers"] == 1
    assert summary["total_params"] == sum(p.numel() for p in model.parameters())
