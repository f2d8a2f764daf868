"""Class-activation maps (Grad-CAM and friends) of a model's image branch, and their pictures.

Built on the ``grad-cam`` package (``pytorch_grad_cam``). Two of its traps are handled here:
it silently gets no gradient when the target layer is frozen (a fine-tuned model usually has
frozen layers), and it calls ``model.eval()``. :func:`compute_cam_raw` therefore turns
``requires_grad`` on for every parameter while it runs and afterwards restores every flag,
every module's train/eval mode and every parameter's ``.grad`` exactly as they were.
``<stem>_cam.png`` is the map at the target layer's resolution, enlarged with nearest-neighbour
only so that it can be seen (the study's Fig. 11a); ``<stem>_overlay.png`` the map bilinearly
upsampled to the image and blended on it (Fig. 11b). The command is :mod:`slidewatch.explain.run`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from slidewatch.data.readers import scale_to_unit
from slidewatch.data.transforms import normalize
from slidewatch.errors import ConfigError, ModelError
from slidewatch.meta import ModelMeta
from slidewatch.models.heads import default_target_layer
from slidewatch.runtime import to_device

METHODS = ("gradcam", "gradcam++", "layercam", "eigencam", "scorecam")
CAM_DISPLAY_SIZE = 224  # the feature-resolution map is enlarged (nearest) to about this size
OVERLAY_ALPHA = 0.5
BAND = 0.1


def cam_class(method: str):
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM,
               "eigencam": EigenCAM, "scorecam": ScoreCAM}
    if method not in classes:
        raise ConfigError(f"--method {method!r}: unknown; choose one of {', '.join(METHODS)}")
    return classes[method]


# ----------------------------------------------------------------------------- target layer


def resolve_target_layer(model: nn.Module, name: str | None,
                         meta: ModelMeta | None = None) -> tuple[str, nn.Module]:
    """``(name, module)`` for ``name`` (a dotted module name) or the default target layer.

    With ``meta`` the layer is also checked to give a 4-D feature map (N x C x H x W), which
    every CAM method needs: one forward pass of a blank image of the model's input size, in
    eval mode and without gradients, records each layer's output (:func:`feature_map_layers`).
    An unknown name or a layer without a feature map (a ``Linear`` head, ``flatten``...) is a
    ConfigError that lists valid names."""
    name = default_target_layer(model) if name is None else name
    modules = dict(model.named_modules())
    maps = None if meta is None else feature_map_layers(model, meta)
    if name in modules and name and (maps is None or maps.get(name) == "feature map"):
        return name, modules[name]
    if maps is not None:
        valid = [n for n, what in maps.items() if what == "feature map"]
        convs = [n for n in valid if isinstance(modules[n], nn.Conv2d)][-4:]
        tops = [n for n, _ in model.named_children() if n in valid][-4:]
    else:
        convs = [n for n, m in modules.items() if isinstance(m, nn.Conv2d)][-4:]
        tops = [n for n, _ in model.named_children()][:6]
    hint = ", ".join(dict.fromkeys([default_target_layer(model), *convs, *tops]))
    if name in modules and name and maps is not None:
        what = maps.get(name, "no output for the image")
        raise ConfigError(f"--target-layer {name!r}: gives {what}, not the 4-D feature map "
                          f"(N x C x H x W) that a class-activation map needs; choose a "
                          f"convolutional layer, e.g. {hint}")
    raise ConfigError(f"--target-layer {name!r}: no such layer in {type(model).__name__}; "
                      f"valid names include {hint}")


def _described(output) -> str:
    if isinstance(output, torch.Tensor):
        return "feature map" if output.ndim == 4 else f"a {output.ndim}-D tensor"
    return f"a {type(output).__name__}"


def feature_map_layers(model: nn.Module, meta: ModelMeta) -> dict[str, str]:
    """``{layer name: "feature map" or what its output is}`` for every layer that runs on a
    blank ``in_chans x input_size x input_size`` image (the image branch of a fused model:
    ``FusionModel.image_features``); the model's modes and gradients are left as they were."""
    from slidewatch.models.fusion import FusionModel

    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, meta.in_chans, meta.input_size, meta.input_size, device=device)
    run = model.image_features if isinstance(model, FusionModel) else model
    seen: dict[str, str] = {}

    def record(name: str):
        def hook(_module, _inputs, output) -> None:  # returns None: the output is kept
            seen.setdefault(name, _described(output))
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            run(x)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return seen


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


