"""A training-only mask loss for tile classifiers: the mask pixels a tile label throws away.

Tiles cut from scene folders (``masks/<tile>.png`` beside them, :mod:`slidewatch.data.tiling`)
and class-folder images with ``masks/`` carry a label per pixel. With ``mask_loss: w`` a 1 x 1
convolution on the backbone's last feature map (the input of the classifier's global pooling:
7 x 7 cells of a 224-px EfficientNet) predicts each cell's landslide share, and ``w`` times the
binary cross-entropy against the mask's share of each cell (soft targets, the mask averaged
over the cell after the same geometric augmentation as the image) is added to the tile loss.
Samples without a known mask (a landslide image with no mask file) do not count. The mask
steers the features the tile decision pools towards the landslide itself rather than the
scene around it.

The head and its hook are not part of the model: they are trained beside it in both phases
and dropped at the end, so the saved model folder is a plain classifier's and predict,
evaluate, scan and ONNX export are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slidewatch.errors import ConfigError


class MaskHead(nn.Module):
    """A 1 x 1 convolution over the features that ``model``'s global pooling receives (kept by
    a forward pre-hook while the model is in training mode)."""

    def __init__(self, model: nn.Module, weight: float, architecture: str = "the model"):
        super().__init__()
        pool = getattr(model, "global_pool", None)
        channels = getattr(model, "num_features", None)
        if not isinstance(pool, nn.Module) or not isinstance(channels, int):
            raise ConfigError(f"mask_loss: {architecture} has no global pooling layer over a "
                              "feature map to learn the mask from; use a timm CNN classifier "
                              "(e.g. efficientnet_lite0) or mask_loss: 0")
        self.weight = float(weight)
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)
        self._features: torch.Tensor | None = None
        self._handle = pool.register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple) -> None:
        if module.training:
            self._features = args[0]

    def loss(self, batch: dict, device: torch.device) -> torch.Tensor:
        """The mean cross-entropy of the cells of the samples with a known mask (0 when no
        sample of the batch has one), for the batch the model has just seen."""
        features, self._features = self._features, None
        if features is None or features.ndim != 4:
            raise RuntimeError("MaskHead.loss: no feature map kept; call it right after the "
                               "model's forward pass in training mode")
        dtype = self.conv.weight.dtype  # fp32 even when the model ran under autocast
        known = batch["mask_known"].to(device=device, dtype=dtype)
        logits = self.conv(features.to(dtype))
        target = F.adaptive_avg_pool2d(batch["mask"].to(device=device, dtype=dtype),
                                       logits.shape[-2:])
        per_sample = F.binary_cross_entropy_with_logits(
            logits, target, reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * known).sum() / known.sum().clamp_min(1.0)

    def remove(self) -> None:
        """Detach the hook from the model."""
        self._handle.remove()
        self._features = None
