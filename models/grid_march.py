"""A fast marcher with the reference's answer: a coarse occupancy grid skips empty space.

The reference (:func:`iss3d.models.march.march`) evaluates the decoder at all ``n_steps`` samples of
every ray. Most of them lie in empty space. This marcher

1. evaluates the decoder once per latent on a ``grid``^3 lattice over the padded cube (shared by
   every ray of that latent: all the views of one latent are marched as one batch element),
   and flags the cells that may hold surface: a corner logit above ``-margin``, dilated by one
   cell. The lattice is built coarse to fine (``grid_levels``): a lattice of half the side
   first, then its flagged cells at full resolution, grown until every neighbour of a lattice
   point above ``-margin`` is known, so that a surface the coarse level found is found whole;
2. walks the reference's samples without the decoder, keeping those whose cell (or whose next
   sample's cell) is flagged, and every sample outside the lattice (``outside_cube: march``);
3. evaluates the decoder at the kept samples in order, ``window`` at a time per ray, and stops a
   ray at its first outside -> inside crossing between two evaluated samples; an evaluated
   inside sample whose predecessor was skipped sends the march back to evaluate it, so a
   crossing is never taken against a sample whose logit is unknown;
4. refines hits with the same secant steps as the reference
   (:func:`iss3d.models.march.secant_depth`), on the hitting rays only.

Every depth it returns is finite on a hit, and a crossing it finds is a crossing of the
reference's samples. When the grid is conservative (no sample with a non-negative logit lies in
an unflagged cell), the first crossing, and so the depth, is the reference's exactly; ``margin``,
the dilation and the growth make that hold on the cases tests and ``bench/`` measure (trained and
random decoders, thin parts).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from iss3d.models.march import (
    ImplicitField,
    MarchConfig,
    MarchResult,
    first_crossing,
    march_depth,
    ray_samples,
    secant_depth,
)

__all__ = ["candidate_cells", "grid_march", "lattice_logits"]


def lattice_logits(
    field: ImplicitField,
    c: torch.Tensor | None,
    side: int,
    half: float,
    chunk: int,
    margin: float = 0.0,
    levels: int = 1,
    like: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Occupancy logits on a ``side``^3 lattice of [-half, half]^3, coarse to fine.

    With ``levels`` > 1 the lattice of side ``(side + 1) // 2`` is computed first (itself in
    ``levels - 1`` levels) and only the points inside its :func:`candidate_cells` at twice the
    ``margin`` are evaluated; then, until none is left, every unevaluated lattice neighbour
    (26-neighbourhood) of an evaluated point with a logit above ``-margin`` is evaluated too.
    Points never evaluated are set to -inf. ``levels`` = 1 evaluates every point. The lattice
    takes the device and dtype of ``like`` (default: ``c``'s, else the field's parameters').

    Returns:
        ((B, side, side, side) logits, index [b, i, j, k] at (x_i, y_j, z_k), x_i =
        -half + 2 half i / (side - 1); decoder evaluations spent). B = c's batch size (1 when
        c is None).
    """
    b = 1 if c is None else c.shape[0]
    if like is None:
        like = c if c is not None else next(iter(field.parameters()))
    axis = torch.linspace(-half, half, side, device=like.device, dtype=like.dtype)
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
    coarse, spent = lattice_logits(field, c, coarse_side, half, chunk, 2 * margin, levels - 1, like)
    selected = _cell_flags(candidate_cells(coarse, 2 * margin), points, half)
    logits = torch.full((b, side**3), -torch.inf, device=points.device, dtype=points.dtype)
    evaluated = torch.zeros_like(selected)
    while bool(selected.any()):
        bi, ni, values = _evaluate_selected(field, c, points, selected, chunk)
        logits[bi, ni] = values
        evaluated |= selected
        spent += len(values)
        busy = (logits > -margin).reshape(b, 1, side, side, side).float()
        near = F.max_pool3d(busy, kernel_size=3, stride=1, padding=1).reshape(b, -1) > 0
        selected = near & ~evaluated
    return logits.reshape(b, side, side, side), spent


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


def _cell_flags(cells: torch.Tensor, points: torch.Tensor, half: float) -> torch.Tensor:
    """Look up (B, N, 3) points in (B, C, C, C) cell flags -> (B, N) bool; points outside
    [-half, half]^3 are flagged (the lattice cannot rule them out)."""
    n_cells = cells.shape[-1]
    idx = ((points + half) / (2 * half) * n_cells).floor().long().clamp(0, n_cells - 1)
    flat = (idx[..., 0] * n_cells + idx[..., 1]) * n_cells + idx[..., 2]
    outside = (points.abs() > half).any(dim=-1)
    return cells.reshape(cells.shape[0], -1).gather(1, flat) | outside


