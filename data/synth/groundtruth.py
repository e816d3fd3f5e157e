"""Ground truth of synthetic objects: occupancy samples and area-uniform surface samples."""

from __future__ import annotations

import numpy as np
import torch
from skimage.measure import marching_cubes

from iss3d.data.records import OccupancySamples, SurfaceSamples
from iss3d.data.samples import PADDED_HALF, area_samples, padded_grid
from iss3d.data.samples import occupancy_samples as samples_inside
from iss3d.data.synth.render import sdf_normals
from iss3d.data.synth.world import CompositeSDF

MESH_GRID = 64


def surface_samples(field: CompositeSDF, count: int, rng: np.random.Generator) -> SurfaceSamples:
    """``count`` points uniform by area on the exact surface, with normals and albedo.

    A marching-cubes mesh of the SDF gives the area weights; each sampled point is then
    projected onto the exact zero level set with Newton steps along the SDF gradient.
    """
    grid, spacing = padded_grid(MESH_GRID)
    values = field(torch.from_numpy(grid)).reshape((MESH_GRID,) * 3).numpy()
    verts, faces, _, _ = marching_cubes(values, level=0.0, spacing=(spacing,) * 3)
    pts, _ = area_samples(verts - PADDED_HALF, faces, count, rng)
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
    """``n_uniform`` points uniform in the padded cube, then ``n_near`` jittered surface points
    (:func:`iss3d.data.samples.occupancy_samples` with the SDF's inside test)."""

    def inside(points: np.ndarray) -> np.ndarray:
        return field(torch.from_numpy(points)).numpy() < 0

    return samples_inside(inside, n_uniform, n_near, surface.points, rng)
