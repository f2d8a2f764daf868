"""The event workflow of issue 15 on generated data, command by command, against a STAC API on
loopback; and the bytes and time of a windowed fetch from a large COG against reading it whole.

A generated area (UTM 45N, 10 m pixels, 768 x 768) is imaged every ~45 days from 2022-01 to
2023-10 (RGB COG assets, cloud cover in the items' properties, some images too cloudy).
Landslides of an inventory appear on the first image after their event date as scars whose
colour fades from bare soil to green with age (fresh < 90 days, recent < 365, old); two old
scars outside the inventory are there from the start. A second area with other events gives
the test set. The catalogue is the tests' loopback STAC API (``tests/_stac_server.py``:
landing page, collections, paged item search, assets with HTTP range requests); slidewatch
talks to it through the same code as to a real catalogue.

Each step is the command a user types (``python -m slidewatch ...`` in a subprocess); its
output and time are written to ``OUT/transcript.md`` and the figures to a JSON line in
``benchmarks/results/stac-workflow.jsonl``:

1. ``imagery search`` and ``imagery fetch`` over the area for May to October 2023;
2. ``data from-inventory --stac`` for the training and the test inventory (chips with the
   days between event and image);
3. ``train`` a small classifier with the age as its second task (``--age-from
   days_from_event``), ``evaluate`` it on the test area's chips (tile scores, the age
   confusion matrix and majority baselines);
4. ``changes`` between the first and the last fetched image: detections new / persisting /
   gone, matched against the events that happened between them;
5. ``date`` over the fetched series: the interval in which each detection appeared, checked
   against the true event dates.

Then ``--big N``: an N x N single-band uint16 COG (deflate, 256 px blocks, overviews) in the
catalogue; ``imagery fetch`` of a 1 km box in it against downloading and decoding the whole
file: bytes sent by the server and seconds, in one run.

    python benchmarks/stac_workflow.py --out runs/stac-workflow [--big 8192]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_points
from rasterio.warp import transform_bounds

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _stac_server import StacServer, cog_bytes  # noqa: E402  (the tests' loopback STAC API)

CRS = "EPSG:32645"
RES = 10.0
SIZE = 768
AREAS = {"train": (500000.0, 3000000.0), "test": (520000.0, 3000000.0)}
COLLECTION, BIG = "generated-s2", "generated-big"
FIRST, LAST = dt.date(2022, 1, 10), dt.date(2023, 10, 1)
STEP_DAYS = 30
FETCH_DATES = "2023-05-01/2023-10-01"
COLOURS = {"fresh": (205, 160, 115), "recent": (165, 150, 105), "old": (120, 132, 85)}


def age_class(days: float) -> str:
    return "fresh" if days < 90 else "recent" if days < 365 else "old"


def image_dates(rng) -> list[tuple[dt.date, float]]:
    """Acquisition dates every STEP_DAYS (+- a few days) with their cloud cover."""
    out, d = [], FIRST
    while d <= LAST:
        cloudy = rng.random() < 0.2  # a fifth of the images are too cloudy to use
        cloud = rng.uniform(85, 98) if cloudy else rng.uniform(0, 45)
        out.append((d + dt.timedelta(days=int(rng.integers(-4, 5))), round(float(cloud), 1)))
        d += dt.timedelta(days=STEP_DAYS)
    return out


def ground(rng) -> np.ndarray:
    """Vegetated ground: smooth green-brown fields plus pixel noise (H, W, 3) float."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(size=(SIZE, SIZE)), 12)
    field = (field - field.min()) / (np.ptp(field) + 1e-9)
    base = np.stack([55 + 40 * field, 80 + 35 * field, 45 + 25 * field], -1)
    return base + rng.normal(0, 4, (SIZE, SIZE, 3))


def make_events(rng, area: str, n: int, dates: list[tuple[dt.date, float]]) -> list[dict]:
    """``n`` events at least 700 m apart and 600 m inside the area; three fifths from 2022-02
    to 2023-03, the others in the fetch window of 2023. Each has a scar footprint (an
    ellipse, ~18 px across)."""
    x0, y0 = AREAS[area]
    events, tries = [], 0
    while len(events) < n and tries < 10000:
        tries += 1
        r, c = rng.integers(60, SIZE - 60, 2)
        if any(math.hypot(r - e["row"], c - e["col"]) * RES < 700 for e in events):
            continue
        if len(events) % 5 < 3:
            when = dt.date(2022, 2, 1) + dt.timedelta(days=int(rng.integers(0, 420)))
        else:
            when = dt.date(2023, 5, 5) + dt.timedelta(days=int(rng.integers(0, 110)))
        events.append({"id": f"{area}-{len(events) + 1:02d}", "row": int(r), "col": int(c),
                       "date": when, "a": float(rng.uniform(7, 11)),
                       "b": float(rng.uniform(5, 9)), "theta": float(rng.uniform(0, np.pi))})
    for e in events:
        x, y = x0 + (e["col"] + 0.5) * RES, y0 - (e["row"] + 0.5) * RES
        (lon,), (lat,) = warp_points(CRS, "EPSG:4326", [x], [y])
        e["lon"], e["lat"] = lon, lat
    return events


