"""A STAC API catalogue: opening it (timeouts, headers, signer), searching one collection over an
area and a date range with a cloud limit, and saying which filter removed every item.

* :func:`open_catalog`: pystac-client over a session with short timeouts and no retries on a
  failed connection, so an unreachable catalogue is a one-line DataError naming its URL within
  ``timeout`` seconds. ``headers`` go with every request (and to GDAL for the assets, see
  :mod:`slidewatch.stac.fetch`); ``signer`` (:func:`load_signer`) is called with each pystac
  Item just before its assets are read (signed URLs that expire stay fresh during a long
  fetch) and signs the asset addresses in place or returns the signed Item
  (:meth:`Catalog.sign`).
* :func:`search`: the items of one collection whose footprint meets a WGS84 box within a date
  range, then the cloud limit (``eo:cloud_cover`` <= ``max_cloud``, applied here: every API
  filters by bbox and datetime, not all by properties). No item left is a DataError naming the
  filter that removed the last ones: the collection (unknown or empty), the box, the dates or
  the clouds.
* Static catalogues (a ``catalog.json`` or ``collection.json`` and its children, on disk or
  over http(s), without a search endpoint, e.g. one written with pystac): the same calls,
  answered by :class:`StaticCatalogue`, which walks the catalogue once and applies the
  collection, box and date filters itself. A STAC API whose landing page does not conform to
  item search is searched the same way.
* :func:`parse_dates`, :func:`parse_bbox`, :func:`parse_headers`: the options, checked.

pystac-client is the ``stac`` extra (``pip install 'slidewatch[stac]'``), imported only here and
only when a catalogue is opened.
"""

from __future__ import annotations

import datetime as dt
import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from slidewatch.errors import ConfigError, DataError

DEFAULT_TIMEOUT = 10.0  # seconds to connect, and to wait for each answer
DEFAULT_MAX_ITEMS = 500  # items read from one search (pages are followed up to this)
SIGNER_GROUP = "slidewatch.stac_signers"  # entry points: name -> module:function
SIGNERS = {"planetary-computer": "planetary_computer:sign_inplace"}  # built-in names
SIGNER_EXTRAS = {"planetary_computer": "planetary"}  # module -> the extra that installs it
CLOUD = "eo:cloud_cover"


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class DateRange:
    """Inclusive UTC range; None is an open end. A date without a time covers its whole day."""

    start: dt.datetime | None
    end: dt.datetime | None
    text: str

    def stac(self) -> str:
        """The range as the ``datetime`` parameter of a STAC search."""
        def iso(t):
            return ".." if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")

        return f"{iso(self.start)}/{iso(self.end)}"

    def contains(self, t: dt.datetime) -> bool:
        return (self.start is None or t >= self.start) and (self.end is None or t <= self.end)


def parse_time(text: str, *, end: bool = False, where: str = "--dates") -> dt.datetime:
    """An ISO 8601 date or date-time as an aware UTC datetime (a date alone: its first or, with
    ``end``, last second); naive times are UTC. A ConfigError naming ``where`` otherwise."""
    raw = text.strip()
    try:
        if len(raw) == 10:
            day = dt.date.fromisoformat(raw)
            t = dt.datetime.combine(day, dt.time(23, 59, 59) if end else dt.time())
        else:
            t = dt.datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith("Z") else raw)
    except ValueError:
        raise ConfigError(f"{where}: cannot read {text!r} as a date (use YYYY-MM-DD or "
                          f"YYYY-MM-DDTHH:MM:SSZ)") from None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def parse_dates(text: str, option: str = "--dates") -> DateRange:
    """``START/END`` (either may be ``..``, open) or one date (that day)."""
    raw = (text or "").strip()
    parts = raw.split("/") if "/" in raw else [raw, raw]
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ConfigError(f"{option}: give START/END, e.g. 2023-06-01/2023-09-30 (got {text!r})")
    start = None if parts[0].strip() == ".." else parse_time(parts[0], where=option)
    end = None if parts[1].strip() == ".." else parse_time(parts[1], end=True, where=option)
    if start is not None and end is not None and end < start:
        raise ConfigError(f"{option}: the end {parts[1]} is before the start {parts[0]}")
    return DateRange(start, end, raw)


def parse_bbox(text: str, option: str = "--bbox") -> tuple[float, float, float, float]:
    """``W,S,E,N`` in WGS84 degrees (W < E: boxes across the antimeridian are not taken)."""
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option}: give W,S,E,N in degrees, e.g. 85.3,27.6,85.4,27.7 "
                          f"(got {text!r})") from None
    if not all(math.isfinite(v) for v in (w, s, e, n)):
        raise ConfigError(f"{option}: {text!r} is not four finite numbers")
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise ConfigError(f"{option}: {text!r} is not a box W,S,E,N with -180 <= W < E <= 180 "
                          f"and -90 <= S < N <= 90")
    return w, s, e, n


