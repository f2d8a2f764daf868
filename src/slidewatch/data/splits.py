"""Train / validation / test splits that keep related tiles together.

Tiles of one source image are near-duplicates, so the default splits by image (``group``);
``by="region"`` keeps whole regions together and ``by="tile"`` is a plain random split that
is only used when asked for. Splits are seeded, deterministic and stratified so that the
validation and test parts get every class when the groups allow it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from slidewatch.data.folders import Sample
from slidewatch.errors import ConfigError, DataError
from slidewatch.io_utils import atomic_write_text

SPLIT_BY = ("image", "region", "tile")
PARTS = ("train", "val", "test")


@dataclass
class Split:
    """Sample indexes of each part."""

    train: list[int]
    val: list[int]
    test: list[int]

    def as_dict(self) -> dict[str, list[int]]:
        return {"train": self.train, "val": self.val, "test": self.test}


def _validate(by: str, val_fraction: float, test_fraction: float) -> None:
    if by not in SPLIT_BY:
        raise ConfigError(f"--split-by: must be one of {', '.join(SPLIT_BY)}, got {by!r}")
    for name, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name}: must be at least 0 and below 1, got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(
            f"--val-fraction + --test-fraction: must add up to less than 1, got "
            f"{val_fraction} + {test_fraction}"
        )


def _group_key(sample: Sample, index: int, by: str) -> str:
    if by == "image":
        return sample.group
    if by == "region":
        return sample.region
    return str(index)


def _holdout(samples: Sequence[Sample], regions: Sequence[str], test_fraction: float) -> list[int]:
    """Indexes of the held-out regions' samples (the test part)."""
    if test_fraction > 0:
        raise ConfigError(
            "--test-fraction: cannot be combined with --holdout-region "
            "(the held-out regions are the test part)"
        )
    present = sorted({s.region for s in samples})
    unknown = sorted(set(regions) - set(present))
    if unknown:
        raise ConfigError(
            f"--holdout-region: unknown region(s) {', '.join(unknown)}; "
            f"regions found: {', '.join(present)}"
        )
    test = [i for i, s in enumerate(samples) if s.region in set(regions)]
    if len(test) == len(samples):
        raise ConfigError("--holdout-region: every region is held out; nothing is left to train on")
    return test


class _Groups:
    """Groups of sample indexes with their labels, sizes and a seeded random rank."""

    def __init__(self, samples, indexes, by, seed):
        members: dict[str, list[int]] = {}
        for i in indexes:
            members.setdefault(_group_key(samples[i], i, by), []).append(i)
        self.keys = sorted(members)
        self.members = [members[k] for k in self.keys]
        self.labels = [frozenset(samples[i].label for i in m) for m in self.members]
        self.rank = np.random.default_rng(seed).permutation(len(self.keys)).tolist()

    def size(self, g: int) -> int:
        return len(self.members[g])


def _allocate(groups: _Groups, fractions: dict[str, float]) -> dict[str, list[int]]:
    """Per stratum (the set of labels in a group), put groups in parts by cumulative size."""
    parts: dict[str, list[int]] = {p: [] for p in PARTS}
    strata: dict[tuple, list[int]] = {}
    for g, labels in enumerate(groups.labels):
        strata.setdefault(tuple(sorted(labels)), []).append(g)
    edges = (("test", fractions["test"]), ("val", fractions["test"] + fractions["val"]))
    for key in sorted(strata):
        members = sorted(strata[key], key=lambda g: groups.rank[g])
        total = sum(groups.size(g) for g in members)
        done = 0
        for g in members:
            middle = (done + groups.size(g) / 2) / total
            done += groups.size(g)
            part = next((name for name, edge in edges if middle < edge), "train")
            parts[part].append(g)
    return parts


def _smallest(groups: _Groups, candidates: list[int]) -> int:
    return min(candidates, key=lambda g: (groups.size(g), groups.rank[g]))


def _fill_empty(groups: _Groups, parts: dict[str, list[int]], wanted: list[str]) -> None:
    """Give every wanted part at least one group, taken from the part with most samples."""
    for part in wanted:
        if parts[part]:
            continue
        donors = [p for p in PARTS if len(parts[p]) > 1]
        donor = max(donors, key=lambda p: sum(groups.size(g) for g in parts[p]))
        g = _smallest(groups, parts[donor])
        parts[donor].remove(g)
        parts[part].append(g)


