"""Every forward pass: normalise a unit-scale batch with the model's statistics, run the
model under autocast, return fp32 logits or probabilities.

Training, evaluation, prediction and scanning all go through :func:`forward_logits`, so the
pixels a model sees are prepared the same way everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from slidewatch.data.transforms import normalize
from slidewatch.errors import DataError, ModelError, SlidewatchError, WeightsError
from slidewatch.meta import ModelMeta
from slidewatch.runtime import autocast, to_device


def _run(model: torch.nn.Module, x: torch.Tensor, meta: ModelMeta, device: torch.device,
         *extra: torch.Tensor):
    """The model on a normalised unit-scale image batch (plus extra inputs), under autocast."""
    x = normalize(to_device(x, device), meta.mean, meta.std)
    with autocast(device):
        return model(x, *extra)


def forward_logits(model: torch.nn.Module, x: torch.Tensor, meta: ModelMeta,
                   device: torch.device) -> torch.Tensor:
    """Normalise a unit-scale batch with the model's statistics and run the model (fp32 out)."""
    if getattr(model, "tabular", None) is not None:  # a FusionModel with a tabular branch
        raise ModelError(f"{meta.architecture} + tabular inputs: this model needs each image's "
                         "tabular row; use evaluate/predict/explain with --tabular or --aux")
    out = _run(model, x, meta, device)
    if isinstance(out, dict):  # a FusionModel that needs no tabular inputs (image mode)
        out = out["logits"]
    return out.float()


