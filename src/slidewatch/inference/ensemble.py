"""Model ensembles: several model folders whose landslide probabilities are averaged.

:func:`load_models` returns, for one folder, exactly :func:`~slidewatch.models.checkpoint.
load_model`; for several, an :class:`Ensemble` and one metadata for all of them, which every
command then uses as it uses a single model (the forward pass, test-time augmentation, tile
rules and thresholds are unchanged). The ensemble's "logits" are chosen so that the usual head
gives the mean of the members' probabilities: ``log(mean_i softmax(z_i / T_i))`` for a
classifier (softmax of a log-probability is the probability), ``logit(mean_i sigmoid(z_i /
T_i))`` for a segmentation model, each member's logits divided by its own temperature ``T_i``.
With test-time augmentation the mean over views is taken of these averaged probabilities.

Members must agree on what they answer and on the pixels they take: task, classes and
positive class, bands, input size, scale and greyscale, image inputs only (no tabular or
terrain inputs), and standardisation rule. Their band statistics (mean/std) may differ: the
batch arrives normalised with the first member's and each other member sees it re-normalised
with its own (members with the ``image`` standardisation rule take the normalised batch as it
is: it is the standardised image whatever the statistics; greyscale ones must share them).
The ensemble's metadata is the first member's with temperature 1 (already applied per
member), the mean of the members' thresholds and, for segmentation models, the median of
their ``min_area_pixels``; ``extra["ensemble"]`` lists the member folders.

The loader of every command: :func:`load_models` and :func:`ensemble_meta` also open ONNX files
exported by ``slidewatch export`` and, with ``--runtime onnx``, run model folders on ONNX
Runtime (:func:`runtimes`; :mod:`slidewatch.export.runtime`). An ONNX model takes the batch
normalised with its own statistics, as a PyTorch model does, and its metadata has temperature
1 (its graph applies the model's), so it mixes with PyTorch members.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from slidewatch.errors import ConfigError, ModelError
from slidewatch.export.runtime import is_onnx_path
from slidewatch.meta import ModelMeta, SegmentationSpec, read_meta
from slidewatch.models.checkpoint import load_model
from slidewatch.runtime import prepare_model

RUNTIMES = ("torch", "onnx")
__all__ = ["RUNTIMES", "Ensemble", "combine", "describe", "ensemble_meta", "is_onnx_path",
           "load_models", "load_one", "model_meta", "runtime_label", "runtimes"]

EPS = 1e-6  # probabilities of a segmentation ensemble are kept in [EPS, 1 - EPS]
TINY = 1e-12  # a classifier ensemble's class probabilities are kept above it (finite logs)


class Ensemble(torch.nn.Module):
    """Member models (in eval mode) and their metadata; ``forward`` takes a batch normalised
    with ``metas[0]``'s statistics and returns logits whose softmax (classifier) or sigmoid
    (segmentation) is the mean of the members' probabilities."""

    def __init__(self, members: Sequence[torch.nn.Module], metas: Sequence[ModelMeta]):
        super().__init__()
        if not members or len(members) != len(metas):
            raise ValueError("an ensemble needs one metadata per member, and a member")
        self.members = torch.nn.ModuleList(members)
        self.metas = [copy.deepcopy(m) for m in metas]
        self.segment = metas[0].task == "segment"
        first = metas[0]
        self.renormalise: list[bool] = []
        for i, m in enumerate(metas):
            same = list(m.mean) == list(first.mean) and list(m.std) == list(first.std)
            # standardised members: the normalised batch is already each member's input,
            # (x - image mean) / image std, whatever its mean/std
            same = same or (m.standardize == "image" and not m.grayscale)
            self.renormalise.append(not same)
            if not same:  # x_i = (x * std_0 + mean_0 - mean_i) / std_i, per band
                for name, values in (("mean0", first.mean), ("std0", first.std),
                                     ("mean", m.mean), ("std", m.std)):
                    self.register_buffer(f"_{name}_{i}", torch.tensor(
                        values, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def _input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        if not self.renormalise[i]:
            return x
        b = {k: getattr(self, f"_{k}_{i}") for k in ("mean0", "std0", "mean", "std")}
        return (x * b["std0"] + b["mean0"] - b["mean"]) / b["std"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for i, (model, meta) in enumerate(zip(self.members, self.metas)):
            z = model(self._input(x, i))
            if isinstance(z, dict):  # a FusionModel is refused when the ensemble is made
                z = z["logits"]
            z = z.float() / meta.temperature
            p = torch.sigmoid(z) if self.segment else torch.softmax(z, dim=1)
            total = p if total is None else total + p
        p = total / len(self.members)
        if self.segment:
            p = p.clamp(EPS, 1.0 - EPS)
            return torch.log(p) - torch.log1p(-p)
        return torch.log(p.clamp_min(TINY))


def _described(meta: ModelMeta) -> dict[str, tuple[str, object]]:
    """What members must share: ``{field: (how it is named in a message, value)}``."""
    return {
        "task": ("task", meta.task),
        "classes": ("classes", list(meta.classes)),
        "positive": ("positive class", meta.positive_class),
        "in_chans": ("bands (in_chans)", meta.in_chans),
        "input_size": ("input size (pixels)", meta.input_size),
        "scale": ("scale", meta.scale),
        "grayscale": ("grayscale", meta.grayscale),
        "standardize": ("standardize rule", meta.standardize),
    }


def _check_plain(model_dir: Path, meta: ModelMeta) -> None:
    if not meta.inputs.plain:
        what = "tabular/fusion" if meta.inputs.fusion is not None else "terrain"
        raise ModelError(f"{model_dir}: takes {what} inputs; an ensemble takes image-only "
                         "models")


def check_members(model_dirs: Sequence[Path], metas: Sequence[ModelMeta]) -> None:
    """One line naming the first folder that does not fit the first one, and what differs."""
    first_dir, first = model_dirs[0], _described(metas[0])
    _check_plain(first_dir, metas[0])
    for d, m in zip(model_dirs[1:], metas[1:]):
        _check_plain(d, m)
        for key, (name, value) in _described(m).items():
            if value != first[key][1]:
                raise ModelError(f"{d}: {name} {_show(value)}, but {first_dir} has "
                                 f"{_show(first[key][1])}; ensemble members need the same "
                                 f"{name}")
        f = metas[0]
        if m.standardize == "image" and m.grayscale and (m.mean, m.std) != (f.mean, f.std):
            raise ModelError(f"{d}: band statistics (mean/std) differ from {first_dir}'s; "
                             "greyscale members with standardize image need the same ones")


def _show(value) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


def runtimes(model_dirs: Sequence[str | Path], runtime: str | None = None) -> list[str]:
    """The runtime of each model: ``runtime`` (``--runtime``) when given, else ``torch`` for a
    model folder and ``onnx`` for an ``.onnx`` file. An ONNX file runs only with ONNX Runtime:
    ``--runtime torch`` with one is a ConfigError."""
    if runtime is not None and runtime not in RUNTIMES:
        raise ConfigError(f"--runtime: must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    out = []
    for d in model_dirs:
        if is_onnx_path(d):
            if runtime == "torch":
                raise ConfigError(f"--runtime torch: {d} is an ONNX file; it runs with "
                                  "--runtime onnx (the default for .onnx files)")
            out.append("onnx")
        else:
            out.append(runtime or "torch")
    return out


def runtime_label(model_dirs: Sequence[str | Path], runtime: str | None = None) -> str:
    """``onnx`` when any of the models runs on ONNX Runtime, else ``torch``."""
    return "onnx" if "onnx" in runtimes(model_dirs, runtime) else "torch"


def model_meta(model_dir: str | Path, runtime: str = "torch") -> ModelMeta:
    """The metadata one model runs with: a folder's own (``torch``), or for ONNX Runtime the
    card's with temperature 1, since the graph holds the model's
    (:func:`slidewatch.export.runtime.runtime_meta`)."""
    if runtime == "torch":
        return read_meta(model_dir)
    from slidewatch.export.runtime import folder_meta, onnx_meta

    return onnx_meta(model_dir) if is_onnx_path(model_dir) else folder_meta(model_dir)


def load_one(model_dir: str | Path, device: str | torch.device = "cpu",
             runtime: str = "torch") -> tuple[torch.nn.Module, ModelMeta]:
    """``(model, meta)`` of one model folder or ONNX file on ``runtime``."""
    if runtime == "torch":
        return load_model(model_dir, device)
    from slidewatch.export.runtime import load_folder, load_onnx

    if is_onnx_path(model_dir):
        return load_onnx(model_dir, device)
    return load_folder(model_dir, device)


def ensemble_meta(model_dirs: Sequence[str | Path], runtime: str | None = None) -> ModelMeta:
    """The metadata of the models in ``model_dirs`` read and checked as :func:`load_models`
    does, without their weights: one folder's own, or the ensemble's (see the module doc)."""
    dirs = [Path(d) for d in model_dirs]
    if not dirs:
        raise ModelError("no model folder given")
    kinds = runtimes(dirs, runtime)
    if len(dirs) == 1:
        return model_meta(dirs[0], kinds[0])
    return combine([model_meta(d, k) for d, k in zip(dirs, kinds)], dirs)


def combine(metas: Sequence[ModelMeta], model_dirs: Sequence[Path]) -> ModelMeta:
    """The ensemble's metadata from its members' (checked with :func:`check_members`)."""
    check_members(model_dirs, metas)
    meta = copy.deepcopy(metas[0])
    meta.temperature = 1.0
    thresholds = [float(m.threshold) for m in metas]
    meta.threshold = sum(thresholds) / len(thresholds)
    if meta.task == "segment":
        areas = [m.segmentation.min_area_pixels for m in metas]
        tiles = [m.tile_threshold() for m in metas]
        own = any(m.segmentation.tile_threshold is not None for m in metas)
        meta.segmentation = SegmentationSpec(max(1, round(statistics.median(areas))),
                                             "ensemble", sum(tiles) / len(tiles) if own else None)
    meta.extra["ensemble"] = [str(d) for d in model_dirs]
    meta.extra["threshold_source"] = {"rule": "mean of the ensemble members' thresholds",
                                      "thresholds": thresholds}
    return meta


def load_models(model_dirs: Sequence[str | Path], device: str | torch.device = "cpu",
                runtime: str | None = None) -> tuple[torch.nn.Module, ModelMeta]:
    """``(model, meta)`` of one model folder (:func:`load_model`), or of several as an
    :class:`Ensemble` with the ensemble's metadata; members are checked before any weights
    are read. ``runtime`` (:func:`runtimes`): ``onnx`` runs ``.onnx`` files, and folders
    exported in memory, on ONNX Runtime (:class:`slidewatch.export.runtime.OnnxModel`)."""
    dirs = [Path(d) for d in model_dirs]
    kinds = runtimes(dirs, runtime)
    if len(dirs) == 1:
        return load_one(dirs[0], device, kinds[0])
    meta = ensemble_meta(dirs, runtime)
    loaded = [load_one(d, device, k) for d, k in zip(dirs, kinds)]
    model = Ensemble([m for m, _ in loaded], [mm for _, mm in loaded])
    return prepare_model(model, torch.device(device)).eval(), meta


def describe(model_dirs: Sequence[str | Path]) -> str:
    """How errors name the model: its folder, or the members joined by ``+``."""
    return " + ".join(str(d) for d in model_dirs)
