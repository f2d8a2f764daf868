"""A small GeoPackage (OGC 12-128r18, version 1.3) writer and reader on the standard library's
``sqlite3``, for feature tables that are edited row by row (reviews), which GDAL, QGIS and
pyogrio open as any GeoPackage.

What a file holds (the spec's required parts, nothing optional but an attributes table):
``PRAGMA application_id`` 'GPKG' and ``user_version`` 10300; ``gpkg_spatial_ref_sys`` with the
three required systems (EPSG:4326, -1 undefined Cartesian, 0 undefined geographic) and the
table's own; ``gpkg_contents`` (with the layer's extent, kept up to date by
:func:`update_extent`); ``gpkg_geometry_columns``; the feature table (``fid INTEGER PRIMARY
KEY AUTOINCREMENT``, geometry column ``geom``) with geometries as GeoPackage binary: header
``GP``, version 0, flags (little-endian, an xy envelope), the srs id, the envelope, then ISO
WKB. No spatial index (the rtree extension): layers of reviews are small.

Coordinates without a CRS (pixel column and row of a scene without one) use srs id -1, the
spec's undefined Cartesian system.
"""

from __future__ import annotations

import contextlib
import sqlite3
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from slidewatch.errors import DataError

APPLICATION_ID = 0x47504B47  # "GPKG"
USER_VERSION = 10300  # GeoPackage 1.3.0
CUSTOM_SRS_ID = 100000  # a CRS without an EPSG code
WGS84_WKT = ('GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,'
             'AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,'
             'AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,'
             'AUTHORITY["EPSG","9122"]],AUTHORITY["EPSG","4326"]]')
REQUIRED_SRS = (
    ("WGS 84 geodetic", 4326, "EPSG", 4326, WGS84_WKT,
     "longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid"),
    ("Undefined cartesian SRS", -1, "NONE", -1, "undefined",
     "undefined cartesian coordinate reference system"),
    ("Undefined geographic SRS", 0, "NONE", 0, "undefined",
     "undefined geographic coordinate reference system"),
)
GEOMETRY_TYPES = {"POINT", "LINESTRING", "POLYGON", "MULTIPOINT", "MULTILINESTRING",
                  "MULTIPOLYGON", "GEOMETRY", "GEOMETRYCOLLECTION"}
COLUMN_TYPES = {"INTEGER", "REAL", "DOUBLE", "TEXT", "BLOB", "DATETIME", "DATE", "BOOLEAN"}


@dataclass(frozen=True)
class Srs:
    """A spatial reference system row: ``srs_id`` (the EPSG code when there is one)."""

    srs_id: int
    name: str
    organization: str
    code: int
    definition: str

    @property
    def crs(self):
        """The rasterio CRS, or None for the undefined systems (pixel coordinates)."""
        if self.srs_id in (-1, 0):
            return None
        from rasterio.crs import CRS

        if self.organization.upper() == "EPSG":
            return CRS.from_epsg(self.code)
        return CRS.from_wkt(self.definition)


def srs_for(crs) -> Srs:
    """The :class:`Srs` of a rasterio CRS (None: undefined Cartesian, for pixel coordinates)."""
    if crs is None:
        return Srs(-1, "Undefined cartesian SRS", "NONE", -1, "undefined")
    epsg = crs.to_epsg()
    wkt = crs.to_wkt()
    name = wkt.split('"')[1] if '"' in wkt else "custom"
    if epsg is not None:
        return Srs(int(epsg), name, "EPSG", int(epsg), wkt)
    return Srs(CUSTOM_SRS_ID, name, "NONE", CUSTOM_SRS_ID, wkt)


def timestamp(seconds: float | None = None) -> str:
    """A GeoPackage DATETIME (ISO 8601 UTC with milliseconds and Z)."""
    t = time.time() if seconds is None else seconds
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


# ---------------------------------------------------------------- geometry blobs


def encode(geom, srs_id: int) -> bytes:
    """GeoPackage binary of a shapely geometry (2D)."""
    import shapely

    if geom is None or geom.is_empty:
        flags = 0b00010001  # little-endian, no envelope, empty
        return b"GP\x00" + bytes([flags]) + struct.pack("<i", srs_id) + shapely.to_wkb(
            geom if geom is not None else shapely.Point(), byte_order=1, output_dimension=2)
    minx, miny, maxx, maxy = geom.bounds
    flags = 0b00000011  # little-endian, envelope [minx, maxx, miny, maxy]
    return (b"GP\x00" + bytes([flags]) + struct.pack("<i", srs_id)
            + struct.pack("<4d", minx, maxx, miny, maxy)
            + shapely.to_wkb(geom, byte_order=1, output_dimension=2))


def decode(blob: bytes | None):
    """The shapely geometry of a GeoPackage binary blob (None stays None)."""
    import shapely

    if blob is None:
        return None
    if len(blob) < 8 or blob[:2] != b"GP":
        raise ValueError("not a GeoPackage geometry")
    flags = blob[3]
    envelope = (flags >> 1) & 0b111
    size = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}.get(envelope)
    if size is None:
        raise ValueError(f"bad envelope indicator {envelope}")
    return shapely.from_wkb(bytes(blob[8 + size:]))


# ---------------------------------------------------------------- files


