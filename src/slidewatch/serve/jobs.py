"""Scan jobs of ``slidewatch serve``: one JSON file per job, one worker thread, resume.

``<workdir>/jobs/<id>/job.json`` holds a job (scene, model, status, progress, result); it is
replaced atomically on every change, so a killed server leaves every job readable. Scan
outputs go to ``<workdir>/jobs/<id>/out/`` (:func:`slidewatch.scan.run.scan`). A job with a
DEM (``dem``: its name, ``dem_path``) makes its review store right after the scan, with each
detection's slope (:func:`slidewatch.serve.reviews.ensure_store`); a DEM without data under a
detection fails the job with a one-line error.

States: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``. One scan runs at a
time, in the order the jobs were made; the rest wait. When the server starts, a job it finds
``running`` was interrupted (the server was killed or stopped): it is queued again first, and
the scan resumes from its partial files (same scene, model and settings: the scan's own resume
state). A stop (Ctrl-C) leaves the running job that way too; a cancel ends it and removes its
partial outputs.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from slidewatch.errors import SlidewatchError
from slidewatch.io_utils import atomic_write_text
from slidewatch.serve.settings import ServeSettings

log = logging.getLogger("slidewatch.serve")
JOB_FILE = "job.json"
JOB_ID = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{8}$")
ACTIVE = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
SAVE_EVERY_S = 0.5  # progress is written at most this often


class Cancelled(Exception):
    """Raised inside a scan's progress loop: the job was cancelled."""


class Stopping(Exception):
    """Raised inside a scan's progress loop: the server is stopping (the job resumes later)."""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def new_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