class RegionTarget:
    """The target of a segmentation model's CAM: the sum of its landslide logits over a region
    (grad-cam's semantic-segmentation target for a one-channel map)."""

    def __init__(self, region: np.ndarray):
        self.region = torch.from_numpy(np.asarray(region, np.float32))

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return (output[0] * self.region.to(output.device)).sum()


def predicted_region(model: nn.Module, meta: ModelMeta, x: torch.Tensor,
                     valid: torch.Tensor | None = None) -> tuple[np.ndarray, float]:
    """The pixels a segmentation model predicts as landslide (probability >= threshold) and
    the image's tile score; when none reaches the threshold, the ``min_area_pixels`` most
    probable ones (so that the CAM explains what the model came closest to calling a slide)."""
    from slidewatch.inference.forward import tile_scores

    with torch.no_grad():
        prob = torch.sigmoid(model(x).float() / meta.temperature)[0, 0]
    v = torch.ones_like(prob) if valid is None else valid.reshape(prob.shape).to(prob.device)
    k = meta.segmentation.min_area_pixels
    score = float(tile_scores(prob[None], v[None], k)[0])
    region = (prob >= meta.threshold) & (v > 0.5)
    if not bool(region.any()):
        flat = torch.where(v > 0.5, prob, torch.full_like(prob, -1)).flatten()
        top = flat.topk(min(k, flat.numel())).indices
        region = torch.zeros_like(flat, dtype=torch.bool)
        region[top] = True
        region = region.reshape(prob.shape)
    return region.cpu().numpy(), score


def compute_cam_raw(model: nn.Module, meta: ModelMeta, x: torch.Tensor, method: str = "gradcam",
                    layer_name: str | None = None, valid: torch.Tensor | None = None
                    ) -> tuple[np.ndarray, float]:
    """The CAM at the target layer's resolution (hxw, values in [0, 1]) for the positive class,
    and the model's probability of that class.

    ``x`` is one unit-scale image (CxHxW or 1xCxHxW) as :class:`ImageFiles` gives it; it is
    normalised here with the model's statistics. Runs in fp32 on the model's device. For a
    segmentation model the target is its predicted landslide region (:class:`RegionTarget`,
    :func:`predicted_region`; ``valid`` leaves padding out) and the probability is its tile
    score.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    method_class = cam_class(method)
    _, layer = resolve_target_layer(model, layer_name)
    device = next(model.parameters()).device
    x = normalize(to_device(_batch(x).float(), device), meta.mean, meta.std)
    x = x.contiguous(memory_format=torch.channels_last)
    if meta.task == "segment":
        model.eval()
        region, score = predicted_region(model, meta, x, valid)
        targets = [RegionTarget(region)]
    else:
        targets = [ClassifierOutputTarget(meta.positive_index)]
    result = None
    with gradients_enabled(model), method_class(model=model, target_layers=[layer]) as cam:
        # The library resizes its map to the input; ask for the layer's own size instead.
        cam.get_target_width_height = lambda _t: tuple(cam.activations_and_grads.activations[0]
                                                       .shape[-1:-3:-1])
        if method == "scorecam":
            cam.batch_size = 64
        with _quiet_tqdm(method == "scorecam"):  # ScoreCAM draws a bar per image otherwise
            maps = cam(input_tensor=x, targets=targets)
        if meta.task == "segment":
            prob = score
        else:
            prob = float(torch.softmax(cam.outputs.detach().float() / meta.temperature, dim=1)[0,
                                                                             meta.positive_index])
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


def save_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path)
