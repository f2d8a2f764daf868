"""The training side of multi-modal models: inputs prepared from the config after the split,
the encoder fitted on the training split only, the FusionModel around the backbone, and the
loss and size metrics of the training loop.

:func:`prepare_multimodal` returns None for a plain image run (no ``tabular``, ``aux``,
``sizes`` or ``fusion`` settings), so plain runs never reach this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from slidewatch.config.multimodal import has_tabular_inputs, is_multimodal
from slidewatch.config.train import TrainConfig
from slidewatch.data.inputs import AuxSpec, ModelInputs
from slidewatch.data.sizes import (
    DEFAULT_EDGES,
    IGNORE_INDEX,
    NASA_SIZES,
    SizeClasses,
    SizeColumn,
    image_pixel_area,
)
from slidewatch.data.tabular import TabularEncoder, TabularSpec
from slidewatch.data.terrain import FEATURES
from slidewatch.errors import DataError
from slidewatch.evaluation.sizes import size_report
from slidewatch.io_utils import expand_path
from slidewatch.meta import FusionSpec, SizeSpec, TerrainSpec


def _expand(raw: str | None, key: str) -> Path | None:
    if not raw:
        return None
    return expand_path(raw, key)


def encoder_spec(cfg: TrainConfig) -> TabularSpec | None:
    """The encoder's columns: the CSV's numeric columns, the terrain features (``--aux-as
    features``), then the categorical columns; None without tabular inputs."""
    t = cfg.tabular
    numeric = list(t.numeric)
    if cfg.aux.dem and cfg.aux.use == "features":
        numeric += list(FEATURES)
    if not numeric and not t.categorical:
        return None
    return TabularSpec(tuple(numeric), tuple(t.categorical), t.key, t.key_column, t.missing,
                       t.unknown)


def _default_names(k: int) -> tuple[str, ...]:
    return NASA_SIZES[:k] if k <= len(NASA_SIZES) else tuple(f"class_{i}" for i in range(k))


def size_scheme(cfg: TrainConfig, train: Sequence) -> SizeClasses | SizeColumn | None:
    """Size classes from the config; a mask unit left out is m² when the ground resolution is
    known (``sizes.pixel_size`` or a georeferenced landslide image), else the tile fraction."""
    s = cfg.sizes
    if s.source is None:
        return None
    if s.source == "column":
        return SizeColumn(s.column, tuple(s.names) if s.names else NASA_SIZES)
    if s.source == "age":
        from slidewatch.config.multimodal import DEFAULT_AGE_EDGES, DEFAULT_AGE_NAMES
        from slidewatch.data.ages import AgeColumn

        edges = tuple(s.edges) if s.edges else DEFAULT_AGE_EDGES
        default = DEFAULT_AGE_NAMES if len(edges) == 2 else tuple(
            f"age_{i}" for i in range(len(edges) + 1))
        return AgeColumn(s.column, edges, tuple(s.names) if s.names else default)
    unit = s.unit
    if unit is None:
        first = next((x for x in train if x.landslide_fraction), None)
        known = s.pixel_size is not None or (
            first is not None and image_pixel_area(first.path) is not None)
        unit = "m2" if known else "fraction"
    edges = tuple(s.edges) if s.edges else DEFAULT_EDGES[unit]
    names = tuple(s.names) if s.names else _default_names(len(edges) + 1)
    return SizeClasses(edges, names, unit)


@dataclass
class MultiModalSetup:
    """Inputs of a multi-modal run, for the training and validation samples."""

    cfg: TrainConfig
    inputs: ModelInputs
    rows: dict[str, list | None]
    sizes: dict[str, np.ndarray | None]
    log: Callable[[str], None] = lambda message: None

    @property
    def extra_channels(self) -> int:
        return self.inputs.extra_channels

    @property
    def size_names(self) -> list[str]:
        return list(self.inputs.sizes.names) if self.inputs.sizes is not None else []

    def wrap(self, ds, part: str):
        """``ds`` (the ``part`` = train / val samples) with the tabular inputs and size
        labels of each item, for a FusionModel."""
        return self.inputs.wrap(ds, self.rows[part], self.sizes[part])

    def attach(self, model: torch.nn.Module, meta) -> torch.nn.Module:
        """The FusionModel around ``model`` (the backbone) when the run is multi-modal; the
        inputs' typed spec in ``meta.inputs``."""
        inputs = self.inputs
        self.log(_describe(self))  # after every input was read and checked
        if inputs.aux is not None:
            meta.inputs = replace(meta.inputs, terrain=TerrainSpec.from_json(inputs.aux.to_json()))
        if not inputs.fused:
            return model
        fused = fusion_model(self.cfg, model, inputs, len(meta.classes))
        from slidewatch.models.fusion import fusion_config

        meta.inputs = replace(
            meta.inputs, fusion=FusionSpec.from_json(fusion_config(fused)),
            tabular=inputs.encoder.to_json() if inputs.encoder is not None else None,
            sizes=SizeSpec.from_json(self._sizes_json()) if inputs.sizes is not None else None)
        return fused

    def _train_counts(self) -> np.ndarray:
        labels = self.sizes["train"]
        return np.bincount(labels[labels != IGNORE_INDEX], minlength=len(self.size_names))

    def size_class_weights(self) -> list[float] | None:
        """``n / (k * n_class)`` per size class over the training split's labelled tiles
        (0 for a class without one) with ``sizes.class_weights: balanced``, else None."""
        if self.inputs.sizes is None or self.cfg.sizes.class_weights != "balanced":
            return None
        counts = self._train_counts().astype(np.float64)
        present = counts > 0
        weights = np.zeros_like(counts)
        weights[present] = counts.sum() / (present.sum() * counts[present])
        return weights.tolist()

    def _sizes_json(self) -> dict:
        s = self.cfg.sizes
        return {**self.inputs.sizes.to_json(), "pixel_size": s.pixel_size,
                "join": list(self.inputs.join), "train_counts": self._train_counts().tolist(),
                "weight": s.weight, "class_weights": self.size_class_weights()}


