"""``slidewatch date SCENE...``: a time series of one area; for every detection of the latest
image, the last date it was absent and the first date it was present, with the evidence (the
probability over the detection's footprint) per date.

* Dates (:func:`input_times`, before anything is scanned): ``--dates`` (one per input, in the
  order given), else the scene's tags (:func:`slidewatch.stac.tags.acquisition_time`: the
  ``SLIDEWATCH_DATETIME`` that ``imagery fetch`` writes, ``TIFFTAG_DATETIME``...); a scan
  folder's date comes from its scene (named in the map's ``SLIDEWATCH_SCAN`` tag). An input
  whose date cannot be read is an error naming it.
* Scans: as for ``changes`` (:func:`slidewatch.stac.changes.resolve_inputs`): scenes are
  scanned into ``OUT/scans/<NN>_<YYYYMMDD>_<stem>``, scan folders are taken as they are; every
  input must overlap the latest. All maps go onto the latest map's grid.
* Detections: the 4-connected areas at or above the threshold in the latest map. Evidence at
  each date: the mean and max probability over the footprint's pixels with data there, and the
  share of the footprint with data. Present: mean >= threshold; absent: below; unknown when
  less than :data:`MIN_VALID_SHARE` of the footprint has data (clouds cut out, the scene's
  edge).
* Appearance: from the latest date backwards, the earliest date of the run of presence that
  reaches the latest image (unknown dates are stepped over) is ``first_present``; the date
  before it where the detection was absent is ``last_absent`` ("appeared between 2023-06-02
  and 2023-07-14"); no such date: "present on 2023-05-01, the first image" (it appeared then
  or earlier).
* Outputs in ``OUT``: ``dates.geojson`` (+ ``dates_wgs84.geojson``): properties ``id``,
  ``area_px``, ``area_m2``, ``last_absent``, ``first_present`` (YYYY-MM-DD), ``appeared`` (the
  sentence), ``evidence`` (per date: ``date``, ``scene``, ``mean_prob``, ``max_prob``,
  ``valid_share``, ``present``); ``dates.gpkg`` (the same, ``evidence`` as JSON text);
  ``dating.csv`` (one row per detection and date); ``dating.json``
  (inputs and dates, threshold, grid, shifts against the latest, warnings).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slidewatch.errors import ConfigError, DataError
from slidewatch.io_utils import atomic_write_text
from slidewatch.stac import tags as tag_names
from slidewatch.stac.catalog import parse_time
from slidewatch.stac.changes import (
    ScanMap,
    area_m2,
    check_threshold,
    choose_threshold,
    describe_time,
    estimate_shift,
    label_detections,
    map_on_grid,
    polygons,
    raster_grid,
    region_stats,
    resolve_inputs,
    scan_folder_scene,
    shift_warning,
    write_features,
    write_gpkg,
)
from slidewatch.stac.grid import TargetGrid

MIN_VALID_SHARE = 0.5  # less of the footprint with data at a date: presence unknown there
DATES_GEOJSON, DATES_WGS84, DATING_CSV, DATING_JSON, DATES_GPKG = (
    "dates.geojson", "dates_wgs84.geojson", "dating.csv", "dating.json", "dates.gpkg")
DATE_COLUMNS = (("id", "INTEGER"), ("area_px", "INTEGER"), ("area_m2", "REAL"),
                ("last_absent", "TEXT"), ("first_present", "TEXT"), ("appeared", "TEXT"),
                ("evidence", "TEXT"))


def _no_progress(iterable, **_):
    return iterable


def input_times(inputs: Sequence[Path], dates: Sequence[str] | None
                ) -> list[tuple[dt.datetime, str]]:
    """``(time, where it came from)`` per input: ``dates`` in order, else the tags of the
    scene (of a scan folder: the scene it scanned). A DataError naming an input without one."""
    if dates is not None:
        if len(dates) != len(inputs):
            raise ConfigError(f"--dates: {len(dates)} date(s) for {len(inputs)} scene(s); give "
                              f"one per scene, in their order")
        return [(parse_time(d, where="--dates"), "--dates") for d in dates]
    out = []
    for p in inputs:
        if not p.exists():
            raise DataError(f"{p}: no such file or folder")
        scene = scan_folder_scene(p) if p.is_dir() else p
        if scene is None:
            raise DataError(f"{p}: the scan's scene is unknown or gone, so its date cannot be "
                            f"read; give --dates")
        t, tag = tag_names.acquisition_time(scene)
        if t is None:
            tags = ", ".join(tag_names.DATE_TAGS[:2] + tag_names.DATE_TAGS[-1:])
            raise DataError(f"{scene}: no acquisition date in its tags ({tags}, ...); give "
                            f"--dates (one per scene)")
        out.append((t, tag))
    return out


@dataclass
class Evidence:
    time: dt.datetime
    scene: str
    mean_prob: float | None
    max_prob: float | None
    valid_share: float
    present: bool | None  # None: too little of the footprint has data at this date

    def to_json(self) -> dict:
        return {"date": tag_names.iso(self.time), "scene": self.scene,
                "mean_prob": self.mean_prob, "max_prob": self.max_prob,
                "valid_share": round(self.valid_share, 4), "present": self.present}


@dataclass
class Dated:
    id: int
    geometry: object
    area_px: int
    evidence: list[Evidence]
    first_present: dt.datetime
    last_absent: dt.datetime | None

    @property
    def appeared(self) -> str:
        if self.last_absent is None:
            return f"present on {self.first_present:%Y-%m-%d}, the first image"
        return (f"appeared between {self.last_absent:%Y-%m-%d} and "
                f"{self.first_present:%Y-%m-%d}")


def appearance(evidence: Sequence[Evidence]) -> tuple[dt.datetime, dt.datetime | None]:
    """``(first_present, last_absent)`` from evidence in time order whose last entry is
    present (see the module doc)."""
    first, absent = evidence[-1].time, None
    for e in reversed(evidence[:-1]):
        if e.present is None:
            continue
        if e.present:
            first = e.time
        else:
            absent = e.time
            break
    return first, absent


def _num(v) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 6)


def date_maps(maps: Sequence[np.ndarray], times: Sequence[dt.datetime], names: Sequence[str],
              threshold: float, transform=None) -> list[Dated]:
    """The detections of the last map, dated over ``maps`` (time order, one grid; NaN = no
    data). Geometries in map coordinates with ``transform``."""
    latest = maps[-1]
    labels, n = label_detections(latest, threshold, np.isfinite(latest))
    if n == 0:
        return []
    geoms = polygons(labels, transform)
    per_map = [region_stats(labels, n, m) for m in maps]
    count = per_map[-1][0]
    dated = []
    for k in range(n):
        evidence = []
        for (_, mean, top, seen), t, name in zip(per_map, times, names, strict=True):
            share = float(seen[k]) / float(count[k])
            present = None if share < MIN_VALID_SHARE else bool(mean[k] >= threshold)
            evidence.append(Evidence(t, name, _num(mean[k]), _num(top[k]), share, present))
        evidence[-1].present = True  # by construction
        first, absent = appearance(evidence)
        dated.append(Dated(k + 1, geoms[k + 1], int(count[k]), evidence, first, absent))
    return dated


@dataclass
class DatingSummary:
    out: Path
    maps: list[ScanMap]
    threshold: float
    grid: TargetGrid
    detections: list[Dated]
    files: list[Path]
    warnings: list[str] = field(default_factory=list)


def _csv(dated: list[Dated]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "date", "time", "scene", "mean_prob", "max_prob", "valid_share",
                "present", "appeared"])
    for d in dated:
        for e in d.evidence:
            present = "unknown" if e.present is None else ("yes" if e.present else "no")
            w.writerow([d.id, f"{e.time:%Y-%m-%d}", tag_names.iso(e.time), e.scene,
                        "" if e.mean_prob is None else e.mean_prob,
                        "" if e.max_prob is None else e.max_prob, f"{e.valid_share:.4f}",
                        present, d.appeared])
    return buf.getvalue()


def date_detections(inputs: Sequence[str | Path], out: str | Path, *, model_dir=None,
                    dates: Sequence[str] | None = None, threshold: float | None = None,
                    scan_options: dict | None = None, progress: Callable = _no_progress
                    ) -> DatingSummary:
    """Date every detection of the latest of ``inputs`` (scenes or scan folders of one area;
    see the module doc)."""
    out = Path(out)
    paths = [Path(p) for p in inputs]
    if len(paths) < 2:
        raise ConfigError("give two or more scenes (or scan folders) of one area")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    check_threshold(threshold)
    times = input_times(paths, dates)
    order = sorted(range(len(paths)), key=lambda i: (times[i][0], i))
    paths = [paths[i] for i in order]
    times = [times[i] for i in order]
    names = [p.name for p in paths]
    subs = [f"scans/{k + 1:02d}_{t:%Y%m%d}_{p.stem}" for k, (p, (t, _)) in
            enumerate(zip(paths, times, strict=True))]
    maps, warnings = resolve_inputs(paths, names, model_dir, out, dict(scan_options or {}),
                                    subfolders=subs, progress=progress)
    for m, (t, source) in zip(maps, times, strict=True):
        m.time, m.time_source = t, source
    same = [f"{a.given} and {b.given}" for a, b in zip(maps, maps[1:]) if a.time == b.time]
    if same:
        warnings.append(f"same acquisition time: {same[0]}; their order is the order given")
    t, more = choose_threshold(maps, threshold)
    warnings += more
    grid = raster_grid(maps[-1].probability)
    arrays = [map_on_grid(m.probability, grid) for m in maps]
    res = None if grid.crs is None or grid.crs.is_geographic else grid.resolution
    shifts = {}
    for m, a in zip(maps[:-1], arrays[:-1], strict=True):
        if not (np.isfinite(a) & np.isfinite(arrays[-1])).any():
            raise DataError(f"{m.given}: shares no pixel with data with the latest image "
                            f"{maps[-1].given}; they do not overlap")
        shift = estimate_shift(maps[-1], m, grid)
        shifts[str(m.given)] = shift.to_json(res) if shift else None
        w = shift_warning(shift, maps[-1], m, res)
        if w:
            warnings.append(w)
    transform = None if grid.crs is None and grid.transform.is_identity else grid.transform
    dated = date_maps(arrays, [m.time for m in maps], names, t, transform)
    m2 = area_m2(grid)
    feats = [(d.geometry, {
        "id": d.id, "area_px": d.area_px,
        "area_m2": None if m2 is None else round(d.area_px * m2, 3),
        "last_absent": None if d.last_absent is None else f"{d.last_absent:%Y-%m-%d}",
        "first_present": f"{d.first_present:%Y-%m-%d}", "appeared": d.appeared,
        "evidence": [e.to_json() for e in d.evidence]}) for d in dated]
    out.mkdir(parents=True, exist_ok=True)
    files = write_features(out, DATES_GEOJSON, DATES_WGS84, grid, feats)
    files.append(write_gpkg(out / DATES_GPKG, "dates", grid, feats, DATE_COLUMNS,
                            f"slidewatch date: detections of {maps[-1].given.name}"))
    atomic_write_text(out / DATING_CSV, _csv(dated))
    doc = {"inputs": [describe_time(m) for m in maps], "threshold": t,
           "grid": grid.to_json() if grid.crs is not None else {
               "crs": None, "width": grid.width, "height": grid.height},
           "shifts_against_latest": shifts, "detections": len(dated),
           "min_valid_share": MIN_VALID_SHARE, "warnings": warnings,
           "files": [p.name for p in files] + [DATING_CSV]}
    atomic_write_text(out / DATING_JSON, json.dumps(doc, indent=2) + "\n")
    return DatingSummary(out, maps, t, grid, dated,
                         [*files, out / DATING_CSV, out / DATING_JSON], warnings)
