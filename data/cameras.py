"""Cameras in DVR's convention, shared by the data tools and the renderer.

Frames and conventions (see docs/FORMAT.md):

- Object frame: the object lives in the unit cube [-0.5, 0.5]^3, y up.
- ``scale_mat`` (4, 4) maps object coordinates to world coordinates.
- ``world_mat`` (4, 4) maps world coordinates to camera coordinates ([R | t]).
  Camera axes: x right, y down, z forward (the camera looks down +z).
- ``camera_mat`` (4, 4) maps camera coordinates to normalised image coordinates:
  after division by z, the image spans [-1, 1] in x and y, (-1, -1) is the top-left corner.
  DVR's ShapeNet renders use ``diag(f, f, 1, 1)`` with f = 2.1875 (about 49 degrees of view).

A point projects as ``p_img = camera_mat @ world_mat @ scale_mat @ p_obj`` followed by
``p_img[:2] / p_img[2]``. Rays are unprojected at camera depth 1, so a ray's parameter equals
camera-space z ("depth" everywhere in iss3d means camera-space z, never distance along the ray).

Pixel conventions (which normalised coordinate a pixel index k of an image W wide has):

- ``"center"``: pixel centres, x = (2k + 1) / W - 1 (our own renders).
- ``"dvr"``: DVR's ``arange_pixels``, x = 2k / (W - 1) - 1, the end pixels sit exactly at -1 and +1.
"""

from __future__ import annotations

import math

import numpy as np
import torch

DVR_FOCAL = 2.1875
PIXEL_CONVENTIONS = ("center", "dvr")


def intrinsics(focal: float = DVR_FOCAL, aspect: float = 1.0) -> np.ndarray:
    """``camera_mat`` (4, 4) float64 for a pinhole camera.

    Args:
        focal: focal length in normalised units (the image x range [-1, 1]).
        aspect: width / height; y's focal length is ``focal * aspect`` so that pixels are square.
    """
    return np.diag([focal, focal * aspect, 1.0, 1.0])


def focal_from_fov(fov_x_rad: float) -> float:
    """Normalised focal length of a camera whose horizontal field of view is ``fov_x_rad``."""
    return 1.0 / math.tan(fov_x_rad / 2.0)


def look_at(eye: np.ndarray, target: np.ndarray | None = None, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """``world_mat`` (4, 4) float64 of a camera at ``eye`` (3,) looking at ``target`` (3,).

    The camera's y axis points down in the image, so world ``up`` appears at the top.
    """
    eye = np.asarray(eye, dtype=np.float64)
    target = np.zeros(3) if target is None else np.asarray(target, dtype=np.float64)
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-9:  # looking straight along `up`: pick any right vector
        right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    mat = np.eye(4)
    mat[:3, :3] = rot
    mat[:3, 3] = -rot @ eye
    return mat


def orbit_eyes(azimuth_deg: np.ndarray, elevation_deg: np.ndarray, distance) -> np.ndarray:
    """Camera positions (V, 3) on a sphere around the origin, y up.

    Azimuth 0 looks at the object's +z face (camera on +z); elevation > 0 is above it.
    """
    az = np.deg2rad(np.asarray(azimuth_deg, dtype=np.float64))
    el = np.deg2rad(np.asarray(elevation_deg, dtype=np.float64))
    dist = np.broadcast_to(np.asarray(distance, dtype=np.float64), az.shape)
    return np.stack(
        [dist * np.cos(el) * np.sin(az), dist * np.sin(el), dist * np.cos(el) * np.cos(az)],
        axis=-1,
    )


def pixel_coords(height: int, width: int, convention: str = "center") -> torch.Tensor:
    """Normalised image coordinates of every pixel, row-major.

    Returns:
        (H * W, 2) float32, [:, 0] = x (column), [:, 1] = y (row), both in [-1, 1].
    """
    if convention not in PIXEL_CONVENTIONS:
        raise ValueError(f"unknown pixel convention {convention!r}, expected {PIXEL_CONVENTIONS}")
    xs = _axis_coords(width, convention)
    ys = _axis_coords(height, convention)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)