def fusion_model(cfg: TrainConfig, backbone: torch.nn.Module, inputs: ModelInputs,
                 num_classes: int):
    """A FusionModel for ``inputs`` around ``backbone`` (dropped in ``tabular`` mode)."""
    from slidewatch.models.fusion import FusionModel

    f, enc = cfg.fusion, inputs.encoder
    mode = f.mode or ("fused" if enc is not None else "image")
    return FusionModel(None if mode == "tabular" else backbone,
                       n_numeric=len(enc.numeric_names) if enc else 0,
                       cat_cardinalities=enc.cardinalities if enc else (), emb_dim=f.emb_dim,
                       mlp_hidden=f.mlp_hidden, num_classes=num_classes,
                       size_classes=inputs.sizes.n_classes if inputs.sizes else 0, mode=mode,
                       fusion_hidden=f.fusion_hidden, dropout=f.dropout)


def prepare_multimodal(cfg: TrainConfig, train: Sequence, val: Sequence,
                       log: Callable[[str], None]) -> MultiModalSetup | None:
    """Read the tabular CSV and the DEM for the training and validation samples, fit the
    encoder on the training rows only, and label sizes; None for a plain image run."""
    if not is_multimodal(cfg) and not cfg.aux.dem:
        return None
    a = cfg.aux
    dem = _expand(a.dem, "aux.dem")
    spec = encoder_spec(cfg)
    inputs = ModelInputs(
        spec=spec, aux=AuxSpec(a.use, a.pixel_size, str(dem)) if dem else None,
        sizes=size_scheme(cfg, train), size_pixel_size=cfg.sizes.pixel_size,
        join=(cfg.tabular.key, cfg.tabular.key_column),
        table=_expand(cfg.tabular.path, "tabular.path"), dem=dem, fused=is_multimodal(cfg))
    samples = list(train) + list(val)
    rows = inputs.rows(samples) if has_tabular_inputs(cfg) else None
    if rows is not None:
        inputs.encoder = TabularEncoder(spec).fit(rows[:len(train)])  # training rows only
        inputs.encode(rows, samples)  # every row checked now (text, unknown categories)
    sizes = inputs.size_labels(samples)
    n = len(train)
    if sizes is not None and not (sizes[:n] != IGNORE_INDEX).any():
        if inputs.sizes.task == "age":
            raise DataError(f"{inputs.table}: no training landslide image has an age label "
                            f"(a number of days >= 0 in column '{inputs.sizes.column}')")
        raise DataError("sizes: no training image has a size label (landslide tiles need a "
                        "landslide_fraction in tiles.csv, or a value in the size column)")
    setup = MultiModalSetup(cfg, inputs,
                            rows={"train": None if rows is None else rows[:n],
                                  "val": None if rows is None else rows[n:]},
                            sizes={"train": None if sizes is None else sizes[:n],
                                   "val": None if sizes is None else sizes[n:]}, log=log)
    return setup


