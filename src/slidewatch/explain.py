"""Class-activation maps (Grad-CAM and friends) for a trained slidewatch model.

Built on the ``grad-cam`` package (``pytorch_grad_cam``). Two of its traps are handled here:
it silently gets no gradient when the target layer is frozen (a fine-tuned model usually has
frozen layers), and it calls ``model.eval()``. :func:`compute_cam_raw` therefore turns
``requires_grad`` on for every parameter while it runs and afterwards restores every flag,
every module's train/eval mode and every parameter's ``.grad`` exactly as they were.

Images are prepared exactly as ``slidewatch predict`` prepares them (:class:`ImageFiles`, then
:func:`slidewatch.data.transforms.normalize` with the model's statistics). For each image,
:func:`explain_paths` writes ``<stem>_cam.png`` (the map at the target layer's resolution,
enlarged with nearest-neighbour only so that it can be seen: the study's Fig. 11a) and
``<stem>_overlay.png`` (the map bilinearly upsampled to the image and blended on it: Fig. 11b),
plus ``cams.csv`` and ``localisation.json`` (see :mod:`slidewatch.localisation`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slidewatch.checkpoint import ModelMeta, load_model
from slidewatch.data.readers import read_image, scale_to_unit
from slidewatch.data.transforms import normalize
from slidewatch.errors import ConfigError, DataError, ModelError
from slidewatch.inference import resolve_device, to_device
from slidewatch.io_utils import atomic_dir
from slidewatch.localisation import localisation_scores, summarise, uniform_reference
from slidewatch.predict import ImageFiles, collect_images

METHODS = ("gradcam", "gradcam++", "layercam", "eigencam", "scorecam")
CAM_DISPLAY_SIZE = 224  # the feature-resolution map is enlarged (nearest) to about this size
OVERLAY_ALPHA = 0.5
BAND = 0.1


def _cam_class(method: str):
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM,
               "eigencam": EigenCAM, "scorecam": ScoreCAM}
    if method not in classes:
        raise ConfigError(f"--method {method!r}: unknown; choose one of {', '.join(METHODS)}")
    return classes[method]


# ----------------------------------------------------------------------------- target layer


def default_target_layer(model: nn.Module) -> str:
    """The last convolutional stage of ``model``, by architecture (see the module README):
    baseline_cnn ``feature_layer``; timm EfficientNet/MobileNetV2 ``conv_head``; MobileNetV3
    (whose ``conv_head`` follows the pooling) the last of ``blocks``; ResNet ``layer4``;
    DenseNet ``features.norm5``; otherwise the last ``nn.Conv2d``."""
    names = dict(model.named_modules())
    feature_layer = getattr(model, "feature_layer", None)
    if isinstance(feature_layer, str) and feature_layer in names:
        return feature_layer
    if type(model).__name__ == "MobileNetV3" and "blocks" in names:
        return f"blocks.{len(names['blocks']) - 1}"
    for name in ("conv_head", "layer4", "features.norm5", "features.denseblock4"):
        if name in names:
            return name
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError(f"{type(model).__name__}: no convolution layer to explain; "
                         "give --target-layer")
    return convs[-1]


def resolve_target_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """``(name, module)`` for ``name`` (a dotted module name) or the default target layer."""
    name = default_target_layer(model) if name is None else name
    modules = dict(model.named_modules())
    if name in modules and name:
        return name, modules[name]
    convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)][-4:]
    tops = [n for n, _ in model.named_children()][:6]
    hint = ", ".join(dict.fromkeys([default_target_layer(model), *convs, *tops]))
    raise ConfigError(f"--target-layer {name!r}: no such layer in {type(model).__name__}; "
                      f"valid names include {hint}")


# ----------------------------------------------------------------------------- computing


@contextlib.contextmanager
def gradients_enabled(model: nn.Module) -> Iterator[None]:
    """Every parameter trainable inside the block; afterwards every ``requires_grad`` flag,
    ``.grad`` and module train/eval mode is exactly as before."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        for m, mode in modes:
            m.training = mode


