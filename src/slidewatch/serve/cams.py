"""Grad-CAM of one detection, on demand: the window of the scene around it (square, at least
the model's input size, 1.5 x the detection's extent) through the scan's pixel path
(:func:`slidewatch.data.inputs.window_tensor`) and :func:`slidewatch.explain.cams.compute_cam`,
blended on the window. Models stay loaded (two at most) and one map is computed at a time
(Grad-CAM hooks the model). Not for fused models or models that standardise by the whole
scene (``slidewatch explain`` covers those).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from slidewatch.errors import ConfigError

_models: OrderedDict[str, tuple] = OrderedDict()
_lock = threading.Lock()
KEEP_MODELS = 2


def _model(model_dir: str):
    from slidewatch.models.checkpoint import load_model

    if model_dir in _models:
        _models.move_to_end(model_dir)
        return _models[model_dir]
    loaded = load_model(model_dir, "cpu")
    _models[model_dir] = loaded
    while len(_models) > KEEP_MODELS:
        _models.popitem(last=False)
    return loaded


def gradcam_png(scene: Path, model_dir: str, pixel_geometry) -> bytes:
    """PNG of the Grad-CAM overlay around ``pixel_geometry`` (shapely, scene pixels col/row)."""
    from PIL import Image
    from rasterio.windows import Window

    from slidewatch.data import raster
    from slidewatch.data.inputs import window_tensor
    from slidewatch.explain.cams import compute_cam, overlay_picture

    with _lock:
        model, meta = _model(model_dir)
        if meta.inputs.fusion is not None or meta.standardize != "none":
            raise ConfigError("Grad-CAM: not for fused models or models that standardise by "
                              "the scene here; use slidewatch explain")
        info = raster.inspect_scene(scene, meta.in_chans)
        x0, y0, x1, y1 = pixel_geometry.bounds
        side = int(max(meta.input_size, 1.5 * max(x1 - x0, y1 - y0)))
        side = min(side, info.width, info.height)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        c0 = int(min(max(round(cx - side / 2), 0), info.width - side))
        r0 = int(min(max(round(cy - side / 2), 0), info.height - side))
        with raster.open_scene(scene) as ds:
            raw, valid = raster.read_window(ds, info.bands, Window(c0, r0, side, side))
        x = window_tensor(meta, raw[None], None if valid is None else valid[None])[0]
        cam = compute_cam(model, meta, x)
    unit = x.numpy()
    rgb = np.moveaxis(unit[:3] if unit.shape[0] >= 3 else np.repeat(unit[:1], 3, 0), 0, -1)
    pic = overlay_picture(np.clip(rgb, 0, 1), cam)
    buf = io.BytesIO()
    Image.fromarray(pic).resize((256, 256), Image.BILINEAR).save(buf, format="PNG")
    return buf.getvalue()
