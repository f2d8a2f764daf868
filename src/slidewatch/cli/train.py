"""``slidewatch train``: flags that mirror the config file (flags win over the file)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from slidewatch.cli.common import progress
from slidewatch.errors import ConfigError

# flag name -> config key path (dotted). Every flag here can also be set in the YAML file.
FLAG_KEYS = {
    "model": "model.name", "weights": "model.weights", "input_size": "model.input_size",
    "drop_rate": "model.drop_rate", "init_from": "model.init_from",
    "phase1_epochs": "phase1.epochs", "phase1_lr": "phase1.lr",
    "phase2_epochs": "phase2.epochs", "phase2_lr": "phase2.lr",
    "unfreeze_layers": "phase2.unfreeze_layers", "unfreeze_blocks": "phase2.unfreeze_blocks",
    "optimizer": "optim.optimizer", "schedule": "optim.schedule",
    "weight_decay": "optim.weight_decay", "batch_size": "batch_size",
    "steps_per_epoch": "steps_per_epoch",
    "early_stopping_metric": "early_stopping_metric", "patience": "patience", "seed": "seed",
    "device": "device", "threshold": "threshold", "target_recall": "target_recall",
    "calibration": "calibration", "hard_negatives": "hard_negatives",
    "hard_negative_epochs": "hard_negative_epochs",
    "split_by": "data.split_by",
    "val_fraction": "data.val_fraction", "split_file": "data.split_file",
    "num_workers": "data.num_workers", "scale": "data.scale",
    "standardize": "data.standardize",
    "tabular": "tabular.path", "tabular_key": "tabular.key",
    "tabular_key_column": "tabular.key_column", "tabular_missing": "tabular.missing",
    "tabular_unknown": "tabular.unknown", "aux": "aux.dem", "aux_as": "aux.use",
    "aux_pixel_size": "aux.pixel_size", "size_from": "sizes.source", "size_unit": "sizes.unit",
    "size_column": "sizes.column", "pixel_size": "sizes.pixel_size",
    "size_weight": "sizes.weight", "size_class_weights": "sizes.class_weights",
    "fusion_mode": "fusion.mode", "emb_dim": "fusion.emb_dim",
    "mlp_hidden": "fusion.mlp_hidden", "landslide_weight": "fusion.weight",
    "task": "task", "loss": "segment.loss", "pos_weight": "segment.pos_weight",
    "crops_per_image": "segment.crops_per_image", "positive_share": "segment.positive_share",
    "min_area": "segment.min_area",
}
# flag name -> config key path of a comma-separated list (the flag may be repeated)
LIST_FLAGS = {"numeric": ("tabular.numeric", str), "categorical": ("tabular.categorical", str),
              "size_names": ("sizes.names", str), "size_edges": ("sizes.edges", float),
              "age_names": ("sizes.names", str), "age_edges": ("sizes.edges", float)}


def _nest(flat: dict) -> dict:
    out: dict = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


# config key path -> the flag that sets it, for messages about a value given as a flag
SPECIAL_FLAGS = {"data.paths": "--data", "data.holdout_regions": "--holdout-region",
                 "data.val_regions": "--val-region",
                 "data.classes": "--classes", "augment.grayscale": "--grayscale",
                 "augment.enabled": "--no-augment", "class_weights": "--class-weights",
                 "progress": "--quiet"}
FLAG_OF = {**{key: "--" + name.replace("_", "-") for name, key in FLAG_KEYS.items()},
           **{key: "--" + name.replace("_", "-") for name, (key, _) in LIST_FLAGS.items()
              if not name.startswith("age_")},  # age errors name their flags themselves
           **SPECIAL_FLAGS}


def flat_overrides(params: dict) -> dict:
    """Dotted config key -> value of every given (non-None) flag."""
    flat = {FLAG_KEYS[k]: v for k, v in params.items() if k in FLAG_KEYS and v is not None}
    if params.get("data"):
        flat["data.paths"] = list(params["data"])
    if params.get("holdout_region"):
        flat["data.holdout_regions"] = list(params["holdout_region"])
    if params.get("val_region"):
        flat["data.val_regions"] = list(params["val_region"])
    if params.get("classes"):
        flat["data.classes"] = [c.strip() for c in params["classes"].split(",") if c.strip()]
    if params.get("grayscale"):
        flat["augment.grayscale"] = True
    if params.get("no_augment"):
        flat["augment.enabled"] = False
    if params.get("class_weights"):
        cw = params["class_weights"]
        if cw in ("balanced", "none"):
            flat["class_weights"] = cw
        else:
            try:
                flat["class_weights"] = [float(v) for v in cw.split(",")]
            except ValueError:
                raise click.BadParameter("use balanced, none, or numbers like 1.0,2.5",
                                         param_hint="--class-weights") from None
    if params.get("age_from"):  # the age task rides on the second-task head of the size task
        if params.get("size_from") or params.get("size_edges") or params.get("size_names"):
            raise ConfigError("--age-from: a model has one second task; leave out --size-from, "
                              "--size-edges and --size-names")
        flat["sizes.source"], flat["sizes.column"] = "age", params["age_from"]
    elif params.get("age_edges") or params.get("age_names"):
        raise ConfigError("--age-edges/--age-names: give --age-from COLUMN (the days between "
                          "the event and the image)")
    if params.get("quiet"):
        flat["progress"] = False
    for name, (key, kind) in LIST_FLAGS.items():
        if params.get(name):
            flat[key] = _list(params[name], kind, "--" + name.replace("_", "-"))
    return flat


def overrides_from_flags(params: dict) -> dict:
    """The nested config mapping that the given (non-None) flags stand for."""
    return _nest(flat_overrides(params))


def _where(message: str, flags: set[str], config_path: str | None) -> str:
    """A config error about a value given as a flag names the flag (and its key); one about
    a value of the config file names the file."""
    key = message.split(": ", 1)[0]
    base = re.sub(r"\[\d+\]$", "", key)
    if base in flags and base in FLAG_OF:
        return f"{FLAG_OF[base]} ({key}){message[len(key):]}"
    if config_path and not key.startswith("--"):
        return f"{config_path}: {message}"
    return message


def _list(values, kind, hint: str) -> list:
    """Items of one or more comma-separated flag values (``--numeric slope,rain``)."""
    items = [v.strip() for value in values for v in str(value).split(",") if v.strip()]
    try:
        return [kind(v) for v in items]
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {items}",
                                 param_hint=hint) from None


def build_config(config_path: str | None, params: dict):
    from slidewatch.config.train import TrainConfig, from_dict, load_yaml, merge

    base = load_yaml(config_path) if config_path else {}
    flat = flat_overrides(params)
    try:
        return from_dict(merge(base, _nest(flat)), TrainConfig)
    except ConfigError as exc:
        raise ConfigError(_where(str(exc), set(flat), config_path)) from None


def _auto_or(kind):
    """A click type: ``auto``/``none`` or a number of ``kind``."""
    def convert(value):
        if str(value).lower() in ("auto", "none"):
            return str(value).lower()
        try:
            return kind(value)
        except ValueError:
            raise click.BadParameter(f"expected auto or a number, got {value!r}") from None

    convert.__name__ = f"auto|{kind.__name__}"
    return convert


def _opt(*names, **kw):
    kw.setdefault("default", None)
    return click.option(*names, **kw)


TRAIN_OPTIONS = [
    _opt("--config", "config_path", type=click.Path(dir_okay=False), help="YAML config file"),
    _opt("--data", multiple=True, help="dataset folder (repeat to merge several)"),
    _opt("--out", required=True, type=click.Path(file_okay=False), help="model folder to write"),
    _opt("--classes", help="class folder names, positive class first, comma-separated"),
    _opt("--task", type=click.Choice(["classify", "segment"]),
         help="tile classes (default) or landslide pixels learnt from masks"),
    _opt("--model", help="architecture (see `slidewatch models [--task segment]`)"),
    _opt("--weights", help="imagenet, none, or a weights file / slidewatch model folder"),
    _opt("--init-from", help="continue from an earlier fine-tuned slidewatch model folder"),
    _opt("--input-size", type=int, help="model input size in pixels"),
    _opt("--drop-rate", type=float, help="dropout before the dense head"),
    _opt("--phase1-epochs", type=int, help="epochs with the backbone frozen"),
    _opt("--phase1-lr", type=float),
    _opt("--phase2-epochs", type=int, help="fine-tuning epochs"),
    _opt("--phase2-lr", type=float),
    _opt("--unfreeze-layers", type=int, help="top N weighted layers to fine-tune (Keras count)"),
    _opt("--unfreeze-blocks", type=int, help="top N stages (timm blocks) to fine-tune"),
    _opt("--optimizer", type=click.Choice(["adam", "adamw", "nadam", "rmsprop", "sgd"])),
    _opt("--schedule", type=click.Choice(["cosine", "constant", "step"])),
    _opt("--weight-decay", type=float),
    _opt("--batch-size", type=int),
    _opt("--steps-per-epoch", type=int, help="cap each epoch at this many batches"),
    _opt("--class-weights", help="balanced, none, or one weight per class (1,3)"),
    _opt("--early-stopping-metric", type=click.Choice(
        ["val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1", "val_f2",
         "val_iou", "val_mcc"]), help="val_iou/val_mcc: pixel scores of --task segment"),
    _opt("--loss", type=click.Choice(["bce_dice", "focal_dice", "bce", "dice", "bce_lovasz"]),
         help="--task segment: the pixel loss"),
    _opt("--pos-weight", type=_auto_or(float),
         help="--task segment: weight of landslide pixels (auto, none or a number)"),
    _opt("--crops-per-image", type=int, help="--task segment: random crops of a scene per epoch"),
    _opt("--positive-share", type=float,
         help="--task segment: share of crops centred on a landslide pixel"),
    _opt("--min-area", type=_auto_or(int),
         help="--task segment: pixels a tile needs above the threshold (auto: on validation)"),
    _opt("--patience", type=int, help="epochs without improvement before stopping"),
    _opt("--threshold", type=float, help="decision threshold stored in the model"),
    _opt("--target-recall", type=float,
         help="store the threshold that reaches this recall on the validation split (a "
              "segmentation model: its tile threshold, with the tile rule's area)"),
    _opt("--split-by", type=click.Choice(["image", "region", "tile"])),
    _opt("--val-fraction", type=float),
    _opt("--holdout-region", multiple=True, help="region(s) kept out of training"),
    _opt("--val-region", multiple=True,
         help="region(s) used whole as the validation split (thresholds and calibration on "
              "regions training never saw)"),
    _opt("--hard-negatives", type=int,
         help="after the phases, oversample the N highest-scoring landslide-free training "
              "items for --hard-negative-epochs more epochs"),
    _opt("--hard-negative-epochs", type=int, help="epochs of the hard-negative pass (1)"),
    _opt("--calibration", type=click.Choice(["none", "temperature"]),
         help="temperature scaling of the probabilities, fitted on the validation split"),
    _opt("--split-file", help="a split written by `slidewatch data split`"),
    _opt("--scale", type=float, help="divide pixel values by this (default: by dtype)"),
    _opt("--standardize", type=click.Choice(["none", "image"]),
         help="image: standardise each band by the whole source image's mean and std "
              "(stored in the model, applied in predict and scan)"),
    _opt("--num-workers", type=int, help="DataLoader worker processes"),
    _opt("--seed", type=int),
    _opt("--device", help="auto, cpu, cuda or cuda:N"),
    _opt("--tabular", help="CSV with one row per image (numeric/categorical inputs)"),
    _opt("--numeric", multiple=True, help="numeric column(s) of --tabular, comma-separated"),
    _opt("--categorical", multiple=True, help="categorical column(s), comma-separated"),
    _opt("--tabular-key", type=click.Choice(["path", "tile_id"]),
         help="join rows by image path (relative to the dataset) or tile id (file stem)"),
    _opt("--tabular-key-column", help="CSV column holding the key (default: its name)"),
    _opt("--tabular-missing", "--missing", "tabular_missing",
         type=click.Choice(["error", "impute"]), help="an image without a row"),
    _opt("--tabular-unknown", type=click.Choice(["error", "unknown"]),
         help="a category never seen in training at evaluation time"),
    _opt("--aux", help="DEM raster: elevation, slope, aspect on each image's grid"),
    _opt("--aux-as", type=click.Choice(["channels", "features"]),
         help="terrain as extra input channels or as tabular features"),
    _opt("--aux-pixel-size", type=float, help="metres per pixel when nothing is georeferenced"),
    _opt("--size-from", type=click.Choice(["mask", "column"]),
         help="second task: size class from the masks or from a --tabular column"),
    _opt("--size-edges", multiple=True, help="size class edges (m² or tile fraction)"),
    _opt("--size-names", multiple=True, help="size class names, smallest first"),
    _opt("--size-unit", type=click.Choice(["m2", "fraction"])),
    _opt("--size-column", help="column with size labels (default landslide_size)"),
    _opt("--pixel-size", type=float, help="metres per pixel for m² size classes"),
    _opt("--age-from", metavar="COLUMN",
         help="second task: age class from a --tabular column of days between the event and "
              "the image (e.g. days_from_event of data from-inventory)"),
    _opt("--age-edges", multiple=True,
         help="age class edges in days (default 90,365: fresh, recent, old)"),
    _opt("--age-names", multiple=True, help="age class names, youngest first"),
    _opt("--size-weight", type=float, help="weight of the size loss"),
    _opt("--size-class-weights", type=click.Choice(["none", "balanced"]),
         help="size classes weighted alike (none) or by inverse training frequency"),
    _opt("--landslide-weight", type=float, help="weight of the landslide loss"),
    _opt("--fusion-mode", type=click.Choice(["fused", "image", "tabular"]),
         help="both branches, or one only (comparisons)"),
    _opt("--emb-dim", type=int, help="embedding size of each categorical column"),
    _opt("--mlp-hidden", type=int, help="width of the tabular MLP"),
    click.option("--grayscale", is_flag=True, default=False, help="train on greyscale images"),
    click.option("--no-augment", is_flag=True, default=False, help="switch augmentation off"),
    click.option("--resume", is_flag=True, default=False, help="continue an interrupted run"),
    click.option("--quiet", is_flag=True, default=False, help="no progress bars"),
]


def train_cmd(**params):
    """Train a landslide classifier (or, with --task segment, a pixel segmentation model):
    frozen-backbone phase, then fine-tuning."""
    from slidewatch.training.loop import train

    cfg = build_config(params.pop("config_path"), params)

    def log(message: str) -> None:
        click.echo(message, err=True)

    result = train(cfg, Path(params["out"]), resume=params["resume"],
                   progress=progress(cfg.progress), log=log)
    if getattr(result, "rank", 0) != 0:
        return  # under torchrun only rank 0 reports
    best = result.best_metrics
    shown = {k: round(v, 4) for k, v in best.items() if k.startswith("val_")}
    click.echo(f"best epoch {result.best_epoch}: {shown or 'no validation split'}")
    click.echo(f"model -> {result.out_dir}")
    sys.stdout.flush()


for _option in reversed(TRAIN_OPTIONS):
    train_cmd = _option(train_cmd)
train_cmd = click.command("train")(train_cmd)
