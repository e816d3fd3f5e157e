"""Differentiable rendering of an occupancy/colour field along camera rays, DVR's way.

A march (:mod:`iss3d.models.march`, or the faster :mod:`iss3d.models.grid_march` with the same
answer) finds each ray's first surface crossing without gradients. The depth then gets its
gradient by implicit differentiation (:class:`ImplicitDepth`): on the surface f(o + d w) = 0, so
``dd/dtheta = -(df/dtheta) / (grad_p f . w)``.

Silhouette convention, everywhere (renders, losses, metrics): a ray meets the object when it
crosses the surface or starts inside it (:attr:`RayHits.mask`, finite depth), and the pixel
shows the field's colour there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iss3d.data.cameras import pixel_coords, rays
from iss3d.models.grid_march import grid_march
from iss3d.models.march import ImplicitField, MarchConfig, MarchResult, march


@dataclass
class RayHits:
    """Per-ray result of a march.

    depth: (B, R) camera-space depth of the first surface crossing; 0 where the ray starts
        inside the object, inf where it misses. Differentiable where ``hit`` (implicit gradient).
    hit: (B, R) bool, a surface crossing was found. inside_start: (B, R) bool, the ray's first
        sample is inside the object (depth 0).
    points: (B, R, 3) object-frame points whose colour the pixel shows: the surface point
        where ``hit`` (differentiable), the first sample where ``inside_start`` (the cube entry,
        where the ray meets the object), else the point where the ray leaves the padded cube
        (colour of a decoder-drawn background; a point on the ray outside the cube for rays
        that miss it).
    evaluations: decoder point evaluations spent (for benchmarks).
    """

    depth: torch.Tensor
    hit: torch.Tensor
    inside_start: torch.Tensor
    points: torch.Tensor
    evaluations: int

    @property
    def mask(self) -> torch.Tensor:
        """(B, R) bool: the ray meets the object (a surface crossing or a start inside), i.e.
        ``isfinite(depth)``: the silhouette convention of every render, loss and metric."""
        return self.hit | self.inside_start


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


def run_march(
    field: ImplicitField,
    c: torch.Tensor | None,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    cfg: MarchConfig,
) -> MarchResult:
    """The march ``cfg.method`` names, without gradients: the reference
    (:func:`iss3d.models.march.march`) or the grid march
    (:func:`iss3d.models.grid_march.grid_march`)."""
    marcher = grid_march if cfg.method == "grid" else march
    return marcher(field, c, origins, dirs, cfg)


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
    m = run_march(field, c, origins, dirs, cfg)
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
    exit_t = m.t_end.clamp(min=0)
    shown = torch.where(hit, depth_out, torch.where(m.inside_start, m.t_start, exit_t))
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
    """Rays in, colours and depths out, with the march ``cfg.method`` names.

    Another implementation (a kaolin-backed one) provides the same two methods.
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
        """origins, dirs: (B, R, 3); c: (B, c_dim), or (1, c_dim) for every row.

        Pixels show the field's colour where the ray meets the object (``hits.mask``: at the
        surface, or at the first sample for a ray that starts inside), and ``background``
        elsewhere: a scalar, a (3,) or (B, 3) colour, or ``"field"`` to let the decoder draw it
        (its colour where the ray leaves the padded cube; ISS trains this to white with the
        background loss).
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
        rgb = torch.where(hits.mask.unsqueeze(-1), color, bg.expand_as(color))
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
        """Full images of B views: c (B, c_dim), one latent per view, or (1, c_dim) for all.

        world_mat, camera_mat, scale_mat: (B, 4, 4). Returns ``rgb`` (B, 3, H, W), ``mask``
        (B, 1, H, W) float, 1 where the ray meets the object (:attr:`RayHits.mask`, i.e.
        finite depth), ``depth`` (B, 1, H, W) (0 where the ray starts inside, inf off the
        object), ``evaluations``.
        """
        b = world_mat.shape[0]
        xy = pixel_coords(height, width, pixel_convention).to(world_mat.device, world_mat.dtype)
        origins, dirs = rays(xy.expand(b, -1, -1), world_mat, camera_mat, scale_mat)
        out = self.render_rays(field, c, origins, dirs, background)
        hw = (height, width)
        return {
            "rgb": out.rgb.transpose(1, 2).reshape(b, 3, *hw),
            "mask": out.hits.mask.float().reshape(b, 1, *hw),
            "depth": out.hits.depth.reshape(b, 1, *hw),
            "evaluations": torch.tensor(out.hits.evaluations),
        }
