"""Every loss of the paper, in one place: DVR's reconstruction losses, ISS's stage-1 and stage-2
losses.

Shapes: B objects, R rays each; V views of P prompts in stage 2. The DVR losses are summed
over rays and divided by B, as in DVR; the background losses are means (as in ISS). Callers
weight them with ``lambda_<name>`` (``iss3d.train.svr.weighted_total`` for the training
stages, ``iss3d.infer.stage2.guided_loss`` for stage 2).

DVR (Niemeyer et al. 2020), the SVR stage and stage 1's L_D on the decoder D:

- L_rgb (:func:`rgb_loss`): L1 colour error on rays where prediction and ground truth hit.
- L_depth (:func:`depth_loss`): L1 depth error on rays with a ground-truth depth.
- L_freespace (:func:`freespace_loss`): BCE towards empty at a random point of rays outside
  the ground-truth silhouette (:func:`random_ray_points`).
- L_occupancy (:func:`occupancy_loss`): BCE towards full inside the silhouette where the
  prediction missed.
- L_normal (:func:`normal_loss`): normal smoothness || n(p) - n(p + delta) ||.
- L_occupancy3d (:func:`occupancy_samples_loss`): 3D supervision (Occupancy Networks' loss,
  an addition; DVR has none).

ISS stage 1 (Liu et al., ICLR 2023):

- L_M (:func:`mapper_loss`): mapper M(f_I) against the SVR latent E_S(I), squared L2 (the
  paper) or mean L1 (the official code).
- L_bg (:func:`background_loss`, on marched rays :func:`background_ray_loss`): mean
  |1 - rgb| over the rays that miss the object, with the decoder-drawn background.

ISS stage 2:

- L_C (:func:`clip_loss`): CLIP consistency, per view 1 - cos(E_I(R_v), f_T) ("cosine") or
  -<E_I(R_v), f_T> ("inner", :func:`view_losses`), weighted over prompts and reduced over
  the views ("sum", the official code; "mean"; or "mean_embedding").
- L_bg per view (:func:`view_background_loss`): mean |1 - rgb| over each view's background
  pixels, reduced over the views like L_C (:func:`reduce_views`).

Stylization (shape+texture mode):

- L_P (:func:`prior_loss`): the 3D prior, mean |D_o(p) - D'_o(p)| of the tuned and the
  initial decoder's occupancy logits (or probabilities) at points p.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.nn import functional as F

from iss3d.models.march import ImplicitField
from iss3d.models.renderer import RayHits, surface_normals

__all__ = [
    "Aggregation",
    "LossKind",
    "background_loss",
    "background_ray_loss",
    "clip_loss",
    "depth_loss",
    "freespace_loss",
    "mapper_loss",
    "normal_loss",
    "occupancy_loss",
    "occupancy_samples_loss",
    "random_ray_points",
    "reduce_views",
    "rgb_loss",
    "view_background_loss",
    "view_losses",
]

#: L_C per view: "cosine" (1 - cos, ISS) or "inner" (-<e, t>, SimplifiedCLIP).
LossKind = Literal["cosine", "inner"]
#: How L_C (and stage 2's L_bg) reduce over the views.
Aggregation = Literal["mean", "sum", "mean_embedding"]


# -- DVR ------------------------------------------------------------------------------------------


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


# -- ISS stage 1 ----------------------------------------------------------------------------------


def mapper_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Stage 1's L_M between mapped features and shape latents.

    Args:
        pred: (B, D) M(f_I); target: (B, D) E_S(I).
        kind: "l2": mean over objects of the squared L2 distance ||pred - target||^2 (the
            paper); "l1": mean |pred - target| over objects and channels (the official code,
            which weights it by 2000).

    Returns:
        A scalar.
    """
    diff = pred - target
    if kind == "l2":
        return diff.pow(2).sum(-1).mean()
    if kind == "l1":
        return diff.abs().mean()
    raise ValueError(f"mapper loss kind must be 'l2' or 'l1', got {kind!r}")


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


def background_ray_loss(
    decoder, c: torch.Tensor, hits: RayHits
) -> tuple[torch.Tensor, torch.Tensor]:
    """ISS's L_bg on marched rays, with the renderer's decoder-drawn ("field") background.

    Rays that neither hit a surface nor start inside show the decoder's colour at the point
    where they leave the padded cube (``hits.points`` there), which is pushed towards white:
    mean |1 - rgb| over those rays (:func:`background_loss`).

    Args:
        decoder: an implicit field (``occupancy``, ``rgb``).
        c: (B, c_dim) latents.
        hits: the march of (B, R) rays (e.g. the third result of
            :func:`iss3d.train.svr.svr_losses`).

    Returns:
        (loss, background share): the scalar loss (0 when no ray misses; a graph to the
        decoder's colour and to ``c``) and the share of background rays.
    """
    background = ~hits.mask
    rgb = decoder.rgb(hits.points.detach(), c)
    return background_loss(rgb, background), background.float().mean()


