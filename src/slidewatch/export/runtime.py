"""ONNX files run by ONNX Runtime inside the usual forward pass.

:class:`OnnxModel` is a torch module over an ONNX Runtime session, so that every command runs
it as it runs a PyTorch model (``inference.forward``: normalise, model, ``logits /
temperature``, softmax or sigmoid; test-time augmentation, tile rules, ensembles, the scan's
batches). The exported graph takes unit-scale pixels and gives probabilities
(:mod:`slidewatch.export.card`); the module adapts both ends:

* in: the forward pass hands it the batch normalised with the model's own mean/std (the
  metadata it runs with, :func:`runtime_meta`, keeps them: the data path's standardisation
  rule and ensembles' re-normalisation use them too); it maps the batch back to unit pixels,
  ``x * std + mean`` per band, before the graph normalises again (float32 rounding: about
  1e-7 on the input);
* out: "logits" that the usual head turns back into the graph's probabilities: ``log p`` for a
  classifier (softmax of a log-probability is the probability), ``logit p`` for a segmentation
  model, as :class:`slidewatch.inference.ensemble.Ensemble` does. The temperature is inside the
  graph, so the runtime metadata has temperature 1 (the model's in ``extra["runtime"]``).

The session runs on the CPU with as many threads as torch uses (``torch.get_num_threads()``,
so a Ray worker's ``--worker-cpus`` holds for it too), or CUDA when asked for and the
installed ONNX Runtime has it. The module pickles as the ONNX bytes (Ray ships it to workers)
and opens its session again where it lands.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import torch

from slidewatch.errors import ModelError
from slidewatch.export import card as onnx_card
from slidewatch.export.card import CATEGORICAL, IMAGE, NUMERIC, OnnxCard
from slidewatch.export.session import new_session, onnxruntime, runtime_version
from slidewatch.meta import ModelMeta

SUFFIX = ".onnx"
EPS = 1e-6  # a segmentation model's probabilities are kept in [EPS, 1 - EPS] for the logit
TINY = 1e-12  # a classifier's class probabilities are kept above it (finite logs)


def is_onnx_path(path: str | Path) -> bool:
    """``path`` names an ONNX file (by its suffix; a folder never is one)."""
    path = Path(path)
    return path.suffix.lower() == SUFFIX and not path.is_dir()


class OnnxModel(torch.nn.Module):
    """An ONNX file as a torch module (see the module doc). ``forward(image, numeric=None,
    categorical=None)``: a plain model returns "logits" (N x classes, or N x 1 x H x W for a
    segmentation model); a fused model (``meta.inputs.fusion``) a dict with ``"logits"`` and,
    with a size head, ``"size_logits"``, as :class:`~slidewatch.models.fusion.FusionModel`
    does."""

    def __init__(self, data: bytes, meta: ModelMeta, source: str | Path = "model.onnx",
                 device: torch.device | str = "cpu"):
        super().__init__()
        self.data, self.source = data, str(source)
        shape = (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(meta.mean, dtype=torch.float32).view(shape),
                             persistent=False)
        self.register_buffer("std", torch.tensor(meta.std, dtype=torch.float32).view(shape),
                             persistent=False)
        self.names = onnx_card.input_names(meta)
        self.segment = meta.task == "segment"
        self.fused = meta.inputs.fusion is not None
        self.sized = len(onnx_card.output_names(meta)) > 1
        # forward_logits refuses models whose `tabular` is set (they need each image's row)
        self.tabular = True if meta.inputs.fusion is not None and \
            meta.inputs.fusion.mode != "image" else None
        self.device_type = torch.device(device).type
        self.session = new_session(data, self.source, self.device_type)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["session"] = None  # opened again where it is unpickled
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.session = new_session(self.data, self.source, self.device_type)

    def forward(self, image: torch.Tensor | None = None, numeric: torch.Tensor | None = None,
                categorical: torch.Tensor | None = None):
        if image is not None:  # normalised by the forward pass: back to unit pixels
            image = image.float() * self.std.to(image.device) + self.mean.to(image.device)
        given = {IMAGE: image, NUMERIC: numeric, CATEGORICAL: categorical}
        ref = next(t for t in given.values() if t is not None)
        feeds = {}
        for name in self.names:
            t = given[name]
            if t is None:
                raise ModelError(f"{self.source}: the model takes input {name!r}")
            dtype = torch.int64 if name == CATEGORICAL else torch.float32
            feeds[name] = np.ascontiguousarray(t.detach().to("cpu", dtype).numpy())
        try:
            outs = self.session.run(None, feeds)
        except Exception as exc:  # onnxruntime's InvalidArgument/Fail: shapes, types
            detail = " ".join(str(exc).split())
            detail = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", detail)[:200]
            raise ModelError(f"{self.source}: ONNX Runtime cannot run these inputs "
                             f"({detail})") from None
        p = torch.from_numpy(outs[0]).to(ref.device)
        if self.segment:
            p = p.clamp(EPS, 1.0 - EPS)
            z = torch.log(p) - torch.log1p(-p)
        else:
            z = torch.log(p.clamp_min(TINY))
        if not self.fused:
            return z
        out = {"logits": z}
        if self.sized:
            out["size_logits"] = torch.log(torch.from_numpy(outs[1]).to(ref.device)
                                           .clamp_min(TINY))
        return out


def runtime_meta(meta: ModelMeta, source: str | Path, quantization: str = "none") -> ModelMeta:
    """The metadata an :class:`OnnxModel` runs with: ``meta`` with temperature 1 (the graph
    applies the model's); the file, the runtime and what the graph holds in
    ``extra["runtime"]``."""
    out = copy.deepcopy(meta)
    out.temperature = 1.0
    out.extra["runtime"] = {
        "name": "onnx", "model": str(source), "onnxruntime": runtime_version(),
        "quantization": quantization,
        "in_graph": {"mean": list(meta.mean), "std": list(meta.std),
                     "temperature": meta.temperature}}
    return out


def onnx_meta(path: str | Path) -> ModelMeta:
    """The runtime metadata of an ONNX file (its card read and checked, no session)."""
    onnxruntime()
    card = onnx_card.read_card(path)
    return runtime_meta(card.meta, path, card.quantization)


def load_card(card: OnnxCard, device: torch.device | str = "cpu"
              ) -> tuple[OnnxModel, ModelMeta]:
    model = OnnxModel(card.data, card.meta, card.path, device)
    return model.eval(), runtime_meta(card.meta, card.path, card.quantization)


def load_onnx(path: str | Path, device: torch.device | str = "cpu"
              ) -> tuple[OnnxModel, ModelMeta]:
    """``(model, runtime meta)`` of the ONNX file ``path``; the session is opened here, so a
    model the installed ONNX Runtime cannot run fails before anything is written."""
    onnxruntime()
    return load_card(onnx_card.read_card(path), device)


def folder_meta(model_dir: str | Path) -> ModelMeta:
    """The runtime metadata of a model folder run with ``--runtime onnx``."""
    from slidewatch.meta import read_meta

    onnxruntime()
    return runtime_meta(read_meta(model_dir), model_dir)


def load_folder(model_dir: str | Path, device: torch.device | str = "cpu"
                ) -> tuple[OnnxModel, ModelMeta]:
    """A model folder exported in memory (fp32, :func:`~slidewatch.export.onnx_export.
    onnx_bytes`) and run by ONNX Runtime: ``--runtime onnx`` on a folder."""
    from slidewatch.export.onnx_export import onnx_bytes
    from slidewatch.models.checkpoint import load_model

    onnxruntime()
    model, meta = load_model(model_dir, "cpu")
    data = onnx_bytes(model, meta)
    return OnnxModel(data, meta, model_dir, device).eval(), runtime_meta(meta, model_dir)