def parse_headers(values: Sequence[str], option: str = "--header") -> dict[str, str]:
    """``NAME: VALUE`` strings as a dict."""
    headers = {}
    for v in values:
        name, sep, value = v.partition(":")
        if not sep or not name.strip() or any(c in v for c in "\r\n"):
            raise ConfigError(f"{option}: give NAME: VALUE, e.g. 'Authorization: Bearer ...' "
                              f"(got {v!r})")
        headers[name.strip()] = value.strip()
    return headers


def load_signer(spec: str | Callable | None) -> Callable | None:
    """The signer named by ``spec``: a callable (kept), ``planetary-computer`` (Planetary
    Computer's ``sign_inplace``, installed by the ``planetary`` extra and imported only here),
    an entry point of group :data:`SIGNER_GROUP`, or ``module:function``. It is called with a
    pystac Item and signs its asset addresses in place, or returns the signed Item."""
    if spec is None or callable(spec):
        return spec
    name = str(spec).strip()
    target = SIGNERS.get(name)
    if target is None and ":" not in name:
        from importlib.metadata import entry_points

        found = [ep for ep in entry_points(group=SIGNER_GROUP) if ep.name == name]
        if not found:
            known = sorted(set(SIGNERS) | {ep.name for ep in entry_points(group=SIGNER_GROUP)})
            raise ConfigError(f"--signer {name}: not a signer name ({', '.join(known)}) and not "
                              f"module:function")
        target = found[0].value
    module_name, _, attr = (target or name).partition(":")
    try:
        module = importlib.import_module(module_name.strip())
    except ImportError as exc:
        extra = SIGNER_EXTRAS.get(module_name.strip())
        hint = (f"; install it with pip install 'slidewatch[{extra}]'" if extra else "")
        raise ConfigError(f"--signer {name}: cannot import {module_name} ({exc}){hint}") from None
    fn = module
    for part in attr.strip().split("."):
        fn = getattr(fn, part, None) if part else None
        if fn is None:
            raise ConfigError(f"--signer {name}: {module_name} has no {attr!r}")
    if not callable(fn):
        raise ConfigError(f"--signer {name}: {target or name} is not callable")
    return fn


# ---------------------------------------------------------------- the catalogue


def _pystac_client():
    try:
        import pystac_client
    except ImportError:
        raise ConfigError("--stac: pystac-client is not installed; install the stac extra "
                          "(pip install 'slidewatch[stac]')") from None
    return pystac_client


_REASONS = (("refused", "connection refused"), ("timed out", "no answer in time"),
            ("timeout", "no answer in time"),
            ("name or service not known", "host name not found"),
            ("nodename nor servname", "host name not found"),
            ("temporary failure in name resolution", "host name not found"),
            ("connection reset", "connection reset"), ("remote end closed", "connection closed"),
            ("ssl", "TLS/SSL failure"))


def short_reason(exc: BaseException) -> str:
    """One short line for a failed request: the network reason when there is one, else the
    HTTP status and the start of the answer, else the exception's first line."""
    text = " ".join(str(exc).split())
    low = text.lower()
    for needle, reason in _REASONS:
        if needle in low:
            return reason
    status = getattr(exc, "status_code", None)
    if status:
        return f"HTTP {status}" + (f": {text[:120]}" if text else "")
    return text[:200] or exc.__class__.__name__


def catalogue_errors() -> tuple[type[BaseException], ...]:
    """What pystac-client and pystac raise for a catalogue that cannot be reached or read."""
    import json

    import requests
    from pystac.errors import STACError, STACTypeError
    from pystac_client.exceptions import APIError

    return (APIError, requests.RequestException, STACError, STACTypeError,
            json.JSONDecodeError, KeyError)


