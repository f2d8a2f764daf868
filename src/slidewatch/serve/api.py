"""The routes of ``slidewatch serve`` under ``/api`` (the page, ``/docs`` and the guards are in
:mod:`slidewatch.serve.app`). Every route is listed in the OpenAPI document at ``/docs``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from slidewatch.data.reviews import MAX_NOTE, MAX_REVIEWER, STATUSES, ReviewConflict
from slidewatch.errors import DataError, SlidewatchError
from slidewatch.serve import reviews, tiles, uploads
from slidewatch.serve.errors import ApiError
from slidewatch.serve.jobs import JOB_ID, JobManager
from slidewatch.serve.paths import (
    PathRefused,
    list_models,
    list_scenes,
    scene_path,
    upload_id,
)
from slidewatch.serve.settings import ServeSettings

PNG = "image/png"
MAX_TILE_INDEX = 2**24


class JobRequest(BaseModel):
    scene: str = Field(description="path relative to the data root, or upload:<id>",
                       max_length=4096)
    model: str = Field(description="a model name from /api/models", max_length=400)
    dem: str | None = Field(None, description="optional DEM (a GeoTIFF named like a scene) "
                            "that covers the scene: each detection then gets its mean and max "
                            "slope in degrees", max_length=4096)


class ReviewRequest(BaseModel):
    version: int = Field(description="the version the reviewer saw (409 if it changed)")
    status: str | None = Field(None, description="|".join(STATUSES))
    reviewer: str = Field(max_length=MAX_REVIEWER)
    note: str | None = Field(None, max_length=MAX_NOTE)
    geometry: dict[str, Any] | None = Field(None, description="GeoJSON Polygon in page "
                                            "coordinates (lon/lat, or pixels col/row)")


class AddRequest(BaseModel):
    reviewer: str = Field(max_length=MAX_REVIEWER)
    note: str | None = Field(None, max_length=MAX_NOTE)
    geometry: dict[str, Any]


def add_routes(app: FastAPI, settings: ServeSettings, jobs: JobManager) -> None:
    def resolve_scene(name: str, what: str = "scene") -> tuple[Path, str]:
        uid = upload_id(name, what)
        if uid is not None:
            path = uploads.upload_path(settings.workdir, uid)
            if path is None:
                raise PathRefused(404, f"{what} {name!r}: no such upload")
            return path, f"upload: {path.name}"
        return scene_path(settings.data_root, name, what), name

    def models() -> dict[str, Path]:
        return list_models(settings.models)

    def job_or_404(job_id: str) -> dict:
        job = jobs.get(job_id) if JOB_ID.match(job_id) else None
        if job is None:
            raise ApiError(404, f"job {job_id!r}: no such job")
        return job

    def done_job(job_id: str) -> dict:
        job = job_or_404(job_id)
        if job["status"] != "done":
            raise ApiError(409, f"job {job_id}: not finished (status {job['status']})")
        return job

    def png(data: bytes, max_age: int = 60) -> Response:
        return Response(data, media_type=PNG,
                        headers={"Cache-Control": f"private, max-age={max_age}"})

    def check_tile(z: int, x: int, y: int) -> None:
        if not (0 <= x < MAX_TILE_INDEX and 0 <= y < MAX_TILE_INDEX):
            raise ApiError(400, f"tile {z}/{x}/{y}: x and y must be >= 0")

    # ------------------------------------------------------------ catalogue

    @app.get("/api/config", tags=["server"])
    def config() -> dict:
        """What the page needs to know about this server."""
        return {"max_upload_mb": settings.max_upload_mb, "reviewer": settings.reviewer,
                "token_required": settings.token is not None, "legend": tiles.legend()}

    @app.get("/api/scenes", tags=["scenes"])
    def scenes() -> dict:
        """GeoTIFFs under the data root, and uploads."""
        found, cut = list_scenes(settings.data_root)
        return {"scenes": [vars(e) for e in found], "truncated": cut,
                "uploads": uploads.list_uploads(settings.workdir)}

    @app.get("/api/models", tags=["scenes"])
    def models_route() -> dict:
        """Model folders under the --models folders."""
        from slidewatch.meta import read_meta

        out = []
        for name, path in models().items():
            try:
                meta = read_meta(path)
            except Exception:  # noqa: BLE001 - a broken folder is listed as such
                out.append({"name": name, "usable": False})
                continue
            out.append({"name": name, "usable": True, "architecture": meta.architecture,
                        "task": meta.task or "classify", "input_size": meta.input_size,
                        "bands": meta.in_chans, "threshold": meta.threshold})
        return {"models": out}

    @app.get("/api/scenes/view", tags=["scenes"])
    def scene_view(scene: str = Query(max_length=4096)) -> dict:
        """How the page shows a scene: Web Mercator bounds, or a plain image's size."""
        path, label = resolve_scene(scene)
        return {"scene": scene, "label": label, **tiles.view_of(path).to_json()}

    @app.get("/api/scenes/tiles/{z}/{x}/{y}.png", tags=["tiles"],
             response_class=Response, responses={200: {"content": {PNG: {}}}})
    def scene_tile(z: int, x: int, y: int, scene: str = Query(max_length=4096)) -> Response:
        """A 256 px PNG tile of a scene (Web Mercator z/x/y, or pixel tiles of a plain image)."""
        check_tile(z, x, y)
        path, _ = resolve_scene(scene)
        return png(tiles.scene_tile(path, z, x, y))

    @app.get("/api/legend", tags=["tiles"])
    def legend() -> dict:
        """The probability colour ramp (tiles, legend and detection colours)."""
        return tiles.legend()

    @app.post("/api/uploads", tags=["scenes"], status_code=201)
    async def upload(request: Request, name: str | None = Query(None, max_length=400)) -> dict:
        """Upload a GeoTIFF: multipart/form-data with a ``file`` field, or the raw file as the
        body with ``?name=``. Larger than --max-upload-mb: 413; not a TIFF: 415; corrupt: 422."""
        try:
            return await uploads.receive(request.stream(),
                                         request.headers.get("content-type", ""),
                                         request.headers.get("content-length"), name,
                                         settings.workdir, settings.max_upload_bytes)
        except uploads.UploadRefused as exc:
            raise ApiError(exc.status, str(exc)) from None

    # ------------------------------------------------------------ jobs

    @app.get("/api/jobs", tags=["jobs"])
    def list_jobs() -> dict:
        """Every job, newest first."""
        return {"jobs": [public(j) for j in jobs.list()]}

    @app.post("/api/jobs", tags=["jobs"], status_code=201)
    def submit(req: JobRequest) -> dict:
        """Queue a scan of a scene with a model; one scan runs at a time. With ``dem``, each
        detection also gets its mean and max slope (the DEM must cover the scene: else 422)."""
        path, label = resolve_scene(req.scene)
        dem = dem_label = None
        if req.dem:
            dem, dem_label = resolve_scene(req.dem, "dem")
        found = models()
        if req.model not in found:
            raise ApiError(404, f"model {req.model!r}: no such model (see /api/models)")
        from slidewatch.data import raster
        from slidewatch.meta import read_meta

        meta = read_meta(found[req.model])
        try:
            raster.inspect_scene(path, meta.in_chans)
        except DataError as exc:
            raise ApiError(422, str(exc).replace(str(path), label)) from None
        if dem is not None:
            from slidewatch.data.terrain import check_dem

            try:
                check_dem(dem, path)
            except SlidewatchError as exc:
                text = str(exc).replace(str(dem), f"DEM {dem_label}").replace(str(path), label)
                raise ApiError(422, text) from None
        return public(jobs.submit(req.scene, path, req.model, found[req.model], label,
                                  dem=req.dem if dem else None, dem_path=dem,
                                  dem_label=dem_label))

    @app.get("/api/jobs/{job_id}", tags=["jobs"])
    def get_job(job_id: str) -> dict:
        return public(job_or_404(job_id))

    @app.post("/api/jobs/{job_id}/cancel", tags=["jobs"])
    def cancel(job_id: str) -> dict:
        """Cancel a queued job, or a running one at its next window row."""
        job_or_404(job_id)
        return public(jobs.cancel(job_id))

    @app.get("/api/jobs/{job_id}/view", tags=["jobs"])
    def job_view(job_id: str) -> dict:
        """How the page shows a finished job: the scene's view and the threshold."""
        job = done_job(job_id)
        p = reviews.paths(jobs.out_dir(job_id), job["scene_path"])
        geo = bool(job.get("georeferenced"))
        view = tiles.view_of(Path(job["scene_path"]), georeferenced=geo).to_json()
        threshold = None
        from slidewatch.data import raster

        with raster.open_raster(p.probability) as ds:
            threshold = float(ds.tags().get("SLIDEWATCH_THRESHOLD", "nan"))
        return {**view, "job": public(job), "threshold": threshold, "legend": tiles.legend()}

    @app.get("/api/jobs/{job_id}/tiles/{layer}/{z}/{x}/{y}.png", tags=["tiles"],
             response_class=Response, responses={200: {"content": {PNG: {}}}})
    def job_tile(job_id: str, layer: str, z: int, x: int, y: int) -> Response:
        """A tile of a finished job's scene or probability map (``layer``: scene|probability)."""
        check_tile(z, x, y)
        job = done_job(job_id)
        geo = bool(job.get("georeferenced"))
        if layer == "scene":
            return png(tiles.scene_tile(Path(job["scene_path"]), z, x, y, georeferenced=geo))
        if layer == "probability":
            prob = reviews.paths(jobs.out_dir(job_id), job["scene_path"]).probability
            return png(tiles.probability_tile(prob, geo, z, x, y), 3600)
        raise ApiError(404, f"layer {layer!r}: scene or probability")

    @app.get("/api/jobs/{job_id}/probability.tif", tags=["jobs"], response_class=FileResponse)
    def probability_file(job_id: str) -> FileResponse:
        """The probability map (Cloud-Optimized GeoTIFF)."""
        job = done_job(job_id)
        p = reviews.paths(jobs.out_dir(job_id), job["scene_path"])
        return FileResponse(p.probability, media_type="image/tiff", filename=p.probability.name)

    # ------------------------------------------------------------ detections and reviews

    @app.get("/api/jobs/{job_id}/detections", tags=["reviews"])
    def detections(job_id: str) -> dict:
        """The job's detections and drawn polygons with their reviews (GeoJSON; lon/lat or
        pixel coordinates, see ``coordinates``)."""
        job = done_job(job_id)
        return reviews.feature_collection(jobs.out_dir(job_id), job)

    @app.put("/api/jobs/{job_id}/detections/{fid}", tags=["reviews"])
    def review(job_id: str, fid: int, req: ReviewRequest) -> dict:
        """Accept, reject or redraw (``geometry``) a detection, with a note. ``version`` must
        be the detection's current version, else 409."""
        job = done_job(job_id)
        try:
            return reviews.review(jobs.out_dir(job_id), job, fid, req.model_dump())
        except ReviewConflict as exc:
            raise ApiError(409, str(exc), current=exc.current) from None

    @app.post("/api/jobs/{job_id}/detections", tags=["reviews"], status_code=201)
    def add(job_id: str, req: AddRequest) -> dict:
        """Add a landslide the scan missed (a polygon drawn on the map)."""
        job = done_job(job_id)
        return reviews.add(jobs.out_dir(job_id), job, req.model_dump())

    @app.get("/api/jobs/{job_id}/detections/{fid}/chip.png", tags=["reviews"],
             response_class=Response, responses={200: {"content": {PNG: {}}}})
    def chip(job_id: str, fid: int) -> Response:
        """The scene around one detection, its outline in cyan."""
        job = done_job(job_id)
        found = reviews.feature_geometry(jobs.out_dir(job_id), job, fid)
        if found is None:
            raise ApiError(404, f"detection {fid}: no such detection")
        geom, geo = found
        return png(tiles.chip(Path(job["scene_path"]), geom, geo))

    @app.get("/api/jobs/{job_id}/detections/{fid}/gradcam.png", tags=["reviews"],
             response_class=Response, responses={200: {"content": {PNG: {}}}})
    def gradcam(job_id: str, fid: int) -> Response:
        """Grad-CAM of the job's model on the window around one detection (computed on
        demand; a second or two on a CPU)."""
        from slidewatch.serve.cams import gradcam_png

        job = done_job(job_id)
        geom = reviews.feature_pixels(jobs.out_dir(job_id), job, fid)
        if geom is None:
            raise ApiError(404, f"detection {fid}: no such detection")
        if not Path(job["model_dir"]).is_dir():
            raise ApiError(409, f"job {job_id}: its model {job['model']!r} is gone")
        return png(gradcam_png(Path(job["scene_path"]), job["model_dir"], geom), 3600)

    @app.get("/api/jobs/{job_id}/reviews.geojson", tags=["reviews"])
    def export_geojson(job_id: str) -> JSONResponse:
        """The reviews as GeoJSON (WGS84 for a georeferenced scene)."""
        job = done_job(job_id)
        name = f"{Path(job['scene_path']).stem}_reviews.geojson"
        return JSONResponse(reviews.export_geojson(jobs.out_dir(job_id), job),
                            media_type="application/geo+json",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/api/jobs/{job_id}/reviews.gpkg", tags=["reviews"], response_class=FileResponse)
    def export_gpkg(job_id: str) -> FileResponse:
        """The review GeoPackage (for QGIS, or ``slidewatch data from-reviews``)."""
        job = done_job(job_id)
        path = reviews.ensure_store(jobs.out_dir(job_id), job)
        return FileResponse(path, media_type="application/geopackage+sqlite3",
                            filename=path.name)


def public(job: dict) -> dict:
    """A job as the API shows it: no server paths."""
    hidden = {"scene_path", "model_dir", "dem_path"}
    return {k: v for k, v in job.items() if k not in hidden}
