"""Losses for landslide maps: thin, rare objects on a large background.

``bce_dice`` (default), ``focal_dice``, ``bce``, ``dice``: a pixel term (binary cross-entropy
with an optional weight on landslide pixels, or the focal loss) plus soft Dice of the landslide
class. Dice is computed over the whole batch (pooled pixels), with a smoothing of 1 pixel, so a
batch without any landslide pixel has a defined Dice term that is small when the prediction is
empty too. ``bce_lovasz``: the same BCE plus the Lovasz hinge (Berman et al. 2018,
:func:`lovasz_hinge`), a convex surrogate of the landslide class's Jaccard loss (1 - IoU) over
the batch's pooled pixels. Inputs: logits and 0/1 masks, both N x 1 x H x W; ``valid``
(N x 1 x H x W bool, optional) leaves nodata pixels out of both terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("bce_dice", "focal_dice", "bce", "dice", "bce_lovasz")
SMOOTH = 1.0


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor,
                   valid: torch.Tensor | None = None) -> torch.Tensor:
    p = torch.sigmoid(logits.float())
    t = target.float()
    if valid is not None:
        p, t = p * valid, t * valid
    inter = (p * t).sum()
    return 1.0 - (2.0 * inter + SMOOTH) / (p.sum() + t.sum() + SMOOTH)


def lovasz_hinge(logits: torch.Tensor, target: torch.Tensor,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
    """The Lovasz extension of the Jaccard loss of the landslide class, over the hinge errors
    ``1 - logit * sign`` (sign +1 on landslide pixels, -1 elsewhere) of all the valid pixels of
    the batch together. For logits of +-1 (a hard map) it is twice 1 - IoU of that map; a batch
    without a landslide pixel is charged its largest hinge error (its Jaccard loss is 1 as soon
    as one pixel is called a landslide)."""
    logits, target = logits.float().reshape(-1), target.float().reshape(-1)
    if valid is not None:
        keep = valid.reshape(-1).bool()
        logits, target = logits[keep], target[keep]
    if not len(logits):
        return logits.sum()
    errors = 1.0 - logits * (2.0 * target - 1.0)
    errors, order = torch.sort(errors, descending=True)
    truth = target[order]
    # Jaccard loss of the first k sorted pixels called wrong, k = 1..n, and its increments
    positives = truth.sum()
    jaccard = 1.0 - (positives - truth.cumsum(0)) / (positives + (1.0 - truth).cumsum(0))
    grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return torch.dot(F.relu(errors), grad)


def pixel_loss(logits: torch.Tensor, target: torch.Tensor, *, focal_gamma: float | None = None,
               pos_weight: float | None = None,
               valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean binary cross-entropy (``pos_weight`` on landslide pixels), or the focal loss with
    ``focal_gamma``, over the valid pixels."""
    logits, target = logits.float(), target.float()
    weight = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight,
                                             reduction="none")
    if focal_gamma is not None:
        p = torch.sigmoid(logits)
        p_t = p * target + (1 - p) * (1 - target)
        bce = bce * (1 - p_t) ** focal_gamma
    if valid is None:
        return bce.mean()
    return (bce * valid).sum() / valid.sum().clamp_min(1)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "bce_dice", *,
                      pos_weight: float | None = None, focal_gamma: float = 2.0,
                      valid: torch.Tensor | None = None) -> torch.Tensor:
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {kind!r}")
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and masks {tuple(target.shape)} differ")
    total = logits.new_zeros((), dtype=torch.float32)
    if kind in ("bce_dice", "bce", "bce_lovasz"):
        total = total + pixel_loss(logits, target, pos_weight=pos_weight, valid=valid)
    if kind == "focal_dice":
        total = total + pixel_loss(logits, target, focal_gamma=focal_gamma,
                                   pos_weight=pos_weight, valid=valid)
    if kind == "bce_lovasz":
        total = total + lovasz_hinge(logits, target, valid)
    elif kind != "bce":
        total = total + soft_dice_loss(logits, target, valid)
    return total
