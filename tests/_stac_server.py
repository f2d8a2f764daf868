"""A STAC API on loopback for the tests: landing page, conformance, collections, item search
(GET and POST, paged with ``next`` links as the STAC API spec says) and the assets themselves
(HEAD and GET with HTTP Range requests, as GDAL's /vsicurl/ reads COGs).

``StacServer(build)``: ``build(base_url)`` returns ``(collections, items)`` as STAC JSON dicts
(items need the server's address for their links and asset hrefs); assets are served from
``server.files`` (``{name: bytes}`` at ``/assets/<name>``). Options: ``page_size`` (items per
page), ``token`` (assets answer 403 without ``?token=<token>``), ``header`` (``(name, value)``
every request must carry, else 401). ``server.log`` lists ``(method, path, range header)``;
``server.sent`` the bytes sent per asset. :func:`cog_bytes` makes COG assets in memory.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

CONFORMS = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search",
            "https://api.stacspec.org/v1.0.0/collections",
            "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core"]


def _time(text):
    import datetime as dt

    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def matches(item: dict, params: dict) -> bool:
    """The STAC item-search filters: collections, ids, bbox (intersects the item's), datetime."""
    cols = params.get("collections")
    if cols and item.get("collection") not in cols:
        return False
    ids = params.get("ids")
    if ids and item["id"] not in ids:
        return False
    bbox = params.get("bbox")
    if bbox:
        w, s, e, n = bbox
        iw, is_, ie, in_ = item["bbox"]
        if iw > e or ie < w or is_ > n or in_ < s:
            return False
    when = params.get("datetime")
    if when:
        start, _, end = when.partition("/") if "/" in when else (when, "", when)
        t = _time(item["properties"]["datetime"])
        if start not in ("", "..") and t < _time(start):
            return False
        if end not in ("", "..") and t > _time(end):
            return False
    return True


class StacServer:
    def __init__(self, build, *, page_size: int = 2, token: str | None = None,
                 header: tuple[str, str] | None = None, silent: bool = False):
        self.page_size, self.token, self.header, self.silent = page_size, token, header, silent
        self.files: dict[str, bytes] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self.sent: dict[str, int] = defaultdict(int)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.collections, self.items = build(self.url) if build else ([], [])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.stop = threading.Event()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------------ answers

    def landing(self) -> dict:
        u = self.url
        return {"type": "Catalog", "id": "test-api", "stac_version": "1.0.0",
                "description": "loopback STAC API for the tests", "conformsTo": CONFORMS,
                "links": [{"rel": "self", "href": f"{u}/", "type": "application/json"},
                          {"rel": "root", "href": f"{u}/", "type": "application/json"},
                          {"rel": "conformance", "href": f"{u}/conformance"},
                          {"rel": "data", "href": f"{u}/collections"},
                          {"rel": "search", "href": f"{u}/search", "method": "GET",
                           "type": "application/geo+json"},
                          {"rel": "search", "href": f"{u}/search", "method": "POST",
                           "type": "application/geo+json"}]}

    def search(self, params: dict, method: str) -> dict:
        hits = [i for i in self.items if matches(i, params)]
        start = int(params.get("token") or 0)
        limit = min(int(params.get("limit") or self.page_size), self.page_size)
        page = hits[start:start + limit]
        links = [{"rel": "root", "href": f"{self.url}/"}]
        if start + limit < len(hits):
            nxt = {**params, "token": str(start + limit)}
            if method == "POST":
                links.append({"rel": "next", "href": f"{self.url}/search", "method": "POST",
                              "body": nxt, "type": "application/geo+json"})
            else:
                q = {k: (",".join(map(str, v)) if isinstance(v, list) else v)
                     for k, v in nxt.items()}
                links.append({"rel": "next", "href": f"{self.url}/search?{urlencode(q)}",
                              "method": "GET", "type": "application/geo+json"})
        return {"type": "FeatureCollection", "features": page, "links": links,
                "numberMatched": len(hits), "numberReturned": len(page)}

    # ------------------------------------------------------------------ HTTP

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, code, body: bytes, ctype="application/json", extra=None,
                      head=False):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, code, doc):
                self._send(code, json.dumps(doc).encode(), "application/json")

            def _allowed(self) -> bool:
                if server.header is None:
                    return True
                name, value = server.header
                if self.headers.get(name) == value:
                    return True
                self._json(401, {"code": "Unauthorized", "description": f"missing {name}"})
                return False

            def _route(self, method: str):
                if server.silent:  # accept the connection, never answer
                    server.stop.wait(30)
                    return
                url = urlparse(self.path)
                server.log.append((method, url.path, self.headers.get("Range")))
                if not self._allowed():
                    return
                path = url.path.rstrip("/") or "/"
                if path.startswith("/assets/"):
                    return self._asset(path[len("/assets/"):], parse_qs(url.query),
                                       head=method == "HEAD")
                if path == "/":
                    return self._json(200, server.landing())
                if path == "/conformance":
                    return self._json(200, {"conformsTo": CONFORMS})
                if path == "/collections":
                    return self._json(200, {"collections": server.collections,
                                            "links": [{"rel": "root", "href": f"{server.url}/"}]})
                if path.startswith("/collections/"):
                    name = path.split("/")[2]
                    found = [c for c in server.collections if c["id"] == name]
                    if found:
                        return self._json(200, found[0])
                    return self._json(404, {"code": "NotFound",
                                            "description": f"no collection {name}"})
                if path == "/search":
                    if method == "POST":
                        n = int(self.headers.get("Content-Length") or 0)
                        params = json.loads(self.rfile.read(n) or b"{}")
                    else:
                        q = {k: v[0] for k, v in parse_qs(url.query).items()}
                        params = dict(q)
                        for key in ("collections", "ids"):
                            if key in q:
                                params[key] = q[key].split(",")
                        if "bbox" in q:
                            params["bbox"] = [float(v) for v in q["bbox"].split(",")]
                    return self._json(200, server.search(params, method))
                return self._json(404, {"code": "NotFound", "description": self.path})

            def _asset(self, name, query, head=False):
                data = server.files.get(name)
                if data is None:
                    return self._send(404, b"not found", "text/plain", head=head)
                if server.token and query.get("token", [None])[0] != server.token:
                    return self._send(403, b"forbidden: unsigned", "text/plain", head=head)
                ctype = "image/tiff"
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    first, _, last = rng[6:].split(",")[0].partition("-")
                    first = int(first)
                    last = min(int(last) if last else len(data) - 1, len(data) - 1)
                    if first >= len(data):
                        return self._send(416, b"", ctype,
                                          {"Content-Range": f"bytes */{len(data)}"}, head)
                    body = data[first:last + 1]
                    if not head:
                        server.sent[name] += len(body)
                    return self._send(206, body, ctype,
                                      {"Content-Range": f"bytes {first}-{last}/{len(data)}",
                                       "Accept-Ranges": "bytes"}, head)
                if not head:
                    server.sent[name] += len(data)
                return self._send(200, data, ctype, {"Accept-Ranges": "bytes"}, head)

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_HEAD(self):
                self._route("HEAD")

        return Handler


def cog_bytes(arr, crs, transform, nodata=0, blocksize=128) -> bytes:
    """A COG in memory (deflate, ``blocksize`` tiles, averaged overviews) of ``arr``: one band
    (H, W) or several (bands, H, W)."""
    import rasterio.shutil
    from rasterio.io import MemoryFile

    bands = arr[None] if arr.ndim == 2 else arr
    profile = {"driver": "GTiff", "width": bands.shape[2], "height": bands.shape[1],
               "count": bands.shape[0], "dtype": bands.dtype.name, "crs": crs,
               "transform": transform, "nodata": nodata}
    with MemoryFile() as src_mem, MemoryFile() as dst_mem:
        with src_mem.open(**profile) as dst:
            dst.write(bands)
        with src_mem.open() as src:
            rasterio.shutil.copy(src, dst_mem.name, driver="COG", compress="deflate",
                                 blocksize=blocksize, overview_resampling="average")
        return dst_mem.read()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"
