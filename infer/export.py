"""Write meshes (.ply, .obj, .glb with vertex colours) and turntable images (PNG strip, GIF)."""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import trimesh

from iss3d.core.atomic import atomic_output
from iss3d.core.errors import UserError
from iss3d.data.cameras import intrinsics, look_at, orbit_eyes
from iss3d.models.march import ImplicitField
from iss3d.models.mesh import Mesh
from iss3d.models.renderer import Renderer

MESH_FORMATS = ("ply", "obj", "glb")


def to_trimesh(mesh: Mesh) -> trimesh.Trimesh:
    return trimesh.Trimesh(
        vertices=mesh.vertices,
        faces=mesh.faces,
        vertex_colors=mesh.colors,
        process=False,
    )


def save_mesh(mesh: Mesh, path: str | os.PathLike) -> Path:
    """Write ``mesh`` to ``path``; the format comes from the suffix (.ply, .obj or .glb)."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind not in MESH_FORMATS:
        raise UserError(f"{path}: unknown mesh format {path.suffix!r}, use one of {MESH_FORMATS}")
    if len(mesh.faces) == 0:
        raise UserError(
            f"{path}: the shape is empty (no surface at the threshold), nothing to write"
        )
    data = to_trimesh(mesh).export(file_type=kind)
    with atomic_output(path) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def turntable_cameras(
    views: int, elevation: float = 20.0, distance: float = 1.8
) -> tuple[torch.Tensor, torch.Tensor]:
    """(views, 4, 4) world_mats evenly around the object and the matching camera_mats."""
    azimuth = np.linspace(0.0, 360.0, views, endpoint=False)
    eyes = orbit_eyes(azimuth, np.full(views, elevation), distance)
    world = torch.tensor(np.stack([look_at(e) for e in eyes]), dtype=torch.float32)
    camera = torch.tensor(intrinsics(), dtype=torch.float32).expand(views, 4, 4)
    return world, camera


@torch.no_grad()
def render_turntable(
    field: ImplicitField,
    c: torch.Tensor | None,
    renderer: Renderer,
    views: int = 12,
    resolution: int = 128,
    elevation: float = 20.0,
    distance: float = 1.8,
) -> np.ndarray:
    """(views, H, W, 3) uint8 renders of one latent ``c`` (1, c_dim) around the object."""
    world, camera = turntable_cameras(views, elevation, distance)
    device = c.device if c is not None else torch.device("cpu")
    frames = []
    for v in range(views):  # one view at a time bounds memory at high resolution
        out = renderer.render_images(
            field,
            c,
            world[v : v + 1].to(device),
            camera[v : v + 1].to(device),
            torch.eye(4, device=device)[None],
            resolution,
            resolution,
        )
        frames.append(
            (out["rgb"][0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        )
    return np.stack(frames)


def save_turntable(
    frames: np.ndarray, folder: str | os.PathLike, name: str = "turntable"
) -> tuple[Path, Path]:
    """Write ``frames`` (V, H, W, 3) uint8 as ``name.png`` (a strip) and ``name.gif``."""
    folder = Path(folder)
    strip, gif = folder / f"{name}.png", folder / f"{name}.gif"
    with atomic_output(strip) as tmp:
        iio.imwrite(tmp, np.concatenate(list(frames), axis=1), extension=".png")
    with atomic_output(gif) as tmp:
        iio.imwrite(tmp, frames, extension=".gif", duration=100, loop=0)
    return strip, gif