class JobManager:
    """Jobs on disk and the worker that runs them (see the module doc).

    ``scan``: the scan function (default :func:`slidewatch.scan.run.scan`); tests may wrap it.
    """

    def __init__(self, settings: ServeSettings, scan: Callable | None = None):
        self.settings = settings
        self.root = settings.workdir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._scan = scan
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._cancel: set[str] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.jobs: dict[str, dict] = {}
        self._load()

    # ------------------------------------------------------------ storage

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def out_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "out"

    def _save(self, job: dict) -> None:
        atomic_write_text(self.job_dir(job["id"]) / JOB_FILE,
                          json.dumps(job, indent=1, sort_keys=True) + "\n")

    def _load(self) -> None:
        for folder in sorted(self.root.iterdir()):
            if not JOB_ID.match(folder.name) or not (folder / JOB_FILE).is_file():
                continue
            try:
                job = json.loads((folder / JOB_FILE).read_text(encoding="utf-8"))
                if not isinstance(job, dict) or job.get("id") != folder.name:
                    raise ValueError("not a job record")
            except (OSError, ValueError) as exc:
                log.warning("%s: skipped, unreadable job record (%s)", folder / JOB_FILE, exc)
                continue
            if job.get("status") == "running":  # the server died or stopped during the scan
                job.update(status="queued", interrupted=True)
                self._save(job)
            self.jobs[job["id"]] = job

    # ------------------------------------------------------------ API

    def submit(self, scene: str, scene_path: Path, model: str, model_dir: Path,
               label: str | None = None, *, dem: str | None = None,
               dem_path: Path | None = None, dem_label: str | None = None) -> dict:
        with self._lock:
            job_id = new_id()
            while job_id in self.jobs:
                job_id = new_id()
            seq = 1 + max((j.get("seq", 0) for j in self.jobs.values()), default=0)
            job = {"id": job_id, "seq": seq, "scene": scene, "scene_label": label or scene,
                   "scene_path": str(scene_path), "model": model, "model_dir": str(model_dir),
                   "status": "queued", "created": now(), "started": None, "finished": None,
                   "progress": {"rows": 0, "total": None}, "error": None, "detections": None,
                   "scan_status": None, "interrupted": False, "runs": 0,
                   "dem": dem if dem_path is not None else None,
                   "dem_label": (dem_label or dem) if dem_path is not None else None,
                   "dem_path": str(dem_path) if dem_path is not None else None}
            self.job_dir(job_id).mkdir(parents=True)
            self._save(job)
            self.jobs[job_id] = job
            self._wake.notify_all()
            return dict(job)

    def get(self, job_id: str) -> dict | None:
        with self._lock:
            job = self.jobs.get(job_id)
            return None if job is None else json.loads(json.dumps(job))

    def list(self) -> list[dict]:
        with self._lock:
            order = sorted(self.jobs.values(), key=lambda j: (j.get("seq", 0), j["id"]),
                           reverse=True)
            return [json.loads(json.dumps(j)) for j in order]

    def cancel(self, job_id: str) -> dict | None:
        """Cancel a queued job at once, a running one at its next window row; a finished job
        is left as it is. Returns the job, None if unknown."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            if job["status"] == "queued":
                job.update(status="cancelled", finished=now())
                self._save(job)
                self._discard_partial(job_id)
            elif job["status"] == "running":
                self._cancel.add(job_id)
            return dict(job)

    def busy(self) -> bool:
        with self._lock:
            return any(j["status"] in ACTIVE for j in self.jobs.values())

    # ------------------------------------------------------------ the worker

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="slidewatch-scan",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker; a running scan stops at its next window row and stays resumable."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _next(self) -> dict | None:
        queued = [j for j in self.jobs.values() if j["status"] == "queued"]
        if not queued:
            return None
        # interrupted scans first, then in the order they were made
        return min(queued, key=lambda j: (not j.get("interrupted"), j.get("seq", 0), j["id"]))

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and self._next() is None:
                    self._wake.wait(1.0)
                if self._stopping:
                    return
            self.run_next()

    def run_next(self) -> dict | None:
        """Run the next queued job to its end in this thread; returns it (None: no job)."""
        with self._lock:
            job = self._next()
            if job is None:
                return None
            job.update(status="running", started=job.get("started") or now(),
                       runs=job.get("runs", 0) + 1, error=None)
            self._save(job)
        self._run(job)
        return self.get(job["id"])

    def _progress(self, job: dict) -> Callable:
        last = [0.0]

        def progress(iterable: Iterable, desc: str = "", total: int | None = None) -> Iterator:
            for k, item in enumerate(iterable):
                with self._lock:
                    if job["id"] in self._cancel:
                        raise Cancelled(job["id"])
                    if self._stopping:
                        raise Stopping(job["id"])
                    job["progress"] = {"rows": k, "total": total}  # window rows of this run
                    if time.monotonic() - last[0] >= SAVE_EVERY_S:
                        last[0] = time.monotonic()
                        self._save(job)
                yield item
            with self._lock:
                job["progress"] = {"rows": total, "total": total}

        return progress

    def _run(self, job: dict) -> None:
        scan = self._scan
        if scan is None:
            from slidewatch.scan.run import scan
        job_id = job["id"]
        try:
            summary = scan(job["model_dir"], [job["scene_path"]], self.out_dir(job_id),
                           device=self.settings.device, progress=self._progress(job))
        except Cancelled:
            with self._lock:
                self._cancel.discard(job_id)
                job.update(status="cancelled", finished=now())
                self._save(job)
                self._discard_partial(job_id)
            return
        except Stopping:
            with self._lock:
                job.update(status="queued", interrupted=True)
                self._save(job)
            return
        except SlidewatchError as exc:
            self._finish(job, "failed", error=str(exc))
            return
        except Exception as exc:  # a bug: the job fails, the server goes on
            log.exception("job %s: scan failed", job_id)
            self._finish(job, "failed", error=f"internal error ({type(exc).__name__}); the "
                                               f"server's log has the details")
            return
        result = summary.scenes[0]
        done = {"detections": result.detections_count, "scan_status": result.status,
                "seconds": round(summary.seconds, 3), "windows": summary.windows,
                "warnings": summary.warnings,
                "georeferenced": result.detections_wgs84 is not None}
        if job.get("dem_path"):
            error = self._slopes({**job, **done})
            if error is not None:
                self._finish(job, "failed", error=error, **done)
                return
        self._finish(job, "done", **done)

    def _slopes(self, job: dict) -> str | None:
        """Make the review store of a finished DEM job (slopes included); the error as one
        line without server paths, or None."""
        from slidewatch.serve import reviews

        try:
            reviews.ensure_store(self.out_dir(job["id"]), job)
        except SlidewatchError as exc:
            text = " ".join(str(exc).split())
            text = text.replace(job["dem_path"], f"DEM {job.get('dem_label') or job['dem']}")
            return "slope: " + text.replace(job["scene_path"], job.get("scene_label") or
                                            job["scene"])
        except Exception as exc:  # a bug: the job fails, the server goes on
            log.exception("job %s: slopes failed", job["id"])
            return (f"slope: internal error ({type(exc).__name__}); the server's log has the "
                    f"details")
        return None

    def _finish(self, job: dict, status: str, **fields) -> None:
        with self._lock:
            self._cancel.discard(job["id"])
            job.update(status=status, finished=now(), **fields)
            if status == "done" and job["progress"].get("total") is not None:
                job["progress"]["rows"] = job["progress"]["total"]
            self._save(job)

    def _discard_partial(self, job_id: str) -> None:
        out = self.out_dir(job_id)
        if out.is_dir():
            shutil.rmtree(out, ignore_errors=True)
