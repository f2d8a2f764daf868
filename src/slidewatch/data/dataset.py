"""A torch Dataset over ``Sample`` lists: ``{"image": float32 CxHxW, "label": int, "index": i}``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from slidewatch.data.folders import Sample
from slidewatch.data.readers import DEFAULT_MAX_PIXELS, read_image, scale_to_unit


class TileDataset(Dataset):
    """Images of ``samples`` scaled to [0, 1] by ``scale_to_unit`` (normalise in ``transform``).

    ``cache`` keeps each image's native-dtype array in memory after its first read (each
    DataLoader worker holds its own copy). ``transform`` is called on the CxHxW tensor.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        scale: float | None = None,
    ) -> None:
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable or None, got {type(transform).__name__}")
        if scale is not None and not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.samples = list(samples)
        self.transform = transform
        self.cache = cache
        self.max_pixels = max_pixels
        self.scale = scale
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        """Labels in sample order (for samplers and class weights)."""
        return [s.label for s in self.samples]

    def _array(self, i: int) -> np.ndarray:
        arr = self._cache.get(i)
        if arr is None:
            arr = read_image(self.samples[i].path, max_pixels=self.max_pixels)
            if self.cache:
                self._cache[i] = arr
        return arr

    def preload(self) -> None:
        """Read (and so validate) every image now; with ``cache`` they stay in memory."""
        for i in range(len(self)):
            self._array(i)

    def unit_image(self, i: int) -> np.ndarray:
        """Image ``i`` as HxWxC float32 in unit scale, before any transform."""
        return scale_to_unit(self._array(i), self.scale)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        i = int(i) % len(self)
        unit = self.unit_image(i)
        image = torch.from_numpy(unit.transpose(2, 0, 1).copy())  # never a view of the cache
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": int(self.samples[i].label), "index": i}


def class_counts(samples: Sequence[Sample], n_classes: int) -> list[int]:
    """Number of samples of each label ``0 .. n_classes-1``."""
    counts = [0] * n_classes
    for s in samples:
        if not 0 <= s.label < n_classes:
            raise ValueError(f"{s.path}: label {s.label} outside 0..{n_classes - 1}")
        counts[s.label] += 1
    return counts
