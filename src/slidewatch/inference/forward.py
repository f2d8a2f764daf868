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


@torch.no_grad()
def predict_outputs(model: torch.nn.Module, meta: ModelMeta, batches: Iterable,
                    device: torch.device, *, source: str | Path | None = None,
                    names: Sequence | None = None) -> dict[str, np.ndarray]:
    """``"probability"`` of the positive class for each image of ``batches`` and, for a
    model with a size head, ``"size_probs"`` (N x size classes).

    A probability that is not finite stops here with one line (:func:`non_finite`) naming
    ``source`` (the model folder) or the image (``names[i]`` of the i-th image)."""
    model.eval()
    probs, sizes = [], []
    seen = 0
    for batch in batches:
        out = forward_outputs(model, batch, meta, device)
        p = torch.softmax(out["logits"], dim=1)[:, meta.positive_index].cpu().numpy()
        if not np.isfinite(p).all():
            raise non_finite(model, meta, seen + int(np.flatnonzero(~np.isfinite(p))[0]),
                             source, names, "numeric" in batch)
        probs.append(p)
        seen += len(p)
        if "size_logits" in out:
            sizes.append(torch.softmax(out["size_logits"], dim=1).cpu().numpy())
    result = {"probability": np.concatenate(probs) if probs else np.zeros(0, np.float32)}
    if sizes:
        result["size_probs"] = np.concatenate(sizes)
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


