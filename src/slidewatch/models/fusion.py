"""Image + tabular fusion with an optional second task (size class).

``FusionModel`` joins the pooled features of an image backbone (any model from
:func:`slidewatch.models.build_model`: timm's ``forward_features`` + ``forward_head(...,
pre_logits=True)``, which :class:`~slidewatch.models.baseline.BaselineCNN` provides too) with an
MLP over ``[standardised numeric, category embeddings]``, then a shared fusion layer and one
head per task. ``mode="image"`` or ``"tabular"`` keeps one branch only (the comparisons).

The backbone stays ``model.backbone`` (its own classifier replaced by Identity), so freezing
works on it directly or on the whole model: ``get_classifier()`` names every new module (tabular
branch, fusion layer, heads) as "the head", and ``group_matcher`` is the backbone's, prefixed.
``feature_layer`` is the backbone's Grad-CAM target under ``backbone.``; :class:`ImageView`
binds one tabular row so Grad-CAM sees an image -> logits model.

Metadata: :func:`fusion_config` -> ``meta.inputs.fusion``; :func:`build_fusion` rebuilds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from slidewatch.errors import ConfigError, ModelError
from slidewatch.models.heads import default_target_layer

MODES = ("fused", "image", "tabular")
PREFIX = "backbone."


def feature_dim(backbone: nn.Module) -> int:
    """Width of ``forward_head(..., pre_logits=True)``: timm's ``head_hidden_size`` (which
    differs from ``num_features`` for e.g. MobileNetV3), else ``num_features``."""
    for name in ("head_hidden_size", "num_features"):
        value = getattr(backbone, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ModelError(f"{type(backbone).__name__}: no num_features; not a timm-style backbone")


def pooled_features(backbone: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """``[N, feature_dim]`` pooled (pre-logits) features of a timm-style backbone."""
    return backbone.forward_head(backbone.forward_features(image), pre_logits=True)


def _prefixed(pattern: str) -> str:
    """A backbone group regex for the same modules under ``backbone.`` (matched from the
    start, as timm does)."""
    return r"^backbone\.(?:" + pattern.removeprefix("^") + ")"


class FusionModel(nn.Module):
    """Landslide classifier over image and tabular inputs; ``forward`` returns a dict with
    ``"logits"`` ``[N, num_classes]`` and, when ``size_classes > 0``, ``"size_logits"``."""

    def __init__(self, backbone: nn.Module | None, n_numeric: int = 0,
                 cat_cardinalities: Sequence[int] = (), emb_dim: int = 4, mlp_hidden: int = 64,
                 num_classes: int = 2, size_classes: int = 0, mode: str = "fused",
                 fusion_hidden: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        cards = [int(c) for c in cat_cardinalities]
        _check_args(backbone, n_numeric, cards, emb_dim, mlp_hidden, num_classes, size_classes,
                     mode, dropout)
        self.mode, self.n_numeric, self.cat_cardinalities = mode, int(n_numeric), cards
        self.emb_dim, self.mlp_hidden, self.dropout = int(emb_dim), int(mlp_hidden), dropout
        self.num_classes, self.size_classes = int(num_classes), int(size_classes)
        self.fusion_hidden = int(fusion_hidden or mlp_hidden)
        width = 0
        self.backbone = None
        if mode != "tabular":
            if hasattr(backbone, "reset_classifier"):
                backbone.reset_classifier(0)  # its own head is unused: keep it out of freezing
            self.backbone = backbone
            width += feature_dim(backbone)
        self.embeddings = nn.ModuleList()
        self.tabular = None
        if mode != "image":
            self.embeddings.extend(nn.Embedding(c, emb_dim) for c in cards)
            self.tabular = nn.Sequential(
                nn.Linear(self.tabular_width, mlp_hidden), nn.ReLU(), nn.Dropout(dropout),
                nn.Linear(mlp_hidden, mlp_hidden), nn.ReLU())
            width += mlp_hidden
        self.fusion = nn.Sequential(nn.Linear(width, self.fusion_hidden), nn.ReLU(),
                                    nn.Dropout(dropout))
        self.head = nn.Linear(self.fusion_hidden, num_classes)
        self.size_head = nn.Linear(self.fusion_hidden, size_classes) if size_classes else None

    # ------------------------------------------------------------------ timm-style interface

    @property
    def tabular_width(self) -> int:
        """Inputs of the tabular MLP: numeric columns + one embedding per categorical one."""
        return self.n_numeric + self.emb_dim * len(self.cat_cardinalities)

    @property
    def pretrained_cfg(self) -> dict:
        cfg = dict(getattr(self.backbone, "pretrained_cfg", None) or {})
        if isinstance(cfg.get("first_conv"), str):
            cfg["first_conv"] = PREFIX + cfg["first_conv"]
        return cfg

    @property
    def feature_layer(self) -> str | None:
        """Grad-CAM target: the backbone's default target layer, under ``backbone.``."""
        if self.backbone is None:
            return None
        return PREFIX + default_target_layer(self.backbone)

    def get_classifier(self) -> tuple[nn.Module, ...]:
        """Every module trained from scratch (tabular branch, fusion layer, heads)."""
        parts = [*self.embeddings, self.tabular, self.fusion, self.head, self.size_head]
        return tuple(m for m in parts if m is not None)

    def group_matcher(self, coarse: bool = False):
        """The backbone's timm grouping with names under ``backbone.`` (for freezing)."""
        if self.backbone is None or not hasattr(self.backbone, "group_matcher"):
            return None
        inner = self.backbone.group_matcher(coarse=coarse)
        if callable(inner):
            return lambda name: inner(name.removeprefix(PREFIX)) \
                if name.startswith(PREFIX) else (float("inf"),)
        out = {}
        for group, spec in inner.items():
            if isinstance(spec, (list, tuple)):
                out[group] = [(_prefixed(p), suffix) for p, suffix in spec]
            else:
                out[group] = None if spec is None else _prefixed(spec)
        return out

    # ------------------------------------------------------------------ forward

    def image_features(self, image: torch.Tensor | None) -> torch.Tensor | None:
        if self.backbone is None:
            return None
        if image is None:
            raise ValueError(f"FusionModel({self.mode}): an image batch is required")
        return pooled_features(self.backbone, image)

    def embed(self, categorical: torch.Tensor | None, n: int) -> torch.Tensor:
        """``[N, emb_dim * n_categorical]`` embeddings (empty when there are none)."""
        if not self.embeddings:
            return torch.zeros(n, 0, device=self.head.weight.device)
        if categorical is None or categorical.shape[-1] != len(self.embeddings):
            raise ValueError(f"FusionModel: expected {len(self.embeddings)} categorical "
                             "column(s) per row")
        return torch.cat([emb(categorical[:, i]) for i, emb in enumerate(self.embeddings)], 1)

    def fuse(self, img_feat: torch.Tensor | None, numeric: torch.Tensor | None,
             emb: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Heads over image features and the tabular inputs (numeric + embeddings)."""
        parts = [] if img_feat is None else [img_feat]
        if self.tabular is not None:
            parts.append(self.tabular(torch.cat([numeric.float(), emb], dim=1)))
        shared = self.fusion(torch.cat(parts, dim=1))
        out = {"logits": self.head(shared)}
        if self.size_head is not None:
            out["size_logits"] = self.size_head(shared)
        return out

    def forward(self, image: torch.Tensor | None = None, numeric: torch.Tensor | None = None,
                categorical: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        img_feat = self.image_features(image)
        emb = None
        if self.tabular is not None:
            n = numeric.shape[0] if numeric is not None else categorical.shape[0]
            if numeric is None:
                numeric = torch.zeros(n, 0, device=self.head.weight.device)
            if numeric.shape[-1] != self.n_numeric:
                raise ValueError(f"FusionModel: expected {self.n_numeric} numeric column(s), "
                                 f"got {numeric.shape[-1]}")
            emb = self.embed(categorical, n)
        return self.fuse(img_feat, numeric, emb)


def _check_args(backbone, n_numeric, cards, emb_dim, mlp_hidden, num_classes, size_classes,
                mode, dropout) -> None:
    if mode not in MODES:
        raise ConfigError(f"--fusion-mode: must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "tabular" and backbone is None:
        raise ConfigError(f"--fusion-mode {mode}: needs an image backbone")
    if mode != "image" and n_numeric + len(cards) == 0:
        raise ConfigError(f"--fusion-mode {mode}: needs tabular columns (--numeric/--categorical)")
    if n_numeric < 0 or any(c < 2 for c in cards):
        raise ConfigError(f"fusion: bad tabular sizes n_numeric={n_numeric}, "
                          f"cardinalities={cards} (each >= 2, index 0 = unknown)")
    for name, value in (("emb_dim", emb_dim), ("mlp_hidden", mlp_hidden),
                        ("num_classes", num_classes)):
        if value < 1:
            raise ConfigError(f"fusion: {name} must be >= 1, got {value}")
    if size_classes < 0 or size_classes == 1:
        raise ConfigError(f"--size-classes: 0 (no size task) or >= 2, got {size_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"fusion: dropout must be in [0, 1), got {dropout}")


# ----------------------------------------------------------------------------- metadata


def fusion_config(model: FusionModel) -> dict:
    """The JSON stored as ``meta.inputs.fusion`` (key ``fusion`` of slidewatch.json)."""
    return {"mode": model.mode, "n_numeric": model.n_numeric,
            "cat_cardinalities": list(model.cat_cardinalities), "emb_dim": model.emb_dim,
            "mlp_hidden": model.mlp_hidden, "fusion_hidden": model.fusion_hidden,
            "num_classes": model.num_classes, "size_classes": model.size_classes,
            "dropout": model.dropout}


def build_fusion(config: Mapping, backbone: nn.Module | None) -> FusionModel:
    """Rebuild a :class:`FusionModel` from :func:`fusion_config` and a fresh backbone."""
    keys = ("mode", "n_numeric", "cat_cardinalities", "emb_dim", "mlp_hidden", "fusion_hidden",
            "num_classes", "size_classes", "dropout")
    try:
        return FusionModel(backbone, **{k: config[k] for k in keys if k in config})
    except TypeError as exc:
        raise ModelError(f"fusion metadata: cannot rebuild the model ({exc})") from None


class ImageView(nn.Module):
    """``image -> logits`` for one bound tabular row (repeated over the batch), for Grad-CAM."""

    def __init__(self, model: FusionModel, numeric: torch.Tensor | None,
                 categorical: torch.Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.numeric, self.categorical = numeric, categorical

    @property
    def feature_layer(self) -> str | None:
        inner = self.model.feature_layer
        return None if inner is None else "model." + inner

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        n = image.shape[0]
        num = None if self.numeric is None else self.numeric.reshape(1, -1).expand(n, -1)
        cat = None if self.categorical is None else self.categorical.reshape(1, -1).expand(n, -1)
        return self.model(image, num, cat)["logits"]
