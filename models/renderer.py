"""Differentiable rendering of an occupancy/colour field along camera rays, DVR's way.

The reference marcher samples ``n_steps`` depths per ray inside the ray's intersection with the
padded unit cube, finds the first outside -> inside sign change of the occupancy logit, refines
it with secant steps, all without gradients. The depth then gets its gradient by implicit
differentiation (:class:`ImplicitDepth`): on the surface f(o + d w) = 0, so
``dd/dtheta = -(df/dtheta) / (grad_p f . w)``.

A field is anything with ``occupancy(points, c) -> (B, N)`` logits (inside > 0) and
``rgb(points, c) -> (B, N, 3)`` in [0, 1], points (B, N, 3) in the object frame, c (B, c_dim).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from data.cameras import pixel_coords, rays
from data.errors import UserError


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


@dataclass
class MarchConfig:
    """Settings of the marchers.

    n_steps: samples per ray (DVR: 16 -> 128 during training, 128 at test).
    n_secant: secant refinement steps. padding: the unit cube is padded by this (half side
    0.5 + padding / 2). chunk: points per decoder call. min_grad: |grad f . w| is clamped to at
    least this in the implicit gradient (DVR: 1e-3).
    method: ``"dense"``, the reference (the decoder at every sample), or ``"grid"``
        (:func:`models.grid_march.grid_march`: the same samples, but only those a coarse
        occupancy grid cannot rule out; pays off when many rays share a latent).
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
    grid: int = 48
    margin: float = 1.0
    window: int = 4
    grid_levels: int = 2

    def __post_init__(self) -> None:
        if self.method not in MARCH_METHODS:
            raise UserError(
                f"march config: 'method' must be one of {MARCH_METHODS}, got {self.method!r}"
            )
        if self.n_steps < 2 or self.n_secant < 0 or self.chunk < 1 or self.padding < 0:
            raise UserError(
                "march config: n_steps >= 2, n_secant >= 0, chunk >= 1 and padding >= 0 are needed"
            )
        if self.grid < 2 or self.window < 1 or self.margin < 0 or self.grid_levels < 1:
            raise UserError(
                "march config: grid >= 2, window >= 1, margin >= 0 and grid_levels >= 1 are needed"
            )


@dataclass
class RayHits:
    """Per-ray result of a march.

    depth: (B, R) camera-space depth of the first surface crossing; 0 where the ray starts
        inside the object, inf where it misses. Differentiable where ``hit`` (implicit gradient).
    hit: (B, R) bool, a surface crossing was found. inside_start: (B, R) bool.
    points: (B, R, 3) object-frame points whose colour the pixel shows: the surface point
        where ``hit`` (differentiable), the cube entry where ``inside_start``, else the point
        where the ray leaves the padded cube (colour of a decoder-drawn background; a point on
        the ray outside the cube for rays that miss it).
    evaluations: decoder point evaluations spent (for benchmarks).
    """

    depth: torch.Tensor
    hit: torch.Tensor
    inside_start: torch.Tensor
    points: torch.Tensor
    evaluations: int


class ImplicitDepth(torch.autograd.Function):
    """Passes the marched depth through and routes its gradient into the field's logits.

    forward(depth (R,) detached, logits (R,) = f(o + depth * w) with a graph to the field's
    parameters and latent, grad_dot_dir (R,) = grad_p f . w detached) -> depth.
    backward: dL/dlogits = -dL/ddepth / grad_dot_dir.
    """

    @staticmethod
    def forward(ctx, depth, logits, grad_dot_dir):
        ctx.save_for_backward(grad_dot_dir)
        return depth.clone()

    @staticmethod
    def backward(ctx, grad_depth):
        (grad_dot_dir,) = ctx.saved_tensors
        return None, -grad_depth / grad_dot_dir, None


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
    """depth, hit, inside_start as in :class:`RayHits`; t_near, t_far (B, R): the ray's padded-cube
    interval (t_far < t_near where it misses the cube); evaluations: decoder points spent."""

    depth: torch.Tensor
    hit: torch.Tensor
    inside_start: torch.Tensor
    t_near: torch.Tensor
    t_far: torch.Tensor
    evaluations: int


