"""The sample regions: find them locally, or download the pinned files (sha256-checked).

The list of files (pinned URLs at fixed commits, sha256 of the original bytes, licence,
citation and the conversion applied to masks) ships with the package in
``resources/sample_data.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from slidewatch.errors import DataError
from slidewatch.io_utils import atomic_write_bytes

REGIONS = ("sichuan", "bijie", "nepal", "tianshui")
ENV_VAR = "SLIDEWATCH_DATA"


def manifest() -> dict:
    text = resources.files("slidewatch").joinpath("resources/sample_data.json").read_text()
    return json.loads(text)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "slidewatch" / "sample-data"


def has_regions(root: Path) -> bool:
    return all((root / "regions" / r / "images").is_dir() for r in REGIONS)


def locate(data_dir: str | Path | None, *, download: bool = True,
           log: Callable[[str], None] = lambda m: None) -> Path:
    """The sample data folder: ``data_dir``, else $SLIDEWATCH_DATA, else the download cache."""
    for source, value in (("--data", data_dir), (ENV_VAR, os.environ.get(ENV_VAR))):
        if value:
            root = Path(value)
            if not has_regions(root):
                raise DataError(f"{root} (from {source}): no sample regions there; expected "
                                f"regions/<{'|'.join(REGIONS)}>/images and masks")
            return root
    root = cache_dir()
    if has_regions(root) and (root / ".complete").exists():
        return root
    if not download:
        raise DataError(f"no sample data: pass --data DIR or set {ENV_VAR}")
    fetch_all(root, log=log)
    return root


def _get(url: str, timeout: float = 30.0) -> bytes:
    req = urllib.request.Request(url, headers={"User-Agent": "slidewatch"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - pinned https URLs
        return resp.read()


def convert_mask(data: bytes, where: str) -> bytes:
    """Mask rule of the manifest: landslide where any channel > 127 -> single-channel 0/255."""
    try:
        arr = np.asarray(Image.open(io.BytesIO(data)))
    except Exception:  # Pillow raises many types for undecodable bytes
        raise DataError(f"{where}: downloaded mask is not an image") from None
    mask = (arr > 127).any(axis=-1) if arr.ndim == 3 else arr > 127
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def fetch_all(root: Path, log: Callable[[str], None] = lambda m: None) -> None:
    """Download every file of the manifest into ``root``; verify each original's sha256."""
    files = [f for region in manifest()["regions"].values() for f in region["files"]]
    log(f"downloading {len(files)} sample files into {root}")
    for i, f in enumerate(files, 1):
        dest = root / f["file"]
        if dest.exists():
            continue
        try:
            data = _get(f["url"])
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DataError(f"cannot download {f['url']} ({reason}); offline? pass --data DIR "
                            f"or set {ENV_VAR} to a folder holding regions/") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != f["origin_sha256"]:
            raise DataError(f"{f['url']}: sha256 {digest[:12]}... does not match the pinned "
                            f"{f['origin_sha256'][:12]}...; not using it")
        if f["transform"].startswith("mask"):
            data = convert_mask(data, f["url"])
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, data)
        if i % 20 == 0:
            log(f"  {i}/{len(files)} files")
    (root / ".complete").write_text("ok\n")
