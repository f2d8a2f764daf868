"""The study's small CNN, with the slice of timm's model interface that slidewatch uses.

Three ``3x3 conv (padding='same') -> ReLU -> 2x2 max-pool`` blocks with ``width``, ``2*width``
and ``4*width`` filters, then a fixed ``4x4`` adaptive average pool (so any input size of at
least 8 px works), flatten, ``Dense(hidden) -> ReLU -> dropout -> Dense(num_classes)``.

Interface shared with timm models: ``get_classifier()``, ``reset_classifier(num_classes)``,
``forward_features(x)`` (the last block's feature map), ``forward_head(x, pre_logits=False)``,
``group_matcher(coarse)`` (each conv is a block, the hidden dense layer is the last one) and a
``pretrained_cfg`` dict, so that ``timm.data.resolve_model_data_config`` works on it too.
``feature_layer`` names the last conv (``"conv3"``), the natural Grad-CAM target; the ReLUs are
not in-place, so hooks on ``conv3`` see its own output.
"""

from __future__ import annotations

import torch
from torch import nn

POOL_SIZE = 4

# Trained from scratch: inputs scaled to [0, 1] then mapped to [-1, 1] (mean 0.5, std 0.5),
# like the study's rescaling; the training code replaces these with data statistics when it
# computes them.
BASELINE_CFG = {
    "architecture": "baseline_cnn",
    "input_size": (3, 224, 224),
    "interpolation": "bilinear",
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "crop_pct": 1.0,
    "crop_mode": "center",
    "num_classes": 2,
    "first_conv": "conv1",
    "classifier": "classifier",
}


class BaselineCNN(nn.Module):
    """Small three-block CNN (the study's baseline), trained from scratch."""

    feature_layer = "conv3"

    def __init__(self, in_chans: int = 3, num_classes: int = 2, width: int = 32,
                 hidden: int = 128, drop_rate: float = 0.5):
        super().__init__()
        for label, value in (("in_chans", in_chans), ("width", width), ("hidden", hidden)):
            if value < 1:
                raise ValueError(f"BaselineCNN: {label} must be >= 1, got {value}")
        if num_classes < 0:
            raise ValueError(f"BaselineCNN: num_classes must be >= 0, got {num_classes}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"BaselineCNN: drop_rate must be in [0, 1), got {drop_rate}")
        widths = (width, 2 * width, 4 * width)
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding="same")
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(widths[0], widths[1], 3, padding="same")
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(widths[1], widths[2], 3, padding="same")
        self.act3 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(2)
        self.global_pool = nn.AdaptiveAvgPool2d(POOL_SIZE)
        self.flatten = nn.Flatten(1)
        self.hidden = nn.Linear(widths[2] * POOL_SIZE * POOL_SIZE, hidden)
        self.hidden_act = nn.ReLU()
        self.drop_rate = float(drop_rate)
        self.head_drop = nn.Dropout(drop_rate)
        self.num_features = hidden
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes)
        self.pretrained_cfg = {**BASELINE_CFG, "input_size": (in_chans, 224, 224)}
        if in_chans != 3:
            self.pretrained_cfg.update(mean=(0.5,) * in_chans, std=(0.5,) * in_chans)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh final layer for ``num_classes`` (0: none; ``forward`` gives pre-logits)."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"BaselineCNN: global_pool must be 'avg', got {global_pool!r}")
        self.num_classes = num_classes
        self.classifier = self._make_classifier(num_classes)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style grouping: one group per conv block, then the hidden dense layer."""
        return {"blocks": [(r"^conv(\d+)", None), (r"^hidden", (1000,))]}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act1(self.conv1(x)))
        x = self.pool2(self.act2(self.conv2(x)))
        return self.pool3(self.act3(self.conv3(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.hidden_act(self.hidden(self.flatten(self.global_pool(x))))
        x = self.head_drop(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
