"""Shared test helpers (write small images of any supported format under tmp_path) and the
session fixtures: what several modules train on identical data is trained once per session.

The shared folders are read-only: a test that changes a model folder copies it first
(``shutil.copytree``); each shared fixture checks at the end of the session that its folder is
unchanged, so a test that writes into one fails.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from _factories import make_class_dataset, train_multimodal_trio, train_tiny_cnn

UTM45 = "EPSG:32645"


def write_image(path: Path, arr: np.ndarray, *, crs=None, transform=None, alpha=False,
                h5_key: str = "img") -> Path:
    """Write HxW or HxWxC ``arr`` by suffix: Pillow (png/jpg/bmp), rasterio (tif), h5py (h5).

    ``alpha`` marks a TIFF's last band as alpha.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "w") as fh:
            fh.create_dataset(h5_key, data=arr)
    elif suffix in (".tif", ".tiff"):
        import rasterio
        from rasterio.enums import ColorInterp

        bands = arr[:, :, None] if arr.ndim == 2 else arr
        meta = {"driver": "GTiff", "height": bands.shape[0], "width": bands.shape[1],
                "count": bands.shape[2], "dtype": bands.dtype.name}
        if crs is not None:
            meta.update(crs=crs, transform=transform)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            dst = rasterio.open(path, "w", **meta)
        with dst:
            dst.write(np.moveaxis(bands, -1, 0))
            if alpha:
                gray = [ColorInterp.gray] * (bands.shape[2] - 1)
                rgb = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
                dst.colorinterp = (rgb if bands.shape[2] == 4 else gray) + [ColorInterp.alpha]
    else:
        from PIL import Image

        options = {"quality": 95} if suffix in (".jpg", ".jpeg") else {}
        Image.fromarray(arr).save(path, **options)
    return path


def make_scene(root: Path, name: str, images: dict[str, tuple[np.ndarray, np.ndarray]],
               image_suffix: str = ".png", mask_suffix: str = ".png") -> Path:
    """``<root>/<name>/images/<stem>`` and ``masks/<stem>`` from ``{stem: (image, bool mask)}``."""
    scene = Path(root) / name
    for stem, (image, mask) in images.items():
        write_image(scene / "images" / f"{stem}{image_suffix}", image)
        write_image(scene / "masks" / f"{stem}{mask_suffix}", mask.astype(np.uint8) * 255)
    return scene


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its length."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def folder_digest(root: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def unchanged(root: Path, before: dict[str, str]) -> None:
    after = folder_digest(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, (f"a test changed the shared folder {root} (copy it first with "
                         f"shutil.copytree): {changed}")


@pytest.fixture(scope="session")
def tiny_tiles(tmp_path_factory) -> Iterator[Path]:
    """Class folders + tiles.csv (3 images x 3 tiles per class in regions north and south,
    seed 0) that ``tiny_model`` is trained on. Read-only."""
    tiles = make_class_dataset(tmp_path_factory.mktemp("tiny") / "tiles", images=3, per_image=3)
    before = folder_digest(tiles)
    yield tiles
    unchanged(tiles, before)


@pytest.fixture(scope="session")
def tiny_model(tiny_tiles, tmp_path_factory) -> Iterator[Path]:
    """The study's small CNN trained once per session on ``tiny_tiles`` (``train_tiny_cnn``:
    one epoch at 32 px on the CPU). Read-only: copy it before changing it."""
    out = train_tiny_cnn(tiny_tiles, tmp_path_factory.mktemp("tiny_model") / "model")
    before = folder_digest(out)
    yield out
    unchanged(out, before)


@pytest.fixture(scope="session")
def small_tiles(tmp_path_factory) -> Iterator[Path]:
    """Class folders + tiles.csv (2 images x 2 tiles per class in regions north and south,
    seed 0) that ``small_model`` is trained on. Read-only."""
    tiles = make_class_dataset(tmp_path_factory.mktemp("small") / "tiles", images=2,
                               per_image=2)
    before = folder_digest(tiles)
    yield tiles
    unchanged(tiles, before)


@pytest.fixture(scope="session")
def small_model(small_tiles, tmp_path_factory) -> Iterator[Path]:
    """``train_tiny_cnn`` on ``small_tiles``, once per session. Read-only."""
    out = train_tiny_cnn(small_tiles, tmp_path_factory.mktemp("small_model") / "model")
    before = folder_digest(out)
    yield out
    unchanged(out, before)


@pytest.fixture(scope="session")
def multimodal_task(tmp_path_factory) -> Iterator[dict]:
    """``train_multimodal_trio``: the fused, image-only and tabular-only models on one
    generated task, trained and evaluated once per session. Read-only."""
    root = tmp_path_factory.mktemp("mm")
    task = train_multimodal_trio(root)
    before = folder_digest(root)
    yield task
    unchanged(root, before)
