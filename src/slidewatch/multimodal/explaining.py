"""``slidewatch explain`` for multi-modal models: Grad-CAM of the image branch and Integrated
Gradients of the tabular branch, per image.

Grad-CAM runs on :class:`~slidewatch.models.fusion.ImageView` (the FusionModel with the image's
own tabular row bound), so the map explains the same prediction as the probability; the CAM
pictures, ``cams.csv`` and ``localisation.json`` are those of :mod:`slidewatch.explain`.
:func:`~slidewatch.models.fusion.tabular_attributions` (Captum) gives each tabular input's share
of the landslide probability relative to the baseline row (training means, no category):
``attributions.json`` (one entry per image) and ``attributions.csv`` (one line per image and
input), with the row's raw value beside the encoded one.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from slidewatch.data.transforms import normalize
from slidewatch.inference import to_device
from slidewatch.io_utils import atomic_dir
from slidewatch.multimodal.inputs import ModelInputs

ATTRIBUTIONS_JSON = "attributions.json"
ATTRIBUTIONS_CSV = "attributions.csv"
IG_STEPS = 64


class _Images:
    """What :func:`slidewatch.explain._explain_one` reads: ``paths`` and ``[i]["image"]``."""

    def __init__(self, paths: list[Path], ds) -> None:
        self.paths, self.ds = paths, ds

    def __getitem__(self, i: int) -> dict:
        return self.ds[i]


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


def _tabular_only_row(model, meta, item: dict, path: Path, device) -> dict:
    from slidewatch.explain import outcome, true_class

    num = torch.as_tensor(item["numeric"])[None].to(device)
    cat = torch.as_tensor(item["categorical"])[None].to(device)
    with torch.no_grad():
        prob = float(torch.softmax(model(None, num, cat)["logits"], 1)[0, meta.positive_index])
    truth = true_class(path, meta.classes)
    positive = prob >= meta.threshold
    return {"path": str(path), "probability": round(prob, 6),
            "predicted_positive": int(positive), "true_class": truth or "",
            "outcome": outcome(truth, positive, meta), "method": "", "target_layer": ""}


def _attributions(model, meta, item: dict, device, names: list[str]) -> dict:
    from slidewatch.models.fusion import tabular_attributions

    image = None
    if model.backbone is not None:
        image = normalize(to_device(item["image"][None].float(), device), meta.mean, meta.std)
    num = torch.as_tensor(item["numeric"]).to(device)
    cat = torch.as_tensor(item["categorical"]).to(device)
    return tabular_attributions(model, image, num, cat, names, target=meta.positive_index,
                                n_steps=IG_STEPS)


def _explain_item(model, meta, fused: bool, images: _Images, i: int, method: str, layer: str,
                  masks, tmp: Path, stem: str, device) -> dict:
    from slidewatch.explain import _explain_one
    from slidewatch.models.fusion import ImageView

    if not fused:  # a plain model with terrain channels
        return _explain_one(model, meta, images, i, method, layer, masks, tmp, stem)
    item = images[i]
    if model.backbone is None:
        return _tabular_only_row(model, meta, item, images.paths[i], device)
    num = torch.as_tensor(item["numeric"]).to(device)
    cat = torch.as_tensor(item["categorical"]).to(device)
    view = ImageView(model, num, cat)
    row = _explain_one(view, meta, images, i, method, "model." + layer, masks, tmp, stem)
    row["target_layer"] = layer
    return row


def explain_fused(model, meta, inputs: ModelInputs, paths: list, out: str | Path, *,
                  method: str, target_layer: str | None, masks, overwrite: bool,
                  progress=None) -> list[dict]:
    """The multi-modal counterpart of :func:`slidewatch.explain.explain_paths`: CAM pictures
    (image branch), ``cams.csv``, ``localisation.json`` and the tabular attributions (also
    for a plain model with terrain channels, which has no tabular branch)."""
    from slidewatch import explain as ex
    from slidewatch.predict import collect_images, image_samples

    files = collect_images(paths)
    samples = image_samples(paths, files, meta.classes)
    device = next(model.parameters()).device
    fused = inputs.fused
    has_cam = not fused or model.backbone is not None
    layer = ex.resolve_target_layer(model, target_layer)[0] if has_cam else ""
    rows_in = inputs.rows(samples)
    base = inputs.image_dataset(samples, ex.ImageFiles(files, meta).transform, cache=False,
                                scale=meta.scale, bands=meta.in_chans - inputs.extra_channels)
    images = _Images(files, inputs.wrap(base, rows_in))
    indices = range(len(files))
    if progress is not None:
        indices = progress(indices, desc=f"explain ({method})", total=len(files))
    rows, entries, seen = [], [], set()
    enc = inputs.encoder
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for i in indices:
            stem = ex._unique_stem(files[i], seen)
            rows.append(_explain_item(model, meta, fused, images, i, method, layer, masks, tmp,
                                      stem, device))
            if fused and model.tabular is not None:
                result = _attributions(model, meta, images[i], device, enc.feature_names)
                entries.append(attribution_entry(files[i], result,
                                                 rows_in[i] if rows_in else None, enc))
        ex._write_csv(tmp / "cams.csv", rows)
        summary = {"method": method if layer else "none (tabular model)", "target_layer": layer,
                   "band": ex.BAND, "uniform_reference": ex._reference(files, ex.BAND),
                   "by_outcome": ex.summarise(rows, ex.SCORE_KEYS, "outcome"),
                   "by_class": ex.summarise(rows, ex.SCORE_KEYS, "true_class")}
        (tmp / "localisation.json").write_text(json.dumps(summary, indent=2) + "\n",
                                               encoding="utf-8")
        if entries:
            _write_attributions(tmp, entries, meta)
    return rows


def _write_attributions(folder: Path, entries: list[dict], meta) -> None:
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