def _evaluate_selected(
    field: ImplicitField,
    c: torch.Tensor | None,
    points: torch.Tensor,
    selected: torch.Tensor,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits at the selected points only.

    Args:
        points: (B, N, 3). selected: (B, N) bool.

    Returns:
        (batch index (K,), point index (K,), logits (K,) in the points' dtype (autocast may
        decode in a lower one)), K = selected.sum(); each batch element's points are evaluated
        as one padded (B, max count, 3) call.
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
    return bi, ni, logits[bi, slot].to(points.dtype)


class _Samples:
    """The logits of one march's samples, filled in as they are evaluated.

    points: (B, R * S, 3); f: (B, R, S) logits (-inf until evaluated); evaluated: (B, R, S).
    """

    def __init__(self, field, c, points: torch.Tensor, shape: tuple[int, int, int], chunk: int):
        self.field, self.c, self.points, self.chunk = field, c, points, chunk
        self.f = torch.full(shape, -torch.inf, device=points.device, dtype=points.dtype)
        self.evaluated = torch.zeros(shape, dtype=torch.bool, device=points.device)
        self.spent = 0

    def evaluate(self, chosen: torch.Tensor) -> None:
        """Evaluate the (B, R, S) ``chosen`` samples that are not evaluated yet."""
        chosen = chosen & ~self.evaluated
        b = chosen.shape[0]
        bi, ni, logits = _evaluate_selected(
            self.field, self.c, self.points, chosen.reshape(b, -1), self.chunk
        )
        self.f.view(b, -1)[bi, ni] = logits
        self.evaluated |= chosen
        self.spent += len(logits)

    def backtrack(self) -> None:
        """Until none is left, evaluate the unevaluated predecessor of every evaluated inside
        sample (the grid skipped a sample it should not have: walk back to the real crossing)."""
        while True:
            orphan = torch.zeros_like(self.evaluated)
            orphan[..., :-1] = self.evaluated[..., 1:] & (self.f[..., 1:] >= 0)
            orphan &= ~self.evaluated
            if not bool(orphan.any()):
                return
            self.evaluate(orphan)


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
        field: occupancy field. c: (B, c_dim) latents, or (1, c_dim) (or None) for one field
            seen by every row: then all rows are marched as one batch element with one lattice.
        origins, dirs: (B, R, 3) object-frame rays (ray parameter = camera depth).
        cfg: the reference settings (``n_steps``, ``n_secant``, ``padding``, ``chunk``,
            ``outside_cube``, ``depth_range``) and the grid's (``grid``, ``margin``,
            ``window``, ``grid_levels``).

    Returns:
        :class:`iss3d.models.march.MarchResult`; ``evaluations`` counts the lattice, the searched
        samples and the secant steps.
    """
    b, r = origins.shape[:2]
    if b > 1 and (c is None or c.shape[0] == 1):
        flat = grid_march(field, c, origins.reshape(1, b * r, 3), dirs.reshape(1, b * r, 3), cfg)
        return flat.reshape(b, r)
    s = cfg.n_steps
    t, marched, t_end = ray_samples(origins, dirs, cfg)
    lattice, lattice_spent = lattice_logits(
        field, c, cfg.grid, cfg.half, cfg.chunk, cfg.margin, cfg.grid_levels, like=origins
    )
    cells = candidate_cells(lattice, cfg.margin)
    points = (origins.unsqueeze(-2) + t.unsqueeze(-1) * dirs.unsqueeze(-2)).reshape(b, r * s, 3)
    flagged = _cell_flags(cells, points, cfg.half).reshape(b, r, s) & marched.unsqueeze(-1)
    # A crossing (k, k + 1) needs f[k + 1] >= 0, so sample k + 1 is flagged: keep k too.
    needed = flagged.clone()
    needed[..., :-1] |= flagged[..., 1:]
    rank = torch.cumsum(needed, dim=-1) - 1  # order of the needed samples along each ray
    n_needed = needed.sum(dim=-1)

    samples = _Samples(field, c, points, (b, r, s), cfg.chunk)
    active = marched & (n_needed > 0)
    window = 0
    while bool(active.any()):
        lo = window * cfg.window
        samples.evaluate(needed & active.unsqueeze(-1) & (rank >= lo) & (rank < lo + cfg.window))
        samples.backtrack()
        inside_start, hit, _ = first_crossing(samples.f, marched, samples.evaluated)
        window += 1
        active = active & ~hit & ~inside_start & (n_needed > window * cfg.window)

    f = samples.f
    inside_start, hit, first = first_crossing(f, marched, samples.evaluated)

    def evaluate(p: torch.Tensor, rays: torch.Tensor) -> tuple[torch.Tensor, int]:
        bi, ri, values = _evaluate_selected(field, c, p, rays, cfg.chunk)
        out = torch.zeros(p.shape[:2], device=p.device, dtype=p.dtype)
        out[bi, ri] = values
        return out, len(values)

    t_surface, secant_spent = secant_depth(evaluate, origins, dirs, t, f, first, hit, cfg.n_secant)
    depth = march_depth(inside_start, hit, t_surface)
    evaluations = lattice_spent + samples.spent + secant_spent
    return MarchResult(depth, hit, inside_start, t[..., 0], t_end, evaluations)
