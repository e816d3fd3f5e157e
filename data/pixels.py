"""Sample pixels of one view for ray-based training (DVR samples 1024 pixels per image).

Coordinates come out in the file's pixel convention, through
:func:`iss3d.data.cameras.pixel_coords`, so a sampled ``xy`` fed to
:func:`iss3d.data.cameras.rays` is the ray through that pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from iss3d.data.cameras import pixel_coords


@dataclass
class PixelSamples:
    """Pixels sampled from one view.

    index: (n,) int64 flat pixel index ``row * W + col``.
    xy: (n, 2) float32 normalised image coordinates (x = column, y = row) in [-1, 1], in the
        file's pixel convention (data/cameras.py).
    rgb: (n, 3) float32 in [0, 1].
    mask: (n,) bool, True on the object.
    depth: (n,) float32 camera-space z, inf off the object; None when the view has no depth.
    """

    index: np.ndarray
    xy: np.ndarray
    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray | None


@lru_cache(maxsize=16)
def _coords(height: int, width: int, convention: str) -> np.ndarray:
    """(H * W, 2) float32 read-only table of every pixel's normalised coordinates."""
    table = pixel_coords(height, width, convention).numpy()
    table.setflags(write=False)
    return table


def sample_pixel_indices(
    mask: np.ndarray,
    n: int,
    rng: np.random.Generator,
    inside_fraction: float | None = 0.5,
) -> np.ndarray:
    """Choose ``n`` flat pixel indices of an image, a set fraction of them on the object.

    Args:
        mask: (H, W) bool (or 0/1 integers), True on the object.
        n: how many pixels to return.
        rng: the source of randomness (the only one used).
        inside_fraction: the share of the ``n`` pixels taken inside the mask, rounded to the
            nearest count; None samples uniformly over the whole image.
    Returns:
        (n,) int64 flat indices ``row * W + col``, in random order. Distinct whenever the image
        has at least ``n`` pixels: if one side of the mask has too few pixels, the other side
        makes up the difference. Only an image smaller than ``n`` pixels is sampled with
        replacement (then each side keeps its share if it has any pixels at all).
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    flat = np.asarray(mask).reshape(-1).astype(bool, copy=False)
    total = flat.size
    if total == 0:
        raise ValueError("cannot sample pixels of an empty image")
    if inside_fraction is None:
        return rng.choice(total, size=n, replace=total < n).astype(np.int64)
    if not 0.0 <= inside_fraction <= 1.0:
        raise ValueError(f"inside_fraction must be in [0, 1] or None, got {inside_fraction}")
    inside = np.flatnonzero(flat)
    outside = np.flatnonzero(~flat)
    want_in = round(n * inside_fraction)
    if total >= n:
        n_in = min(want_in, len(inside))
        n_out = min(n - n_in, len(outside))
        n_in = n - n_out  # <= len(inside): total >= n
        picked = [_choose(rng, inside, n_in, False), _choose(rng, outside, n_out, False)]
    else:
        if len(inside) == 0:
            want_in = 0
        elif len(outside) == 0:
            want_in = n
        picked = [_choose(rng, inside, want_in, True), _choose(rng, outside, n - want_in, True)]
    out = np.concatenate(picked)
    rng.shuffle(out)
    return out


def _choose(rng: np.random.Generator, pool: np.ndarray, k: int, replace: bool) -> np.ndarray:
    if k == 0:
        return np.empty(0, np.int64)
    return pool[rng.choice(len(pool), size=k, replace=replace)].astype(np.int64, copy=False)


def sample_pixels(
    rgb: np.ndarray,
    mask: np.ndarray,
    depth: np.ndarray | None,
    n: int,
    rng: np.random.Generator,
    inside_fraction: float | None = 0.5,
    convention: str = "center",
) -> PixelSamples:
    """Sample ``n`` pixels of one view with their colour, mask and depth.

    Args:
        rgb: (H, W, 3) uint8 (scaled by 1/255) or float in [0, 1].
        mask: (H, W) bool, True on the object.
        depth: (H, W) float camera-space z, inf off the object; or None.
        n: number of pixels; rng: numpy Generator (the only randomness used).
        inside_fraction: share of pixels on the object, None for uniform over the image
            (see :func:`sample_pixel_indices` for the fallbacks).
        convention: the file's pixel convention, ``"center"`` or ``"dvr"``.
    Returns:
        :class:`PixelSamples` with xy (n, 2), rgb (n, 3), mask (n,), depth (n,) or None.
    """
    height, width = mask.shape
    index = sample_pixel_indices(mask, n, rng, inside_fraction)
    colours = rgb.reshape(-1, rgb.shape[-1])[index]
    if colours.dtype == np.uint8:
        colours = colours.astype(np.float32) / np.float32(255.0)
    else:
        colours = colours.astype(np.float32, copy=False)
    return PixelSamples(
        index=index,
        xy=_coords(height, width, convention)[index],
        rgb=colours,
        mask=np.asarray(mask).reshape(-1)[index].astype(bool, copy=False),
        depth=None if depth is None else depth.reshape(-1)[index].astype(np.float32, copy=False),
    )