# -- ISS stage 2 ----------------------------------------------------------------------------------


def view_losses(embeddings: torch.Tensor, targets: torch.Tensor, kind: LossKind) -> torch.Tensor:
    """Loss of each (embedding, target) pair.

    Args:
        embeddings: (N, D) image embeddings (unit length for "cosine" is not required).
        targets: (N, D) or (D,) unit text features.
        kind: "cosine": 1 - cos(e, t); "inner": -<e, t>.

    Returns:
        (N,) losses.
    """
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(embeddings, targets.expand_as(embeddings), dim=-1)
    if kind == "inner":
        return -(embeddings * targets).sum(-1)
    raise ValueError(f"unknown loss kind {kind!r}")


def clip_loss(
    embeddings: torch.Tensor,
    text: torch.Tensor,
    weights: torch.Tensor,
    kind: LossKind = "cosine",
    aggregation: Aggregation = "mean",
) -> tuple[torch.Tensor, torch.Tensor]:
    """L_C of V views against P prompts.

    Args:
        embeddings: (V, D) image embeddings (unit length, or raw for "inner").
        text: (P, D) unit text features (the targets).
        weights: (V, P) non-negative weight of prompt p for view v; each row sums to 1 (or 0:
            the view is not guided). See :meth:`iss3d.infer.guidance.PromptSchedule.weights`.
        kind: "cosine" or "inner" (:func:`view_losses`).
        aggregation: "mean" / "sum" over the guided views of the per-view losses
            l_v = sum_p w_vp L(e_v, t_p); or "mean_embedding": sum_p s_p L(e_p, t_p) with
            e_p = sum_v w_vp e_v / sum_v w_vp the weighted mean embedding of the views prompt p
            guides and s_p = sum_v w_vp / (guided views) its share.

    Returns:
        (loss scalar, per-view losses (V,) l_v, detached; 0 for unguided views).
    """
    v, p = weights.shape
    pair = view_losses(
        embeddings[:, None, :].expand(v, p, -1).reshape(v * p, -1),
        text[None].expand(v, p, -1).reshape(v * p, -1),
        kind,
    ).reshape(v, p)
    per_view = (pair * weights).sum(-1)
    guided = (weights.sum(-1) > 0).float()
    n = guided.sum().clamp(min=1.0)
    if aggregation == "mean":
        loss = per_view.sum() / n
    elif aggregation == "sum":
        loss = per_view.sum()
    elif aggregation == "mean_embedding":
        mass = weights.sum(0)  # (P,)
        used = mass > 0
        mean_emb = (weights.T @ embeddings)[used] / mass[used, None]
        loss = (view_losses(mean_emb, text[used], kind) * mass[used]).sum() / n
    else:
        raise ValueError(f"unknown aggregation {aggregation!r}")
    return loss, per_view.detach()


def view_background_loss(rgb: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Stage 2's L_bg of each view: mean over the view's background pixels of mean_c |1 - rgb|.

    Args:
        rgb: (V, N, 3) rendered colours with the decoder-drawn background (N pixels a view).
        background: (V, N) bool, the pixels whose rays meet the padded cube but miss the
            object.

    Returns:
        (V,) losses, 0 for a view without background pixels. Reduce them over the views with
        :func:`reduce_views`.
    """
    count = background.sum(-1)
    per_pixel = (1.0 - rgb).abs().mean(-1) * background
    return per_pixel.sum(-1) / count.clamp(min=1)


def reduce_views(values: torch.Tensor, aggregation: Aggregation) -> torch.Tensor:
    """Reduce per-view values (V,) like L_C: sum for "sum", else mean."""
    return values.sum() if aggregation == "sum" else values.mean()


def prior_loss(
    tuned: ImplicitField,
    initial: ImplicitField,
    c: torch.Tensor,
    points: torch.Tensor,
    target: str = "logits",
) -> torch.Tensor:
    """L_P = mean over ``points`` (1, N, 3) of |D_o(p) - D'_o(p)|, D_o the tuned decoder's
    occupancy and D'_o the initial one's (no gradient), as logits or probabilities
    (``target``). Returns a scalar."""
    with torch.no_grad():
        reference = initial.occupancy(points, c)
    current = tuned.occupancy(points, c)
    if target == "probabilities":
        current, reference = torch.sigmoid(current), torch.sigmoid(reference)
    elif target != "logits":
        raise ValueError(f"unknown prior target {target!r}")
    return (current - reference).abs().mean()
