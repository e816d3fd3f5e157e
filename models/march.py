"""Marching camera rays through an occupancy field to its first surface crossing, DVR's way.

The reference marcher (:func:`march`) samples ``n_steps`` depths per ray inside the ray's
intersection with the padded unit cube, evaluates the decoder at every sample, finds the first
outside -> inside sign change of the occupancy logit and refines it with secant steps, all
without gradients. :func:`iss3d.models.grid_march.grid_march` gives the same answer with fewer
decoder calls; both share the sampling, the crossing rule and the secant refinement defined here.

A field is anything with ``occupancy(points, c) -> (B, N)`` logits (inside > 0) and
``rgb(points, c) -> (B, N, 3)`` in [0, 1], points (B, N, 3) in the object frame, c (B, c_dim)
(or (1, c_dim): one latent for every row).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from iss3d.core.errors import UserError


class ImplicitField(Protocol):
    def occupancy(self, points: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor: ...

    def rgb(self, points: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor: ...


def occupancy_and_rgb(
    field: ImplicitField, points: torch.Tensor, c: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, 3) points -> (B, N) occupancy logits and (B, N, 3) colours, in one decoder pass
    when the field has ``occupancy_and_rgb`` (the decoders do), else by its two methods."""
    both = getattr(field, "occupancy_and_rgb", None)
    if both is not None:
        return both(points, c)
    return field.occupancy(points, c), field.rgb(points, c)


MARCH_METHODS = ("dense", "grid")
OUTSIDE_CUBE = ("skip", "march")


@dataclass
class MarchConfig:
    """Settings of the marchers.

    n_steps: samples per ray (DVR: 16 -> 128 during training, 128 at test).
    n_secant: secant refinement steps. padding: the unit cube is padded by this (half side
    0.5 + padding / 2). chunk: points per decoder call. min_grad: |grad f . w| is clamped to at
    least this in the implicit gradient (DVR: 1e-3).
    method: ``"dense"``, the reference (the decoder at every sample), or ``"grid"``
        (:func:`iss3d.models.grid_march.grid_march`: the same samples and the same answer, but the
        decoder only where a coarse occupancy grid cannot rule surface out; pays off when many
        rays share a latent).
    outside_cube: rays that miss the padded cube: ``"skip"`` (ours: they miss, no decoder
        call) or ``"march"`` (DVR's: they are sampled over ``depth_range`` from the ray origin,
        so occupancy outside the cube is seen).
    depth_range: [near, far] ray parameters (camera depths) of the ``"march"`` samples (DVR's
        ShapeNet setting: [0, 2.4]).
    grid: lattice side of the grid method. margin: a grid cell is searched when a corner logit
    exceeds -margin. window: samples evaluated per ray and round by the grid method.
    grid_levels: the lattice is evaluated coarse to fine in this many levels, each of half the
        side of the next (1: every lattice point).
    """

    n_steps: int = 128
    n_secant: int = 8
    padding: float = 0.1
    chunk: int = 65536
    min_grad: float = 1e-3
    method: str = "dense"
    outside_cube: str = "skip"
    depth_range: tuple[float, float] = (0.0, 2.4)
    grid: int = 48
    margin: float = 2.0
    window: int = 4
    grid_levels: int = 2

    def __post_init__(self) -> None:
        if self.method not in MARCH_METHODS:
            raise UserError(
                f"march config: 'method' must be one of {MARCH_METHODS}, got {self.method!r}"
            )
        if self.outside_cube not in OUTSIDE_CUBE:
            raise UserError(
                f"march config: 'outside_cube' must be one of {OUTSIDE_CUBE}, "
                f"got {self.outside_cube!r}"
            )
        near, far = self.depth_range
        if not 0 <= near < far:
            raise UserError(
                f"march config: 'depth_range' must be [near, far] with 0 <= near < far, "
                f"got {list(self.depth_range)}"
            )
        if self.n_steps < 2 or self.n_secant < 0 or self.chunk < 1 or self.padding < 0:
            raise UserError(
                "march config: n_steps >= 2, n_secant >= 0, chunk >= 1 and padding >= 0 are needed"
            )
        if self.grid < 2 or self.window < 1 or self.margin < 0 or self.grid_levels < 1:
            raise UserError(
                "march config: grid >= 2, window >= 1, margin >= 0 and grid_levels >= 1 are needed"
            )

    @property
    def half(self) -> float:
        """Half side of the padded cube the samples lie in."""
        return 0.5 + self.padding / 2


