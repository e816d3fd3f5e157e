"""Exact renders of synthetic objects by sphere tracing their signed distance functions.

Renders are white-background, Lambertian-shaded with a light fixed relative to the camera
(above-left of it), in DVR's camera convention (data/cameras.py), depth = camera-space z.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from iss3d.data.cameras import pixel_coords, rays
from iss3d.data.synth.world import CompositeSDF

AMBIENT = 0.35
DIFFUSE = 0.65
# Direction towards the light in camera coordinates (x right, y down, z forward).
LIGHT_CAMERA = np.array([-0.4, -0.6, -1.0]) / np.linalg.norm([-0.4, -0.6, -1.0])


@dataclass
class TraceSettings:
    """Sphere tracing tolerances (object-frame units)."""

    hit_eps: float = 1e-4
    max_steps: int = 160
    late_hit_eps: float = 2e-3  # rays still marching after max_steps count as hits below this
    normal_eps: float = 1e-4


@dataclass
class Renders:
    """rgb: (V, H, W, 3) uint8; mask: (V, H, W) bool; depth: (V, H, W) float32, inf off-object."""

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray


def sdf_normals(field: CompositeSDF, points: torch.Tensor, eps: float) -> torch.Tensor:
    """(N, 3) points -> (N, 3) unit outward normals by central differences of the SDF.

    Where two parts meet in a crease the union's differences can cancel to zero; there the
    normal of the part that owns the point (the nearest one) is used instead.
    """
    offsets = torch.eye(3, dtype=points.dtype, device=points.device) * eps
    own = field.distances(points).argmin(dim=-1, keepdim=True)
    union_grad, part_grad = [], []
    for o in offsets:
        plus, minus = field.distances(points + o), field.distances(points - o)
        union_grad.append(plus.min(dim=-1).values - minus.min(dim=-1).values)
        part_grad.append((plus - minus).gather(-1, own).squeeze(-1))
    union, part = torch.stack(union_grad, dim=-1), torch.stack(part_grad, dim=-1)
    degenerate = union.norm(dim=-1, keepdim=True) < 1e-3 * eps
    return torch.nn.functional.normalize(torch.where(degenerate, part, union), dim=-1)


def trace(
    field: CompositeSDF,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    radius: float,
    settings: TraceSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """First surface hit along unit-direction rays.

    Args:
        origins, dirs: (R, 3), dirs of unit length.
        radius: the object lies inside the sphere of this radius around the origin.
    Returns:
        t: (R,) distance along the ray to the hit (inf for misses); hit: (R,) bool.
    """
    n = origins.shape[0]
    t = torch.full((n,), float("inf"), dtype=origins.dtype)
    hit = torch.zeros(n, dtype=torch.bool)
    # Intersect the bounding sphere: |o + s d|^2 = radius^2.
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - radius**2
    disc = b * b - c
    active = torch.nonzero(disc > 0).squeeze(-1)
    root = torch.sqrt(disc[active].clamp(min=0))
    s = (-b[active] - root).clamp(min=0)
    s_far = -b[active] + root
    for _ in range(settings.max_steps):
        if active.numel() == 0:
            break
        d = field(origins[active] + s.unsqueeze(-1) * dirs[active])
        done_hit = d < settings.hit_eps
        s = s + d.clamp(min=0)
        done = done_hit | (s > s_far)
        hit[active[done_hit]] = True
        t[active[done_hit]] = s[done_hit]
        keep = ~done
        active, s, s_far = active[keep], s[keep], s_far[keep]
    if active.numel():
        d = field(origins[active] + s.unsqueeze(-1) * dirs[active])
        late = d < settings.late_hit_eps
        hit[active[late]] = True
        t[active[late]] = s[late]
    return t, hit


def render_object(
    field: CompositeSDF,
    world_mats: np.ndarray,
    camera_mats: np.ndarray,
    height: int,
    width: int,
    settings: TraceSettings | None = None,
    pixel_convention: str = "center",
) -> Renders:
    """Render every camera of one object.

    Args:
        world_mats, camera_mats: (V, 4, 4) DVR-convention cameras (scale_mat is the identity).
        height, width: image size.
        pixel_convention: where pixels sample the image plane (data/cameras.py).
    """
    settings = settings or TraceSettings()
    v = len(world_mats)
    wm = torch.as_tensor(world_mats, dtype=torch.float32)
    cm = torch.as_tensor(camera_mats, dtype=torch.float32)
    xy = pixel_coords(height, width, pixel_convention).expand(v, -1, -1)
    origin, direction = rays(xy, wm, cm, torch.eye(4))
    origin, direction = origin.reshape(-1, 3), direction.reshape(-1, 3)
    length = direction.norm(dim=-1)
    unit = direction / length.unsqueeze(-1)
    t, hit = trace(field, origin, unit, radius=0.9, settings=settings)

    depth = torch.full_like(t, float("inf"))
    depth[hit] = t[hit] / length[hit]  # distance along the ray -> camera-space z
    rgb = torch.ones(t.shape[0], 3)
    idx = torch.nonzero(hit).squeeze(-1)
    if idx.numel():
        points = origin[idx] + t[idx].unsqueeze(-1) * unit[idx]
        normals = sdf_normals(field, points, settings.normal_eps)
        view_of_ray = idx // (height * width)
        light_world = torch.as_tensor(LIGHT_CAMERA, dtype=torch.float32) @ wm[:, :3, :3]  # (V, 3)
        lambert = (normals * light_world[view_of_ray]).sum(-1).clamp(min=0)
        shade = AMBIENT + DIFFUSE * lambert
        rgb[idx] = field.color(points) * shade.unsqueeze(-1)
    shape = (v, height, width)
    return Renders(
        rgb=(rgb.reshape(*shape, 3).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy(),
        mask=hit.reshape(shape).numpy(),
        depth=depth.reshape(shape).numpy().astype(np.float32),
    )
