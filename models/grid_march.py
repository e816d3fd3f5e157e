"""A fast marcher with the reference's answer: a coarse occupancy grid skips empty space.

The reference (:func:`models.renderer.march`) evaluates the decoder at all ``n_steps`` samples
of every ray. Most of them lie in empty space. This marcher

1. evaluates the decoder once per latent on a ``grid``^3 lattice over the padded cube (shared by
   every ray of that latent: all the views of a stage-2 step when they are passed as one batch
   element), and flags the cells that may hold surface: a corner logit above ``-margin``,
   dilated by one cell; the lattice itself is built coarse to fine (``grid_levels``): a lattice
   of half the side first, then only the points in its flagged cells;
2. walks the reference's samples without the decoder, keeping those whose cell (or whose next
   sample's cell) is flagged;
3. evaluates the decoder at the kept samples in order, ``window`` at a time per ray, and stops a
   ray at its first outside -> inside crossing; samples it skips count as outside;
4. refines hits with the same secant steps as the reference, on the hitting rays only.

When the grid is conservative (no sample with a non-negative logit lies in an unflagged cell),
the first crossing, and so the depth, is the reference's exactly; ``margin`` and the dilation
make that hold in practice, and tests and ``bench/`` measure the agreement on trained decoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.renderer import ImplicitField, MarchConfig, MarchResult, cube_interval

__all__ = ["candidate_cells", "grid_march", "lattice_logits"]


def lattice_logits(
    field: ImplicitField,
    c: torch.Tensor | None,
    side: int,
    half: float,
    chunk: int,
    margin: float = 0.0,
    levels: int = 1,
) -> tuple[torch.Tensor, int]:
    """Occupancy logits on a ``side``^3 lattice of [-half, half]^3, coarse to fine.

    With ``levels`` > 1 the lattice of side ``(side + 1) // 2`` is computed first (itself in
    ``levels - 1`` levels), and only the points inside its :func:`candidate_cells` at twice the
    ``margin`` are evaluated; the others are set to -inf (no cell containing them can be a
    candidate at any margin). ``levels`` = 1 evaluates every point.

    Returns:
        ((B, side, side, side) logits, index [b, i, j, k] at (x_i, y_j, z_k), x_i =
        -half + 2 half i / (side - 1); decoder evaluations spent). B = c's batch size (1 when
        c is None).
    """
    b = 1 if c is None else c.shape[0]
    axis = torch.linspace(-half, half, side, device=_device(field, c), dtype=_dtype(field, c))
    lattice = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    points = lattice.reshape(1, -1, 3).expand(b, -1, -1)
    coarse_side = (side + 1) // 2
    if levels <= 1 or coarse_side < 3:
        step = max(1, chunk // max(b, 1))
        logits = torch.cat(
            [field.occupancy(points[:, i : i + step], c) for i in range(0, side**3, step)], dim=1
        )
        return logits.reshape(b, side, side, side), logits.numel()
    # Logits change twice as much across a cell twice as wide: the coarse lattice's margin doubles.
    coarse, spent = lattice_logits(field, c, coarse_side, half, chunk, 2 * margin, levels - 1)
    selected = _cell_flags(candidate_cells(coarse, 2 * margin), points, half)
    bi, ni, values = _evaluate_selected(field, c, points, selected, chunk)
    logits = torch.full((b, side**3), -torch.inf, device=points.device, dtype=points.dtype)
    logits[bi, ni] = values
    return logits.reshape(b, side, side, side), spent + len(values)


def candidate_cells(logits: torch.Tensor, margin: float) -> torch.Tensor:
    """Cells that may hold surface or inside: any corner logit > -margin, dilated by one cell.

    Args:
        logits: (B, G, G, G) lattice logits.
        margin: logit margin (larger: more conservative, more evaluations).

    Returns:
        (B, G-1, G-1, G-1) bool.
    """
    corners = F.max_pool3d(logits.unsqueeze(1), kernel_size=2, stride=1)  # (B, 1, G-1, ...)
    busy = (corners > -margin).float()
    return F.max_pool3d(busy, kernel_size=3, stride=1, padding=1).squeeze(1) > 0


def _device(field, c) -> torch.device:
    if c is not None:
        return c.device
    return next(iter(field.parameters())).device


def _dtype(field, c) -> torch.dtype:
    if c is not None:
        return c.dtype
    return next(iter(field.parameters())).dtype


def _cell_flags(cells: torch.Tensor, points: torch.Tensor, half: float) -> torch.Tensor:
    """Look up (B, N, 3) points in (B, C, C, C) cell flags -> (B, N) bool."""
    n_cells = cells.shape[-1]
    idx = ((points + half) / (2 * half) * n_cells).floor().long().clamp(0, n_cells - 1)
    flat = (idx[..., 0] * n_cells + idx[..., 1]) * n_cells + idx[..., 2]
    return cells.reshape(cells.shape[0], -1).gather(1, flat)


def _evaluate_selected(
    field: ImplicitField,
    c: torch.Tensor | None,
    points: torch.Tensor,
    selected: torch.Tensor,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Logits at the selected points only.

    Args:
        points: (B, N, 3). selected: (B, N) bool.

    Returns:
        (batch index (K,), point index (K,), logits (K,)), K = selected.sum(); each batch
        element's points are evaluated as one padded (B, max count, 3) call.
    """
    bi, ni = selected.nonzero(as_tuple=True)
    counts = selected.sum(dim=1)
    k_max = int(counts.max()) if counts.numel() else 0
    if k_max == 0:
        return bi, ni, points.new_zeros(0)
    offsets = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(bi), device=points.device) - offsets[bi]
    padded = points.new_zeros(points.shape[0], k_max, 3)
    padded[bi, slot] = points[bi, ni]
    step = max(1, chunk // max(points.shape[0], 1))
    logits = torch.cat(
        [field.occupancy(padded[:, i : i + step], c) for i in range(0, k_max, step)], dim=1
    )
    return bi, ni, logits[bi, slot]


@torch.no_grad()
def grid_march(
    field: ImplicitField,
    c: torch.Tensor | None,
    origins: torch.Tensor,
    dirs: torch.Tensor,
    cfg: MarchConfig,
) -> MarchResult:
    """The reference march's result with far fewer decoder evaluations.

    Args:
        field: occupancy field. c: (B, c_dim) latents (or None).
        origins, dirs: (B, R, 3) object-frame rays (ray parameter = camera depth).
        cfg: the reference settings (``n_steps``, ``n_secant``, ``padding``, ``chunk``) and
            the grid's (``grid``, ``margin``, ``window``).

    Returns:
        :class:`models.renderer.MarchResult`; ``evaluations`` counts the lattice, the
        searched samples and the secant steps.
    """
    b, r = origins.shape[:2]
    s = cfg.n_steps
    half = 0.5 + cfg.padding / 2
    t_near, t_far = cube_interval(origins, dirs, half)
    valid = t_far > t_near
    lattice, evaluations = lattice_logits(
        field, c, cfg.grid, half, cfg.chunk, cfg.margin, cfg.grid_levels
    )
    cells = candidate_cells(lattice, cfg.margin)

    steps = torch.linspace(0.0, 1.0, s, device=origins.device, dtype=origins.dtype)
    t = t_near.unsqueeze(-1) + (t_far - t_near).clamp(min=0).unsqueeze(-1) * steps  # (B, R, S)
    points = (origins.unsqueeze(-2) + t.unsqueeze(-1) * dirs.unsqueeze(-2)).reshape(b, r * s, 3)
    flagged = _cell_flags(cells, points, half).reshape(b, r, s) & valid.unsqueeze(-1)
    # A crossing (k, k + 1) needs f[k + 1] >= 0, so sample k + 1 is flagged: keep k too.
    needed = flagged.clone()
    needed[..., :-1] |= flagged[..., 1:]
    rank = torch.cumsum(needed, dim=-1) - 1  # order of the needed samples along each ray
    n_needed = needed.sum(dim=-1)

    f = torch.full((b, r, s), -torch.inf, device=origins.device, dtype=origins.dtype)
    active = valid & (n_needed > 0)
    window = 0
    while bool(active.any()):
        lo = window * cfg.window
        chosen = needed & active.unsqueeze(-1) & (rank >= lo) & (rank < lo + cfg.window)
        bi, ni, logits = _evaluate_selected(field, c, points, chosen.reshape(b, r * s), cfg.chunk)
        f.view(b, r * s)[bi, ni] = logits
        evaluations += len(logits)
        crossed = ((f[..., :-1] < 0) & (f[..., 1:] >= 0)).any(dim=-1)
        starts_inside = f[..., 0] >= 0
        window += 1
        active = active & ~crossed & ~starts_inside & (n_needed > window * cfg.window)

    inside_start = valid & (f[..., 0] >= 0)
    crossing = (f[..., :-1] < 0) & (f[..., 1:] >= 0)
    hit = valid & ~inside_start & crossing.any(dim=-1)
    first = crossing.float().argmax(dim=-1, keepdim=True)
    t_lo, t_hi = t.gather(-1, first).squeeze(-1), t.gather(-1, first + 1).squeeze(-1)
    f_lo, f_hi = f.gather(-1, first).squeeze(-1), f.gather(-1, first + 1).squeeze(-1)
    for _ in range(cfg.n_secant):
        t_mid = t_lo - f_lo * (t_hi - t_lo) / (f_hi - f_lo).clamp(min=1e-12)
        mid_points = origins + torch.where(hit, t_mid, 0.0).unsqueeze(-1) * dirs
        bi, ri, f_sel = _evaluate_selected(field, c, mid_points, hit, cfg.chunk)
        f_mid = torch.zeros_like(t_lo)
        f_mid[bi, ri] = f_sel
        evaluations += len(f_sel)
        outside = f_mid < 0
        t_lo, f_lo = torch.where(outside, t_mid, t_lo), torch.where(outside, f_mid, f_lo)
        t_hi, f_hi = torch.where(outside, t_hi, t_mid), torch.where(outside, f_hi, f_mid)
    t_surface = t_lo - f_lo * (t_hi - t_lo) / (f_hi - f_lo).clamp(min=1e-12)

    depth = torch.full_like(t_near, float("inf"))
    depth = torch.where(hit, t_surface, depth)
    depth = torch.where(inside_start, torch.zeros_like(depth), depth)
    return MarchResult(depth, hit, inside_start, t_near, t_far, evaluations)
