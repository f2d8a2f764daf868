"""Images with landslide masks, for segmentation: finding the pairs, sampling crops, and
augmentation that moves image and mask together.

Two layouts are read:

* scene folders: ``<scene>/images/<stem>.*`` with ``<scene>/masks/<stem>.*`` (every image needs
  its mask); crops are sampled from each scene on the fly (:class:`SceneCrops`), a configurable
  share of them centred on a landslide pixel;
* class folders with masks (the Bijie dataset's layout): ``<root>/<class>/<stem>.*`` with
  ``<root>/masks/<stem>.*`` for every image of the positive (first) class; images of the other
  classes are landslide-free (all-zero mask). Images are padded (smaller) or resized (larger)
  to the input size (:class:`MaskedImages`).

A mask is single-band or RGB, 0 / 255 (or 0 / 1): :func:`read_binary_mask` refuses other
values, naming what it found, and masks of another size than their image. Items are
``{"image": float32 C x H x W in unit scale, "mask": float32 1 x H x W (0 or 1), "index": i}``;
pixels follow the one nodata rule (:func:`slidewatch.data.dataset.unit_pixels`). With
``standardize`` (a model's ``image`` rule, :mod:`slidewatch.data.standardize`) every dataset
standardises the whole image or scene with its own statistics before crops, windows or
fitting are taken, so a crop never uses statistics of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from slidewatch.config.train import AugmentConfig
from slidewatch.data.dataset import declared_valid, unit_and_valid
from slidewatch.data.folders import Sample
from slidewatch.data.readers import IMAGE_SUFFIXES, probe, read_image
from slidewatch.data.transforms import (
    change_resolution,
    color_jitter,
    draw_resolution,
    radiometry,
)
from slidewatch.errors import DataError

MASKS_DIR = "masks"
IMAGES_DIR = "images"


@dataclass(frozen=True)
class MaskedSample:
    """One image and its mask (None: landslide-free, an all-zero mask)."""

    image: Path
    mask: Path | None
    region: str
    group: str  # the source image, for splits by image


def as_split_samples(samples: list[MaskedSample]) -> list[Sample]:
    """The samples as the splitter sees them: label 0 (landslide) with a mask, else 1; keyed
    in split files as ``<dataset or scene folder>/<class or images>/<file>``, as a
    classifier's class-folder samples are."""
    return [Sample(path=s.image, label=0 if s.mask is not None else 1, group=s.group,
                   region=s.region, root=s.image.parent.parent) for s in samples]


def _files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def scene_samples(scene: str | Path) -> list[MaskedSample]:
    """Images of a scene folder with their masks; every image must have one."""
    scene = Path(scene)
    images, masks = _files(scene / IMAGES_DIR), _files(scene / MASKS_DIR)
    if not images:
        raise DataError(f"{scene}: no images in {IMAGES_DIR}/")
    missing = [s for s in images if s not in masks]
    if missing:
        raise DataError(f"{scene / IMAGES_DIR / images[missing[0]].name}: no mask "
                        f"{MASKS_DIR}/{missing[0]}.* ({len(missing)} image(s) without one)")
    region = scene.resolve().name
    return [MaskedSample(images[s], masks[s], region, f"{region}/{s}") for s in images]


def class_folder_samples(root: str | Path, classes: Sequence[str],
                         region: str | None = None) -> list[MaskedSample]:
    """Images of a class-folder dataset with ``masks/``: the positive class (``classes[0]``)
    needs a mask per image; the other classes are landslide-free."""
    root = Path(root)
    masks = _files(root / MASKS_DIR)
    region = region or root.resolve().name
    out = []
    for k, name in enumerate(classes):
        for stem, path in _files(root / name).items():
            if k == 0 and stem not in masks:
                raise DataError(f"{path}: a {name} image without a mask ({MASKS_DIR}/{stem}.*); "
                                "segmentation needs one per landslide image")
            out.append(MaskedSample(path, masks.get(stem) if k == 0 else None, region,
                                    f"{region}/{stem}"))
    if not out:
        raise DataError(f"{root}: no images in {', '.join(classes)}/")
    return out


