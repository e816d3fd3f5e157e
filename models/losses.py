"""DVR's reconstruction losses and ISS's background loss.

Shapes: B objects, R rays each. All DVR losses are summed over rays and divided by B, as in
DVR; the background loss is a mean (as in ISS). Callers weight them with ``lambda_<name>``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from iss3d.models.march import ImplicitField
from iss3d.models.renderer import surface_normals


def rgb_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 colour error where both the prediction and the ground truth hit the object.

    pred, gt: (B, R, 3) in [0, 1]; mask: (B, R) bool.
    """
    return (pred - gt).abs().sum(-1).mul(mask).sum() / pred.shape[0]


def depth_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 depth error on ``mask`` (B, R) bool.

    pred, gt: (B, R) camera depth (inf allowed off the mask).
    """
    diff = torch.where(mask, pred - gt, torch.zeros_like(pred))
    return diff.abs().sum() / pred.shape[0]


def random_ray_points(
    origins: torch.Tensor,
    dirs: torch.Tensor,
    t_near: torch.Tensor,
    t_far: torch.Tensor,
    generator=None,
) -> torch.Tensor:
    """One uniformly random point per ray inside its padded-cube interval -> (B, R, 3)."""
    u = torch.rand(t_near.shape, generator=generator, device=t_near.device, dtype=t_near.dtype)
    t = t_near + u * (t_far - t_near).clamp(min=0)
    return origins + t.unsqueeze(-1) * dirs


def _masked_bce(field, c, points, mask, target: float) -> torch.Tensor:
    logits = field.occupancy(points, c)
    goal = torch.full_like(logits, target)
    bce = F.binary_cross_entropy_with_logits(logits, goal, reduction="none")
    return (bce * mask).sum() / points.shape[0]


def freespace_loss(
    field: ImplicitField, c: torch.Tensor | None, points: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """BCE pushing the occupancy at ``points`` (B, R, 3) to empty where ``mask`` (B, R) is set
    (rays outside the ground-truth silhouette)."""
    return _masked_bce(field, c, points, mask, 0.0)


def occupancy_loss(
    field: ImplicitField, c: torch.Tensor | None, points: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """BCE pushing the occupancy at ``points`` (B, R, 3) to full where ``mask`` (B, R) is set
    (rays inside the ground-truth silhouette that the prediction missed)."""
    return _masked_bce(field, c, points, mask, 1.0)


def occupancy_samples_loss(
    field: ImplicitField, c: torch.Tensor | None, points: torch.Tensor, inside: torch.Tensor
) -> torch.Tensor:
    """3D supervision (Occupancy Networks' loss, not DVR's): BCE of the occupancy at ground-truth
    samples ``points`` (B, P, 3) towards ``inside`` (B, P) in {0, 1}, summed / B."""
    logits = field.occupancy(points, c)
    bce = F.binary_cross_entropy_with_logits(logits, inside.to(logits.dtype), reduction="sum")
    return bce / points.shape[0]


def normal_loss(
    field: ImplicitField,
    c: torch.Tensor | None,
    points: torch.Tensor,
    mask: torch.Tensor,
    sigma: float = 0.01,
) -> torch.Tensor:
    """Normal smoothness || n(p) - n(p + delta) ||, delta ~ N(0, sigma^2), at surface points.

    points: (B, R, 3) predicted surface points; mask: (B, R) bool where they are valid.
    """
    if not mask.any():
        return points.new_zeros(())
    jitter = points + sigma * torch.randn_like(points)
    n0 = surface_normals(field, c, points.detach(), create_graph=True)
    n1 = surface_normals(field, c, jitter.detach(), create_graph=True)
    return (n0 - n1).norm(dim=-1).mul(mask).sum() / points.shape[0]


def background_loss(
    rgb: torch.Tensor, background_mask: torch.Tensor, target: float = 1.0
) -> torch.Tensor:
    """ISS's background loss: mean |target - rgb| over background rays (white by default).

    rgb: (B, R, 3) rendered colours with the decoder-drawn background; background_mask: (B, R).
    """
    count = background_mask.sum()
    if count == 0:
        return rgb.new_zeros(())
    return (target - rgb).abs().mean(-1).mul(background_mask).sum() / count
