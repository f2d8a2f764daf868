"""Attributions of the tabular inputs of a fused model: Integrated Gradients (Captum) of the
landslide probability relative to a baseline row (training means, no category), per image.

:func:`tabular_attributions` works on one sample; :func:`item_attributions` on a dataset item;
:func:`attribution_entry` adds the CSV's raw values; :func:`write_attributions` writes
``attributions.json`` (one entry per image) and ``attributions.csv`` (one line per image and input).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from slidewatch.data.transforms import normalize
from slidewatch.errors import ModelError
from slidewatch.models.fusion import FusionModel
from slidewatch.runtime import to_device

ATTRIBUTIONS_JSON = "attributions.json"
ATTRIBUTIONS_CSV = "attributions.csv"
IG_STEPS = 64


def tabular_attributions(model: FusionModel, image: torch.Tensor | None, numeric: torch.Tensor,
                         categorical: torch.Tensor | None, feature_names: Sequence[str],
                         target: int = 0, n_steps: int = 64) -> dict:
    """Integrated Gradients (Captum) of the probability of class ``target`` for one sample,
    over its tabular inputs, the image held fixed.

    Baseline: 0 for every numeric input (the training mean after standardisation; indicators
    "not missing") and a zero embedding vector for categorical columns (each categorical
    column's attribution is the sum over its embedding dimensions). ``feature_names`` are the
    encoder's ``feature_names``; ``target`` the class (``meta.positive_index``). Returns
    ``{"features": [{"name", "value", "attribution"}], "probability", "baseline_probability",
    "delta"}`` (delta: IG's completeness error).
    """
    from captum.attr import IntegratedGradients

    if model.tabular is None:
        raise ModelError("tabular attribution: the model has no tabular branch")
    names = list(feature_names)
    if len(names) != model.n_numeric + len(model.cat_cardinalities):
        raise ValueError(f"feature_names: expected {model.n_numeric} numeric + "
                         f"{len(model.cat_cardinalities)} categorical names, got {len(names)}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            img_feat = model.image_features(None if image is None else image.reshape(
                1, *image.shape[-3:]))
            num = numeric.reshape(1, -1).float()
            emb = model.embed(None if categorical is None else categorical.reshape(1, -1), 1)

        def prob(n: torch.Tensor, e: torch.Tensor, feat: torch.Tensor | None) -> torch.Tensor:
            return torch.softmax(model.fuse(feat, n, e)["logits"], dim=1)[:, target]

        ig = IntegratedGradients(prob)
        (a_num, a_emb), delta = ig.attribute(
            (num, emb), baselines=(torch.zeros_like(num), torch.zeros_like(emb)),
            additional_forward_args=(img_feat,), n_steps=n_steps,
            return_convergence_delta=True)
        with torch.no_grad():
            p, p0 = float(prob(num, emb, img_feat)), float(prob(num * 0, emb * 0, img_feat))
    finally:
        model.train(was_training)
    values, inputs = a_num[0].tolist(), num[0].tolist()
    if emb.numel():  # one value per categorical column: the sum over its embedding
        values += a_emb[0].reshape(-1, model.emb_dim).sum(1).tolist()
        inputs += categorical.reshape(-1).tolist()
    return {"features": [{"name": n, "value": v, "attribution": a}
                         for n, v, a in zip(names, inputs, values, strict=True)],
            "probability": p, "baseline_probability": p0, "delta": float(delta.abs().max())}


def item_attributions(model, meta, item: dict, device, names: list[str]) -> dict:
    """:func:`tabular_attributions` for one dataset item (image normalised as the model expects)."""
    image = None
    if model.backbone is not None:
        image = normalize(to_device(item["image"][None].float(), device), meta.mean, meta.std)
    num = torch.as_tensor(item["numeric"]).to(device)
    cat = torch.as_tensor(item["categorical"]).to(device)
    return tabular_attributions(model, image, num, cat, names, target=meta.positive_index,
                                n_steps=IG_STEPS)


def _raw(row: dict | None, name: str, encoder) -> object:
    """The value of input ``name`` as the CSV or the DEM gave it ("" = empty, imputed)."""
    if name.endswith("_missing") and name[:-len("_missing")] in encoder.indicators:
        column = name[:-len("_missing")]
        return int(row is None or row.get(column) in (None, ""))
    if row is None or row.get(name) is None:
        return ""
    return row[name]


def attribution_entry(path: Path, result: dict, row: dict | None, encoder) -> dict:
    """One image's attributions with raw values; categorical inputs named by category."""
    features = []
    for f in result["features"]:
        entry = {**f, "raw": _raw(row, f["name"], encoder)}
        if f["name"] in encoder.vocab:
            entry["value"] = encoder.vocab[f["name"]][int(f["value"])]
        features.append(entry)
    return {"path": str(path), "probability": result["probability"],
            "baseline_probability": result["baseline_probability"],
            "delta": result["delta"], "features": features}


def write_attributions(folder: Path, entries: list[dict], meta) -> None:
    doc = {"method": "integrated gradients (Captum)", "steps": IG_STEPS,
           "target_class": meta.positive_class,
           "baseline": "numeric inputs at the training mean (0 after standardising), missing "
                       "indicators 0, categorical embeddings 0",
           "images": entries}
    (folder / ATTRIBUTIONS_JSON).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "feature", "raw_value", "input_value", "attribution", "probability",
                "baseline_probability"])
    for e in entries:
        for f in e["features"]:
            value = f["value"] if isinstance(f["value"], str) else f"{f['value']:.6g}"
            w.writerow([e["path"], f["name"], f["raw"], value, f"{f['attribution']:.6g}",
                        f"{e['probability']:.6g}", f"{e['baseline_probability']:.6g}"])
    (folder / ATTRIBUTIONS_CSV).write_text(buf.getvalue(), encoding="utf-8")
