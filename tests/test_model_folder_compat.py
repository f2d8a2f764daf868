"""Model folders written by slidewatch 0.1.0 still load and predict the same probabilities.

tests/fixtures/models_v0_1 keeps the ``slidewatch.json`` of a plain and a fused (image +
tabular) model as that release wrote them, the names and shapes of their weights, and the
probabilities that release printed for seeded weights and seeded images (see its README).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from slidewatch.cli.main import main
from slidewatch.meta import FusionSpec, ModelMeta, read_meta
from slidewatch.models.checkpoint import load_model

FIXTURES = Path(__file__).parent / "fixtures" / "models_v0_1"


def seeded(manifest: dict) -> dict:
    """The weights the fixture's probabilities were computed with (same recipe as then)."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, shape in sorted(manifest.items()):
        if k.endswith("num_batches_tracked"):
            out[k] = torch.zeros(shape, dtype=torch.long)
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(shape, generator=g)
        else:
            out[k] = torch.randn(shape, generator=g) * 0.1
    return out


def old_folder(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(FIXTURES / name / "slidewatch.json", folder)
    manifest = json.loads((FIXTURES / name / "tensors.json").read_text())
    save_file(seeded(manifest), str(folder / "model.safetensors"))
    return folder


def seeded_images(folder: Path) -> Path:
    rng = np.random.default_rng(3)
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3)).astype(np.uint8)).save(
            folder / f"t{i}.png")
    return folder


@pytest.mark.parametrize("name", ["plain", "fused"])
def test_old_folder_loads_and_predicts_as_before(name, tmp_path, capsys):
    folder = old_folder(name, tmp_path)
    model, meta = load_model(folder)
    state = model.state_dict()
    manifest = json.loads((FIXTURES / name / "tensors.json").read_text())
    assert {k: list(v.shape) for k, v in state.items()} == manifest
    images = seeded_images(tmp_path / "images")
    extra = ["--tabular", str(FIXTURES / "rows.csv")] if name == "fused" else []
    assert main(["predict", str(folder), str(images), "--out", str(tmp_path / "p.csv"),
                 "--quiet", "--device", "cpu", *extra]) == 0
    with open(tmp_path / "p.csv") as fh:
        got = {Path(r["path"]).stem: float(r["probability"]) for r in csv.DictReader(fh)}
    expected = json.loads((FIXTURES / "expected.json").read_text())[name]
    assert got.keys() == expected.keys()
    for stem, p in expected.items():
        assert got[stem] == pytest.approx(p, abs=2e-6), stem


def test_typed_input_spec_reads_the_old_keys_and_writes_them_back():
    plain = read_meta(FIXTURES / "plain")
    assert plain.inputs.plain and plain.inputs.fusion is None
    fused = read_meta(FIXTURES / "fused")
    stored = json.loads((FIXTURES / "fused" / "slidewatch.json").read_text())
    assert fused.inputs.fusion == FusionSpec.from_json(stored["fusion"])
    assert fused.inputs.fusion.mode == "fused" and fused.inputs.fusion.cat_cardinalities == (4,)
    assert fused.inputs.tabular["spec"]["key"] == "tile_id"
    assert "fusion" not in fused.extra and "tabular" not in fused.extra
    for name in ("plain", "fused"):
        raw = json.loads((FIXTURES / name / "slidewatch.json").read_text())
        assert ModelMeta.from_json(raw, name).to_json() == raw
