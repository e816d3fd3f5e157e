"""Mesh extraction: coarse-to-fine grid against the dense one, geometry, orientation, colours."""

import dataclasses
import math

import numpy as np
import pytest
import torch
import trimesh

from iss3d.models.mesh import MeshConfig, extract_mesh, occupancy_grid
from tests.models.test_renderer import BlobField, SphereField


def test_coarse_to_fine_grid_matches_dense_near_the_surface():
    field = BlobField().float()
    c = torch.tensor([[0.3, -0.2, 0.5]])
    fine = occupancy_grid(field, c, MeshConfig(resolution0=16, upsampling_steps=2))
    dense = occupancy_grid(field, c, MeshConfig(resolution0=64, upsampling_steps=0))
    (fine, fine_evals), (dense, dense_evals) = ((g.values, g.evaluations) for g in (fine, dense))
    assert fine.shape == dense.shape == (65, 65, 65)
    assert fine_evals < 0.5 * dense_evals
    # Identical signs everywhere, identical values wherever the dense grid has a crossing nearby.
    assert ((fine > 0) == (dense > 0)).float().mean() == 1.0
    near = torch.nn.functional.max_pool3d((dense[None, None] > 0).float(), 3, 1, 1)[0, 0]
    near = near != -torch.nn.functional.max_pool3d(-(dense[None, None] > 0).float(), 3, 1, 1)[0, 0]
    torch.testing.assert_close(fine[near], dense[near])


def test_sphere_mesh_geometry_orientation_and_colours():
    field = SphereField(radius=0.3, centre=(0.1, -0.05, 0.0), dtype=torch.float32)
    cfg = MeshConfig(resolution0=16, upsampling_steps=2)
    mesh = extract_mesh(field, None, cfg)
    spacing = 1.1 / cfg.resolution
    distance = np.linalg.norm(mesh.vertices - np.array([0.1, -0.05, 0.0]), axis=-1)
    assert np.abs(distance - 0.3).max() < spacing
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.is_watertight
    # Positive volume means outward-facing triangles.
    assert abs(tm.volume - 4 / 3 * math.pi * 0.3**3) < 0.01 * tm.volume
    np.testing.assert_array_equal(
        mesh.colors, np.broadcast_to(np.array([51, 102, 153], np.uint8), mesh.colors.shape)
    )


def test_empty_and_full_fields_give_no_faces():
    empty = SphereField(radius=-1.0, dtype=torch.float32)
    full = SphereField(radius=5.0, dtype=torch.float32)
    for field in (empty, full):
        mesh = extract_mesh(field, None, MeshConfig(resolution0=8, upsampling_steps=1))
        assert mesh.faces.shape == (0, 3) and mesh.colors is None


def _dense_twin(cfg: MeshConfig) -> MeshConfig:
    """The same final grid, decoded at every point (no coarse-to-fine)."""
    return dataclasses.replace(cfg, resolution0=cfg.resolution, upsampling_steps=0)


@pytest.mark.parametrize("resolution0, upsampling_steps", [(16, 2), (8, 3)])
def test_coarse_to_fine_mesh_is_the_dense_grids_mesh(resolution0, upsampling_steps):
    # The levels after the first refinement decode only the corners of cells with a crossing
    # (with 3 steps, one of them is not the last): marching cubes must still read exactly the
    # values a dense grid has there, and nothing else changes.
    field = BlobField().float()
    c = torch.tensor([[0.3, -0.2, 0.5]])
    cfg = MeshConfig(resolution0, upsampling_steps, search_precision="float32")
    mesh = extract_mesh(field, c, cfg)
    dense = extract_mesh(field, c, _dense_twin(cfg))
    assert mesh.evaluations < 0.2 * dense.evaluations
    assert mesh.faces.shape == dense.faces.shape
    np.testing.assert_allclose(mesh.vertices, dense.vertices, atol=1e-6)


def test_vertex_colours_match_the_field_at_the_vertices():
    field = BlobField().float()  # colour sigmoid(p): varies everywhere
    c = torch.tensor([[0.3, -0.2, 0.5]])
    mesh = extract_mesh(field, c, MeshConfig(resolution0=16, upsampling_steps=2))
    exact = field.rgb(torch.from_numpy(mesh.vertices)[None], c)[0].numpy() * 255
    assert np.abs(mesh.colors.astype(np.float64) - exact).max() <= 1.0


def test_bfloat16_search_gives_the_float32_mesh():
    field = BlobField().float()
    c = torch.tensor([[0.3, -0.2, 0.5]])
    meshes = [
        extract_mesh(field, c, MeshConfig(resolution0=8, upsampling_steps=3, search_precision=p))
        for p in ("float32", "bfloat16")
    ]
    assert meshes[0].faces.shape == meshes[1].faces.shape
    np.testing.assert_array_equal(meshes[0].vertices, meshes[1].vertices)
    np.testing.assert_array_equal(meshes[0].colors, meshes[1].colors)


def test_unknown_search_precision_is_refused():
    with pytest.raises(ValueError, match="search_precision"):
        MeshConfig(search_precision="float16")