def _describe(s: MultiModalSetup) -> str:
    parts = []
    enc = s.inputs.encoder
    if enc is not None:
        parts.append(f"tabular {len(enc.feature_names)} inputs ({', '.join(enc.feature_names)})"
                     f", statistics from {enc.n_train} training rows")
    if s.inputs.aux is not None:
        parts.append(f"terrain as {s.inputs.aux.use}")
    if s.inputs.sizes is not None:
        labels = s.sizes["train"]
        parts.append(f"{s.inputs.sizes.task} classes {', '.join(s.size_names)} "
                     f"({int((labels != IGNORE_INDEX).sum())} labelled training images)")
    return "multi-modal: " + "; ".join(parts or ["image branch only"])


# ----------------------------------------------------------------------------- training loop


def multitask_loss(out: Mapping[str, torch.Tensor], labels: torch.Tensor,
                   size_labels: torch.Tensor | None = None, *, weight: float = 1.0,
                   size_weight: float = 1.0, class_weights: torch.Tensor | None = None,
                   label_smoothing: float = 0.0, ignore_index: int = -1,
                   size_class_weights: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """``weight * CE(logits) + size_weight * CE(size_logits)`` (size labels equal to
    ``ignore_index`` skipped; a batch without any size label adds 0; ``size_class_weights``
    weigh the size classes as ``class_weights`` do the landslide classes). Returns the total
    and the float value of each part."""
    loss = F.cross_entropy(out["logits"].float(), labels, weight=class_weights,
                           label_smoothing=label_smoothing)
    parts = {"loss_landslide": float(loss.detach())}
    total = weight * loss
    if "size_logits" in out and size_labels is not None and size_weight > 0:
        valid = size_labels != ignore_index
        if bool(valid.any()):
            size_loss = F.cross_entropy(out["size_logits"].float()[valid], size_labels[valid],
                                        weight=size_class_weights)
        else:
            size_loss = out["size_logits"].float().sum() * 0.0
        parts["loss_size"] = float(size_loss.detach())
        total = total + size_weight * size_loss
    parts["loss"] = float(total.detach())
    return total, parts



def task_loss(s, out: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted landslide + size loss of a multi-modal batch (same class weights and label
    smoothing as the plain loss; the size classes weighted by ``s.size_weights``)."""
    y = batch["label"].to(s.device)
    sizes = batch.get("size_label")
    return multitask_loss(out, y, None if sizes is None else sizes.to(s.device),
                          weight=s.cfg.fusion.weight, size_weight=s.cfg.sizes.weight,
                          class_weights=s.loss_fn.weight,
                          label_smoothing=s.loss_fn.label_smoothing,
                          size_class_weights=s.size_weights)


def size_metrics(prefix: str, size_logits: torch.Tensor | None, labels: torch.Tensor | None,
                 names: Sequence[str]) -> dict:
    """``<prefix>_size_macro_f1`` and ``<prefix>_size_accuracy`` over the labelled samples."""
    if size_logits is None or labels is None:
        return {}
    y = labels.cpu().numpy()
    if not (y != IGNORE_INDEX).any():
        return {}
    report = size_report(y, size_logits.argmax(1).cpu().numpy(), names)
    return {f"{prefix}_size_macro_f1": report["macro_f1"],
            f"{prefix}_size_accuracy": report["accuracy"]}


def val_scores(s, out: dict) -> tuple[float, dict]:
    """Validation loss (the training loss: weighted landslide + size) of the outputs of the
    whole validation split, with ``val_loss_size`` and the size-class scores."""
    loss, parts = task_loss(s, out, out)  # ``out`` also holds "label" and "size_label"
    extra = {"val_loss_size": parts["loss_size"]} if "loss_size" in parts else {}
    extra.update(size_metrics("val", out.get("size_logits"), out.get("size_label"),
                              s.multimodal.size_names))
    return float(loss), extra