@torch.no_grad()
def march(
    field: ImplicitField,
    c: torch.Tensor | None,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    cfg: MarchConfig,
) -> MarchResult:
    """Reference march without gradients. origins, dirs: (B, R, 3)."""
    b, r = origins.shape[:2]
    half = 0.5 + cfg.padding / 2
    t_near, t_far = cube_interval(origins, dirs, half)
    valid = t_far > t_near
    steps = torch.linspace(0.0, 1.0, cfg.n_steps, device=origins.device, dtype=origins.dtype)
    t = t_near.unsqueeze(-1) + (t_far - t_near).clamp(min=0).unsqueeze(-1) * steps  # (B, R, S)
    points = origins.unsqueeze(-2) + t.unsqueeze(-1) * dirs.unsqueeze(-2)
    f = occupancy_in_chunks(field, c, points.reshape(b, r * cfg.n_steps, 3), cfg.chunk).reshape(
        b, r, cfg.n_steps
    )
    evaluations = b * r * cfg.n_steps

    inside_start = valid & (f[..., 0] >= 0)
    crossing = (f[..., :-1] < 0) & (f[..., 1:] >= 0)
    hit = valid & ~inside_start & crossing.any(dim=-1)
    first = crossing.float().argmax(dim=-1, keepdim=True)  # first True (0 when none)
    t_lo, t_hi = t.gather(-1, first).squeeze(-1), t.gather(-1, first + 1).squeeze(-1)
    f_lo, f_hi = f.gather(-1, first).squeeze(-1), f.gather(-1, first + 1).squeeze(-1)
    for _ in range(cfg.n_secant):
        t_mid = t_lo - f_lo * (t_hi - t_lo) / (f_hi - f_lo).clamp(min=1e-12)
        f_mid = occupancy_in_chunks(field, c, origins + t_mid.unsqueeze(-1) * dirs, cfg.chunk)
        outside = f_mid < 0
        t_lo, f_lo = torch.where(outside, t_mid, t_lo), torch.where(outside, f_mid, f_lo)
        t_hi, f_hi = torch.where(outside, t_hi, t_mid), torch.where(outside, f_hi, f_mid)
    evaluations += b * r * cfg.n_secant
    t_surface = t_lo - f_lo * (t_hi - t_lo) / (f_hi - f_lo).clamp(min=1e-12)

    depth = torch.full_like(t_near, float("inf"))
    depth = torch.where(hit, t_surface, depth)
    depth = torch.where(inside_start, torch.zeros_like(depth), depth)
    return MarchResult(depth, hit, inside_start, t_near, t_far, evaluations)


def trace_surface(
    field: ImplicitField,
    c: torch.Tensor | None,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    cfg: MarchConfig,
) -> RayHits:
    """March (no gradients; ``cfg.method`` picks the marcher), then attach the implicit depth
    gradient where rays hit.

    origins, dirs: (B, R, 3) object frame; dirs scaled so that the ray parameter is camera depth.
    """
    if cfg.method == "grid":
        from models.grid_march import grid_march

        m = grid_march(field, c, origins, dirs, cfg)
    else:
        m = march(field, c, origins, dirs, cfg)
    hit, depth, evaluations = m.hit, m.depth, m.evaluations
    safe_depth = torch.where(hit, depth, torch.zeros_like(depth))
    needs_grad = torch.is_grad_enabled() and (
        (c is not None and c.requires_grad)
        or any(p.requires_grad for p in getattr(field, "parameters", lambda: [])())
        or origins.requires_grad
        or dirs.requires_grad
    )
    depth_out = depth
    if needs_grad:
        with torch.enable_grad():
            # Points at the (detached) depth; they carry the camera's graph if it has one.
            p = origins + safe_depth.unsqueeze(-1) * dirs
            if not p.requires_grad:
                p = p.detach().requires_grad_(True)
            logits = field.occupancy(p, c)  # graph to the field's parameters and latent
            (grad_p,) = torch.autograd.grad(logits.sum(), p, retain_graph=True)
            grad_dot = (grad_p * dirs.detach()).sum(-1)
            sign = torch.where(grad_dot < 0, -1.0, 1.0)
            grad_dot = sign * grad_dot.abs().clamp(min=cfg.min_grad)
            evaluations += hit.numel()
            d = ImplicitDepth.apply(safe_depth, logits, grad_dot.detach())
            depth_out = torch.where(hit, d, depth)
    shown = torch.where(hit, depth_out, torch.where(m.inside_start, m.t_near, m.t_far.clamp(min=0)))
    points = origins + shown.unsqueeze(-1) * dirs
    return RayHits(
        depth=depth_out,
        hit=hit,
        inside_start=m.inside_start,
        points=points,
        evaluations=evaluations,
    )


