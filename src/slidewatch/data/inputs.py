"""The one builder of model inputs, and what a model takes besides the image.

:func:`image_dataset` and :func:`model_dataset` turn samples (files) into model-ready items for
the model of a :class:`~slidewatch.meta.ModelMeta`: read (every format), the model's band count,
unit scale (its ``scale``), the nodata rule (:func:`slidewatch.data.dataset.unit_pixels`),
its standardisation rule (:mod:`slidewatch.data.standardize`), terrain channels from a DEM,
the transform (evaluation's unless given) and, for a fused model, each image's encoded
tabular row. Training, evaluation, prediction, explanation and the demo
build their datasets here; scan windows go through :func:`window_tensor`. Normalisation with the
model's statistics happens in :mod:`slidewatch.inference.forward`, the one forward pass.

:class:`ModelInputs` describes a multi-modal model's inputs (tabular columns and their fitted
encoder, terrain from a DEM as channels or features, the size scheme) together with the files
that hold them for one set of images (the ``--tabular`` CSV, the ``--aux`` DEM). Training
builds it from the config (:mod:`slidewatch.multimodal.training`); evaluation, prediction and
explanation rebuild it from the model metadata with :func:`model_inputs`, so every path joins,
encodes and appends the same way.

Metadata: :class:`slidewatch.meta.InputSpec` (``meta.inputs``): ``tabular``
(:meth:`TabularEncoder.to_json`), ``terrain`` (:class:`~slidewatch.meta.TerrainSpec`, from
:meth:`AuxSpec.to_json`), ``sizes`` (the size scheme's JSON plus ``pixel_size``, ``join``,
``train_counts``) and ``fusion`` (:func:`slidewatch.models.fusion.fusion_config`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from slidewatch.data.ages import AgeColumn
from slidewatch.data.dataset import TileDataset, unit_and_valid
from slidewatch.data.masks import fit_to_size
from slidewatch.data.sizes import (
    IGNORE_INDEX,
    ColumnLabels,
    SizeClasses,
    SizeColumn,
    size_label_for_sample,
)
from slidewatch.data.standardize import ImageStats, standardizer
from slidewatch.data.tabular import (
    TabularEncoder,
    TabularSpec,
    join_samples,
    merge_rows,
    read_table,
    tabular_dataset,
)
from slidewatch.data.terrain import CHANNELS, FEATURES, Grid, terrain_rows
from slidewatch.data.transforms import EvalTransform, to_grayscale
from slidewatch.errors import ConfigError, DataError
from slidewatch.meta import ModelMeta

AUX_USES = ("channels", "features")


@dataclass(frozen=True)
class AuxSpec:
    """Terrain from a DEM: three extra input ``channels`` (elevation, slope, aspect) or the
    summary ``features`` of :func:`slidewatch.terrain.terrain_features` (tabular inputs).
    ``pixel_size``: metres per pixel for un-georeferenced pairs; ``dem``: the training DEM
    (for the record only)."""

    use: str = "features"
    pixel_size: float | None = None
    dem: str | None = None

    def __post_init__(self) -> None:
        if self.use not in AUX_USES:
            raise ConfigError(f"--aux-as: must be one of {', '.join(AUX_USES)}, got {self.use!r}")

    @property
    def channels(self) -> int:
        return len(CHANNELS) if self.use == "channels" else 0

    @property
    def names(self) -> list[str]:
        return list(CHANNELS if self.use == "channels" else FEATURES)

    def to_json(self) -> dict:
        return {"use": self.use, "pixel_size": self.pixel_size, "names": self.names,
                "dem": self.dem}

    @classmethod
    def from_json(cls, data: Mapping) -> AuxSpec:
        return cls(str(data["use"]), data.get("pixel_size"), data.get("dem"))


def csv_header(path: Path) -> list[str]:
    """Column names of a CSV file (stripped); DataError for a file that is not one."""
    if not Path(path).is_file():
        raise DataError(f"{path}: tabular file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [h.strip() for h in next(csv.reader(fh), [])]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None


@dataclass
class ModelInputs:
    """A multi-modal model's inputs for one set of images (see the module docstring).

    ``spec``: the encoder's columns (CSV columns, then terrain features); ``join``: the key and
    key column that find an image's row (also for a size column); ``fused``: the model is a
    FusionModel whose batches carry ``numeric``/``categorical`` (and ``size_label``).
    """

    spec: TabularSpec | None = None
    aux: AuxSpec | None = None
    sizes: SizeClasses | SizeColumn | AgeColumn | None = None  # the second task's classes
    size_pixel_size: float | None = None
    join: tuple[str, str | None] = ("path", None)
    table: Path | None = None
    dem: Path | None = None
    encoder: TabularEncoder | None = None
    fused: bool = False

    @property
    def extra_channels(self) -> int:
        return self.aux.channels if self.aux is not None else 0

    @property
    def csv_spec(self) -> TabularSpec | None:
        """The encoder's columns that come from the CSV (None when all come from the DEM)."""
        if self.spec is None:
            return None
        terrain = set(FEATURES) if self.aux is not None and self.aux.use == "features" else set()
        numeric = tuple(c for c in self.spec.numeric if c not in terrain)
        if not numeric and not self.spec.categorical:
            return None
        return replace(self.spec, numeric=numeric)

    def rows(self, samples: Sequence) -> list[dict | None] | None:
        """Each sample's tabular row: its CSV row merged with its terrain features."""
        parts = []
        if self.csv_spec is not None:
            parts.append(join_samples(samples, read_table(self.table, self.csv_spec)))
        if self.aux is not None and self.aux.use == "features":
            grids = [Grid.of_image(s.path) for s in samples]
            parts.append(terrain_rows(self.dem, grids, self.aux.pixel_size))
        return merge_rows(*parts) if parts else None

    def size_labels(self, samples: Sequence, positive_index: int = 0,
                    required: bool = True) -> np.ndarray | None:
        """Size class of each landslide sample (-1 for the others and where unknown); None
        when there is no size task, or (``required=False``) the CSV lacks the size column."""
        if self.sizes is None:
            return None
        if isinstance(self.sizes, ColumnLabels):
            rows = self._size_rows(samples, required)
            if rows is None:
                return None
            labels = self.sizes.labels(rows, names=[str(s.path) for s in samples])
        else:
            labels = np.array([size_label_for_sample(s, self.sizes, self.size_pixel_size)
                               for s in samples], np.int64)
        labels[np.array([s.label != positive_index for s in samples], bool)] = IGNORE_INDEX
        return labels

    def _size_rows(self, samples: Sequence, required: bool) -> list | None:
        column = self.sizes.column
        if self.table is None or column not in csv_header(self.table):
            if not required:
                return None
            flag = "--age-from" if self.sizes.task == "age" else "--size-column"
            raise DataError(f"{self.table}: no {self.sizes.task} column '{column}' ({flag})")
        spec = TabularSpec(categorical=(column,), key=self.join[0], key_column=self.join[1],
                           missing="impute")
        return join_samples(samples, read_table(self.table, spec))

    def image_dataset(self, samples: Sequence, transform, *, cache: bool,
                      scale: float | None, bands: int | None = None) -> TileDataset:
        channels = self.aux is not None and self.aux.use == "channels"
        return TileDataset(samples, transform=transform, cache=cache, scale=scale, bands=bands,
                           dem=self.dem if channels else None,
                           pixel_size=self.aux.pixel_size if channels else None)

    def encode(self, rows: list | None, samples: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """``(numeric, categorical)`` arrays of ``rows`` (empty arrays without an encoder)."""
        if self.encoder is None or rows is None:
            n = len(samples)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        return self.encoder.transform(rows, names=[str(s.path) for s in samples])

    def wrap(self, ds: TileDataset, rows: list | None = None,
             size_labels: np.ndarray | None = None):
        """``ds`` with ``numeric``/``categorical`` (and ``size_label``) in every item, for a
        FusionModel; ``ds`` itself for a plain model."""
        if not self.fused:
            return ds
        numeric, categorical = self.encode(rows, ds.samples)
        return tabular_dataset(ds, numeric, categorical, size_labels)


def model_inputs(meta, tabular: str | Path | None = None, aux: str | Path | None = None,
                 missing: str | None = None, unknown: str | None = None
                 ) -> ModelInputs | None:
    """The inputs of the model of ``meta`` for images whose rows are in ``tabular`` and whose
    terrain is in ``aux``; None for a plain image model. A file the model needs but was not
    given, or one it cannot use, is a ConfigError naming the flag. ``missing`` / ``unknown``
    override the stored policies for images without a row (``error`` / ``impute``) and for
    categories never seen in training (``error`` / ``unknown``)."""
    spec = meta.inputs
    if spec.plain:
        for flag, value in (("--tabular", tabular), ("--aux", aux)):
            if value is not None:
                raise ConfigError(f"{flag}: the model takes images only; leave it out")
        return None
    encoder = TabularEncoder.from_json(spec.tabular) if spec.tabular is not None else None
    if encoder is not None:
        encoder.spec = replace(encoder.spec, missing=missing or encoder.spec.missing,
                               unknown=unknown or encoder.spec.unknown)
    sizes = None
    if spec.sizes is not None:
        from slidewatch.data.ages import scheme_from_json

        sizes = scheme_from_json(spec.sizes.scheme)
    join = tuple((spec.sizes.join if spec.sizes is not None else None) or ("path", None))
    if encoder is not None:
        join = (encoder.spec.key, encoder.spec.key_column)
    terrain = spec.terrain
    inputs = ModelInputs(
        spec=encoder.spec if encoder else None,
        aux=None if terrain is None else AuxSpec(terrain.use, terrain.pixel_size, terrain.dem),
        sizes=sizes, size_pixel_size=spec.sizes.pixel_size if spec.sizes is not None else None,
        join=join, table=Path(tabular) if tabular else None, dem=Path(aux) if aux else None,
        encoder=encoder, fused=spec.fusion is not None)
    _check_files(inputs, tabular, aux)
    return inputs


def _check_files(inputs: ModelInputs, tabular, aux) -> None:
    csv_spec = inputs.csv_spec
    if csv_spec is not None and tabular is None:
        raise ConfigError(f"--tabular: the model takes tabular inputs "
                          f"({', '.join(csv_spec.columns)}); give the CSV with their rows")
    if inputs.aux is not None and aux is None:
        raise ConfigError(f"--aux: the model takes terrain {inputs.aux.use} from a DEM; give "
                          "the DEM raster")
    if aux is not None and inputs.aux is None:
        raise ConfigError("--aux: the model takes no terrain inputs; leave it out")
    if tabular is not None and csv_spec is None and not isinstance(inputs.sizes, ColumnLabels):
        raise ConfigError("--tabular: the model takes no tabular columns; leave it out")


# ----------------------------------------------------------------------------- the builder


class FittedImages(Dataset):
    """The images of a :class:`TileDataset` (no transform) as a segmentation model takes them:
    padded (smaller) or resized (larger, aspect kept) to its input size, as in training
    (:func:`~slidewatch.data.masks.fit_to_size`); ``valid`` marks the image's own pixels.
    Items: ``{"image", "valid", "label", "index"}``."""

    def __init__(self, tiles: TileDataset, size: int, grayscale: bool = False):
        self.tiles, self.size, self.grayscale = tiles, size, grayscale

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def samples(self) -> list:
        return self.tiles.samples

    @property
    def paths(self) -> list[Path]:
        return self.tiles.paths

    def __getitem__(self, i: int) -> dict:
        unit = self.tiles.unit_image(i)
        image = torch.from_numpy(unit.transpose(2, 0, 1).copy())
        if self.grayscale:
            image = to_grayscale(image)
        image, valid = fit_to_size(image, torch.ones((1, *image.shape[-2:])), self.size)
        return {"image": image, "valid": valid, "label": int(self.tiles.samples[i].label),
                "index": i}


def image_dataset(meta: ModelMeta, samples: Sequence, *, inputs: ModelInputs | None = None,
                  transform: Callable | None = None, cache: bool = False) -> Dataset:
    """The pixels of ``samples`` as the model of ``meta`` takes them: its band count, its unit
    scale, the nodata rule, its standardisation rule (:mod:`slidewatch.data.standardize`: a
    tile cut from a scene by the whole scene image's statistics, its sample's ``scene_stats``
    from ``tiles.csv``; any other file by its own whole-image statistics), terrain channels
    when ``inputs`` has them,
    then ``transform`` (default: evaluation's, :class:`~slidewatch.data.transforms.
    EvalTransform` at the model's input size; for a segmentation model :class:`FittedImages`).
    Items: ``{"image", "label", "index"}`` (and ``"valid"`` for a segmentation model)."""
    rule = standardizer(meta)
    if meta.task == "segment" and transform is None:
        tiles = TileDataset(samples, transform=None, cache=cache, scale=meta.scale,
                            bands=meta.in_chans, standardize=rule)
        return FittedImages(tiles, meta.input_size, meta.grayscale)
    transform = transform or EvalTransform(meta.input_size, grayscale=meta.grayscale)
    if inputs is None:
        return TileDataset(samples, transform=transform, cache=cache, scale=meta.scale,
                           bands=meta.in_chans, standardize=rule)
    if rule is not None:  # validate_meta refuses the rule for these models
        raise ConfigError(f"{meta.architecture}: standardize {meta.standardize} applies to "
                          "image-only models (no tabular or terrain inputs)")
    return inputs.image_dataset(samples, transform, cache=cache, scale=meta.scale,
                                bands=meta.in_chans - inputs.extra_channels)


def model_dataset(meta: ModelMeta, samples: Sequence, *, inputs: ModelInputs | None = None,
                  transform: Callable | None = None, cache: bool = False):
    """:func:`image_dataset` plus, for a fused model, each sample's encoded tabular row
    (``numeric``, ``categorical``): everything the model's forward pass takes."""
    ds = image_dataset(meta, samples, inputs=inputs, transform=transform, cache=cache)
    if inputs is None or not inputs.fused:
        return ds
    return inputs.wrap(ds, inputs.rows(samples))


def window_tensor(meta: ModelMeta, raw: np.ndarray, valid: np.ndarray | None,
                  stats: ImageStats | None = None) -> torch.Tensor:
    """Scan windows as read (N x C x H x W, native dtype; ``valid`` N x H x W or None) -> the
    float32 batch the model takes: :func:`~slidewatch.data.dataset.unit_pixels` window by
    window (no batch-sized temporaries), the model's standardisation rule with ``stats``, the
    statistics of the whole scene (:func:`slidewatch.data.standardize.raster_statistics`;
    required with rule ``image``, never the window's own), then evaluation's transform when
    the window size or greyscale rule asks for it; the same pixels give the same tensor as
    :func:`image_dataset` (for a tile, with its scene's statistics from ``tiles.csv``)."""
    rule = standardizer(meta)
    if rule is not None and stats is None:
        raise ValueError("window_tensor: a model with standardize image needs the scene's "
                         "statistics (raster_statistics)")
    x = np.empty(raw.shape, np.float32)
    for k, out in enumerate(x):
        unit, ok = unit_and_valid(raw[k], meta.scale, None if valid is None else valid[k],
                                  channel_axis=0)
        out[:] = unit if rule is None else rule(unit, ok, stats, channel_axis=0)
    t = torch.from_numpy(x)
    size = meta.input_size
    if meta.grayscale or t.shape[-2:] != (size, size):
        transform = EvalTransform(size, grayscale=meta.grayscale)
        t = torch.stack([transform(v) for v in t])
    return t
