"""Occupancy Networks' 3D ground truth, as DVR's ShapeNet folders hold it, read into the
format's ``eval/`` samples.

Files (optional, in a model folder next to ``cameras.npz``)::

    points.npz       points (N, 3) float16/float32, uniform in the padded unit cube;
                     occupancies: N inside flags packed by np.packbits, or (N,) bool
    pointcloud.npz   points (M, 3) and normals (M, 3): samples of the mesh surface

(``loc`` and ``scale``, ONet's normalisation of the raw mesh, are not needed: the points are
already in the frame the views' cameras use.) Points are mapped to the object frame with the
inverse ``scale_mat``; a random subset of ``occ_points`` occupancy points (all uniform, so all
count for IoU) and ``surface_points`` surface points is kept per object, drawn from a generator
seeded with (seed, object row). The surface has no colours in ONet's files: each point takes the
median colour of the views that face it and see it (as ``iss3d data carve`` colours a hull).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from iss3d.core.errors import UserError
from iss3d.data.carve import CarveConfig, Hull
from iss3d.data.records import ObjectRecord, OccupancySamples, SurfaceSamples
from iss3d.data.samples import PADDED_HALF

OCCUPANCY_FILE = "points.npz"
SURFACE_FILE = "pointcloud.npz"


@dataclass
class OnetConfig:
    """How many of ONet's samples an object keeps (the format stores one count per file).

    occ_points: occupancy points per object (0: none); surface_points: surface points (0: none);
    seed: seed of the random subsets (with the object's row).
    """

    occ_points: int = 16384
    surface_points: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        for name, flag in (("occ_points", "--occ-points"), ("surface_points", "--surface-points")):
            if getattr(self, name) < 0:
                raise UserError(f"{flag} must be >= 0, got {getattr(self, name)}")


def _array(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    if key not in arrays:
        raise UserError(f"{path}: missing key {key!r}")
    return arrays[key]


def _points(arrays: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    """(N, 3) float64 finite points of ``key``."""
    points = _array(arrays, key, path)
    if points.ndim != 2 or points.shape[1] != 3 or not np.issubdtype(points.dtype, np.number):
        raise UserError(f"{path}: {key} has shape {points.shape}, expected (N, 3) numbers")
    points = points.astype(np.float64)
    if not np.isfinite(points).all():
        raise UserError(f"{path}: {key} holds values that are not finite")
    return points


def _subset(n: int, count: int, path: Path, flag: str, rng: np.random.Generator) -> np.ndarray:
    if n < count:
        raise UserError(f"{path}: holds {n} points, fewer than {flag} {count}")
    return np.sort(rng.choice(n, size=count, replace=False))


def _to_object(points: np.ndarray, scale_mat: np.ndarray) -> np.ndarray:
    """(N, 3) world points -> the object frame (``inv(scale_mat)``)."""
    inverse = np.linalg.inv(scale_mat)
    return points @ inverse[:3, :3].T + inverse[:3, 3]


def read_occupancy(
    arrays: dict[str, np.ndarray],
    path: Path,
    count: int,
    scale_mat: np.ndarray,
    rng: np.random.Generator,
) -> OccupancySamples:
    """``count`` of ``points.npz``'s points and inside flags, object frame, all uniform."""
    points = _points(arrays, "points", path)
    flags = _array(arrays, "occupancies", path)
    n = len(points)
    if flags.dtype == np.uint8 and flags.shape == ((n + 7) // 8,):
        flags = np.unpackbits(flags)[:n].astype(bool)
    elif flags.shape == (n,) and flags.dtype in (np.bool_, np.uint8):
        flags = flags.astype(bool)
    else:
        raise UserError(
            f"{path}: occupancies has shape {flags.shape} ({flags.dtype}); expected {n} flags, "
            "packed by np.packbits or as bool"
        )
    keep = _subset(n, count, path, "--occ-points", rng)
    local = _to_object(points[keep], scale_mat).astype(np.float16)
    return OccupancySamples(points=local, inside=flags[keep], n_uniform=count)


def read_surface(
    arrays: dict[str, np.ndarray],
    path: Path,
    count: int,
    rec: ObjectRecord,
    pixel_convention: str,
    rng: np.random.Generator,
) -> SurfaceSamples:
    """``count`` of ``pointcloud.npz``'s points with unit outward normals, object frame, and
    colours from ``rec``'s views."""
    points = _points(arrays, "points", path)
    normals = _points(arrays, "normals", path)
    if normals.shape != points.shape:
        raise UserError(f"{path}: normals has shape {normals.shape}, points {points.shape}")
    keep = _subset(len(points), count, path, "--surface-points", rng)
    local = _to_object(points[keep], rec.scale_mat).astype(np.float32)
    # normals map by the inverse transpose of the world -> object map: scale_mat's transpose
    turned = normals[keep] @ np.asarray(rec.scale_mat)[:3, :3]
    length = np.linalg.norm(turned, axis=-1, keepdims=True)
    if (length < 1e-12).any():
        raise UserError(f"{path}: normals holds zero vectors")
    turned = (turned / length).astype(np.float32)
    spacing = 2 * PADDED_HALF / (CarveConfig.grid - 1)  # carve's default lattice spacing
    colours = Hull(rec, pixel_convention).colours(local, turned, spacing)
    return SurfaceSamples(points=local, normals=turned, colors=colours)
