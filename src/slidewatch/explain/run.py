"""``slidewatch explain`` for every kind of model, in one place.

For each image: ``<stem>_cam.png`` and ``<stem>_overlay.png`` of the image branch
(:mod:`slidewatch.explain.cams`); the row of ``cams.csv`` with the localisation scores against
the landslide mask when one is known (:class:`TileMasks`, :mod:`slidewatch.explain.localisation`);
for a model with tabular inputs, the Integrated-Gradients attributions of those inputs beside
the CAM (:mod:`slidewatch.explain.attributions`). ``localisation.json`` summarises the scores by
outcome and class. Images are prepared as ``slidewatch predict`` prepares them.

Grad-CAM of a fused model runs on :class:`~slidewatch.models.fusion.ImageView` (the FusionModel
with the image's own tabular row bound), so the map explains the same prediction as the
probability.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch

from slidewatch.data.dataset import TileDataset
from slidewatch.data.inputs import ModelInputs, image_dataset
from slidewatch.data.readers import read_image
from slidewatch.errors import ConfigError, DataError
from slidewatch.explain.attributions import attribution_entry, item_attributions, write_attributions
from slidewatch.explain.cams import (
    BAND,
    cam_class,
    cam_picture,
    compute_cam_raw,
    display_rgb,
    overlay_picture,
    resolve_target_layer,
    save_png,
    upsample,
)
from slidewatch.explain.localisation import localisation_scores, summarise, uniform_reference
from slidewatch.inference.predict import collect_images, image_samples
from slidewatch.io_utils import atomic_dir
from slidewatch.meta import ModelMeta
from slidewatch.models.checkpoint import load_model
from slidewatch.models.fusion import ImageView
from slidewatch.runtime import resolve_device

# ----------------------------------------------------------------------------- masks, labels


class TileMasks:
    """Landslide masks for the tiles of a dataset made by ``slidewatch data tiles``.

    ``tiles.csv`` gives each tile's ``source_image`` (``<region>/<stem>``), ``row`` and ``col``;
    the region is the scene folder's name, so the scene folders must be given too. The mask is
    ``<scene>/masks/<stem>.*``, cut at ``row, col`` to the tile's size.
    """

    def __init__(self, tiles_dir: str | Path, scenes: list[str | Path]):
        from slidewatch.data.folders import read_tiles_csv
        from slidewatch.data.tiling import TILES_CSV

        self.root = Path(tiles_dir).resolve()
        csv_path = self.root / TILES_CSV
        if not csv_path.is_file():
            raise DataError(f"{tiles_dir}: no {TILES_CSV}; --masks-from takes a folder made by "
                            "`slidewatch data tiles`")
        if not scenes:
            raise ConfigError("--scenes: give the scene folder(s) the tiles were cut from "
                              "(tiles.csv does not record where they are)")
        self.table = read_tiles_csv(csv_path)
        self.scenes: dict[str, Path] = {}
        for s in map(Path, scenes):
            if not (s / "masks").is_dir():
                raise DataError(f"{s}: not a scene folder (no masks/ inside)")
            self.scenes[s.resolve().name] = s
        self._cache: tuple[Path, np.ndarray] | None = None

    def _mask_file(self, region: str, stem: str) -> Path:
        from slidewatch.data.readers import IMAGE_SUFFIXES

        if region not in self.scenes:
            raise DataError(f"{self.root}: tiles.csv names scene '{region}'; give its folder "
                            "with --scenes")
        folder = self.scenes[region] / "masks"
        found = sorted(p for p in folder.glob(f"{stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{folder}: no mask with the stem '{stem}'")
        return found[0]

    def _full_mask(self, path: Path) -> np.ndarray:
        from slidewatch.data.readers import read_mask

        if self._cache is None or self._cache[0] != path:
            self._cache = (path, read_mask(path))  # tiles of one scene come together
        return self._cache[1]

    def lookup(self, image: Path, shape: tuple[int, int]) -> np.ndarray | None:
        """The mask window of ``image`` (bool, ``shape``), or None if it is not a listed tile."""
        try:
            rel = image.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None
        row = self.table.get(rel)
        if row is None or row.get("row") is None or "/" not in row["group"]:
            return None
        region, stem = row["group"].split("/", 1)
        mask_path = self._mask_file(region, stem)
        full = self._full_mask(mask_path)
        r, c = row["row"], row["col"]
        window = full[r:r + shape[0], c:c + shape[1]]
        if window.shape != tuple(shape):
            raise DataError(f"{mask_path}: the window at row {r}, col {c} of {image.name} lies "
                            "outside the mask")
        return window


class FolderMasks:
    """Landslide masks of a class-folder dataset with ``masks/`` (the Bijie layout): the mask
    of ``<root>/<class>/<stem>.*`` is ``<root>/masks/<stem>.*``; an image of another class
    than ``positive`` is landslide-free (an all-zero mask)."""

    def __init__(self, root: str | Path, positive: str):
        from slidewatch.data.masks import MASKS_DIR

        self.root, self.positive = Path(root).resolve(), positive
        self.masks = self.root / MASKS_DIR
        if not self.masks.is_dir():
            raise DataError(f"{root}: no {MASKS_DIR}/ folder; --masks-from takes a tile dataset "
                            "(tiles.csv) or a class-folder dataset with masks/")

    def lookup(self, image: Path, shape: tuple[int, int]) -> np.ndarray | None:
        from slidewatch.data.masks import read_binary_mask
        from slidewatch.data.readers import IMAGE_SUFFIXES

        image = image.resolve()
        if not image.is_relative_to(self.root):
            return None
        cls = image.relative_to(self.root).parts[0]
        if cls != self.positive:
            return np.zeros(shape, bool)
        found = sorted(p for p in self.masks.glob(f"{image.stem}.*")
                       if p.suffix.lower() in IMAGE_SUFFIXES)
        return read_binary_mask(found[0], shape) if found else None


def masks_for(masks_from: str | Path, scenes: list, positive: str):
    """The mask lookup of ``--masks-from``: tiles cut from ``scenes`` (tiles.csv), else the
    dataset's own masks/ folder."""
    from slidewatch.data.masks import MASKS_DIR

    if scenes or not (Path(masks_from) / MASKS_DIR).is_dir():
        return TileMasks(masks_from, scenes)
    return FolderMasks(masks_from, positive)