def _quiet_tqdm(enabled: bool):
    """Swallow the progress bar ScoreCAM draws on stderr for every image."""
    return contextlib.redirect_stderr(io.StringIO()) if enabled else contextlib.nullcontext()


def _batch(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"x: expected one CxHxW image (or 1xCxHxW), got shape {tuple(x.shape)}")
    return x


def compute_cam_raw(model: nn.Module, meta: ModelMeta, x: torch.Tensor, method: str = "gradcam",
                    layer_name: str | None = None) -> tuple[np.ndarray, float]:
    """The CAM at the target layer's resolution (hxw, values in [0, 1]) for the positive class,
    and the model's probability of that class.

    ``x`` is one unit-scale image (CxHxW or 1xCxHxW) as :class:`ImageFiles` gives it; it is
    normalised here with the model's statistics. Runs in fp32 on the model's device.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_class = _cam_class(method)
    _, layer = resolve_target_layer(model, layer_name)
    device = next(model.parameters()).device
    x = normalize(to_device(_batch(x).float(), device), meta.mean, meta.std)
    x = x.contiguous(memory_format=torch.channels_last)
    result = None
    with gradients_enabled(model), cam_class(model=model, target_layers=[layer]) as cam:
        # The library resizes its map to the input; ask for the layer's own size instead.
        cam.get_target_width_height = lambda _t: tuple(cam.activations_and_grads.activations[0]
                                                       .shape[-1:-3:-1])
        if method == "scorecam":
            cam.batch_size = 64
        with _quiet_tqdm(method == "scorecam"):  # ScoreCAM draws a bar per image otherwise
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(meta.positive_index)])
        prob = torch.softmax(cam.outputs.detach().float(), dim=1)[0, meta.positive_index]
        result = (np.clip(maps[0].astype(np.float32), 0.0, 1.0), float(prob))
    if result is None:  # the library's context manager swallows IndexError
        raise ModelError(f"{method}: no class-activation map for layer {layer_name!r}")
    return result


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an hxw map to ``size`` (H, W); values stay within the input range."""
    t = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def compute_cam(model: nn.Module, meta: ModelMeta, x: torch.Tensor, method: str = "gradcam",
                layer_name: str | None = None) -> np.ndarray:
    """The CAM of the positive class, HxW at the input's resolution, values in [0, 1]."""
    raw, _ = compute_cam_raw(model, meta, x, method, layer_name)
    return np.clip(upsample(raw, tuple(_batch(x).shape[-2:])), 0.0, 1.0)


# ----------------------------------------------------------------------------- pictures