def masked_samples(root: str | Path, classes: Sequence[str]) -> list[MaskedSample]:
    """The samples of ``root``: a scene folder, a folder of scene folders, or class folders
    with ``masks/``. A folder without any mask is refused: segmentation learns from masks."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found")
    if (root / IMAGES_DIR).is_dir():
        return scene_samples(root)
    if any((root / c).is_dir() for c in classes):
        if not (root / MASKS_DIR).is_dir():
            raise DataError(f"{root}: class folders without {MASKS_DIR}/; --task segment needs "
                            "landslide masks (masks/<stem>.png for each landslide image)")
        return class_folder_samples(root, classes)
    scenes = sorted(p for p in root.iterdir() if (p / IMAGES_DIR).is_dir())
    if not scenes:
        raise DataError(f"{root}: no masks to learn from (expected scene folders with images/ "
                        f"and masks/, or class folders with masks/)")
    return [s for scene in scenes for s in scene_samples(scene)]


class TileMasks:
    """The landslide mask of each image of a classification dataset, for the training-only mask
    loss (``mask_loss``): a landslide image (``positive`` label) has the mask
    ``<root>/masks/<stem>.*`` of its dataset root (the layout of class folders with masks, and
    of tiles cut from scene folders) or none (unknown: not learnt from); any other image is
    landslide-free, an all-zero mask. Masks are read as :func:`read_binary_mask` reads them
    (0/255 or 0/1, the image's size), when asked for."""

    def __init__(self, samples: Sequence[Sample], positive: int = 0):
        self.samples = list(samples)
        self.positive = positive
        self._found: dict[Path, dict[str, Path]] = {}

    def path(self, i: int) -> Path | None:
        """The mask file of landslide sample ``i``, or None."""
        sample = self.samples[i]
        root = sample.root if sample.root is not None else sample.path.parent.parent
        if root not in self._found:
            self._found[root] = _files(root / MASKS_DIR)
        return self._found[root].get(sample.path.stem)

    def known(self) -> tuple[int, int]:
        """``(landslide images with a mask, landslide images)``: landslide-free images always
        have theirs (all zero)."""
        found = [self.path(i) is not None for i, s in enumerate(self.samples)
                 if s.label == self.positive]
        return sum(found), len(found)

    def __call__(self, i: int, shape: tuple[int, int]) -> np.ndarray | None:
        if self.samples[i].label != self.positive:
            return np.zeros(shape, np.float32)
        path = self.path(i)
        return None if path is None else read_binary_mask(path, shape).astype(np.float32)


def read_binary_mask(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask as bool H x W: 255 (or 1) is landslide, 0 is not; any other value is refused
    with the values found. ``shape``: the image's (H, W), which the mask must match."""
    arr = read_image(path)
    if arr.ndim == 3 and arr.shape[2] > 1 and not (arr == arr[:, :, :1]).all():
        raise DataError(f"{path}: mask bands differ; use a single-band 0/255 mask")
    arr = arr[:, :, 0]
    values = np.unique(arr)
    if not (set(values.tolist()) <= {0, 255} or set(values.tolist()) <= {0, 1}):
        shown = ", ".join(str(v) for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise DataError(f"{path}: mask values must be 0 and 255 (or 0 and 1), found {shown}")
    mask = arr > 0
    if shape is not None and mask.shape != tuple(shape):
        raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} pixels, its image "
                        f"{shape[1]}x{shape[0]}")
    return mask


def _load(sample: MaskedSample, scale: float | None,
          standardize: Callable | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit-scale H x W x C image and bool H x W mask of ``sample``; ``standardize`` (the
    model's :class:`~slidewatch.data.standardize.Standardizer`) with the statistics of the
    whole image, before any crop or window is taken."""
    image, ok = unit_and_valid(read_image(sample.image), scale, declared_valid(sample.image))
    if standardize is not None:
        image = standardize(image, ok)
    if sample.mask is None:
        return image, np.zeros(image.shape[:2], bool)
    return image, read_binary_mask(sample.mask, image.shape[:2])


def _tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            torch.from_numpy(mask[None].astype(np.float32)))


def fit_to_size(image: torch.Tensor, mask: torch.Tensor,
                size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad (bottom/right, zeros) an image smaller than ``size`` or resize a larger one to
    ``size`` x ``size`` (image bilinear, mask nearest); the aspect ratio is kept."""
    h, w = image.shape[-2:]
    if max(h, w) > size:
        f = size / max(h, w)
        nh, nw = max(1, round(h * f)), max(1, round(w * f))
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        mask = F.interpolate(mask[None], size=(nh, nw), mode="nearest")[0]
        h, w = nh, nw
    pad = (0, size - w, 0, size - h)
    return F.pad(image, pad), F.pad(mask, pad)


class JointTransform:
    """Augmentation for segmentation: every geometric change (flips, 90-degree rotations,
    resolution change, translation with reflected borders) is applied to image and mask
    together; brightness, contrast, saturation and the sensor changes of
    :func:`~slidewatch.data.transforms.radiometry` to the image only. Randomness from torch's
    global generator."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        cfg = self.cfg
        if not cfg.enabled:
            return image, mask
        gen = torch.default_generator
        both = torch.cat([image, mask])
        if cfg.hflip and torch.rand((), generator=gen) < 0.5:
            both = both.flip(-1)
        if cfg.vflip and torch.rand((), generator=gen) < 0.5:
            both = both.flip(-2)
        if cfg.rotate90:
            both = torch.rot90(both, int(torch.randint(0, 4, (), generator=gen)), dims=(-2, -1))
        c = image.shape[0]
        if cfg.resolution is not None:
            both = change_resolution(both, draw_resolution(cfg.resolution, gen), gen,
                                     binary_from=c)
        if cfg.translate > 0:
            h, w = both.shape[-2:]
            dy = round((2 * float(torch.rand((), generator=gen)) - 1) * cfg.translate * h)
            dx = round((2 * float(torch.rand((), generator=gen)) - 1) * cfg.translate * w)
            if dx or dy:
                pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
                mode = "reflect" if max(pad) < min(h, w) else "replicate"
                both = F.pad(both[None], pad, mode=mode)[0]
                top, left = max(-dy, 0), max(-dx, 0)
                both = both[:, top:top + h, left:left + w]
        return radiometry(color_jitter(both[:c], cfg, gen), cfg, gen), both[c:]


class MaskedImages(Dataset):
    """Whole images (class folders with masks, or scene images) fitted to ``size``. Items also
    carry ``valid`` (1 x H x W: 1 on the image, 0 on padding), moved with the mask."""

    def __init__(self, samples: Sequence[MaskedSample], size: int, *,
                 transform: JointTransform | None = None, scale: float | None = None,
                 cache: bool = True, standardize: Callable | None = None):
        self.samples, self.size, self.transform = list(samples), size, transform
        self.scale, self.cache, self.standardize = scale, cache, standardize
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def pair(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image and (mask, valid) as a 2-channel tensor, fitted to the size."""
        item = self._cache.get(i)
        if item is None:
            image, mask = _tensors(*_load(self.samples[i], self.scale, self.standardize))
            item = fit_to_size(image, torch.cat([mask, torch.ones_like(mask)]), self.size)
            if self.cache:
                self._cache[i] = item
        return item

    def __getitem__(self, i: int) -> dict:
        image, both = self.pair(i)
        if self.transform is not None:
            image, both = self.transform(image.clone(), both.clone())
        return {"image": image, "mask": both[:1], "valid": both[1:], "index": i}


def grid_starts(length: int, size: int) -> tuple[list[int], bool]:
    """Window starts covering ``length`` with windows of ``size``: the regular grid of the
    reference tiling (0, size, 2 size, ... while a whole window fits), then, when pixels are
    left over, one window flush with the end (the second value says so). One window at 0 when
    ``length`` <= ``size``."""
    if length <= size:
        return [0], False
    starts = list(range(0, length - size + 1, size))
    if starts[-1] + size < length:
        return starts + [length - size], True
    return starts, False


class SceneTiles(Dataset):
    """A fixed grid of ``size`` x ``size`` windows over each scene (validation and evaluation:
    the same pixels every epoch), covering every pixel. Windows of the regular grid are the
    tiles of the reference tiling (``slidewatch data tiles`` at stride = size); the windows
    flush with the right or bottom edge overlap them and are marked ``edge`` (their pixels
    count, their tile does not). Scenes smaller than ``size`` are padded (``valid`` 0)."""

    def __init__(self, samples: Sequence[MaskedSample], size: int, *,
                 scale: float | None = None, standardize: Callable | None = None):
        self.samples, self.size, self.scale = list(samples), size, scale
        self.standardize = standardize
        self.windows: list[tuple[int, int, int]] = []
        self.edge: list[bool] = []
        for k, s in enumerate(self.samples):
            info = probe(s.image)
            rows, extra_row = grid_starts(info.height, size)
            cols, extra_col = grid_starts(info.width, size)
            for a, r in enumerate(rows):
                for b, c in enumerate(cols):
                    self.windows.append((k, r, c))
                    self.edge.append((extra_row and a == len(rows) - 1)
                                     or (extra_col and b == len(cols) - 1))
        self._scene: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        k, r, c = self.windows[i]
        if self._scene is None or self._scene[0] != k:
            image, mask = _tensors(*_load(self.samples[k], self.scale, self.standardize))
            self._scene = (k, image, torch.cat([mask, torch.ones_like(mask)]))
        _, image, both = self._scene
        win = (slice(None), slice(r, r + self.size), slice(c, c + self.size))
        img, bth = fit_to_size(image[win], both[win], self.size)
        return {"image": img, "mask": bth[:1], "valid": bth[1:], "index": i}


class SceneCrops(Dataset):
    """``crops_per_image`` random ``size`` x ``size`` crops of each scene per epoch; a share
    ``positive_share`` of them centred on a random landslide pixel (when the scene has one)."""

    def __init__(self, samples: Sequence[MaskedSample], size: int, *, crops_per_image: int = 8,
                 positive_share: float = 0.5, transform: JointTransform | None = None,
                 scale: float | None = None, standardize: Callable | None = None):
        if not 0.0 <= positive_share <= 1.0:
            raise ValueError(f"positive_share must be in [0, 1], got {positive_share}")
        if crops_per_image < 1:
            raise ValueError(f"crops_per_image must be >= 1, got {crops_per_image}")
        self.samples, self.size = list(samples), size
        self.crops, self.share, self.transform = crops_per_image, positive_share, transform
        self.scale, self.standardize = scale, standardize
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples) * self.crops

    def scene(self, k: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        item = self._cache.get(k)
        if item is None:
            image, mask = _tensors(*_load(self.samples[k], self.scale, self.standardize))
            mask = torch.cat([mask, torch.ones_like(mask)])  # (mask, valid)
            if min(image.shape[-2:]) < self.size:
                image, mask = fit_to_size(image, mask, max(self.size, *image.shape[-2:]))
            item = (image, mask, np.argwhere(mask[0].numpy()))
            self._cache[k] = item
        return item

    def __getitem__(self, i: int) -> dict:
        k = i // self.crops
        image, mask, positives = self.scene(k)
        h, w = image.shape[-2:]
        gen = torch.default_generator
        centred = len(positives) and float(torch.rand((), generator=gen)) < self.share
        if centred:
            r, c = positives[int(torch.randint(0, len(positives), (), generator=gen))]
            top = int(min(max(r - self.size // 2, 0), h - self.size))
            left = int(min(max(c - self.size // 2, 0), w - self.size))
        else:
            top = int(torch.randint(0, h - self.size + 1, (), generator=gen))
            left = int(torch.randint(0, w - self.size + 1, (), generator=gen))
        crop = (slice(None), slice(top, top + self.size), slice(left, left + self.size))
        img, msk = image[crop].clone(), mask[crop].clone()
        if self.transform is not None:
            img, msk = self.transform(img, msk)
        return {"image": img, "mask": msk[:1], "valid": msk[1:], "index": i}


def landslide_fraction(samples: Sequence[MaskedSample]) -> float:
    """Share of landslide pixels over ``samples`` (for positive weighting of the loss)."""
    pos = tot = 0
    for s in samples:
        if s.mask is None:
            tot += int(math.prod(read_image(s.image).shape[:2]))
            continue
        m = read_binary_mask(s.mask)
        pos, tot = pos + int(m.sum()), tot + m.size
    return pos / tot if tot else 0.0