def forward_outputs(model: torch.nn.Module, batch: dict, meta: ModelMeta,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """``{"logits": ...}`` (fp32) for a batch of a plain model (dicts with "image"); for a
    multi-modal batch (also "numeric" and "categorical") every output of the FusionModel
    (``"logits"`` and, with a size head, ``"size_logits"``)."""
    if "numeric" not in batch:
        return {"logits": forward_logits(model, batch["image"], meta, device)}
    numeric = batch["numeric"].to(device, non_blocking=True).float()
    categorical = batch["categorical"].to(device, non_blocking=True).long()
    out = _run(model, batch["image"], meta, device, numeric, categorical)
    return {k: v.float() for k, v in out.items()}


TTA_VIEWS = tuple((k, flip) for k in range(4) for flip in (False, True))  # the 8 of a square


def _view(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = torch.rot90(x, k, dims=(-2, -1)) if k else x
    return x.flip(-1) if flip else x


def _unview(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    x = x.flip(-1) if flip else x
    return torch.rot90(x, -k, dims=(-2, -1)) if k else x


def batch_probabilities(model: torch.nn.Module, batch: dict, meta: ModelMeta,
                        device: torch.device, tta: bool = False) -> dict[str, torch.Tensor]:
    """``"probability"`` of the landslide class: one per image for a classifier, one per
    pixel (N x H x W) for a segmentation model; ``"size_probs"`` for a size head.

    ``tta``: test-time augmentation, the mean over the 8 flips and 90-degree rotations of each
    image (maps turned back before averaging); without it the plain forward pass."""
    views = TTA_VIEWS if tta else ((0, False),)
    prob = sizes = None
    for k, flip in views:
        b = batch if (k, flip) == (0, False) else {**batch, "image": _view(batch["image"], k,
                                                                           flip)}
        out = forward_outputs(model, b, meta, device)
        z = out["logits"] / meta.temperature
        if meta.task == "segment":
            p = _unview(torch.sigmoid(z[:, 0]), k, flip)
        else:
            p = torch.softmax(z, dim=1)[:, meta.positive_index]
        prob = p if prob is None else prob + p
        if "size_logits" in out:
            sp = torch.softmax(out["size_logits"], dim=1)
            sizes = sp if sizes is None else sizes + sp
    result = {"probability": prob / len(views)}
    if sizes is not None:
        result["size_probs"] = sizes / len(views)
    return result


def tile_scores(prob: torch.Tensor, valid: torch.Tensor | None, min_area: int) -> torch.Tensor:
    """Tile scores of pixel maps (N x H x W): the ``min_area``-th largest probability among
    each map's valid pixels (0 with fewer valid pixels), so score >= threshold exactly when at
    least ``min_area`` pixels reach the threshold (the tile rule of a segmentation model)."""
    flat = prob.flatten(1)
    if valid is not None:
        flat = torch.where(valid.flatten(1).to(flat.device) > 0.5, flat, torch.full_like(flat, -1))
    k = min(min_area, flat.shape[1])
    return flat.topk(k, dim=1).values[:, -1].clamp_min(0.0)


@torch.no_grad()
def predict_outputs(model: torch.nn.Module, meta: ModelMeta, batches: Iterable,
                    device: torch.device, *, source: str | Path | None = None,
                    names: Sequence | None = None, tta: bool = False,
                    maps: bool = False, threshold: float | None = None
                    ) -> dict[str, np.ndarray]:
    """``"probability"`` of the positive class for each image of ``batches`` and, for a
    model with a size head, ``"size_probs"`` (N x size classes). For a segmentation model the
    probability is the tile score (:func:`tile_scores`), with ``"landslide_pixels"`` (pixels
    at or above ``threshold``, default the model's) and ``"valid_pixels"`` per image, and with
    ``maps`` the probability maps and valid masks themselves (``"maps"``, ``"valid"``).

    A probability that is not finite stops here with one line (:func:`non_finite`) naming
    ``source`` (the model folder) or the image (``names[i]`` of the i-th image)."""
    model.eval()
    segment = meta.task == "segment"
    thr = meta.threshold if threshold is None else threshold
    parts: dict[str, list[np.ndarray]] = {}
    seen = 0
    for batch in batches:
        out = batch_probabilities(model, batch, meta, device, tta)
        p = out["probability"]
        bad = ~torch.isfinite(p.flatten(1) if segment else p)
        if bool(bad.any()):
            first = int(bad.any(1).nonzero()[0]) if segment else int(bad.nonzero()[0])
            raise non_finite(model, meta, seen + first, source, names, "numeric" in batch)
        if segment:
            valid = batch.get("valid")
            valid = torch.ones_like(p[:, None]) if valid is None else valid.to(p.device)
            v = valid[:, 0] > 0.5
            parts.setdefault("probability", []).append(
                tile_scores(p, valid[:, 0], meta.segmentation.min_area_pixels).cpu().numpy())
            parts.setdefault("landslide_pixels", []).append(
                ((p >= thr) & v).flatten(1).sum(1).cpu().numpy())
            parts.setdefault("valid_pixels", []).append(v.flatten(1).sum(1).cpu().numpy())
            if maps:
                parts.setdefault("maps", []).append(p.cpu().numpy().astype(np.float32))
                parts.setdefault("valid", []).append(v.cpu().numpy())
        else:
            parts.setdefault("probability", []).append(p.cpu().numpy())
        if "size_probs" in out:
            parts.setdefault("size_probs", []).append(out["size_probs"].cpu().numpy())
        seen += len(p)
    result = {k: np.concatenate(v) for k, v in parts.items()}
    result.setdefault("probability", np.zeros(0, np.float32))
    return result


def non_finite(model: torch.nn.Module, meta: ModelMeta, index: int,
               source: str | Path | None, names: Sequence | None,
               tabular: bool = False) -> SlidewatchError:
    """The error of a NaN/inf probability: the model's weights or statistics when they are not
    finite (WeightsError naming ``source``), else the image's inputs (DataError naming it)."""
    where = source if source is not None else meta.architecture
    if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if t.is_floating_point()):
        return WeightsError(f"{where}: the weights hold NaN or inf values (retrain the model)")
    if not all(math.isfinite(v) for v in [*meta.mean, *meta.std]):
        return WeightsError(f"{where}: mean/std hold NaN or inf values (retrain the model)")
    image = names[index] if names is not None and index < len(names) else f"image {index + 1}"
    inputs = "pixel values or tabular row" if tabular else "pixel values"
    return DataError(f"{image}: the model gives a non-finite probability for it (its {inputs} "
                     f"overflow the model of {where})")


def predict_probs(model: torch.nn.Module, meta: ModelMeta, batches: Iterable,
                  device: torch.device) -> np.ndarray:
    """Probability of the positive class for each image of ``batches`` (dicts with "image",
    plus "numeric"/"categorical" for a multi-modal model)."""
    return predict_outputs(model, meta, batches, device)["probability"]