def true_class(path: Path, classes: list[str]) -> str | None:
    """The class of ``path`` from its nearest parent folder named like a class, if any."""
    for parent in path.parents:
        if parent.name in classes:
            return parent.name
    return None


def outcome(truth: str | None, positive: bool, meta: ModelMeta) -> str:
    if truth is None:
        return ""
    actual = truth == meta.positive_class
    return ("T" if actual == positive else "F") + ("P" if positive else "N")


# ----------------------------------------------------------------------------- the command


def unique_stem(path: Path, seen: set[str]) -> str:
    stem, k = path.stem, 2
    while stem in seen:
        stem, k = f"{path.stem}_{k}", k + 1
    seen.add(stem)
    return stem


def explain_one(model, meta, files: TileDataset, i: int, method: str, layer: str,
                 masks: TileMasks | None, out: Path, stem: str) -> dict:
    path = files.paths[i]
    item = files[i]
    raw, prob = compute_cam_raw(model, meta, item["image"], method, layer, item.get("valid"))
    arr = read_image(path)
    if "valid" in item:  # a segmentation model's fitted input: the CAM of the image's own part
        raw = _image_part(raw, item["valid"][0])
    cam = np.clip(upsample(raw, arr.shape[:2]), 0.0, 1.0)
    save_png(out / f"{stem}_cam.png", cam_picture(raw))
    save_png(out / f"{stem}_overlay.png", overlay_picture(display_rgb(arr, meta.scale), cam))
    mask = masks.lookup(path, arr.shape[:2]) if masks is not None else None
    truth = true_class(path, meta.classes)
    positive = prob >= meta.tile_threshold()  # a tile decision
    row = {"path": str(path), "probability": round(prob, 6), "predicted_positive": int(positive),
           "true_class": truth or "", "outcome": outcome(truth, positive, meta),
           "method": method, "target_layer": layer, "cam_size": f"{raw.shape[0]}x{raw.shape[1]}",
           "cam_png": f"{stem}_cam.png", "overlay_png": f"{stem}_overlay.png",
           "mask_pixels": "" if mask is None else int(mask.sum())}
    scores = localisation_scores(cam, mask, band=BAND)
    row.update({k: round(v, 6) for k, v in scores.items()})
    return row


