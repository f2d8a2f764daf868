"""A summary of a class-folder dataset, listing every unreadable file instead of stopping.

Unreadable: what the dataset scanner cannot take (broken symbolic links, folders it cannot
list, special files with an image suffix, names that are not UTF-8; see
:mod:`slidewatch.data.folders`) and images that cannot be read or decoded. The text report
shows names that are not UTF-8 with ``\\xNN`` escapes (the JSON with ``\\udcNN``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from slidewatch.data.folders import scan_class_folders
from slidewatch.data.readers import probe, read_image
from slidewatch.errors import DataError


def _sorted_counts(counter: Counter) -> dict:
    return {str(k): counter[k] for k in sorted(counter, key=str)}


def dataset_info(
    root: str | Path,
    classes: Sequence[str] = ("landslide", "non_landslide"),
    *,
    decode: bool = True,
) -> dict:
    """Counts per class and region, image sizes, bands, dtypes and unreadable files.

    With ``decode`` every image is decoded in full (finds truncated files); without it only
    headers are read.
    """
    root = Path(root)
    unreadable: list[dict] = []
    samples = scan_class_folders(root, classes, problems=unreadable)
    per_class: Counter = Counter()
    per_region: dict[str, Counter] = {}
    sizes: Counter = Counter()
    bands: Counter = Counter()
    dtypes: Counter = Counter()
    for sample in samples:
        name = classes[sample.label]
        per_class[name] += 1
        per_region.setdefault(sample.region, Counter())[name] += 1
        try:
            info = probe(sample.path)
            if decode:
                read_image(sample.path)
        except DataError as exc:
            unreadable.append({"path": str(sample.path), "error": str(exc)})
            continue
        sizes[f"{info.width}x{info.height}"] += 1
        bands[info.bands] += 1
        dtypes[info.dtype] += 1
    return {
        "root": str(root),
        "classes": list(classes),
        "samples": len(samples),
        "tiles_csv": (root / "tiles.csv").is_file(),
        "per_class": {name: per_class[name] for name in classes},
        "per_region": {
            region: {name: counts[name] for name in classes}
            for region, counts in sorted(per_region.items())
        },
        "groups": len({s.group for s in samples}),
        "sizes": _sorted_counts(sizes),
        "bands": _sorted_counts(bands),
        "dtypes": _sorted_counts(dtypes),
        "unreadable": unreadable,
    }


def format_info(info: dict) -> str:
    """``dataset_info``'s result as a short plain-text report."""
    classes = info["classes"]
    lines = [
        f"{info['root']}: {info['samples']} images in {info['groups']} group(s)"
        + (" (tiles.csv)" if info["tiles_csv"] else ""),
        "  " + ", ".join(f"{name} {info['per_class'][name]}" for name in classes),
    ]
    width = max((len(r) for r in info["per_region"]), default=6)
    lines.append(f"  {'region':{width}}  " + "  ".join(f"{c:>14}" for c in classes))
    for region, counts in info["per_region"].items():
        lines.append(f"  {region:{width}}  " + "  ".join(f"{counts[c]:>14}" for c in classes))
    for key in ("sizes", "bands", "dtypes"):
        lines.append(f"  {key}: " + ", ".join(f"{k} ({n})" for k, n in info[key].items()))
    lines.append(f"  unreadable: {len(info['unreadable'])}")
    lines.extend(f"    {row['error']}" for row in info["unreadable"])
    return _printable("\n".join(lines))


def _printable(text: str) -> str:
    """Surrogate escapes (bytes of names that are not UTF-8) as ``\\xNN``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
