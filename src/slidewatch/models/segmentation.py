"""Segmentation models: a decoder from ``segmentation-models-pytorch`` over a timm encoder, plus a
tiny U-Net of our own for tests.

Names: ``<decoder>`` or ``<decoder>/<timm encoder>`` with decoder ``unet``, ``unetplusplus``,
``fpn`` or ``deeplabv3plus`` (encoder default :data:`DEFAULT_ENCODER`), e.g.
``unet/efficientnet_lite0``, ``deeplabv3plus/resnet34``; ``unet_tiny`` is ours. Every model is
wrapped in :class:`Segmenter`: input N x C x H x W (normalised), output N x 1 x H x W logits of
the landslide class (sigmoid for probabilities).

Weights: ``imagenet`` loads the encoder only (the decoder starts fresh). The packaged offline
ImageNet checkpoints of efficientnet_lite0/1/2 (:mod:`slidewatch.models.weights`) map one to one
onto the timm encoder's tensors; other encoders take timm's ImageNet weights (cache or hub).
:meth:`Segmenter.get_classifier` is the decoder and segmentation head, so the two training
phases of :mod:`slidewatch.models.freezing` work unchanged: phase 1 trains decoder + head on a
frozen encoder, phase 2 unfreezes the top N encoder layers or stages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from slidewatch.errors import ConfigError, ModelError, WeightsError

DECODERS = {"unet": "Unet", "unetplusplus": "UnetPlusPlus", "fpn": "FPN",
            "deeplabv3plus": "DeepLabV3Plus"}
TINY = "unet_tiny"
DEFAULT_ENCODER = "efficientnet_lite0"
DEFAULT_SEGMENTER = f"unet/{DEFAULT_ENCODER}"
_STAGE = re.compile(r"^net\.encoder\.model\.(?:blocks|layer|stages|features)[._]?(\d+)")


@dataclass(frozen=True)
class SegmenterSpec:
    name: str
    description: str
    default_input_size: int


SEGMENTERS: dict[str, SegmenterSpec] = {s.name: s for s in (
    SegmenterSpec(DEFAULT_SEGMENTER, "U-Net over EfficientNet-Lite0 (ImageNet offline)", 256),
    SegmenterSpec("unetplusplus/efficientnet_lite0", "U-Net++ over EfficientNet-Lite0", 256),
    SegmenterSpec("fpn/efficientnet_lite0", "FPN over EfficientNet-Lite0", 256),
    SegmenterSpec("deeplabv3plus/efficientnet_lite0", "DeepLabV3+ over EfficientNet-Lite0", 256),
    SegmenterSpec("unet/efficientnet_lite2", "U-Net over EfficientNet-Lite2 (ImageNet offline)",
                  256),
    SegmenterSpec(TINY, "a tiny U-Net (tests and smoke runs), from scratch", 64),
)}


def parse_segmenter(name: str) -> tuple[str, str | None]:
    """``(decoder, encoder)`` of a segmenter name; encoder None for ``unet_tiny``."""
    name = str(name).strip().lower()
    if name == TINY:
        return TINY, None
    decoder, _, encoder = name.partition("/")
    if decoder not in DECODERS:
        raise ConfigError(f"--model {name}: not a segmentation model; use {TINY} or "
                          f"<decoder>/<encoder> with decoder one of {', '.join(DECODERS)} "
                          f"(e.g. {DEFAULT_SEGMENTER}; see `slidewatch models --task segment`)")
    return decoder, encoder or DEFAULT_ENCODER


def is_segmenter(name: str) -> bool:
    try:
        parse_segmenter(name)
    except ConfigError:
        return False
    return True


class TinyUNet(nn.Module):
    """Two poolings down, two up, skip connections; a few thousand parameters."""

    def __init__(self, in_chans: int = 3, width: int = 8):
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o),
                                 nn.ReLU(inplace=True))

        w = width
        self.encoder = nn.ModuleList([block(in_chans, w), block(w, 2 * w), block(2 * w, 4 * w)])
        self.decoder = nn.ModuleList([block(6 * w, 2 * w), block(3 * w, w)])
        self.segmentation_head = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.encoder[0](x)
        e2 = self.encoder[1](nn.functional.max_pool2d(e1, 2))
        e3 = self.encoder[2](nn.functional.max_pool2d(e2, 2))
        up = nn.functional.interpolate
        d2 = self.decoder[0](torch.cat([up(e3, size=e2.shape[-2:]), e2], 1))
        d1 = self.decoder[1](torch.cat([up(d2, size=e1.shape[-2:]), e1], 1))
        return self.segmentation_head(d1)


class Segmenter(nn.Module):
    """The one interface of every segmentation model (see the module docstring)."""

    def __init__(self, net: nn.Module, name: str):
        super().__init__()
        self.net = net
        self.architecture = name
        # Grad-CAM target: the decoder's output features (the tiny U-Net's last decoder block)
        self.feature_layer = "net.decoder.1" if isinstance(net, TinyUNet) else "net.decoder"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def get_classifier(self) -> tuple[nn.Module, nn.Module]:
        return self.net.decoder, self.net.segmentation_head

    def group_matcher(self, coarse: bool = True):
        """Encoder stages for ``--unfreeze-blocks``: the stem, then one group per stage."""
        def group(name: str) -> tuple[int]:
            m = _STAGE.match(name)
            if m:
                return (int(m.group(1)) + 1,)
            if name.startswith(("net.encoder.model.", "net.encoder.")):
                return (0,)
            return (1 << 20,)  # decoder and head

        return group


def build_segmenter(name: str, *, in_chans: int = 3, weights: str = "none") -> Segmenter:
    """Build segmenter ``name`` for ``in_chans`` bands; ``weights`` ``none`` or ``imagenet``
    (the encoder's). Returns a :class:`Segmenter` with ``slidewatch_weights`` (its source)."""
    decoder, encoder = parse_segmenter(name)
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ConfigError(f"in_chans: must be >= 1, got {in_chans}")
    weights = str(weights).lower()
    if weights not in ("none", "imagenet"):
        raise ConfigError(f"--weights {weights}: segmentation models take none or imagenet "
                          "(the encoder's)")
    if decoder == TINY:
        if weights == "imagenet":
            raise WeightsError(f"--weights imagenet: {TINY} has no ImageNet weights; use "
                               "--weights none")
        model = Segmenter(TinyUNet(in_chans), TINY)
        model.slidewatch_weights = "none"
        return model
    import segmentation_models_pytorch as smp

    canonical = f"{decoder}/{encoder}"
    try:
        net = getattr(smp, DECODERS[decoder])(encoder_name=f"tu-{encoder}", encoder_weights=None,
                                              in_channels=in_chans, classes=1)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelError(f"--model {canonical}: cannot build it over the timm encoder "
                         f"{encoder!r} ({' '.join(str(exc).split())[:160]})") from None
    model = Segmenter(net, canonical)
    model.slidewatch_weights = "none"
    if weights == "imagenet":
        model.slidewatch_weights = load_encoder_imagenet(model, encoder, in_chans)
    return model


def encoder_module(model: Segmenter) -> nn.Module:
    """The timm network inside the encoder (its tensors are named as timm's)."""
    enc = model.net.encoder
    return getattr(enc, "model", enc)


def load_encoder_imagenet(model: Segmenter, encoder: str, in_chans: int) -> str:
    """ImageNet weights into the encoder: every encoder tensor must be found with its shape
    (the first conv adapted to ``in_chans`` bands); returns the source for the metadata."""
    from timm.models import adapt_input_conv

    from slidewatch.models.weights import PACKAGED_IMAGENET, imagenet_state

    state, source = imagenet_state(encoder)
    target = encoder_module(model).state_dict()
    merged, bad = {}, []
    for key, want in target.items():
        have = state.get(key)
        if have is None:
            if not key.endswith("num_batches_tracked"):
                bad.append(f"missing {key}")
            merged[key] = want
        elif have.shape == want.shape:
            merged[key] = have
        elif have.ndim == 4 and have.shape[1] == 3 and want.shape[1] == in_chans:
            merged[key] = adapt_input_conv(in_chans, have)
        else:
            bad.append(f"{key} {tuple(have.shape)} != {tuple(want.shape)}")
    if bad:
        where = "packaged" if encoder in PACKAGED_IMAGENET else "timm"
        raise WeightsError(f"--weights imagenet: the {where} {encoder} weights do not fit the "
                           f"encoder: {'; '.join(bad[:4])}")
    encoder_module(model).load_state_dict(merged, strict=True)
    return source


def list_segmenters() -> list[dict]:
    """Rows for ``slidewatch models --task segment``."""
    from slidewatch.models.weights import PACKAGED_IMAGENET

    rows = []
    for spec in SEGMENTERS.values():
        _, encoder = parse_segmenter(spec.name)
        imagenet = "none" if encoder is None else (
            "packaged" if encoder in PACKAGED_IMAGENET else "hub")
        rows.append({"name": spec.name, "description": spec.description,
                     "default_input_size": spec.default_input_size,
                     "default": spec.name == DEFAULT_SEGMENTER, "imagenet": imagenet})
    return rows