def _image_part(raw: np.ndarray, valid: torch.Tensor) -> np.ndarray:
    """The part of a CAM over a fitted (padded) input that covers the image itself."""
    size = valid.shape[-1]
    cam = upsample(raw, (size, size))
    rows, cols = np.nonzero(valid.numpy() > 0.5)
    if not len(rows):
        return cam
    return cam[:rows.max() + 1, :cols.max() + 1]


CSV_COLUMNS = ("path", "probability", "predicted_positive", "true_class", "outcome", "method",
               "target_layer", "cam_size", "cam_png", "overlay_png", "mask_pixels",
               "energy_inside", "pointing_game", "iou", "border_share", "top_left_share",
               "top_right_share", "bottom_left_share", "bottom_right_share")
SCORE_KEYS = [c for c in CSV_COLUMNS[CSV_COLUMNS.index("energy_inside"):]]


def write_cams_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n", restval="")
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def uniform_summary(paths: list[Path], band: float) -> dict:
    """Border figures of a uniform map at the first image's size (tiles share one size)."""
    from slidewatch.data.readers import probe

    info = probe(paths[0])
    return {"shape": [info.height, info.width],
            **uniform_reference((info.height, info.width), band)}


def explain_paths(model_dir: str | Path, paths: list[str | Path], out: str | Path, *,
                  method: str = "gradcam", target_layer: str | None = None,
                  masks: TileMasks | None = None, device: str = "cpu",
                  overwrite: bool = False, progress=None, tabular: str | Path | None = None,
                  aux: str | Path | None = None, missing: str | None = None,
                  unknown: str | None = None) -> list[dict]:
    """CAM pictures, ``cams.csv`` and ``localisation.json`` for every image of ``paths`` in
    the folder ``out`` (built atomically); returns the CSV rows. A multi-modal model takes
    ``tabular`` / ``aux`` as evaluation does and adds the tabular attributions
    (:func:`explain_fused`)."""
    from slidewatch.data.inputs import model_inputs

    cam_class(method)
    model, meta = load_model(model_dir, resolve_device(device))
    inputs = model_inputs(meta, tabular, aux, missing, unknown)
    if inputs is not None:
        return explain_fused(model, meta, inputs, paths, out, method=method,
                             target_layer=target_layer, masks=masks, overwrite=overwrite,
                             progress=progress)
    layer, _ = resolve_target_layer(model, target_layer, meta)
    files = image_dataset(meta, image_samples(paths, collect_images(paths), meta.classes,
                                              meta.standardize == "image"))
    indices = range(len(files))
    if progress is not None:
        indices = progress(indices, desc=f"explain ({method})", total=len(files))
    rows: list[dict] = []
    seen: set[str] = set()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for i in indices:
            stem = unique_stem(files.paths[i], seen)
            rows.append(explain_one(model, meta, files, i, method, layer, masks, tmp, stem))
        write_cams_csv(tmp / "cams.csv", rows)
        summary = {"method": method, "target_layer": layer, "band": BAND,
                   "uniform_reference": uniform_summary(files.paths, BAND),
                   "by_outcome": summarise(rows, SCORE_KEYS, "outcome"),
                   "by_class": summarise(rows, SCORE_KEYS, "true_class")}
        (tmp / "localisation.json").write_text(json.dumps(summary, indent=2) + "\n",
                                               encoding="utf-8")
    return rows


