"""Save and rebuild models from a slidewatch model folder (weights + :mod:`slidewatch.meta`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from slidewatch.errors import ConfigError, WeightsError
from slidewatch.io_utils import atomic_write_bytes, atomic_write_text
from slidewatch.meta import META_FILE, WEIGHTS_FILE, ModelMeta, library_versions, now_iso, read_meta
from slidewatch.runtime import prepare_model


def save_model(model_dir: str | Path, model: torch.nn.Module, meta: ModelMeta) -> None:
    """Write weights and metadata, each atomically. The weights are serialised in memory and
    written by :mod:`slidewatch.io_utils` (safetensors' own file writer raises its own error
    type on a full disk): a failed write is one DataError naming the file, and leaves no
    temporary and no metadata without weights."""
    model_dir = Path(model_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(model_dir / WEIGHTS_FILE,
                       save(state, metadata={"architecture": meta.architecture}))
    meta.extra.setdefault("versions", library_versions())
    meta.extra.setdefault("created", now_iso())
    atomic_write_text(model_dir / META_FILE, json.dumps(meta.to_json(), indent=2) + "\n")


def load_model(model_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model of a slidewatch model folder; returns ``(model, meta)`` in eval mode."""
    from slidewatch.models import build_model

    model_dir = Path(model_dir)
    meta = read_meta(model_dir)
    wpath = model_dir / WEIGHTS_FILE
    if not wpath.is_file():
        raise WeightsError(f"{model_dir}: weights file {WEIGHTS_FILE} is missing")
    fusion = meta.inputs.fusion
    model = None
    if meta.task == "segment":
        from slidewatch.models.segmentation import build_segmenter

        model = build_segmenter(meta.architecture, in_chans=meta.in_chans, weights="none")
    elif fusion is None or fusion.mode != "tabular":
        model = build_model(meta.architecture, num_classes=len(meta.classes),
                            in_chans=meta.in_chans, weights="none", drop_rate=meta.drop_rate)
    if fusion is not None:  # image + tabular model: the backbone inside a FusionModel
        from slidewatch.models.fusion import build_fusion

        model = build_fusion(fusion.to_json(), model)
    try:
        state = load_file(str(wpath))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise WeightsError(f"{wpath}: unreadable safetensors file ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise WeightsError(f"{wpath}: does not fit {meta.architecture}: {detail}") from None

    prepare_model(model, torch.device(device)).eval()
    return model, meta


def load_init_model(model_dir: str | Path, task: str, standardize: str):
    """``(model, meta)`` of the folder that ``--init-from`` continues, for training ``task``
    with the ``data.standardize`` rule ``standardize``; a folder of the other task (a
    classifier cannot continue a segmenter, nor the reverse) or trained with another rule is
    a ConfigError naming it."""
    model, meta = load_model(model_dir)
    if meta.task != task:
        raise ConfigError(f"--init-from {model_dir}: a {meta.task} model; continue it with "
                          f"--task {meta.task}")
    if meta.standardize != standardize:
        raise ConfigError(f"--init-from {model_dir}: that model was trained with "
                          f"data.standardize {meta.standardize}; set the same (got "
                          f"{standardize})")
    return model, meta
