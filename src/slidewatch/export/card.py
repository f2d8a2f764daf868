"""The model card inside an ONNX file: ONNX ``metadata_props`` written at export and read back
before a file is run.

Keys (all strings): ``slidewatch.format`` (``slidewatch-onnx``, written first),
``slidewatch.format_version``, ``slidewatch.version``, flat keys for other tools
(``slidewatch.task``, ``.classes``, ``.positive_class``, ``.positive_index``, ``.bands``,
``.input_size``, ``.pixel_scale``, ``.nodata``, ``.normalisation``, ``.temperature``,
``.threshold``, ``.tile_rule`` (segmentation), ``.tabular_encoder`` (fused models),
``.inputs``, ``.outputs``, ``.quantization``, ``.opset``) and ``slidewatch.json``, the model
folder's whole ``slidewatch.json`` (written last). Only ``slidewatch.json`` is read back as
the model's metadata (checked by :func:`slidewatch.meta.validate_meta`); the flat keys
describe it.

The graph's contract (``slidewatch.graph`` = :data:`GRAPH_CONTRACT`): input ``image`` is float32
``[batch, bands, input_size, input_size]`` unit-scale pixels (the pixel path up to the
transform: band rule, unit scale, nodata 0, terrain channels, resize); the model's
normalisation ``(x - mean) / std`` and its temperature are inside the graph; outputs are
probabilities. Fused models also take ``numeric`` (float32, encoded with the stored tabular
encoder) and ``categorical`` (int64 category indices), when they have such columns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from slidewatch.errors import WeightsError
from slidewatch.meta import ModelMeta

FORMAT = "slidewatch-onnx"
FORMAT_VERSION = 1
PREFIX = "slidewatch."
FORMAT_KEY = PREFIX + "format"
JSON_KEY = "slidewatch.json"
GRAPH_KEY = PREFIX + "graph"
GRAPH_CONTRACT = "unit-pixels-in/probabilities-out"
QUANT_KEY = PREFIX + "quantization"

IMAGE, NUMERIC, CATEGORICAL = "image", "numeric", "categorical"
PROBS, SIZE_PROBS = "probabilities", "size_probabilities"


def pixel_scale_rule(meta: ModelMeta) -> str:
    if meta.scale is not None:
        return f"pixel values divided by {meta.scale:g}"
    return ("by the file's dtype: uint8 / 255, uint16 / 65535, other integers by their dtype "
            "maximum, floats unchanged (never per-image min-max)")


def input_names(meta: ModelMeta) -> list[str]:
    """The graph's inputs, in order: ``image`` (unless a tabular-only model), then ``numeric``
    and ``categorical`` when the fused model has such columns."""
    f = meta.inputs.fusion
    names = [] if f is not None and f.mode == "tabular" else [IMAGE]
    if f is not None and f.mode != "image":
        names += [NUMERIC] if f.n_numeric else []
        names += [CATEGORICAL] if f.cat_cardinalities else []
    return names


def output_names(meta: ModelMeta) -> list[str]:
    f = meta.inputs.fusion
    return [PROBS, SIZE_PROBS] if f is not None and f.size_classes else [PROBS]


def describe_io(meta: ModelMeta) -> tuple[dict, dict]:
    """``(inputs, outputs)``: name -> shape, dtype and meaning, for the flat keys."""
    s, c = meta.input_size, meta.in_chans
    f = meta.inputs.fusion
    image = ("unit-scale pixels (slidewatch.pixel_scale; nodata pixels 0; terrain channels "
             "after the image bands)")
    if meta.standardize != "none":
        image += ", standardised by slidewatch.standardize"
    known = {
        IMAGE: {"shape": ["batch", c, s, s], "dtype": "float32",
                "meaning": image + ", resized to input_size; not normalised (the graph "
                           "normalises)"},
        NUMERIC: {"shape": ["batch", f.n_numeric if f else 0], "dtype": "float32",
                  "meaning": "numeric columns standardised with slidewatch.tabular_encoder"},
        CATEGORICAL: {"shape": ["batch", len(f.cat_cardinalities) if f else 0],
                      "dtype": "int64",
                      "meaning": "category indices of slidewatch.tabular_encoder (0 = unknown)"},
    }
    if meta.task == "segment":
        probs = {"shape": ["batch", 1, s, s], "dtype": "float32",
                 "meaning": f"P({meta.positive_class}) per pixel: sigmoid(logits / temperature)"}
    else:
        probs = {"shape": ["batch", len(meta.classes)], "dtype": "float32",
                 "meaning": "class probabilities in the order of slidewatch.classes: "
                            "softmax(logits / temperature)"}
    outputs = {PROBS: probs}
    if f is not None and f.size_classes:
        outputs[SIZE_PROBS] = {"shape": ["batch", f.size_classes], "dtype": "float32",
                               "meaning": "size-class probabilities (softmax), classes "
                                          f"{list(meta.inputs.sizes.names)}"}
    return {n: known[n] for n in input_names(meta)}, outputs


def card_props(meta: ModelMeta, *, opset: int, quantization: str = "none") -> dict[str, str]:
    """The metadata_props of an exported model, in the order they are written."""
    import slidewatch

    inputs, outputs = describe_io(meta)
    props = {
        FORMAT_KEY: FORMAT,
        PREFIX + "format_version": str(FORMAT_VERSION),
        PREFIX + "version": slidewatch.__version__,
        GRAPH_KEY: GRAPH_CONTRACT,
        PREFIX + "task": meta.task,
        PREFIX + "architecture": meta.architecture,
        PREFIX + "classes": json.dumps(list(meta.classes)),
        PREFIX + "positive_class": meta.positive_class,
        PREFIX + "positive_index": str(meta.positive_index),
        PREFIX + "bands": str(meta.in_chans),
        PREFIX + "input_size": str(meta.input_size),
        PREFIX + "grayscale": json.dumps(meta.grayscale),
        PREFIX + "pixel_scale": pixel_scale_rule(meta),
        PREFIX + "nodata": "invalid pixels (nodata, masked, alpha, not finite) are 0 in every "
                           "band after unit scaling",
        PREFIX + "normalisation": json.dumps({"where": "inside the graph",
                                              "rule": "(x - mean) / std per band",
                                              "mean": list(meta.mean), "std": list(meta.std)}),
        PREFIX + "temperature": json.dumps({"where": "inside the graph",
                                            "value": meta.temperature}),
        PREFIX + "threshold": repr(float(meta.threshold)),
        PREFIX + "inputs": json.dumps(inputs),
        PREFIX + "outputs": json.dumps(outputs),
        QUANT_KEY: quantization,
        PREFIX + "opset": str(opset),
    }
    if meta.standardize != "none":
        props[PREFIX + "standardize"] = (
            f"{meta.standardize}: before resizing, each band of the whole source image (or "
            "scanned scene) over its valid unit-scale pixels: (x - image mean) / image std * "
            "std + mean, with mean/std of slidewatch.normalisation")
    if meta.segmentation is not None:
        props[PREFIX + "tile_rule"] = json.dumps(meta.segmentation.to_json())
    if meta.inputs.tabular is not None:
        props[PREFIX + "tabular_encoder"] = json.dumps(meta.inputs.tabular)
    props[JSON_KEY] = json.dumps(meta.to_json())
    return props


@dataclass
class OnnxCard:
    """What a slidewatch ONNX file says about itself."""

    path: Path
    meta: ModelMeta  # the model folder's metadata (its own mean/std/temperature)
    props: dict[str, str]
    opset: int
    data: bytes = field(repr=False)  # the file's bytes, for the runtime session

    @property
    def quantization(self) -> str:
        return self.props.get(QUANT_KEY, "none")


def _onnx():
    try:
        import onnx
    except ImportError:
        from slidewatch.errors import ConfigError

        raise ConfigError("ONNX models need the onnx extra: pip install 'slidewatch[onnx]'"
                          ) from None
    return onnx


def parse_model(data: bytes, where: str):
    """The ``onnx.ModelProto`` of ``data``; a one-line WeightsError naming ``where`` when it
    cannot be parsed (a truncated or damaged file, or not ONNX at all)."""
    onnx = _onnx()
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError, or a RuntimeWarning-free ValueError
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise WeightsError(f"{where}: not a readable ONNX model; the file is truncated or "
                           f"damaged ({detail})") from None
    if not len(data) or not model.HasField("graph") or not model.graph.node:
        raise WeightsError(f"{where}: not a readable ONNX model (no graph); the file is "
                           "truncated, damaged or not ONNX")
    return model


def default_opset(model) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def read_card(path: str | Path) -> OnnxCard:
    """The card of the ONNX file ``path``, checked: one-line WeightsErrors for a missing or
    unreadable file, a truncated one, a file without slidewatch metadata (naming the missing
    key) and metadata that breaks the model-folder contract."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path}: is a folder, not an ONNX file")
    if not path.is_file():
        raise WeightsError(f"{path}: ONNX file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return card_of(data, path)


def card_of(data: bytes, path: str | Path) -> OnnxCard:
    """:func:`read_card` of bytes already read (``path`` names them in errors)."""
    model = parse_model(data, str(path))
    props = {p.key: p.value for p in model.metadata_props}
    ours = sorted(k for k in props if k.startswith(PREFIX))
    if JSON_KEY not in props:
        if not ours:
            raise WeightsError(f"{path}: ONNX model without slidewatch metadata (metadata_props "
                               f"key {JSON_KEY!r} is missing: no classes, bands, pixel scale or "
                               "threshold); export it with `slidewatch export MODEL_DIR "
                               "--format onnx`")
        raise WeightsError(f"{path}: slidewatch metadata ends before key {JSON_KEY!r}; the file "
                           "is truncated or was edited, export it again")
    if props.get(FORMAT_KEY) != FORMAT:
        raise WeightsError(f"{path}: metadata_props key {FORMAT_KEY!r} must be {FORMAT!r}, got "
                           f"{props.get(FORMAT_KEY)!r}")
    version = props.get(PREFIX + "format_version", "")
    if not version.isdigit():
        raise WeightsError(f"{path}: metadata_props key {PREFIX}format_version must be a whole "
                           f"number, got {version!r}")
    if int(version) > FORMAT_VERSION:
        raise WeightsError(f"{path}: written by a newer slidewatch (ONNX card format {version});"
                           " upgrade slidewatch")
    if props.get(GRAPH_KEY) != GRAPH_CONTRACT:
        raise WeightsError(f"{path}: metadata_props key {GRAPH_KEY!r} must be "
                           f"{GRAPH_CONTRACT!r}, got {props.get(GRAPH_KEY)!r}")
    try:
        d = json.loads(props[JSON_KEY])
    except ValueError:
        raise WeightsError(f"{path}: metadata_props key {JSON_KEY!r} is not valid JSON"
                           ) from None
    meta = ModelMeta.from_json(d, f"{path}: metadata {JSON_KEY}")
    opset = default_opset(model)
    if opset is None:
        raise WeightsError(f"{path}: no ai.onnx opset in the model; the file is damaged")
    _check_inputs(model, meta, path)
    return OnnxCard(path, meta, props, opset, data)


def _check_inputs(model, meta: ModelMeta, path) -> None:
    """The graph takes the inputs its card names, the image with the card's bands."""
    graph_inputs = {i.name: i for i in model.graph.input}
    init = {t.name for t in model.graph.initializer}
    names = [n for n in graph_inputs if n not in init]
    wanted = input_names(meta)
    missing = [n for n in wanted if n not in names]
    if missing:
        raise WeightsError(f"{path}: the graph has no input(s) {', '.join(missing)} that its "
                           f"metadata needs (it takes {', '.join(names) or 'nothing'})")
    if IMAGE in wanted:
        dims = graph_inputs[IMAGE].type.tensor_type.shape.dim
        if len(dims) != 4:
            raise WeightsError(f"{path}: graph input image must be 4-D (batch, bands, height, "
                               f"width), got {len(dims)}-D")
        bands = dims[1].dim_value if dims[1].HasField("dim_value") else None
        if bands is not None and bands != meta.in_chans:
            raise WeightsError(f"{path}: the graph takes {bands} bands but its metadata says "
                               f"in_chans {meta.in_chans}")