def scar_mask(e: dict) -> np.ndarray:
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    dr, dc = rows - e["row"], cols - e["col"]
    u = dr * math.cos(e["theta"]) + dc * math.sin(e["theta"])
    v = -dr * math.sin(e["theta"]) + dc * math.cos(e["theta"])
    return (u / e["a"]) ** 2 + (v / e["b"]) ** 2 <= 1.0


def render(base: np.ndarray, events: list[dict], when: dt.date, rng) -> np.ndarray:
    img = base.copy()
    for e in events:
        days = (when - e["date"]).days
        if days < 0:
            continue
        m = scar_mask(e)
        img[m] = np.asarray(COLOURS[age_class(days)], float) + rng.normal(0, 5, (m.sum(), 3))
    return np.clip(np.rint(img), 1, 255).astype(np.uint8)  # 0 stays nodata


def stac_item(base: str, item_id: str, collection: str, when: str, cloud: float, transform,
              width: int, height: int, assets: dict) -> dict:
    w, s, e, n = transform_bounds(CRS, "EPSG:4326", transform.c, transform.f - RES * height,
                                  transform.c + transform.a * width, transform.f,
                                  densify_pts=21)
    return {"type": "Feature", "stac_version": "1.0.0",
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json"],
            "id": item_id, "collection": collection, "bbox": [w, s, e, n],
            "geometry": {"type": "Polygon",
                         "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
            "properties": {"datetime": when, "eo:cloud_cover": cloud, "proj:epsg": 32645},
            "links": [{"rel": "self", "href": f"{base}/collections/{collection}/items/{item_id}"},
                      {"rel": "collection", "href": f"{base}/collections/{collection}"},
                      {"rel": "root", "href": f"{base}/"}],
            "assets": {k: {"href": f"{base}/assets/{name}", "roles": ["data"],
                           "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                           "eo:bands": bands} for k, (name, bands) in assets.items()}}


def collection(base: str, cid: str) -> dict:
    return {"type": "Collection", "id": cid, "stac_version": "1.0.0",
            "description": f"{cid}: generated imagery", "license": "proprietary",
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                       "temporal": {"interval": [["2022-01-01T00:00:00Z", None]]}},
            "links": [{"rel": "self", "href": f"{base}/collections/{cid}"},
                      {"rel": "root", "href": f"{base}/"}]}


def build_world(seed: int, big: int) -> tuple[dict, list, dict, list]:
    """``(files, item specs, truth, big item spec)``: files ``{name: bytes}``; item specs
    ``(id, collection, datetime, cloud, transform, width, height, assets)`` (the server's
    address goes into the items when it starts)."""
    rng = np.random.default_rng(seed)
    dates = image_dates(rng)
    files, specs, truth = {}, [], {"dates": [d.isoformat() for d, _ in dates], "areas": {}}
    rgb = [{"name": n, "common_name": n} for n in ("red", "green", "blue")]
    for area, (x0, y0) in AREAS.items():
        events = make_events(rng, area, 40 if area == "train" else 24, dates)
        old = [{"id": f"{area}-old{i}", "row": int(r), "col": int(c),
                "date": dt.date(2020, 6, 1), "a": 9.0, "b": 7.0, "theta": 0.3}
               for i, (r, c) in enumerate(rng.integers(60, SIZE - 60, (2, 2)))]
        truth["areas"][area] = {"events": events, "old": old}
        base = ground(rng)
        t = from_origin(x0, y0, RES, RES)
        for when, cloud in dates:
            item_id = f"GEN_{area.upper()}_{when:%Y%m%d}"
            img = render(base, events + old, when, rng).transpose(2, 0, 1)
            name = f"{item_id}_visual.tif"
            files[name] = cog_bytes(img, CRS, t, blocksize=256)
            specs.append((item_id, COLLECTION, f"{when.isoformat()}T04:50:00Z", cloud, t, SIZE,
                          SIZE, {"visual": (name, rgb)}))
    big_spec = None
    if big:
        from scipy.ndimage import zoom

        coarse = rng.normal(size=(big // 64 + 1, big // 64 + 1))
        field = zoom(coarse, 64, order=1)[:big, :big]
        arr = (3000 + 800 * field + rng.normal(0, 30, (big, big))).clip(1, 65535)
        arr = arr.astype(np.uint16)[None]
        t = from_origin(540000.0, 3000000.0, RES, RES)
        files["BIG_B04.tif"] = cog_bytes(arr, CRS, t, blocksize=256)
        big_spec = ("GEN_BIG_20230701", BIG, "2023-07-01T04:50:00Z", 3.0, t, big, big,
                    {"B04": ("BIG_B04.tif", [{"name": "B04", "common_name": "red"}])})
    return files, specs, truth, big_spec


# ----------------------------------------------------------------------------- the run


class Transcript:
    def __init__(self, out: Path, env: dict):
        self.out, self.env, self.parts, self.times = out, env, [], {}

    def run(self, label: str, args: list[str], *, show: int = 25) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "slidewatch", *args]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=self.out, env=self.env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        self.times[label] = round(seconds, 2)
        text = (done.stdout + done.stderr).strip().splitlines()
        if len(text) > show:
            text = text[:show // 2] + [f"... ({len(text) - show} lines)"] + text[-show // 2:]
        self.parts.append(f"### {label}\n\n```console\n$ slidewatch "
                          f"{shlex.join(args)}\n" + "\n".join(text)
                          + f"\n```\n\nexit {done.returncode}, {seconds:.1f} s\n")
        if done.returncode != 0:
            self.write()
            raise SystemExit(f"{label} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        return done

    def note(self, text: str) -> None:
        self.parts.append(text + "\n")

    def write(self) -> None:
        (self.out / "transcript.md").write_text("\n".join(self.parts), encoding="utf-8")


def write_inventory(path: Path, events: list[dict]) -> None:
    lines = ["id,latitude,longitude,date,landslide_size,trigger"]
    lines += [f"{e['id']},{e['lat']:.7f},{e['lon']:.7f},{e['date'].isoformat()},medium,rain"
              for e in events]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def area_bbox(area: str) -> str:
    x0, y0 = AREAS[area]
    w, s, e, n = transform_bounds(CRS, "EPSG:4326", x0, y0 - SIZE * RES, x0 + SIZE * RES, y0,
                                  densify_pts=21)
    return f"{w:.6f},{s:.6f},{e:.6f},{n:.6f}"


def inner_bbox(area: str, metres: float) -> str:
    """A box of ``metres`` a side in the middle of a grid (for the big COG)."""
    x0, y0 = area
    cx, cy = x0 + 4000.0, y0 - 4000.0
    w, s, e, n = transform_bounds(CRS, "EPSG:4326", cx, cy - metres, cx + metres, cy,
                                  densify_pts=21)
    return f"{w:.7f},{s:.7f},{e:.7f},{n:.7f}"


def features(path: Path) -> list[tuple[dict, object]]:
    """(properties, shapely geometry in the grid's CRS) of each feature of a GeoJSON file."""
    from shapely.geometry import shape

    return [(f["properties"], shape(f["geometry"]))
            for f in json.loads(path.read_text())["features"]]


def file_date(path: Path) -> dt.date:
    """The acquisition date in a fetched file's name (``YYYYMMDD_<item>.tif``)."""
    return dt.datetime.strptime(path.name[:8], "%Y%m%d").date()


def match(truth: list[dict], geom) -> dict | None:
    """The truth scar whose centre lies in a detection's polygon (or within 150 m of it)."""
    from shapely.geometry import Point

    x0, y0 = AREAS["train"]
    best = None
    for e in truth:
        p = Point(x0 + (e["col"] + 0.5) * RES, y0 - (e["row"] + 0.5) * RES)
        d = geom.distance(p)
        if d <= 150 and (best is None or d < best[0]):
            best = (d, e)
    return best[1] if best else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/stac-workflow"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--big", type=int, default=8192,
                    help="side of the large COG for the bytes-read figure (0: skip)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--results", type=Path,
                    default=ROOT / "benchmarks" / "results" / "stac-workflow.jsonl")
    args = ap.parse_args()
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: exists and is not empty; give another --out")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files, specs, truth, big_spec = build_world(args.seed, args.big)
    print(f"generated {len(files)} COGs ({sum(map(len, files.values())) / 1e6:.1f} MB) in "
          f"{time.perf_counter() - t0:.0f} s")

    def build(base):
        items = [stac_item(base, *s) for s in specs + ([big_spec] if big_spec else [])]
        return [collection(base, COLLECTION), collection(base, BIG)], items

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    tr = Transcript(out, env)
    record = {"benchmark": "stac-workflow", "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} CPUs", "seed": args.seed, "date": dt.date.today().isoformat()}
    with StacServer(build, page_size=10) as api:
        api.files.update(files)
        url = api.url
        for area in ("train", "test"):
            write_inventory(out / f"inventory-{area}.csv", truth["areas"][area]["events"])
        tr.note(f"# The event workflow on generated data\n\nSTAC API on loopback: {url} "
                f"(collection `{COLLECTION}`, {len(specs)} items over two areas, "
                f"images every ~{STEP_DAYS} days from {FIRST} to {LAST}). Inventories: "
                f"`inventory-train.csv` ({len(truth['areas']['train']['events'])} events), "
                f"`inventory-test.csv` ({len(truth['areas']['test']['events'])} events).\n")
        bbox = area_bbox("train")
        tr.run("1a. search", ["imagery", "search", "--stac", url, "--collection", COLLECTION,
                              "--bbox", bbox, "--dates", FETCH_DATES, "--max-cloud", "30",
                              "--out", "search", "--no-progress"])
        tr.run("1b. fetch", ["imagery", "fetch", "--stac", url, "--collection", COLLECTION,
                             "--bbox", bbox, "--dates", FETCH_DATES, "--max-cloud", "30",
                             "--bands", "red,green,blue", "--out", "imagery", "--no-progress"])
        fetched = sorted((out / "imagery").glob("*.tif"))
        for area in ("train", "test"):
            tr.run(f"2. from-inventory ({area})",
                   ["data", "from-inventory", f"inventory-{area}.csv", "--stac", url,
                    "--collection", COLLECTION, "--days-after", "900", "--max-cloud", "30",
                    "--bands", "red,green,blue", "--size", "32", "--min-distance", "250",
                    "--negative-ratio", "3", "--radius", "700", "--out", f"chips-{area}"])
        # chips are centred on the points; windows of a scan are not: shifts of up to 30% of
        # the chip in training, so a scar off the window's centre is still seen
        (out / "train.yaml").write_text("augment:\n  translate: 0.3\n  rotate90: true\n"
                                        "  brightness: 0.1\n  contrast: 0.1\n",
                                        encoding="utf-8")
        tr.run("3a. train (age as second task)",
               ["train", "--config", "train.yaml", "--data", "chips-train", "--out", "model",
                "--model", "baseline_cnn",
                "--weights", "none", "--input-size", "32", "--phase1-epochs", "0",
                "--unfreeze-layers", "99", "--phase2-epochs", str(args.epochs), "--phase2-lr",
                "0.003", "--schedule", "constant", "--batch-size", "16", "--val-fraction",
                "0.25", "--split-by", "region", "--early-stopping-metric", "val_loss",
                "--tabular", "chips-train/tiles.csv", "--age-from", "days_from_event",
                "--seed", str(args.seed), "--device", "cpu", "--quiet"], show=12)
        tr.run("3b. evaluate on the test area",
               ["evaluate", "model", "--data", "chips-test", "--tabular",
                "chips-test/tiles.csv", "--out", "eval-test", "--device", "cpu", "--quiet"])
        metrics = json.loads((out / "eval-test" / "metrics.json").read_text())
        record["test_tiles"] = {k: metrics["overall"].get(k) for k in
                                ("n", "f1", "roc_auc", "specificity", "recall")}
        record["age"] = {k: metrics["age"].get(k) for k in ("n", "macro_f1", "accuracy",
                                                            "confusion")}
        record["age"]["baseline_macro_f1"] = metrics["age"].get("baseline", {}).get("macro_f1")
        record["age"]["evaluated_majority_macro_f1"] = (
            metrics["age"].get("baseline_evaluated_majority", {}).get("macro_f1"))
        first, last = fetched[0], fetched[-1]
        scan = ["--model", "model", "--tile", "32", "--stride", "8", "--device", "cpu"]
        tr.run("4. changes", ["changes", f"imagery/{first.name}", f"imagery/{last.name}",
                              *scan, "--out", "changes", "--no-progress"])
        tr.run("5. date", ["date", *[f"imagery/{p.name}" for p in fetched], *scan,
                           "--out", "dates", "--no-progress"], show=30)

        # ------------------------------------------------ scored against the generated truth
        t_first, t_last = file_date(first), file_date(last)
        events = truth["areas"]["train"]["events"]
        scars = events + truth["areas"]["train"]["old"]
        new_truth = {e["id"] for e in events if t_first < e["date"] <= t_last}
        kept_truth = {e["id"] for e in scars if e["date"] <= t_first}
        got = {"new": set(), "persisting": set()}
        unmatched = 0
        for props, geom in features(out / "changes" / "changes.geojson"):
            e = match(scars, geom)
            if e is None:
                unmatched += 1
            elif props["change"] in got:
                got[props["change"]].add(e["id"])
        record["changes"] = {
            "new_true": len(new_truth), "new_found": len(got["new"] & new_truth),
            "new_wrong": len(got["new"] - new_truth), "persisting_true": len(kept_truth),
            "persisting_found": len(got["persisting"] & kept_truth),
            "detections_off_any_scar": unmatched}
        dates = sorted(file_date(p) for p in fetched)
        right = wrong = 0
        for props, geom in features(out / "dates" / "dates.geojson"):
            e = match(scars, geom)
            if e is None or e["date"] <= dates[0]:
                continue  # before the series: "present on the first image" is all one can say
            lo = props.get("last_absent")
            hi = props.get("first_present")
            ok = lo is not None and dt.date.fromisoformat(lo[:10]) < e["date"] <= \
                dt.date.fromisoformat(hi[:10])
            right, wrong = right + ok, wrong + (not ok)
        record["dating"] = {"events_in_series": sum(dates[0] < e["date"] <= dates[-1]
                                                    for e in events),
                            "dated_right": right, "dated_wrong": wrong}

        # ------------------------------------------------ windowed read against the whole file
        if big_spec:
            name = "BIG_B04.tif"
            size = len(api.files[name])
            api.sent.clear()
            t1 = time.perf_counter()
            tr.run("6. fetch a 1 km window of the large COG",
                   ["imagery", "fetch", "--stac", url, "--collection", BIG, "--bbox",
                    inner_bbox((big_spec[4].c, big_spec[4].f), 1000.0),
                    "--dates", "2023-07-01", "--bands", "B04", "--out", "big-window",
                    "--no-progress"])
            window_s = time.perf_counter() - t1
            window_bytes = api.sent[name]
            # the same read in this process: search, then the window's range requests only
            from slidewatch.stac.catalog import parse_bbox, parse_dates
            from slidewatch.stac.fetch import bbox_area, fetch_imagery

            api.sent.clear()
            t1 = time.perf_counter()
            fetch_imagery(url, BIG, [bbox_area(parse_bbox(inner_bbox(
                (big_spec[4].c, big_spec[4].f), 1000.0)))], parse_dates("2023-07-01"),
                out / "big-window-again", bands=["B04"])
            inproc_s = time.perf_counter() - t1
            api.sent.clear()
            t2 = time.perf_counter()
            with urllib.request.urlopen(f"{url}/assets/{name}") as r:
                body = r.read()
            with MemoryFile(body) as mem, mem.open() as ds:
                whole = ds.read(1)
            whole_s = time.perf_counter() - t2
            record["cog"] = {"side_px": args.big, "file_bytes": size,
                             "window_bytes_sent": window_bytes,
                             "window_share": round(window_bytes / size, 5),
                             "window_seconds": round(window_s, 2),
                             "window_seconds_in_process": round(inproc_s, 2),
                             "whole_bytes_sent": api.sent[name],
                             "whole_seconds": round(whole_s, 2),
                             "whole_pixels": int(whole.size)}
            tr.note(f"Whole file for comparison: GET {name} ({size / 1e6:.1f} MB) and decode "
                    f"{args.big} x {args.big} pixels: {whole_s:.1f} s; the 1 km window: "
                    f"{window_bytes / 1e6:.3f} MB sent ({100 * window_bytes / size:.2f}% of the "
                    f"file) in {window_s:.1f} s (the whole command, Python start included; "
                    f"{inproc_s:.2f} s for the search and the read in one process).")
    record["seconds"] = tr.times
    record["total_seconds"] = round(time.perf_counter() - t0, 1)
    tr.note("## Against the generated truth\n\n```json\n" + json.dumps(
        {k: record[k] for k in ("test_tiles", "age", "changes", "dating", "cog")
         if k in record}, indent=2) + "\n```")
    tr.write()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps(record, indent=2))
    print(f"transcript -> {out / 'transcript.md'}")


if __name__ == "__main__":
    main()