def cube_interval(
    origins: torch.Tensor, dirs: torch.Tensor, half: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray parameters where rays enter and leave the cube [-half, half]^3.

    origins, dirs: (..., 3). Returns t_near, t_far (...); t_near is clamped to >= 0 and
    t_far < t_near where the ray misses the cube.
    """
    safe = torch.where(dirs.abs() < 1e-12, torch.full_like(dirs, 1e-12), dirs)
    t1, t2 = (-half - origins) / safe, (half - origins) / safe
    t_near = torch.minimum(t1, t2).amax(dim=-1).clamp(min=0)
    t_far = torch.maximum(t1, t2).amin(dim=-1)
    return t_near, t_far


def occupancy_in_chunks(
    field: ImplicitField, c: torch.Tensor | None, points: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Occupancy logits of (B, N, 3) points in chunks along N -> (B, N)."""
    b, n = points.shape[:2]
    step = max(1, chunk // max(b, 1))
    return torch.cat(
        [field.occupancy(points[:, i : i + step], c) for i in range(0, n, step)], dim=1
    )


@dataclass
class MarchResult:
    """depth, hit, inside_start as in :class:`RayHits`; t_start, t_end (B, R): the ray
    parameters of its first and last sample (the padded-cube interval, t_end < t_start where a
    skipped ray misses the cube); evaluations: decoder points spent."""

    depth: torch.Tensor
    hit: torch.Tensor
    inside_start: torch.Tensor
    t_start: torch.Tensor
    t_end: torch.Tensor
    evaluations: int

    def reshape(self, *shape: int) -> MarchResult:
        """The same result with every per-ray tensor reshaped to ``shape``."""
        return MarchResult(
            self.depth.reshape(shape),
            self.hit.reshape(shape),
            self.inside_start.reshape(shape),
            self.t_start.reshape(shape),
            self.t_end.reshape(shape),
            self.evaluations,
        )


def ray_samples(
    origins: torch.Tensor, dirs: torch.Tensor, cfg: MarchConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sample depths of every ray, shared by both marchers.

    ``cfg.n_steps`` depths evenly spaced over the ray's padded-cube interval; a ray that misses
    the cube is sampled over ``cfg.depth_range`` when ``cfg.outside_cube`` is ``"march"``
    (DVR), and is not marched at all when it is ``"skip"``.

    Args:
        origins, dirs: (B, R, 3) object frame (ray parameter = camera depth).

    Returns:
        t (B, R, S) ray parameters (ascending), marched (B, R) bool: the rays to march,
        t_end (B, R): the end of the ray's interval (where it leaves the padded cube; below
        ``t[..., 0]`` for a skipped ray that misses the cube).
    """
    t_near, t_far = cube_interval(origins, dirs, cfg.half)
    marched = t_far > t_near
    if cfg.outside_cube == "march":
        near, far = cfg.depth_range
        t_near = torch.where(marched, t_near, torch.full_like(t_near, near))
        t_far = torch.where(marched, t_far, torch.full_like(t_far, far))
        marched = torch.ones_like(marched)
    steps = torch.linspace(0.0, 1.0, cfg.n_steps, device=origins.device, dtype=origins.dtype)
    t = t_near.unsqueeze(-1) + (t_far - t_near).clamp(min=0).unsqueeze(-1) * steps
    return t, marched, t_far


def first_crossing(
    f: torch.Tensor, marched: torch.Tensor, evaluated: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each ray first goes from outside (logit < 0) to inside (logit >= 0).

    Args:
        f: (B, R, S) logits at the samples. marched: (B, R) bool, rays that count.
        evaluated: (B, R, S) bool, the samples whose logit is known (None: all); a crossing
            needs both of its samples known.

    Returns:
        inside_start (B, R) bool: the first sample is inside; hit (B, R) bool: a crossing
        and no inside start; first (B, R, 1) long: index k of the first crossing (k, k + 1)
        (0 where there is none).
    """
    inside = f[..., 0] >= 0
    crossing = (f[..., :-1] < 0) & (f[..., 1:] >= 0)
    if evaluated is not None:
        inside = inside & evaluated[..., 0]
        crossing = crossing & evaluated[..., :-1] & evaluated[..., 1:]
    inside_start = marched & inside
    hit = marched & ~inside & crossing.any(dim=-1)
    return inside_start, hit, crossing.float().argmax(dim=-1, keepdim=True)


def secant_depth(
    evaluate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, int]],
    origins: torch.Tensor,
    dirs: torch.Tensor,
    t: torch.Tensor,
    f: torch.Tensor,
    first: torch.Tensor,
    hit: torch.Tensor,
    n_secant: int,
) -> tuple[torch.Tensor, int]:
    """Refine each hit ray's crossing (first, first + 1) by secant steps (DVR's method).

    Args:
        evaluate: (points (B, R, 3), rays (B, R) bool) -> ((B, R) logits, valid where rays
            is set; decoder points spent).
        origins, dirs: (B, R, 3). t, f: (B, R, S) sample depths and logits (finite at the
            crossing samples of hit rays). first: (B, R, 1) from :func:`first_crossing`.
        hit: (B, R) bool, the rays to refine.

    Returns:
        (B, R) depth of the surface on hit rays (the crossing's lower end elsewhere), decoder
        points spent.
    """
    t_lo, t_hi = t.gather(-1, first).squeeze(-1), t.gather(-1, first + 1).squeeze(-1)
    f_lo, f_hi = f.gather(-1, first).squeeze(-1), f.gather(-1, first + 1).squeeze(-1)
    # rays without a crossing are refined between their own samples: finite, then discarded
    f_lo = torch.where(hit, f_lo, -torch.ones_like(f_lo))
    f_hi = torch.where(hit, f_hi, torch.ones_like(f_hi))
    spent = 0

    def step() -> torch.Tensor:
        return t_lo - f_lo * (t_hi - t_lo) / (f_hi - f_lo)

    for _ in range(n_secant):
        t_mid = step()
        f_mid, n = evaluate(origins + t_mid.unsqueeze(-1) * dirs, hit)
        spent += n
        outside = f_mid < 0
        t_lo, f_lo = torch.where(outside, t_mid, t_lo), torch.where(outside, f_mid, f_lo)
        t_hi, f_hi = torch.where(outside, t_hi, t_mid), torch.where(outside, f_hi, f_mid)
    return step(), spent


