"""Reconstruction metrics shared by validation, ``iss3d eval`` and later stages.

All functions are plain tensor code (no Lightning) and return one value per batch element.
"""

from __future__ import annotations

import torch

from iss3d.models.march import ImplicitField, occupancy_in_chunks

__all__ = ["depth_l1", "iou", "mask_iou", "occupancy_iou"]


def iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boolean sets, per batch element.

    Args:
        pred, gt: (B, ...) bool (or 0/1) tensors of the same shape.

    Returns:
        (B,) float32: |pred & gt| / |pred | gt|, and 1 where both are empty (a correct empty
        prediction).
    """
    if pred.shape != gt.shape:
        raise ValueError(f"iou: shapes differ, {tuple(pred.shape)} vs {tuple(gt.shape)}")
    p = pred.reshape(pred.shape[0], -1).bool()
    g = gt.reshape(gt.shape[0], -1).bool()
    inter = (p & g).sum(-1).float()
    union = (p | g).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@torch.no_grad()
def occupancy_iou(
    decoder: ImplicitField,
    c: torch.Tensor | None,
    points: torch.Tensor,
    inside: torch.Tensor,
    chunk: int = 65536,
) -> torch.Tensor:
    """Volumetric IoU of the decoder's occupancy (logit > 0, i.e. p > 0.5) against ground truth.

    Args:
        decoder: anything with ``occupancy(points (B, N, 3), c) -> (B, N)`` logits.
        c: (B, c_dim) latents (None for an unconditional decoder).
        points: (B, P, 3) object-frame points; for the usual IoU use the uniform samples in the
            padded cube (the first ``n_uniform`` of :class:`iss3d.data.records.OccupancySamples`).
        inside: (B, P) bool ground-truth occupancy of ``points``.
        chunk: points per decoder call (over the whole batch).

    Returns:
        (B,) float32 IoU in [0, 1].
    """
    logits = occupancy_in_chunks(decoder, c, points, chunk)
    return iou(logits > 0, inside.to(logits.device))


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Silhouette IoU per image: pred, gt (B, 1, H, W) or (B, H, W), > 0.5 is foreground -> (B,)."""
    return iou(pred > 0.5, gt > 0.5)


def depth_l1(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean |pred - gt| camera depth over pixels where both are finite, per image -> (B,).

    pred, gt: (B, ...) depth with inf off the object. Images with no such pixel give NaN.
    """
    p = pred.reshape(pred.shape[0], -1)
    g = gt.reshape(gt.shape[0], -1)
    both = torch.isfinite(p) & torch.isfinite(g)
    diff = torch.where(both, p - g, torch.zeros_like(p)).abs().sum(-1)
    count = both.sum(-1)
    return torch.where(count > 0, diff / count.clamp(min=1), torch.full_like(diff, float("nan")))