def _axis_coords(n: int, convention: str) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float32)
    if convention == "center":
        return (2.0 * k + 1.0) / n - 1.0
    return 2.0 * k / max(n - 1, 1) - 1.0


def coords_to_pixels(xy: torch.Tensor, height: int, width: int, convention: str) -> torch.Tensor:
    """Inverse of :func:`pixel_coords`: (..., 2) normalised (x, y) -> (..., 2) float (col, row)."""
    size = torch.tensor([width, height], dtype=xy.dtype, device=xy.device)
    if convention == "center":
        return ((xy + 1.0) * size - 1.0) / 2.0
    return (xy + 1.0) * (size - 1.0) / 2.0


def full_projection(world_mat, camera_mat, scale_mat) -> torch.Tensor:
    """``camera_mat @ world_mat @ scale_mat``: object -> image, (..., 4, 4)."""
    return torch.as_tensor(camera_mat) @ torch.as_tensor(world_mat) @ torch.as_tensor(scale_mat)


def project(
    points: torch.Tensor, world_mat, camera_mat, scale_mat
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project object-frame points into the image.

    Args:
        points: (..., N, 3) object coordinates.
        world_mat, camera_mat, scale_mat: (..., 4, 4), broadcastable.
    Returns:
        xy: (..., N, 2) normalised image coordinates; depth: (..., N) camera-space z.
    """
    proj = full_projection(world_mat, camera_mat, scale_mat).to(points.dtype)
    homo = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)
    cam = homo @ proj.transpose(-1, -2)
    depth = cam[..., 2]
    return cam[..., :2] / depth.unsqueeze(-1), depth


def rays(xy: torch.Tensor, world_mat, camera_mat, scale_mat) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through normalised image points, in the object frame.

    Args:
        xy: (..., N, 2) normalised image coordinates.
        world_mat, camera_mat, scale_mat: (..., 4, 4), broadcastable with xy's batch dims.
    Returns:
        origins: (..., N, 3) the camera centre; directions: (..., N, 3), not unit length:
        ``origin + t * direction`` has camera-space depth t.
    """
    proj = full_projection(world_mat, camera_mat, scale_mat).to(xy.dtype)
    inv = torch.linalg.inv(proj)
    ones = torch.ones_like(xy[..., :1])
    at_depth_1 = torch.cat([xy, ones, ones], dim=-1) @ inv.transpose(-1, -2)
    centre = inv[..., :, 3]  # camera centre: the image of (0, 0, 0, 1) in camera space
    origin = centre[..., :3] / centre[..., 3:]
    origin = origin.unsqueeze(-2).expand_as(at_depth_1[..., :3])
    points = at_depth_1[..., :3] / at_depth_1[..., 3:]
    return origin, points - origin


def first_invalid_matrix(mats: np.ndarray, *, affine: bool = True) -> tuple[int, str] | None:
    """(index, why) of the first unusable matrix of (N, 4, 4) ``mats`` (see
    :func:`is_valid_matrix`), or None when all are fine; vectorised over N."""
    mats = np.asarray(mats, dtype=np.float64)
    bad = ~np.isfinite(mats).all(axis=(1, 2))
    finite = np.where(bad[:, None, None], np.eye(4), mats)
    bad |= np.linalg.cond(finite) > 1e12
    if affine:
        bad |= ~np.isclose(finite[:, 3], [0.0, 0.0, 0.0, 1.0], atol=1e-6).all(axis=1)
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    return i, is_valid_matrix(mats[i], affine=affine)


def is_valid_matrix(mat: np.ndarray, *, affine: bool = True) -> str | None:
    """Why a (4, 4) camera matrix is unusable, or None when it is fine."""
    mat = np.asarray(mat, dtype=np.float64)
    if mat.shape != (4, 4):
        return f"has shape {mat.shape}, expected (4, 4)"
    if not np.all(np.isfinite(mat)):
        return "contains NaN or infinite values"
    if np.linalg.cond(mat) > 1e12:  # relative test: independent of the matrix's scale
        return "is singular"
    if affine and not np.allclose(mat[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        return f"has last row {mat[3].tolist()}, expected [0, 0, 0, 1]"
    return None
