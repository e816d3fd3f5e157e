"""Cameras for stage 2: a random orbit distribution and fixed evaluation views.

Every camera looks at the object's centre from a point on a sphere, in DVR's convention
(:mod:`iss3d.data.cameras`: ``world_mat`` world -> camera, ``camera_mat`` to normalised image
coordinates, ``scale_mat`` identity). Azimuth 0 puts the camera on +z, which is where the
synthetic world's objects face (a chair's back is at -z); elevation > 0 is above the object.
Distances are in object units (the object lives in the unit cube).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from iss3d.core.errors import UserError
from iss3d.data.cameras import DVR_FOCAL, intrinsics, look_at, orbit_eyes

__all__ = ["CameraConfig", "Views", "fixed_views", "sample_views"]


@dataclass
class CameraConfig:
    """The stage-2 camera distribution (YAML section ``stage2.cameras``).

    Attributes:
        azimuth: [lo, hi] degrees, uniform (0 = camera on +z, the object's front).
        elevation: [lo, hi] degrees, uniform.
        distance: [lo, hi] camera distance from the object centre, uniform. The official ISS
            code renders at 1.5 x the dataset's camera translation.
        focal: normalised focal length (DVR's ShapeNet renders: 2.1875, ~49 degrees of view).
        stratified: azimuths of one step's m views are stratified (one per 360/m sector, as
            the synthetic renders are) instead of independent.
    """

    azimuth: tuple[float, float] = (0.0, 360.0)
    elevation: tuple[float, float] = (-20.0, 50.0)
    distance: tuple[float, float] = (2.7, 2.7)
    focal: float = DVR_FOCAL
    stratified: bool = True

    def __post_init__(self) -> None:
        for name in ("azimuth", "elevation", "distance"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise UserError(f"camera config: {name!r} must be [lo, hi] with lo <= hi")
        if not -90.0 <= self.elevation[0] <= self.elevation[1] <= 90.0:
            raise UserError("camera config: 'elevation' must lie in [-90, 90] degrees")
        if self.distance[0] <= 0.9:
            raise UserError(
                f"camera config: 'distance' must exceed 0.9 (outside the object's cube), "
                f"got {list(self.distance)}"
            )
        if self.focal <= 0:
            raise UserError(f"camera config: 'focal' must be > 0, got {self.focal}")

    @property
    def mean_distance(self) -> float:
        return 0.5 * (self.distance[0] + self.distance[1])


@dataclass
class Views:
    """V cameras. world_mat, camera_mat, scale_mat: (V, 4, 4) float32 (CPU);
    azimuth, elevation: (V,) degrees, distance: (V,) float64 numpy arrays."""

    world_mat: torch.Tensor
    camera_mat: torch.Tensor
    scale_mat: torch.Tensor
    azimuth: np.ndarray
    elevation: np.ndarray
    distance: np.ndarray

    def __len__(self) -> int:
        return int(self.world_mat.shape[0])

    def to(self, device: torch.device | str) -> Views:
        return Views(
            self.world_mat.to(device),
            self.camera_mat.to(device),
            self.scale_mat.to(device),
            self.azimuth,
            self.elevation,
            self.distance,
        )


def _views(azimuth: np.ndarray, elevation: np.ndarray, distance: np.ndarray, focal: float):
    eyes = orbit_eyes(azimuth, elevation, distance)
    world = torch.tensor(np.stack([look_at(e) for e in eyes]), dtype=torch.float32)
    n = len(azimuth)
    camera = torch.tensor(intrinsics(focal), dtype=torch.float32).expand(n, 4, 4).clone()
    scale = torch.eye(4).expand(n, 4, 4).clone()
    return Views(world, camera, scale, azimuth, elevation, distance)


def sample_views(cfg: CameraConfig, n: int, generator: torch.Generator) -> Views:
    """``n`` cameras drawn from ``cfg`` with a CPU ``generator`` (reproducible per seed).

    Azimuths are wrapped to [0, 360).
    """
    if n < 1:
        raise ValueError(f"need at least one view, got {n}")
    u = torch.rand(3, n, generator=generator, dtype=torch.float64).numpy()
    (a0, a1), (e0, e1), (d0, d1) = cfg.azimuth, cfg.elevation, cfg.distance
    u_az = (np.arange(n) + u[0]) / n if cfg.stratified else u[0]
    azimuth = np.mod(a0 + (a1 - a0) * u_az, 360.0)
    elevation = e0 + (e1 - e0) * u[1]
    distance = d0 + (d1 - d0) * u[2]
    return _views(azimuth, elevation, distance, cfg.focal)


def fixed_views(
    n: int,
    elevation: float,
    distance: float,
    focal: float = DVR_FOCAL,
    azimuth_offset: float = 0.0,
) -> Views:
    """``n`` cameras evenly spaced in azimuth (from ``azimuth_offset``) at one elevation and
    distance: the evaluation views of stage 2 (CLIP score before/after, ``views.png``)."""
    azimuth = np.mod(azimuth_offset + np.linspace(0.0, 360.0, n, endpoint=False), 360.0)
    return _views(azimuth, np.full(n, float(elevation)), np.full(n, float(distance)), focal)
