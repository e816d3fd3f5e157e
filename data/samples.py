"""Ground-truth samples of a shape given as an inside test and a mesh: area-uniform surface
points and occupancy points (uniform in the padded cube, then near the surface), as the format's
``eval/`` group stores them. Shared by the synthetic world (exact SDFs) and visual hulls."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from iss3d.data.records import OccupancySamples

#: Half side of the unit cube padded by 0.1 (DVR/ONet): where occupancy samples lie.
PADDED_HALF = 0.55
#: Standard deviation of the jitter of near-surface occupancy points.
NEAR_SURFACE_SIGMA = 0.02


def padded_grid(n: int) -> tuple[np.ndarray, float]:
    """(n^3, 3) float32 points of an n x n x n lattice spanning the padded cube (ij order: the
    first axis is x) and its spacing."""
    axis = np.linspace(-PADDED_HALF, PADDED_HALF, n, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    return grid, float(axis[1] - axis[0])


def area_samples(
    verts: np.ndarray, faces: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points uniform by area on a triangle mesh.

    Args:
        verts: (V, 3) vertices; faces: (F, 3) vertex indices.
    Returns:
        points (count, 3) float64 and the face (count,) each lies on.
    """
    tri = verts[faces]  # (F, 3, 3)
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    face = rng.choice(len(faces), size=count, p=areas / areas.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    e1, e2 = tri[face, 1] - tri[face, 0], tri[face, 2] - tri[face, 0]
    return tri[face, 0] + u[:, None] * e1 + v[:, None] * e2, face


def occupancy_samples(
    inside: Callable[[np.ndarray], np.ndarray],
    n_uniform: int,
    n_near: int,
    surface_points: np.ndarray,
    rng: np.random.Generator,
) -> OccupancySamples:
    """``n_uniform`` points uniform in the padded cube, then ``n_near`` jittered surface points.

    Args:
        inside: (P, 3) float32 points -> (P,) bool, True inside the shape.
        surface_points: (S, 3) points on the surface, the centres of the near samples.
    Points are rounded to float16 (the storage type) before the inside test.
    """
    uniform = rng.uniform(-PADDED_HALF, PADDED_HALF, size=(n_uniform, 3))
    base = surface_points[rng.integers(0, len(surface_points), size=n_near)]
    near = np.clip(
        base + rng.normal(0.0, NEAR_SURFACE_SIGMA, size=base.shape), -PADDED_HALF, PADDED_HALF
    )
    points = np.concatenate([uniform, near]).astype(np.float16)
    flags = np.asarray(inside(points.astype(np.float32)), dtype=bool)
    return OccupancySamples(points=points, inside=flags, n_uniform=n_uniform)