@dataclass
class Catalog:
    """An open catalogue: its URL, the pystac-client Client and the request settings."""

    url: str
    client: object
    timeout: float
    headers: dict[str, str] = field(default_factory=dict)
    signer: Callable | None = None
    signer_name: str | None = None

    def sign(self, item):
        """``item`` with signed asset addresses (itself without a signer); a signer that fails
        is one DataError naming it and the item."""
        if self.signer is None:
            return item
        try:
            signed = self.signer(item)
        except Exception as exc:  # noqa: BLE001 - the user's code: any failure is reported
            msg = " ".join(str(exc).split())[:200] or exc.__class__.__name__
            raise DataError(f"--signer {self.signer_name}: signing item {item.id} failed "
                            f"({msg})") from None
        return item if signed is None else signed

    def call(self, what: str, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)``; a failure to reach or read the catalogue is one DataError
        naming the URL and ``what`` was being done."""
        try:
            return fn(*args, **kwargs)
        except catalogue_errors() as exc:
            raise DataError(f"{self.url}: {what} failed ({short_reason(exc)})") from None


class _Found:
    """What ``Client.search`` returns, as far as slidewatch uses it."""

    def __init__(self, items: list):
        self._items = items

    def items(self):
        return iter(self._items)


def _bbox_meets(a: Sequence[float], b: Sequence[float]) -> bool:
    """Two WGS84 boxes (W, S, E, N; 2D or the 2D part of a 3D bbox) share a point."""
    if len(a) == 6:
        a = (a[0], a[1], a[3], a[4])
    return not (a[0] > b[2] or a[2] < b[0] or a[1] > b[3] or a[3] < b[1])


class StaticCatalogue:
    """A static STAC catalogue searched by walking it (no search endpoint): the items of every
    child catalogue and collection, read once, then filtered here as an item search would:
    ``collections`` (the item's collection id), ``bbox`` (meets the item's) and ``datetime``
    (``start/end``, ``..`` open; an item's ``datetime`` or ``start_datetime``)."""

    def __init__(self, root):
        self.root = root
        self._items: list | None = None

    def get_collections(self):
        import pystac

        found = [self.root] if isinstance(self.root, pystac.Collection) else []
        return found + list(self.root.get_all_collections())

    def get_collection(self, collection_id: str):
        return next((c for c in self.get_collections() if c.id == collection_id), None)

    def all_items(self) -> list:
        if self._items is None:
            self._items = list(self.root.get_items(recursive=True))
        return self._items

    def search(self, *, max_items: int, limit: int | None = None, collections=None, bbox=None,
               datetime: str | None = None, **_) -> _Found:
        dates = parse_dates(datetime, "datetime") if datetime else None
        out = []
        for item in self.all_items():
            if collections and item.collection_id not in collections:
                continue
            if bbox is not None and (item.bbox is None or not _bbox_meets(item.bbox, bbox)):
                continue
            if dates is not None and ((t := item_time(item)) is None or not dates.contains(t)):
                continue
            out.append(item)
            if len(out) >= max_items:
                break
        return _Found(out)


def _is_local(url: str) -> bool:
    return not url.startswith(("http://", "https://"))


def _open_static(catalog: Catalog, url: str) -> StaticCatalogue:
    """A static catalogue on disk: ``catalog.json`` / ``collection.json``, or a folder with
    one."""
    import pathlib

    _pystac_client()  # the stac extra, which brings pystac
    import pystac

    path = pathlib.Path(url).expanduser()
    if path.is_dir():
        path = next((path / n for n in ("catalog.json", "collection.json")
                     if (path / n).is_file()), path / "catalog.json")
    if not path.is_file():
        raise ConfigError(f"--stac: {url!r} is neither an http(s) URL of a STAC API nor a "
                          "static catalogue file (catalog.json) on disk")
    root = catalog.call("reading the static catalogue", pystac.read_file, str(path))
    if not isinstance(root, pystac.Catalog):  # Collection is a Catalog too
        raise DataError(f"{path}: not a STAC catalogue or collection (a {type(root).__name__})")
    return StaticCatalogue(root)


def open_catalog(url: str, *, signer: str | Callable | None = None,
                 headers: dict[str, str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> Catalog:
    """Open the STAC API (or static catalogue) at ``url``; its landing page is read now. See
    the module doc."""
    if not timeout > 0:
        raise ConfigError(f"--timeout: must be > 0 seconds, got {timeout}")
    sign = load_signer(signer)
    if _is_local(url):
        catalog = Catalog(url, None, timeout, dict(headers or {}), sign,
                          None if signer is None else str(getattr(signer, "__name__", signer)))
        catalog.client = _open_static(catalog, url)
        return catalog
    pc = _pystac_client()
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    # retry answers that say "busy" (a few times, quickly); never a connection that fails or
    # an answer that does not come: those are reported at once
    retry = Retry(total=2, connect=0, read=0, status=2, backoff_factor=0.2,
                  status_forcelist=(429, 502, 503, 504), allowed_methods=None,
                  raise_on_status=False)
    io = StacApiIO(headers=dict(headers or {}), timeout=timeout, max_retries=retry)
    catalog = Catalog(url, None, timeout, dict(headers or {}), sign,
                      None if signer is None else str(getattr(signer, "__name__", signer)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NoConformsTo and friends: the search says the rest
        # Client.open hands its own timeout and headers to stac_io: give them again
        catalog.client = catalog.call("opening the catalogue", pc.Client.open, url, stac_io=io,
                                      headers=dict(headers or {}), timeout=timeout)
    from pystac_client.conformance import ConformanceClasses

    if not catalog.client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        catalog.client = StaticCatalogue(catalog.client)  # a static catalogue over http(s)
    return catalog


# ---------------------------------------------------------------- items


def item_time(item) -> dt.datetime | None:
    """An item's acquisition time (``datetime``, else ``start_datetime``) in UTC."""
    t = item.datetime
    if t is None:
        raw = item.properties.get("start_datetime")
        if not raw:
            return None
        t = dt.datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def cloud_cover(item) -> float | None:
    value = item.properties.get(CLOUD)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def describe_bbox(bbox) -> str:
    return "bbox " + ",".join(f"{v:.5f}".rstrip("0").rstrip(".") for v in bbox)


def _collection_ids(catalog: Catalog) -> list[str] | None:
    """The catalogue's collection ids, or None when it cannot list them."""
    try:
        return sorted(c.id for c in catalog.client.get_collections())
    except (*catalogue_errors(), NotImplementedError):
        return None


def check_collection(catalog: Catalog, collection: str) -> None:
    """A DataError naming the catalogue's collections when ``collection`` is not one of them."""
    found = catalog.call(f"reading collection {collection}", catalog.client.get_collection,
                         collection)
    if found is not None:
        return
    ids = _collection_ids(catalog)
    known = f" (it has: {', '.join(ids[:20])}{', ...' if len(ids) > 20 else ''})" if ids else ""
    raise DataError(f"{catalog.url}: no collection {collection!r}{known}")


def _items(catalog: Catalog, what: str, max_items: int, **params) -> list:
    def run():
        search = catalog.client.search(max_items=max_items, limit=min(max_items, 100), **params)
        return list(search.items())

    return catalog.call(what, run)


def check_max_cloud(max_cloud: float | None) -> None:
    if max_cloud is not None and not 0 <= max_cloud <= 100:
        raise ConfigError(f"--max-cloud: must be a percentage 0..100, got {max_cloud}")


@dataclass
class SearchResult:
    items: list  # pystac Items, by time then id
    found: int  # items over the box and dates, before the cloud limit
    no_cloud_cover: int  # of those, items without eo:cloud_cover (dropped by a cloud limit)
    truncated: bool  # max_items reached: there may be more


def search(catalog: Catalog, collection: str, bbox: Sequence[float], dates: DateRange, *,
           max_cloud: float | None = None, max_items: int = DEFAULT_MAX_ITEMS,
           check: bool = True) -> SearchResult:
    """Items of ``collection`` over the WGS84 ``bbox`` within ``dates`` with at most
    ``max_cloud`` percent cloud. No item left: a DataError naming the filter at fault.
    ``check``: look the collection up first (off for repeated searches of one collection)."""
    check_max_cloud(max_cloud)
    if check:
        check_collection(catalog, collection)
    bbox = [float(v) for v in bbox]
    items = _items(catalog, "searching", max_items, collections=[collection], bbox=bbox,
                   datetime=dates.stac())
    # a catalogue may be loose about its own filters: keep only what was asked for
    items = [i for i in items if (t := item_time(i)) is not None and dates.contains(t)]
    if not items:
        raise DataError(_why_none(catalog, collection, bbox, dates))
    found = len(items)
    no_cover = sum(cloud_cover(i) is None for i in items)
    if max_cloud is not None:
        kept = [i for i in items if (c := cloud_cover(i)) is not None and c <= max_cloud]
        if not kept:
            covers = [(cloud_cover(i), item_time(i)) for i in items if cloud_cover(i) is not None]
            least = min(covers, key=lambda c: c[0]) if covers else None
            best = (f"; the least cloudy has {least[0]:g}% on {least[1]:%Y-%m-%d}" if least
                    else "")
            none = f"; {no_cover} without {CLOUD}" if no_cover else ""
            raise DataError(f"{catalog.url}: {found} item(s) of {collection} over "
                            f"{describe_bbox(bbox)} within {dates.text}, but none with "
                            f"{CLOUD} <= {max_cloud:g}% (--max-cloud){best}{none}")
        items = kept
    items.sort(key=lambda i: (item_time(i), i.id))
    return SearchResult(items, found, no_cover, found >= max_items)


def _why_none(catalog: Catalog, collection: str, bbox, dates: DateRange) -> str:
    """Which filter removed every item: the collection, the box, or the dates."""
    if not _items(catalog, "searching", 1, collections=[collection]):
        return f"{catalog.url}: collection {collection!r} has no items"
    if not _items(catalog, "searching", 1, collections=[collection], bbox=bbox):
        return (f"{catalog.url}: no item of {collection} meets {describe_bbox(bbox)} "
                f"(--bbox/--around) at any date")
    return (f"{catalog.url}: no item of {collection} over {describe_bbox(bbox)} within "
            f"{dates.text} (--dates)")
