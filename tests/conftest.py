"""Shared test helpers: write small images of any supported format under tmp_path."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

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
