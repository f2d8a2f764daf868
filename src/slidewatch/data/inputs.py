"""What a model takes besides the image, and the datasets that carry it.

:class:`ModelInputs` describes a multi-modal model's inputs (tabular columns and their fitted
encoder, terrain from a DEM as channels or features, the size scheme) together with the files
that hold them for one set of images (the ``--tabular`` CSV, the ``--aux`` DEM). Training
builds it from the config (:mod:`slidewatch.multimodal.training`); evaluation, prediction and
explanation rebuild it from the model metadata with :func:`model_inputs`, so every path joins,
encodes and appends the same way.

Metadata (``ModelMeta.extra``): ``tabular`` (:meth:`TabularEncoder.to_json`), ``aux``
(:meth:`AuxSpec.to_json`), ``sizes`` (the size scheme's JSON plus ``pixel_size``, ``join``,
``train_counts``) and ``fusion`` (:func:`slidewatch.models.fusion.fusion_config`).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from slidewatch.data.dataset import TileDataset
from slidewatch.data.sizes import IGNORE_INDEX, SizeClasses, SizeColumn, size_label_for_sample
from slidewatch.data.tabular import (
    TabularEncoder,
    TabularSpec,
    join_samples,
    merge_rows,
    read_table,
    tabular_dataset,
)
from slidewatch.data.terrain import CHANNELS, FEATURES, Grid, terrain_for_image, terrain_rows
from slidewatch.errors import ConfigError, DataError

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


class ModelTiles(TileDataset):
    """A :class:`TileDataset` that checks each image's band count (``bands``) and, given a
    ``dem``, appends elevation, slope and aspect (in metres and degrees, on the image's grid)
    after the image's unit-scale bands, before any transform."""

    def __init__(self, samples, *, bands: int | None = None, dem: str | Path | None = None,
                 pixel_size: float | None = None, **kwargs) -> None:
        super().__init__(samples, **kwargs)
        self.bands, self.dem, self.pixel_size = bands, dem, pixel_size
        self._terrain: dict[int, np.ndarray] = {}

    def terrain(self, i: int) -> np.ndarray:
        t = self._terrain.get(i)
        if t is None:
            t = terrain_for_image(self.dem, self.samples[i].path, pixel_size=self.pixel_size)
            if self.cache:
                self._terrain[i] = t
        return t

    def preload(self) -> None:
        """Read (and check) every image and, with a DEM, its terrain now."""
        for i in range(len(self)):
            self.unit_image(i)

    def unit_image(self, i: int) -> np.ndarray:
        unit = super().unit_image(i)
        if self.bands is not None and unit.shape[2] != self.bands:
            extra = " image bands (plus 3 terrain channels)" if self.dem is not None else ""
            raise DataError(f"{self.samples[i].path}: has {unit.shape[2]} bands; the model "
                            f"takes {self.bands}{extra}")
        if self.dem is None:
            return unit
        return np.concatenate([unit, self.terrain(i)], axis=2)


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
    sizes: SizeClasses | SizeColumn | None = None
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
        if isinstance(self.sizes, SizeColumn):
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
            raise DataError(f"{self.table}: no size column '{column}' (--size-column)")
        spec = TabularSpec(categorical=(column,), key=self.join[0], key_column=self.join[1],
                           missing="impute")
        return join_samples(samples, read_table(self.table, spec))

    def image_dataset(self, samples: Sequence, transform, *, cache: bool,
                      scale: float | None, bands: int | None = None) -> ModelTiles:
        channels = self.aux is not None and self.aux.use == "channels"
        return ModelTiles(samples, transform=transform, cache=cache, scale=scale, bands=bands,
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

    def dataset(self, samples: Sequence, meta, transform=None):
        """Evaluation-time dataset of ``samples`` for the model of ``meta``."""
        from slidewatch.data.transforms import EvalTransform

        transform = transform or EvalTransform(meta.input_size, grayscale=meta.grayscale)
        ds = self.image_dataset(samples, transform, cache=False, scale=meta.scale,
                                bands=meta.in_chans - self.extra_channels)
        return self.wrap(ds, self.rows(samples) if self.fused else None)


def model_inputs(meta, tabular: str | Path | None = None, aux: str | Path | None = None,
                 missing: str | None = None, unknown: str | None = None
                 ) -> ModelInputs | None:
    """The inputs of the model of ``meta`` for images whose rows are in ``tabular`` and whose
    terrain is in ``aux``; None for a plain image model. A file the model needs but was not
    given, or one it cannot use, is a ConfigError naming the flag. ``missing`` / ``unknown``
    override the stored policies for images without a row (``error`` / ``impute``) and for
    categories never seen in training (``error`` / ``unknown``)."""
    extra = meta.extra
    if "fusion" not in extra and "aux" not in extra:
        for flag, value in (("--tabular", tabular), ("--aux", aux)):
            if value is not None:
                raise ConfigError(f"{flag}: the model takes images only; leave it out")
        return None
    encoder = TabularEncoder.from_json(extra["tabular"]) if "tabular" in extra else None
    if encoder is not None:
        encoder.spec = replace(encoder.spec, missing=missing or encoder.spec.missing,
                               unknown=unknown or encoder.spec.unknown)
    sizes_json = extra.get("sizes")
    sizes = None
    if sizes_json is not None:
        from slidewatch.data.sizes import size_scheme_from_json

        sizes = size_scheme_from_json(sizes_json)
    join = tuple((sizes_json or {}).get("join") or ("path", None))
    if encoder is not None:
        join = (encoder.spec.key, encoder.spec.key_column)
    inputs = ModelInputs(
        spec=encoder.spec if encoder else None,
        aux=AuxSpec.from_json(extra["aux"]) if "aux" in extra else None, sizes=sizes,
        size_pixel_size=(sizes_json or {}).get("pixel_size"), join=join,
        table=Path(tabular) if tabular else None, dem=Path(aux) if aux else None,
        encoder=encoder, fused="fusion" in extra)
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
    if tabular is not None and csv_spec is None and not isinstance(inputs.sizes, SizeColumn):
        raise ConfigError("--tabular: the model takes no tabular columns; leave it out")
