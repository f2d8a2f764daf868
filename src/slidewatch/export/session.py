"""ONNX Runtime sessions: the installed runtime (a one-line error when it is missing) and a
session of a model's bytes, with one-line errors for a model it cannot run (an opset or IR
version newer than it knows, an operator it lacks, a damaged file)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from slidewatch.errors import ConfigError, WeightsError


def onnxruntime():
    """The onnxruntime module, or a one-line ConfigError naming the extra."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("ONNX models need onnxruntime, which is not installed: pip install "
                          "'slidewatch[onnx]'") from None
    return onnxruntime


def runtime_version() -> str:
    return onnxruntime().__version__


def _opset_problem(message: str) -> str | None:
    """ONNX Runtime's message about an opset it does not run, as a short clause."""
    m = re.search(r"[Oo]pset (\d+) is under development.*?is till opset (\d+)", message, re.S)
    if m:
        return (f"opset {m[1]} is newer than this ONNX Runtime runs (up to opset {m[2]})")
    m = re.search(r"[Uu]nsupported model IR version:? (\d+)(?:, max supported IR version:? "
                  r"(\d+))?", message)
    if m:
        upto = f" (up to {m[2]})" if m[2] else ""
        return f"IR version {m[1]} is newer than this ONNX Runtime reads{upto}"
    return None


def new_session(data: bytes, where: str | Path, device: torch.device | str = "cpu",
                threads: int | None = None):
    """An ONNX Runtime session of the model ``data``; a model it cannot run is one line
    naming ``where`` (an opset or IR version too new for the installed runtime, an operator
    it lacks, a damaged file)."""
    ort = onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: warnings would break the one-line stderr
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and \
            "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(data, opts, providers=providers)
    except Exception as exc:  # onnxruntime's Fail/InvalidGraph/NotImplemented... types
        message = str(exc)
        problem = _opset_problem(message)
        if problem is not None:
            raise WeightsError(f"{where}: {problem} (onnxruntime {ort.__version__}); upgrade "
                               "onnxruntime, or export again with a lower --opset") from None
        detail = " ".join(message.split())
        detail = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", detail)[:200]
        raise WeightsError(f"{where}: ONNX Runtime {ort.__version__} cannot run this model "
                           f"({detail})") from None