def _cover_classes(groups: _Groups, parts: dict[str, list[int]], wanted: list[str]) -> None:
    """Move small train groups into val/test until they hold every class train can spare."""
    all_labels = sorted(set().union(*groups.labels))
    for part in wanted:
        for label in all_labels:
            if any(label in groups.labels[g] for g in parts[part]):
                continue
            holders = [g for g in parts["train"] if label in groups.labels[g]]
            if len(holders) < 2 or len(parts["train"]) < 2:
                continue
            g = _smallest(groups, holders)
            parts["train"].remove(g)
            parts[part].append(g)


def split_samples(
    samples: Sequence[Sample],
    *,
    by: str = "image",
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    holdout_regions: Sequence[str] = (),
    val_regions: Sequence[str] = (),
) -> Split:
    """Split samples into train / val / test index lists; no group is in two parts.

    With ``holdout_regions`` those regions are the test part and the rest is split into
    train and val (``val_fraction`` is then a fraction of the rest). With ``val_regions``
    those regions, whole, are the validation part (``val_fraction`` is not used).
    """
    _validate(by, val_fraction, test_fraction)
    if not samples:
        raise DataError("no samples to split")
    test: list[int] = []
    if holdout_regions:
        test = _holdout(samples, holdout_regions, test_fraction)
    val: list[int] = []
    if val_regions:
        present = sorted({s.region for s in samples})
        unknown = sorted(set(val_regions) - set(present))
        if unknown:
            raise ConfigError(f"--val-region: unknown region(s) {', '.join(unknown)}; "
                              f"regions found: {', '.join(present)}")
        val = [i for i, s in enumerate(samples) if s.region in set(val_regions)
               and i not in set(test)]
        val_fraction = 0.0
    rest = sorted(set(range(len(samples))) - set(test) - set(val))
    if val_regions and not rest:
        raise ConfigError("--val-region: nothing is left to train on")
    groups = _Groups(samples, rest, by, seed)
    wanted = [p for p, f in (("val", val_fraction), ("test", test_fraction)) if f > 0]
    if len(groups.keys) < 1 + len(wanted):
        raise ConfigError(
            f"--split-by {by}: only {len(groups.keys)} group(s) ({', '.join(groups.keys[:5])}) "
            f"for {1 + len(wanted)} parts; split by a finer unit or lower the fractions"
        )
    parts = _allocate(groups, {"val": val_fraction, "test": test_fraction})
    _fill_empty(groups, parts, ["train", *wanted])
    _cover_classes(groups, parts, wanted)
    out = {p: sorted(i for g in parts[p] for i in groups.members[g]) for p in PARTS}
    return Split(out["train"], sorted(val + out["val"]), sorted(test + out["test"]))


def save_split(path, samples: Sequence[Sample], split: Split) -> None:
    """Write the split as JSON: each part lists ``Sample.key`` (root name + relative path)."""
    data = {"format": "slidewatch-split", "version": 1}
    for part, indexes in split.as_dict().items():
        data[part] = [samples[i].key for i in indexes]
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def load_split(path, samples: Sequence[Sample]) -> Split:
    """Read a split written by ``save_split`` and map it onto ``samples``."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a split file ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(p), list) for p in PARTS):
        raise DataError(f"{path}: not a split file (needs lists 'train', 'val' and 'test')")
    index = {s.key: i for i, s in enumerate(samples)}
    out: dict[str, list[int]] = {}
    seen: set[str] = set()
    for part in PARTS:
        missing = [k for k in data[part] if k not in index]
        if missing:
            raise DataError(
                f"{path}: {len(missing)} file(s) of the {part} part are not in the dataset, "
                f"e.g. {missing[0]}"
            )
        twice = seen.intersection(data[part])
        if twice:
            raise DataError(f"{path}: {sorted(twice)[0]} is listed in two parts")
        seen.update(data[part])
        out[part] = sorted(index[k] for k in data[part])
    return Split(out["train"], out["val"], out["test"])


def split_for(d, seed: int, samples: Sequence[Sample]) -> Split:
    """The split a training config asks for (``d``: its ``DataConfig``): the split file when
    given, else :func:`split_samples` by ``d.split_by`` with ``d.holdout_regions``; a split
    without training images is a DataError naming the data."""
    if d.split_file:
        split = load_split(d.split_file, samples)
    else:
        split = split_samples(samples, by=d.split_by, val_fraction=d.val_fraction, seed=seed,
                              holdout_regions=tuple(d.holdout_regions),
                              val_regions=tuple(d.val_regions))
    if not split.train:
        raise DataError(f"{', '.join(d.paths)}: the split leaves no training images")
    return split
