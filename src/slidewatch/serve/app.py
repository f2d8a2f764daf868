"""The FastAPI application of ``slidewatch serve``: :func:`create_app`.

Guards, in one middleware that runs before any route:

* token: when the settings have one, every route but ``/api/health`` needs it, as
  ``Authorization: Bearer T`` or ``?token=T`` (tiles, the page and its assets); compared in
  constant time. 401 with a JSON error otherwise.
* host: a server without a token answers only requests whose ``Host`` is a loopback name or
  address (DNS rebinding: a web page cannot reach it through a name of its own).
* origin: a request that changes something (POST, PUT, PATCH, DELETE) from a browser page of
  another origin is refused (403), unless that origin was given with ``--cors-origin``. CORS is
  closed by default: no ``Access-Control-Allow-*`` header is sent.

Errors are JSON ``{"error": "..."}`` with no traceback: our own errors (bad scene, bad model)
are 4xx with their one-line message, with the data root and work folder cut from paths;
anything else is 500 "internal error", its traceback in the server's log only.
"""

from __future__ import annotations

import contextlib
import html
import logging
import secrets
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from slidewatch.errors import ConfigError, DataError, ModelError, SlidewatchError
from slidewatch.serve.errors import ApiError
from slidewatch.serve.paths import PathRefused
from slidewatch.serve.settings import ServeSettings, is_loopback

log = logging.getLogger("slidewatch.serve")
STATIC = Path(__file__).parent / "static"
PUBLIC_PATHS = {"/api/health"}
UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("slidewatch")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


# ---------------------------------------------------------------- guards


def _given_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.query_params.get("token")


def _host_name(host_header: str) -> str:
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same_origin(origin: str, host_header: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(origin)
    return bool(parts.netloc) and parts.netloc.lower() == host_header.strip().lower()


def guard(settings: ServeSettings):
    """The middleware of the module doc: None when the request may go on, else a response."""
    allowed_hosts = {h.lower() for h in settings.extra_hosts}

    def check(request: Request) -> JSONResponse | None:
        path = request.url.path
        host = request.headers.get("host", "")
        if settings.token is None and not (is_loopback(_host_name(host))
                                           or _host_name(host) in allowed_hosts):
            return JSONResponse({"error": f"Host {host!r} is not this server's loopback "
                                          f"address; without a token the server answers "
                                          f"127.0.0.1/localhost only"}, 400)
        if settings.token is not None and path not in PUBLIC_PATHS:
            given = _given_token(request)
            if not given or not secrets.compare_digest(given.encode(), settings.token.encode()):
                what = "wrong token" if given else "this server needs a token"
                return JSONResponse({"error": f"{what}: send 'Authorization: Bearer <token>' or "
                                              f"add ?token=<token>"}, 401,
                                    headers={"WWW-Authenticate": "Bearer"})
        origin = request.headers.get("origin")
        if (request.method in UNSAFE_METHODS and origin and origin != "null"
                and not _same_origin(origin, host) and origin not in settings.cors_origins):
            return JSONResponse({"error": f"origin {origin!r} may not change anything on this "
                                          f"server (start it with --cors-origin {origin} to "
                                          f"allow it)"}, 403)
        if request.method in UNSAFE_METHODS and origin == "null":
            return JSONResponse({"error": "requests from opaque origins are refused"}, 403)
        return None

    return check


# ---------------------------------------------------------------- errors


def error_text(message: str, settings: ServeSettings) -> str:
    """``message`` on one line without the server's own folders (paths relative to them)."""
    text = " ".join(str(message).split())
    for folder, label in ((settings.workdir, ""), (settings.data_root, "")):
        text = text.replace(f"{folder}/", label).replace(str(folder), "<folder>")
    return text


def _status_of(exc: SlidewatchError) -> int:
    if isinstance(exc, DataError):
        return 422
    if isinstance(exc, (ConfigError, ModelError)):
        return 400
    return 400


def install_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    def answer(status: int, message: str, headers=None, **extra) -> JSONResponse:
        return JSONResponse({"error": error_text(message, settings), **extra}, status,
                            headers=headers)

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return answer(exc.status, str(exc), **exc.extra)

    @app.exception_handler(PathRefused)
    async def _path(request: Request, exc: PathRefused):
        return answer(exc.status, str(exc))

    @app.exception_handler(SlidewatchError)
    async def _ours(request: Request, exc: SlidewatchError):
        return answer(_status_of(exc), str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such route: {request.method} {request.url.path}"
        return answer(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "request"
            problems.append(f"{where}: {e.get('msg', 'invalid')}")
        return answer(422, "invalid request: " + "; ".join(problems))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("internal error in %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error; the server's log has the details"}, 500)


# ---------------------------------------------------------------- pages


def _page(name: str, token: str | None) -> HTMLResponse:
    """A page of ``static/`` with ``{{TOKEN_QS}}`` replaced by ``?token=...`` (escaped) when the
    server has a token (asset URLs carry it: a browser cannot add headers to them)."""
    text = (STATIC / name).read_text(encoding="utf-8")
    qs = "" if token is None else "?token=" + html.escape(_url_quote(token), quote=True)
    return HTMLResponse(text.replace("{{TOKEN_QS}}", qs),
                        headers={"Cache-Control": "no-store",
                                 "Content-Security-Policy": CSP,
                                 "X-Content-Type-Options": "nosniff",
                                 "Referrer-Policy": "no-referrer"})


def _url_quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


# Everything the pages load comes from this server; no inline scripts.
CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
       "form-action 'self'")


# ---------------------------------------------------------------- the application


def create_app(settings: ServeSettings, *, start_worker: bool = True) -> FastAPI:
    """The application over checked ``settings`` (:func:`.settings.check_settings`).
    ``start_worker``: start the scan worker thread (tests may run jobs by hand)."""
    import warnings

    from rasterio.errors import NotGeoreferencedWarning

    from slidewatch.serve.api import add_routes
    from slidewatch.serve.jobs import JobManager

    # rio-tiler opens plain images with rasterio.open: a warning per tile otherwise
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)

    jobs = JobManager(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if start_worker:
            jobs.start()
        try:
            yield
        finally:
            jobs.stop()

    app = FastAPI(title="slidewatch serve", version=version(), docs_url=None, redoc_url=None,
                  lifespan=lifespan,
                  description="Scan scenes for landslides, review the detections, export "
                              "corrections for training.")
    app.state.settings = settings
    app.state.jobs = jobs
    install_error_handlers(app, settings)
    check = guard(settings)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        refused = check(request)
        if refused is not None:
            return refused
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.get("/api/health", tags=["server"])
    def health() -> dict:
        """Liveness: no token needed."""
        return {"status": "ok", "version": version()}

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return _page("index.html", settings.token)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return _page("docs.html", settings.token)

    add_routes(app, settings, jobs)
    # Swagger UI's assets come from the `swagger-ui-bundle` package (a PyPI wheel of the npm
    # release; the serve extra installs it), not from a copy in this repository
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/static/vendor/swagger-ui", StaticFiles(directory=swagger_ui_path),
              name="swagger-ui")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