def surface_normals(
    field: ImplicitField, c: torch.Tensor | None, points: torch.Tensor, create_graph: bool = False
) -> torch.Tensor:
    """Outward unit normals -grad f / |grad f| at (B, N, 3) points -> (B, N, 3)."""
    with torch.enable_grad():
        p = points if points.requires_grad else points.detach().requires_grad_(True)
        logits = field.occupancy(p, c)
        (grad,) = torch.autograd.grad(logits.sum(), p, create_graph=create_graph)
    return torch.nn.functional.normalize(-grad, dim=-1)


@dataclass
class RenderedRays:
    """rgb: (B, R, 3) in [0, 1] with ``background`` where rays miss; plus the :class:`RayHits`."""

    rgb: torch.Tensor
    hits: RayHits


class Renderer:
    """Reference renderer: rays in, colours and depths out.

    A faster implementation (or a kaolin-backed one) provides the same two methods.
    """

    def __init__(self, cfg: MarchConfig | None = None):
        self.cfg = cfg or MarchConfig()

    def render_rays(
        self,
        field: ImplicitField,
        c: torch.Tensor | None,
        origins: torch.Tensor,
        dirs: torch.Tensor,
        background: float | torch.Tensor | str = 1.0,
    ) -> RenderedRays:
        """origins, dirs: (B, R, 3).

        background: the colour of rays that hit nothing: a scalar, a (3,) or (B, 3) colour, or
        ``"field"`` to let the decoder draw it (its colour where the ray leaves the padded cube;
        ISS trains this to white with the background loss).
        """
        hits = trace_surface(field, c, origins, dirs, self.cfg)
        color = field.rgb(hits.points, c)
        hits.evaluations += color.shape[0] * color.shape[1]
        if isinstance(background, str):
            if background != "field":
                raise ValueError(f"background must be a colour or 'field', got {background!r}")
            return RenderedRays(rgb=color, hits=hits)
        bg = torch.as_tensor(background, dtype=color.dtype, device=color.device)
        if bg.dim() == 2:  # (B, 3): one colour per batch element
            bg = bg.unsqueeze(1)
        rgb = torch.where(hits.hit.unsqueeze(-1), color, bg.expand_as(color))
        return RenderedRays(rgb=rgb, hits=hits)

    def render_images(
        self,
        field: ImplicitField,
        c: torch.Tensor | None,
        world_mat: torch.Tensor,
        camera_mat: torch.Tensor,
        scale_mat: torch.Tensor,
        height: int,
        width: int,
        pixel_convention: str = "center",
        background: float | torch.Tensor | str = 1.0,
    ) -> dict[str, torch.Tensor]:
        """Full images of B views (one latent each).

        world_mat, camera_mat, scale_mat: (B, 4, 4). Returns ``rgb`` (B, 3, H, W), ``mask``
        (B, 1, H, W) float, ``depth`` (B, 1, H, W) (inf off the object), ``evaluations``.
        """
        b = world_mat.shape[0]
        xy = pixel_coords(height, width, pixel_convention).to(world_mat.device, world_mat.dtype)
        origins, dirs = rays(xy.expand(b, -1, -1), world_mat, camera_mat, scale_mat)
        out = self.render_rays(field, c, origins, dirs, background)
        hw = (height, width)
        return {
            "rgb": out.rgb.transpose(1, 2).reshape(b, 3, *hw),
            "mask": out.hits.hit.float().reshape(b, 1, *hw),
            "depth": out.hits.depth.reshape(b, 1, *hw),
            "evaluations": torch.tensor(out.hits.evaluations),
        }