# ----------------------------------------------------------------------------- fused models


class _Images:
    """What :func:`slidewatch.explain._explain_one` reads: ``paths`` and ``[i]["image"]``."""

    def __init__(self, paths: list[Path], ds) -> None:
        self.paths, self.ds = paths, ds

    def __getitem__(self, i: int) -> dict:
        return self.ds[i]


def _tabular_only_row(model, meta, item: dict, path: Path, device) -> dict:
    num = torch.as_tensor(item["numeric"])[None].to(device)
    cat = torch.as_tensor(item["categorical"])[None].to(device)
    with torch.no_grad():
        prob = float(torch.softmax(model(None, num, cat)["logits"] / meta.temperature, 1)
                     [0, meta.positive_index])
    truth = true_class(path, meta.classes)
    positive = prob >= meta.threshold
    return {"path": str(path), "probability": round(prob, 6),
            "predicted_positive": int(positive), "true_class": truth or "",
            "outcome": outcome(truth, positive, meta), "method": "", "target_layer": ""}


def _explain_item(model, meta, fused: bool, images: _Images, i: int, method: str, layer: str,
                  masks, tmp: Path, stem: str, device) -> dict:
    if not fused:  # a plain model with terrain channels
        return explain_one(model, meta, images, i, method, layer, masks, tmp, stem)
    item = images[i]
    if model.backbone is None:
        return _tabular_only_row(model, meta, item, images.paths[i], device)
    num = torch.as_tensor(item["numeric"]).to(device)
    cat = torch.as_tensor(item["categorical"]).to(device)
    view = ImageView(model, num, cat)
    row = explain_one(view, meta, images, i, method, "model." + layer, masks, tmp, stem)
    row["target_layer"] = layer
    return row


def explain_fused(model, meta, inputs: ModelInputs, paths: list, out: str | Path, *,
                  method: str, target_layer: str | None, masks, overwrite: bool,
                  progress=None) -> list[dict]:
    """:func:`explain_paths` for a multi-modal model: CAM pictures
    (image branch), ``cams.csv``, ``localisation.json`` and the tabular attributions (also
    for a plain model with terrain channels, which has no tabular branch)."""
    files = collect_images(paths)
    samples = image_samples(paths, files, meta.classes)
    device = next(model.parameters()).device
    fused = inputs.fused
    has_cam = not fused or model.backbone is not None
    layer = resolve_target_layer(model, target_layer, meta)[0] if has_cam else ""
    rows_in = inputs.rows(samples)
    base = image_dataset(meta, samples, inputs=inputs)
    images = _Images(files, inputs.wrap(base, rows_in))
    indices = range(len(files))
    if progress is not None:
        indices = progress(indices, desc=f"explain ({method})", total=len(files))
    rows, entries, seen = [], [], set()
    enc = inputs.encoder
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for i in indices:
            stem = unique_stem(files[i], seen)
            rows.append(_explain_item(model, meta, fused, images, i, method, layer, masks, tmp,
                                      stem, device))
            if fused and model.tabular is not None:
                result = item_attributions(model, meta, images[i], device, enc.feature_names)
                entries.append(attribution_entry(files[i], result,
                                                 rows_in[i] if rows_in else None, enc))
        write_cams_csv(tmp / "cams.csv", rows)
        summary = {"method": method if layer else "none (tabular model)", "target_layer": layer,
                   "band": BAND, "uniform_reference": uniform_summary(files, BAND),
                   "by_outcome": summarise(rows, SCORE_KEYS, "outcome"),
                   "by_class": summarise(rows, SCORE_KEYS, "true_class")}
        (tmp / "localisation.json").write_text(json.dumps(summary, indent=2) + "\n",
                                               encoding="utf-8")
        if entries:
            write_attributions(tmp, entries, meta)
    return rows