def march_depth(
    inside_start: torch.Tensor, hit: torch.Tensor, t_surface: torch.Tensor
) -> torch.Tensor:
    """(B, R) depth from a march's classification: the surface where hit, 0 where the ray
    starts inside, inf elsewhere."""
    depth = torch.where(hit, t_surface, torch.full_like(t_surface, float("inf")))
    return torch.where(inside_start, torch.zeros_like(depth), depth)


@torch.no_grad()
def march(
    field: ImplicitField,
    c: torch.Tensor | None,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    cfg: MarchConfig,
) -> MarchResult:
    """Reference march without gradients: the decoder at every sample of every marched ray.

    origins, dirs: (B, R, 3); c: (B, c_dim), or (1, c_dim) for one latent seen by every row.
    """
    b, r = origins.shape[:2]
    t, marched, t_end = ray_samples(origins, dirs, cfg)
    points = origins.unsqueeze(-2) + t.unsqueeze(-1) * dirs.unsqueeze(-2)
    # logits in the rays' dtype (under autocast the decoder may return a lower one)
    f = occupancy_in_chunks(field, c, points.reshape(b, r * cfg.n_steps, 3), cfg.chunk)
    f = f.to(origins.dtype).reshape(b, r, cfg.n_steps)
    inside_start, hit, first = first_crossing(f, marched)

    def evaluate(p: torch.Tensor, rays: torch.Tensor) -> tuple[torch.Tensor, int]:
        logits = occupancy_in_chunks(field, c, p, cfg.chunk).to(p.dtype)
        return logits, p.shape[0] * p.shape[1]

    t_surface, spent = secant_depth(evaluate, origins, dirs, t, f, first, hit, cfg.n_secant)
    depth = march_depth(inside_start, hit, t_surface)
    return MarchResult(depth, hit, inside_start, t[..., 0], t_end, b * r * cfg.n_steps + spent)