def _colour(cam: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    return colormaps["jet"](np.clip(cam, 0, 1))[..., :3].astype(np.float32)


def cam_picture(raw: np.ndarray) -> np.ndarray:
    """Colour-mapped feature-resolution map, enlarged by an integer factor (nearest)."""
    factor = max(1, CAM_DISPLAY_SIZE // max(raw.shape))
    big = np.repeat(np.repeat(raw, factor, axis=0), factor, axis=1)
    return (_colour(big) * 255).round().astype(np.uint8)


def display_rgb(arr: np.ndarray, scale: float | None) -> np.ndarray:
    """HxWx3 float in [0, 1] for display: the first three bands, or band 1 as grey."""
    unit = scale_to_unit(arr, scale)
    rgb = unit[..., :3] if unit.shape[2] >= 3 else np.repeat(unit[..., :1], 3, axis=2)
    return np.clip(rgb, 0.0, 1.0)


def overlay_picture(rgb: np.ndarray, cam: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    blend = (1 - alpha) * rgb + alpha * _colour(cam)
    return (np.clip(blend, 0, 1) * 255).round().astype(np.uint8)


def _save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path)


# ----------------------------------------------------------------------------- masks, labels


class TileMasks:
    """Landslide masks for the tiles of a dataset made by ``slidewatch data tiles``.

    ``tiles.csv`` gives each tile's ``source_image`` (``<region>/<stem>``), ``row`` and ``col``;
    the region is the scene folder's name, so the scene folders must be given too. The mask is
    ``<scene>/masks/<stem>.*``, cut at ``row, col`` to the tile's size.
    """

    def __init__(self, tiles_dir: str | Path, scenes: list[str | Path]):
        from slidewatch.data.folders import read_tiles_csv
        from slidewatch.data.tiling import TILES_CSV

        self.root = Path(tiles_dir).resolve()
        csv_path = self.root / TILES_CSV
        if not csv_path.is_file():
            raise DataError(f"{tiles_dir}: no {TILES_CSV}; --masks-from takes a folder made by "
                            "`slidewatch data tiles`")
        if not scenes:
            raise ConfigError("--scenes: give the scene folder(s) the tiles were cut from "
                              "(tiles.csv does not record where they are)")
        self.table = read_tiles_csv(csv_path)
        self.scenes: dict[str, Path] = {}
        for s in map(Path, scenes):
            if not (s / "masks").is_dir():
                raise DataError(f"{s}: not a scene folder (no masks/ inside)")
            self.scenes[s.resolve().name] = s
        self._cache: tuple[Path, np.ndarray] | None = None

    def _mask_file(self, region: str, stem: str) -> Path:
        from slidewatch.data.readers import IMAGE_SUFFIXES

        if region not in self.scenes:
            raise DataError(f"{self.root}: tiles.csv names scene '{region}'; give its folder "
                            "with --scenes")
        folder = self.scenes[region] / "masks"
        found = sorted(p for p in folder.glob(f"{stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise DataError(f"{folder}: no mask with the stem '{stem}'")
        return found[0]

    def _full_mask(self, path: Path) -> np.ndarray:
        from slidewatch.data.readers import read_mask

        if self._cache is None or self._cache[0] != path:
            self._cache = (path, read_mask(path))  # tiles of one scene come together
        return self._cache[1]

    def lookup(self, image: Path, shape: tuple[int, int]) -> np.ndarray | None:
        """The mask window of ``image`` (bool, ``shape``), or None if it is not a listed tile."""
        try:
            rel = image.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None
        row = self.table.get(rel)
        if row is None or row.get("row") is None or "/" not in row["group"]:
            return None
        region, stem = row["group"].split("/", 1)
        mask_path = self._mask_file(region, stem)
        full = self._full_mask(mask_path)
        r, c = row["row"], row["col"]
        window = full[r:r + shape[0], c:c + shape[1]]
        if window.shape != tuple(shape):
            raise DataError(f"{mask_path}: the window at row {r}, col {c} of {image.name} lies "
                            "outside the mask")
        return window


def true_class(path: Path, classes: list[str]) -> str | None:
    """The class of ``path`` from its nearest parent folder named like a class, if any."""
    for parent in path.parents:
        if parent.name in classes:
            return parent.name
    return None


def outcome(truth: str | None, positive: bool, meta: ModelMeta) -> str:
    if truth is None:
        return ""
    actual = truth == meta.positive_class
    return ("T" if actual == positive else "F") + ("P" if positive else "N")


# ----------------------------------------------------------------------------- the command


def _unique_stem(path: Path, seen: set[str]) -> str:
    stem, k = path.stem, 2
    while stem in seen:
        stem, k = f"{path.stem}_{k}", k + 1
    seen.add(stem)
    return stem


def _explain_one(model, meta, files: ImageFiles, i: int, method: str, layer: str,
                 masks: TileMasks | None, out: Path, stem: str) -> dict:
    path = files.paths[i]
    raw, prob = compute_cam_raw(model, meta, files[i]["image"], method, layer)
    arr = read_image(path)
    cam = np.clip(upsample(raw, arr.shape[:2]), 0.0, 1.0)
    _save_png(out / f"{stem}_cam.png", cam_picture(raw))
    _save_png(out / f"{stem}_overlay.png", overlay_picture(display_rgb(arr, meta.scale), cam))
    mask = masks.lookup(path, arr.shape[:2]) if masks is not None else None
    truth = true_class(path, meta.classes)
    positive = prob >= meta.threshold
    row = {"path": str(path), "probability": round(prob, 6), "predicted_positive": int(positive),
           "true_class": truth or "", "outcome": outcome(truth, positive, meta),
           "method": method, "target_layer": layer, "cam_size": f"{raw.shape[0]}x{raw.shape[1]}",
           "cam_png": f"{stem}_cam.png", "overlay_png": f"{stem}_overlay.png",
           "mask_pixels": "" if mask is None else int(mask.sum())}
    scores = localisation_scores(cam, mask, band=BAND)
    row.update({k: round(v, 6) for k, v in scores.items()})
    return row


CSV_COLUMNS = ("path", "probability", "predicted_positive", "true_class", "outcome", "method",
               "target_layer", "cam_size", "cam_png", "overlay_png", "mask_pixels",
               "energy_inside", "pointing_game", "iou", "border_share", "top_left_share",
               "top_right_share", "bottom_left_share", "bottom_right_share")
SCORE_KEYS = [c for c in CSV_COLUMNS[CSV_COLUMNS.index("energy_inside"):]]


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n", restval="")
    w.writeheader()
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def _reference(paths: list[Path], band: float) -> dict:
    """Border figures of a uniform map at the first image's size (tiles share one size)."""
    from slidewatch.data.readers import probe

    info = probe(paths[0])
    return {"shape": [info.height, info.width],
            **uniform_reference((info.height, info.width), band)}


def explain_paths(model_dir: str | Path, paths: list[str | Path], out: str | Path, *,
                  method: str = "gradcam", target_layer: str | None = None,
                  masks: TileMasks | None = None, device: str = "cpu",
                  overwrite: bool = False, progress=None, tabular: str | Path | None = None,
                  aux: str | Path | None = None, missing: str | None = None,
                  unknown: str | None = None) -> list[dict]:
    """CAM pictures, ``cams.csv`` and ``localisation.json`` for every image of ``paths`` in
    the folder ``out`` (built atomically); returns the CSV rows. A multi-modal model takes
    ``tabular`` / ``aux`` as evaluation does and adds the tabular attributions
    (:mod:`slidewatch.multimodal.explaining`)."""
    from slidewatch.multimodal.inputs import model_inputs

    _cam_class(method)
    model, meta = load_model(model_dir, resolve_device(device))
    inputs = model_inputs(meta, tabular, aux, missing, unknown)
    if inputs is not None:
        from slidewatch.multimodal.explaining import explain_fused

        return explain_fused(model, meta, inputs, paths, out, method=method,
                             target_layer=target_layer, masks=masks, overwrite=overwrite,
                             progress=progress)
    layer, _ = resolve_target_layer(model, target_layer)
    files = ImageFiles(collect_images(paths), meta)
    indices = range(len(files))
    if progress is not None:
        indices = progress(indices, desc=f"explain ({method})", total=len(files))
    rows: list[dict] = []
    seen: set[str] = set()
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for i in indices:
            stem = _unique_stem(files.paths[i], seen)
            rows.append(_explain_one(model, meta, files, i, method, layer, masks, tmp, stem))
        _write_csv(tmp / "cams.csv", rows)
        summary = {"method": method, "target_layer": layer, "band": BAND,
                   "uniform_reference": _reference(files.paths, BAND),
                   "by_outcome": summarise(rows, SCORE_KEYS, "outcome"),
                   "by_class": summarise(rows, SCORE_KEYS, "true_class")}
        (tmp / "localisation.json").write_text(json.dumps(summary, indent=2) + "\n",
                                               encoding="utf-8")
    return rows
