"""Image + tabular fusion: the fused model learns a label that needs both inputs, which
neither branch learns alone; backbones, freezing, Grad-CAM, multi-task loss, attribution and
the metadata round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from slidewatch.data.dataset import TileDataset
from slidewatch.data.folders import scan_class_folders
from slidewatch.data.splits import split_samples
from slidewatch.data.tabular import TabularEncoder, TabularSpec, join_samples, read_table
from slidewatch.data.transforms import normalize
from slidewatch.errors import ConfigError, ModelError
from slidewatch.evaluation.metrics import confusion, fbeta
from slidewatch.explain.attributions import tabular_attributions
from slidewatch.meta import FusionSpec, InputSpec, ModelMeta, read_meta
from slidewatch.models import build_model
from slidewatch.models.baseline import BaselineCNN
from slidewatch.models.checkpoint import save_model
from slidewatch.models.freezing import unfreeze_top_blocks, unfreeze_top_layers
from slidewatch.models.fusion import (
    FusionModel,
    ImageView,
    build_fusion,
    feature_dim,
    fusion_config,
    pooled_features,
)
from slidewatch.training.multimodal import multitask_loss

SIZE = 32
THRESHOLD = 20.0  # degrees: landslide = bright scar AND slope above this
SPEC = TabularSpec(numeric=("slope", "elevation"), categorical=("trigger",))


def make_task(root, n=448, seed=7):
    """Class folders + tabular.csv: bright scar in the image AND slope > 20 -> landslide.
    Elevation (10% empty) and trigger are noise."""
    rng = np.random.default_rng(seed)
    bright, slope = rng.random(n) < 0.5, rng.uniform(0, 40, n)
    lines = ["path,slope,elevation,trigger"]
    for i in range(n):
        img = rng.integers(50, 130, (SIZE, SIZE, 3)).astype(np.uint8)
        if bright[i]:
            r, c = rng.integers(0, SIZE - 8, 2)
            img[r:r + 8, c:c + 8] = rng.integers(215, 255)
        label = "landslide" if bright[i] and slope[i] > THRESHOLD else "non_landslide"
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / label / f"g{i:03d}.png")
        elev = "" if rng.random() < 0.1 else f"{rng.normal(1500, 300):.1f}"
        trigger = rng.choice(["rain", "quake", "snowmelt"])
        lines.append(f"{label}/g{i:03d}.png,{slope[i]:.3f},{elev},{trigger}")
    (root / "tabular.csv").write_text("\n".join(lines) + "\n")
    return root


def load_task(root):
    samples = scan_class_folders(root)
    split = split_samples(samples, by="image", val_fraction=0.0, test_fraction=0.4, seed=0)
    rows = join_samples(samples, read_table(root / "tabular.csv", SPEC))
    encoder = TabularEncoder(SPEC).fit([rows[i] for i in split.train])
    num, cat = encoder.transform(rows, names=[s.path for s in samples])
    ds = TileDataset(samples)
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    images = normalize(images, (0.5,) * 3, (0.5,) * 3)
    labels = torch.tensor([s.label for s in samples])
    data = {"x": images, "num": torch.from_numpy(num), "cat": torch.from_numpy(cat), "y": labels}
    return samples, split, rows, encoder, data


def new_model(mode, encoder, size_classes=0):
    torch.manual_seed(0)
    backbone = None if mode == "tabular" else BaselineCNN(width=8, hidden=32, drop_rate=0.0)
    return FusionModel(backbone, len(encoder.numeric_names), encoder.cardinalities, emb_dim=3,
                       mlp_hidden=16, mode=mode, dropout=0.0, size_classes=size_classes)


def train(model, data, idx, epochs=15):
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    idx = torch.tensor(idx)
    for _ in range(epochs):
        model.train()
        for batch in idx[torch.randperm(len(idx), generator=gen)].split(32):
            out = model(data["x"][batch], data["num"][batch], data["cat"][batch])
            loss, _ = multitask_loss(out, data["y"][batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def f1(model, data, idx):
    with torch.no_grad():
        pred = model(data["x"][idx], data["num"][idx], data["cat"][idx])["logits"].argmax(1)
    return fbeta(confusion(data["y"][idx] == 0, pred == 0))  # positive = landslide (index 0)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    samples, split, rows, encoder, data = load_task(make_task(tmp_path_factory.mktemp("task")))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead (7 s vs 70 s on 2 cores)
    try:
        models = {m: train(new_model(m, encoder), data, split.train)
                  for m in ("fused", "image", "tabular")}
    finally:
        torch.set_num_threads(threads)
    scores = {m: f1(model, data, split.test) for m, model in models.items()}
    return {"samples": samples, "split": split, "rows": rows, "encoder": encoder, "data": data,
            "models": models, "f1": scores}


def test_fused_model_learns_what_neither_branch_learns_alone(task):
    scores = task["f1"]
    # either branch alone sees half the evidence: the best it can do is F1 = 2/3
    assert scores["image"] < 0.75 and scores["tabular"] < 0.75, scores
    assert scores["fused"] > 0.9, scores
    assert scores["fused"] - max(scores["image"], scores["tabular"]) > 0.2, scores


def test_encoder_statistics_are_from_the_training_split_only(task):
    rows, split, enc = task["rows"], task["split"], task["encoder"]
    train_slopes = [rows[i]["slope"] for i in split.train]
    all_slopes = [r["slope"] for r in rows]
    assert enc.mean["slope"] == pytest.approx(np.mean(train_slopes), rel=1e-12)
    assert enc.mean["slope"] != pytest.approx(np.mean(all_slopes), rel=1e-6)
    assert enc.n_train == len(split.train)
    assert enc.feature_names == ["slope", "elevation", "elevation_missing", "trigger"]


def test_integrated_gradients_credit_the_slope(task):
    data, enc, model = task["data"], task["encoder"], task["models"]["fused"]
    test = task["split"].test
    steep = [i for i in test if data["y"][i] == 0 and task["rows"][i]["slope"] > 32][0]
    result = tabular_attributions(model, data["x"][steep], data["num"][steep],
                                  data["cat"][steep], enc.feature_names, target=0)
    attr = {f["name"]: f["attribution"] for f in result["features"]}
    assert list(attr) == enc.feature_names
    assert attr["slope"] > 0.2
    assert attr["slope"] > 5 * max(abs(attr[k]) for k in attr if k != "slope")
    total = sum(attr.values())
    assert total == pytest.approx(result["probability"] - result["baseline_probability"],
                                  abs=0.02)
    image_only = task["models"]["image"]
    with pytest.raises(ModelError, match="no tabular branch"):
        tabular_attributions(image_only, data["x"][steep], data["num"][steep],
                             data["cat"][steep], enc.feature_names)


def test_grad_cam_runs_on_the_backbone_of_a_fused_model(task):
    from slidewatch.explain.cams import compute_cam_raw, resolve_target_layer

    data, model = task["data"], task["models"]["fused"]
    i = task["split"].test[0]
    view = ImageView(model, data["num"][i], data["cat"][i])
    assert resolve_target_layer(view, None)[0] == "model.backbone.conv3"
    meta = ModelMeta("baseline_cnn", ["landslide", "non_landslide"], 3, SIZE, [0.5] * 3,
                     [0.5] * 3)
    unit = data["x"][i] * 0.5 + 0.5
    cam, prob = compute_cam_raw(view, meta, unit)
    assert cam.shape == (8, 8)  # conv3 runs at 1/4 of 32 px
    with torch.no_grad():
        expected = torch.softmax(model(data["x"][i:i + 1], data["num"][i:i + 1],
                                       data["cat"][i:i + 1])["logits"], 1)[0, 0]
    assert prob == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("name", ["baseline_cnn", "test_efficientnet", "test_resnet"])
def test_backbones_from_the_registry(name):
    backbone = build_model(name, num_classes=2, weights="none", input_size=SIZE)
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        width = pooled_features(backbone, x).shape[1]
    assert width == feature_dim(backbone)
    model = FusionModel(backbone, n_numeric=3, cat_cardinalities=[4], size_classes=4).eval()
    out = model(x, torch.zeros(2, 3), torch.tensor([[1], [3]]))
    assert out["logits"].shape == (2, 2) and out["size_logits"].shape == (2, 4)
    assert model.backbone is backbone
    assert not any(p.numel() for p in backbone.get_classifier().parameters())


def test_freezing_reaches_the_backbone_of_a_fused_model():
    plain = build_model("test_efficientnet", num_classes=2, weights="none")
    fused = FusionModel(build_model("test_efficientnet", num_classes=2, weights="none"),
                        n_numeric=2, cat_cardinalities=[3])
    for fn, n in ((unfreeze_top_layers, 4), (unfreeze_top_blocks, 1)):
        names = fn(fused, n)
        assert names and names == ["backbone." + x for x in fn(plain, n)]
        trainable = {k for k, p in fused.named_parameters() if p.requires_grad}
        new = {k for k, _ in fused.named_parameters() if not k.startswith("backbone.")}
        assert new <= trainable  # tabular branch, fusion layer and heads always train
        assert not any(k.startswith("backbone.conv_stem") for k in trainable)
    assert unfreeze_top_layers(fused.backbone, 4) == unfreeze_top_layers(plain, 4)


def test_multitask_loss_weights_and_ignored_size_labels():
    torch.manual_seed(0)
    out = {"logits": torch.randn(4, 2), "size_logits": torch.randn(4, 3)}
    y = torch.tensor([0, 1, 1, 0])
    ce = torch.nn.functional.cross_entropy
    loss, parts = multitask_loss(out, y, torch.tensor([-1, -1, -1, -1]), size_weight=2.0)
    assert float(loss) == pytest.approx(float(ce(out["logits"], y)))
    assert parts["loss_size"] == 0.0
    sizes = torch.tensor([2, -1, 0, -1])
    loss, parts = multitask_loss(out, y, sizes, weight=0.5, size_weight=2.0)
    size_ce = float(ce(out["size_logits"][[0, 2]], sizes[[0, 2]]))
    assert parts["loss_size"] == pytest.approx(size_ce)
    assert float(loss) == pytest.approx(0.5 * float(ce(out["logits"], y)) + 2.0 * size_ce)
    w = torch.tensor([3.0, 1.0, 0.5])  # weighted mean over the labelled tiles, as torch does
    _, parts = multitask_loss(out, y, sizes, size_class_weights=w)
    logp = torch.log_softmax(out["size_logits"][[0, 2]], 1)
    manual = -(w[2] * logp[0, 2] + w[0] * logp[1, 0]) / (w[2] + w[0])
    assert parts["loss_size"] == pytest.approx(float(manual))


def test_metadata_round_trip_rebuilds_the_same_model(task, tmp_path):
    from safetensors.torch import load_file

    model, enc = task["models"]["fused"], task["encoder"]
    inputs = InputSpec(fusion=FusionSpec.from_json(fusion_config(model)), tabular=enc.to_json())
    meta = ModelMeta("baseline_cnn", ["landslide", "non_landslide"], 3, SIZE, [0.5] * 3,
                     [0.5] * 3, inputs=inputs)
    save_model(tmp_path / "m", model, meta)
    stored = json.loads((tmp_path / "m" / "slidewatch.json").read_text())
    again = read_meta(tmp_path / "m")
    assert stored["fusion"]["mode"] == "fused" and again.inputs.tabular == enc.to_json()
    assert stored["fusion"] == fusion_config(model) and again.inputs == inputs
    rebuilt = build_fusion(again.inputs.fusion.to_json(),
                           BaselineCNN(width=8, hidden=32, drop_rate=0.0))
    rebuilt.load_state_dict(load_file(str(tmp_path / "m" / "model.safetensors")), strict=True)
    rebuilt.eval()
    enc2 = TabularEncoder.from_json(again.inputs.tabular)
    num, cat = (torch.from_numpy(a) for a in enc2.transform(task["rows"][:5]))
    with torch.no_grad():
        a = model(task["data"]["x"][:5], num, cat)["logits"]
        b = rebuilt(task["data"]["x"][:5], num, cat)["logits"]
    torch.testing.assert_close(a, b)


def test_bad_fusion_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="needs tabular columns"):
        FusionModel(BaselineCNN(), n_numeric=0)
    with pytest.raises(ConfigError, match="needs an image backbone"):
        FusionModel(None, n_numeric=2, mode="fused")
    with pytest.raises(ConfigError, match="--fusion-mode"):
        FusionModel(None, n_numeric=2, mode="late")
    with pytest.raises(ConfigError, match="--size-classes"):
        FusionModel(None, n_numeric=2, mode="tabular", size_classes=1)
