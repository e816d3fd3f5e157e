"""Ground truth of synthetic objects: occupancy samples and area-uniform surface samples."""

from __future__ import annotations

import numpy as np
import torch
from skimage.measure import marching_cubes

from iss3d.data.records import OccupancySamples, SurfaceSamples
from iss3d.data.synth.render import sdf_normals
from iss3d.data.synth.world import CompositeSDF

PADDED_HALF = 0.55  # the unit cube padded by 0.1 (DVR/ONet), as a half side
MESH_GRID = 64
NEAR_SURFACE_SIGMA = 0.02


def surface_samples(field: CompositeSDF, count: int, rng: np.random.Generator) -> SurfaceSamples:
    """``count`` points uniform by area on the exact surface, with normals and albedo.

    A marching-cubes mesh of the SDF gives the area weights; each sampled point is then
    projected onto the exact zero level set with Newton steps along the SDF gradient.
    """
    axis = np.linspace(-PADDED_HALF, PADDED_HALF, MESH_GRID, dtype=np.float32)
    grid = torch.from_numpy(
        np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    )
    values = field(grid).reshape(MESH_GRID, MESH_GRID, MESH_GRID).numpy()
    spacing = float(axis[1] - axis[0])
    verts, faces, _, _ = marching_cubes(values, level=0.0, spacing=(spacing,) * 3)
    verts = verts - PADDED_HALF
    tri = verts[faces]  # (F, 3, 3)
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=-1)
    face = rng.choice(len(faces), size=count, p=areas / areas.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    pts = (
        tri[face, 0]
        + u[:, None] * (tri[face, 1] - tri[face, 0])
        + v[:, None] * (tri[face, 2] - tri[face, 0])
    )
    points = torch.from_numpy(pts.astype(np.float32))
    for _ in range(4):
        normals = sdf_normals(field, points, 1e-4)
        points = points - field(points).unsqueeze(-1) * normals
    normals = sdf_normals(field, points, 1e-4)
    colors = (field.color(points) * 255.0 + 0.5).to(torch.uint8)
    return SurfaceSamples(points=points.numpy(), normals=normals.numpy(), colors=colors.numpy())


def occupancy_samples(
    field: CompositeSDF,
    n_uniform: int,
    n_near: int,
    surface: SurfaceSamples,
    rng: np.random.Generator,
) -> OccupancySamples:
    """``n_uniform`` points uniform in the padded cube, then ``n_near`` jittered surface points.

    Points are rounded to float16 (the storage type) before the inside test.
    """
    uniform = rng.uniform(-PADDED_HALF, PADDED_HALF, size=(n_uniform, 3))
    base = surface.points[rng.integers(0, len(surface.points), size=n_near)]
    near = np.clip(
        base + rng.normal(0.0, NEAR_SURFACE_SIGMA, size=base.shape), -PADDED_HALF, PADDED_HALF
    )
    points = np.concatenate([uniform, near]).astype(np.float16)
    inside = field(torch.from_numpy(points.astype(np.float32))).numpy() < 0
    return OccupancySamples(points=points, inside=inside, n_uniform=n_uniform)
