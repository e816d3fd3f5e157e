"""Mesh files with vertex colours and turntable images, written atomically."""

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from iss3d.core.errors import UserError
from iss3d.infer.export import render_turntable, save_mesh, save_turntable
from iss3d.models.march import MarchConfig
from iss3d.models.mesh import Mesh, MeshConfig, extract_mesh
from iss3d.models.renderer import Renderer
from tests.models.test_renderer import SphereField


@pytest.fixture(scope="module")
def sphere_mesh():
    return extract_mesh(
        SphereField(radius=0.3, dtype=torch.float32),
        None,
        MeshConfig(resolution0=16, upsampling_steps=1),
    )


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb"])
def test_mesh_round_trip_keeps_geometry_and_colours(tmp_path, sphere_mesh, suffix):
    path = save_mesh(sphere_mesh, tmp_path / f"shape{suffix}")
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.faces) == len(sphere_mesh.faces)
    colors = np.asarray(loaded.visual.vertex_colors)[:, :3]
    assert (colors == [51, 102, 153]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"shape{suffix}"]


def test_bad_mesh_outputs(tmp_path, sphere_mesh):
    with pytest.raises(UserError, match="unknown mesh format"):
        save_mesh(sphere_mesh, tmp_path / "shape.stl")
    empty = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), None)
    with pytest.raises(UserError, match="empty"):
        save_mesh(empty, tmp_path / "shape.ply")
    with pytest.raises(UserError, match="does not exist"):
        save_mesh(sphere_mesh, tmp_path / "missing" / "shape.ply")
    assert list(tmp_path.iterdir()) == []


def test_turntable_frames_differ_only_where_the_shape_is_off_centre(tmp_path):
    field = SphereField(radius=0.25, centre=(0.2, 0.0, 0.0), dtype=torch.float32)
    frames = render_turntable(
        field, None, Renderer(MarchConfig(n_steps=32)), views=4, resolution=24
    )
    assert frames.shape == (4, 24, 24, 3) and frames.dtype == np.uint8
    assert (frames == 255).all(axis=-1).mean() > 0.3, "white background"
    assert not np.array_equal(frames[0], frames[2]), "the camera moves around the object"
    strip, gif = save_turntable(frames, tmp_path)
    assert Image.open(strip).size == (4 * 24, 24)
    assert Image.open(gif).n_frames == 4