def connect(path: str | Path, *, must_exist: bool = True) -> sqlite3.Connection:
    """An sqlite3 connection to a GeoPackage (foreign keys on, rows as ``sqlite3.Row``). An
    existing file that is not a GeoPackage is a DataError naming it."""
    path = Path(path)
    if must_exist and not path.is_file():
        raise DataError(f"{path}: no such GeoPackage")
    try:
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        if must_exist:
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            if app != APPLICATION_ID:
                conn.close()
                raise DataError(f"{path}: not a GeoPackage (application_id {app:#x})")
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path}: not a GeoPackage ({exc})") from None
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` .. ``COMMIT`` (``ROLLBACK`` on an error): one writer at a time, so a
    read-check-write inside is atomic against other connections."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"bad SQL identifier {name!r}")
    return '"' + name + '"'


def create(conn: sqlite3.Connection, table: str, columns: Sequence[tuple[str, str]], srs: Srs,
           geometry_type: str = "MULTIPOLYGON", description: str = "") -> None:
    """The GeoPackage tables (once per file) and feature table ``table`` with ``columns``
    (name, GeoPackage type) after ``fid`` and ``geom``."""
    if geometry_type not in GEOMETRY_TYPES:
        raise ValueError(f"geometry type {geometry_type!r}")
    for _, kind in columns:
        if kind not in COLUMN_TYPES:
            raise ValueError(f"column type {kind!r}")
    with transaction(conn):
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {USER_VERSION}")
        conn.execute("""CREATE TABLE IF NOT EXISTS gpkg_spatial_ref_sys (
            srs_name TEXT NOT NULL, srs_id INTEGER NOT NULL PRIMARY KEY,
            organization TEXT NOT NULL, organization_coordsys_id INTEGER NOT NULL,
            definition TEXT NOT NULL, description TEXT)""")
        conn.execute("""CREATE TABLE IF NOT EXISTS gpkg_contents (
            table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL,
            identifier TEXT UNIQUE, description TEXT DEFAULT '',
            last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
            min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
            CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id)
                REFERENCES gpkg_spatial_ref_sys(srs_id))""")
        conn.execute("""CREATE TABLE IF NOT EXISTS gpkg_geometry_columns (
            table_name TEXT NOT NULL, column_name TEXT NOT NULL,
            geometry_type_name TEXT NOT NULL, srs_id INTEGER NOT NULL,
            z TINYINT NOT NULL, m TINYINT NOT NULL,
            CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
            CONSTRAINT uk_gc_table_name UNIQUE (table_name),
            CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
            CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id)
                REFERENCES gpkg_spatial_ref_sys (srs_id))""")
        for row in REQUIRED_SRS:
            conn.execute("INSERT OR IGNORE INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)",
                         row)
        conn.execute("INSERT OR IGNORE INTO gpkg_spatial_ref_sys VALUES (?, ?, ?, ?, ?, ?)",
                     (srs.name, srs.srs_id, srs.organization, srs.code, srs.definition, ""))
        cols = "".join(f", {_ident(n)} {k}" for n, k in columns)
        conn.execute(f"CREATE TABLE {_ident(table)} (fid INTEGER PRIMARY KEY AUTOINCREMENT "
                     f"NOT NULL, geom {geometry_type}{cols})")
        conn.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, "
                     "description, last_change, srs_id) VALUES (?, 'features', ?, ?, ?, ?)",
                     (table, table, description, timestamp(), srs.srs_id))
        conn.execute("INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', ?, ?, 0, 0)",
                     (table, geometry_type, srs.srs_id))


def create_attributes(conn: sqlite3.Connection, table: str, columns: Sequence[tuple[str, str]],
                      description: str = "") -> None:
    """A non-spatial table (``data_type = 'attributes'``) with an ``id`` primary key."""
    with transaction(conn):
        cols = "".join(f", {_ident(n)} {k}" for n, k in columns)
        conn.execute(f"CREATE TABLE {_ident(table)} (id INTEGER PRIMARY KEY AUTOINCREMENT "
                     f"NOT NULL{cols})")
        conn.execute("INSERT INTO gpkg_contents (table_name, data_type, identifier, "
                     "description, last_change) VALUES (?, 'attributes', ?, ?, ?)",
                     (table, table, description, timestamp()))


def table_srs(conn: sqlite3.Connection, table: str) -> Srs:
    row = conn.execute(
        "SELECT s.srs_id, s.srs_name, s.organization, s.organization_coordsys_id, s.definition "
        "FROM gpkg_geometry_columns g JOIN gpkg_spatial_ref_sys s ON g.srs_id = s.srs_id "
        "WHERE g.table_name = ?", (table,)).fetchone()
    if row is None:
        raise DataError(f"GeoPackage has no feature table {table!r}")
    return Srs(int(row[0]), row[1], row[2], int(row[3]), row[4])


def update_extent(conn: sqlite3.Connection, table: str) -> None:
    """``gpkg_contents``: the table's extent and last change, from its geometries."""
    bounds = [decode(r[0]).bounds for r in
              conn.execute(f"SELECT geom FROM {_ident(table)} WHERE geom IS NOT NULL")]
    bounds = [b for b in bounds if b and all(v == v for v in b)]
    ext = (None,) * 4
    if bounds:
        ext = (min(b[0] for b in bounds), min(b[1] for b in bounds),
               max(b[2] for b in bounds), max(b[3] for b in bounds))
    conn.execute("UPDATE gpkg_contents SET min_x = ?, min_y = ?, max_x = ?, max_y = ?, "
                 "last_change = ? WHERE table_name = ?", (*ext, timestamp(), table))


def tables(conn: sqlite3.Connection) -> dict[str, str]:
    """``{table_name: data_type}`` of ``gpkg_contents``."""
    return {r[0]: r[1] for r in conn.execute("SELECT table_name, data_type FROM gpkg_contents")}
