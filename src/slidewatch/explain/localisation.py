"""How well a class-activation map (CAM) agrees with a landslide mask, and where it sits.

Pure numpy functions on an HxW CAM (non-negative values, usually scaled to [0, 1]) and a
boolean HxW mask of the same shape. "Energy" is the sum of CAM values. Scores that are
undefined (a map with no energy, a union of nothing) come back as ``nan`` rather than a
misleading 0 or 1.

The border figures answer a question the study raised: does the model look at the scar, or
at the tile's edges and corners (where tiling and resampling artefacts live)? Compare them with
:func:`uniform_reference`, the figures of a map that looks everywhere equally.
"""

from __future__ import annotations

import numpy as np

CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


def _check(cam: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"cam: expected a non-empty HxW array, got shape {cam.shape}")
    if mask is None:
        return cam, np.zeros(cam.shape, bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != cam.shape:
        raise ValueError(f"mask: shape {mask.shape} differs from the CAM's {cam.shape}")
    return cam, mask


def energy_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    """Share of the CAM's energy (sum of values) that falls inside ``mask``, in [0, 1].

    1 means all activation is on the landslide; a uniform map scores the mask's area share.
    ``nan`` when the map has no energy at all.
    """
    cam, mask = _check(cam, mask)
    total = cam.sum()
    return float(cam[mask].sum() / total) if total > 0 else float("nan")


def pointing_game(cam: np.ndarray, mask: np.ndarray) -> bool:
    """Pointing game hit: is (one of) the CAM's maximum pixels inside ``mask``?

    Ties count as a hit when any maximal pixel lies in the mask (a flat map hits any non-empty
    mask, so read it together with :func:`energy_inside`). An empty mask is never hit.
    """
    cam, mask = _check(cam, mask)
    return bool(mask[cam == cam.max()].any())


def cam_iou(cam: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """Intersection over union of the region ``cam >= threshold`` and ``mask``.

    Use it on maps scaled to [0, 1] (as :func:`slidewatch.explain.compute_cam` returns).
    ``nan`` when both regions are empty.
    """
    cam, mask = _check(cam, mask)
    hot = cam >= threshold
    union = np.logical_or(hot, mask).sum()
    return float(np.logical_and(hot, mask).sum() / union) if union else float("nan")


def _band_pixels(size: int, band: float) -> int:
    return int(round(band * size))


def border_bias(cam: np.ndarray, band: float = 0.1) -> dict[str, float]:
    """Shares of the CAM's energy in the outer border and in each corner.

    ``border``: the frame of width ``round(band * H)`` rows at top and bottom and
    ``round(band * W)`` columns at left and right. ``top_left`` ... ``bottom_right``: the four
    corner rectangles of those sides. Values in [0, 1]; ``nan`` for a map without energy.
    """
    if not 0.0 < band < 0.5:
        raise ValueError(f"band: must be in (0, 0.5), got {band}")
    cam, _ = _check(cam)
    h, w = cam.shape
    bh, bw = _band_pixels(h, band), _band_pixels(w, band)
    total = cam.sum()
    if total <= 0:
        return {"border": float("nan"), **{c: float("nan") for c in CORNERS}}
    inner = cam[bh:h - bh, bw:w - bw].sum() if h > 2 * bh and w > 2 * bw else 0.0
    corners = {
        "top_left": cam[:bh, :bw], "top_right": cam[:bh, w - bw:],
        "bottom_left": cam[h - bh:, :bw], "bottom_right": cam[h - bh:, w - bw:],
    }
    out = {"border": float((total - inner) / total)}
    out.update({name: float(part.sum() / total) if bh and bw else 0.0
                for name, part in corners.items()})
    return out


def uniform_reference(shape: tuple[int, int], band: float = 0.1) -> dict[str, float]:
    """:func:`border_bias` of a uniform map of ``shape``: the area shares, the figures a map
    without any positional preference would give."""
    return border_bias(np.ones(shape), band)


def localisation_scores(cam: np.ndarray, mask: np.ndarray | None, band: float = 0.1,
                        threshold: float = 0.5) -> dict[str, float]:
    """Border figures always; energy, pointing and IoU only when ``mask`` has landslide
    pixels (on a landslide-free tile they would measure nothing)."""
    scores: dict[str, float] = {f"{k}_share": v for k, v in border_bias(cam, band).items()}
    if mask is not None and np.asarray(mask).any():
        scores["energy_inside"] = energy_inside(cam, mask)
        scores["pointing_game"] = float(pointing_game(cam, mask))
        scores["iou"] = cam_iou(cam, mask, threshold)
    return scores


def summarise(rows: list[dict], keys: list[str], group: str = "outcome") -> dict:
    """Mean, std and count (nan ignored) of ``keys`` per value of ``rows[i][group]`` and
    over all rows (``"all"``)."""
    groups: dict[str, list[dict]] = {"all": rows}
    for row in rows:
        if row.get(group):
            groups.setdefault(str(row[group]), []).append(row)
    out: dict[str, dict] = {}
    for name, members in groups.items():
        stats = {}
        for key in keys:
            vals = np.array([float(r[key]) for r in members
                             if r.get(key) not in (None, "")], dtype=np.float64)
            vals = vals[~np.isnan(vals)]
            stats[key] = {"mean": float(vals.mean()) if vals.size else None,
                          "std": float(vals.std()) if vals.size else None,
                          "n": int(vals.size)}
        out[name] = stats
    return out
