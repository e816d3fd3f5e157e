"""The grid marcher against the reference: same hits, same depths, same gradients, fewer calls."""

import numpy as np
import pytest
import torch
from torch import nn

from data.cameras import intrinsics, look_at, orbit_eyes, pixel_coords, rays
from data.errors import UserError
from models.decoder import Decoder
from models.grid_march import candidate_cells, grid_march, lattice_logits
from models.renderer import MarchConfig, Renderer, march, trace_surface


class RodsField(nn.Module):
    """A ball on four thin legs (radius 0.012, thinner than a 48-lattice cell of 0.023):
    logit = k * max over parts of (radius - distance)."""

    def __init__(self, k: float = 60.0):
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))
        self.legs = torch.tensor([[0.2, 0.2], [0.2, -0.2], [-0.2, 0.2], [-0.2, -0.2]])

    def occupancy(self, points, c):
        ball = 0.2 - (points - torch.tensor([0.0, 0.15, 0.0])).norm(dim=-1)
        xz = points[..., [0, 2]].unsqueeze(-2) - self.legs  # (B, N, 4, 2)
        leg = 0.012 - xz.norm(dim=-1)
        leg = torch.minimum(leg, 0.4 - points[..., 1:2].abs()).amax(dim=-1)
        return self.k * torch.maximum(ball, leg)

    def rgb(self, points, c):
        return torch.sigmoid(points * 3)


def view_rays(n_views: int, res: int, distance: float = 1.6):
    azimuths = np.linspace(0.0, 360.0, n_views, endpoint=False) + 20.0
    eyes = orbit_eyes(azimuths, np.full(n_views, 25.0), distance)
    wm = torch.tensor(np.stack([look_at(e) for e in eyes]), dtype=torch.float32)
    cm = torch.tensor(intrinsics(), dtype=torch.float32).expand(n_views, 4, 4)
    xy = pixel_coords(res, res).expand(n_views, -1, -1)
    o, d = rays(xy, wm, cm, torch.eye(4).expand(n_views, 4, 4))
    return o.reshape(1, -1, 3), d.reshape(1, -1, 3)


def compare(field, c, origins, dirs, cfg):
    ref = march(field, c, origins, dirs, cfg)
    fast = grid_march(field, c, origins, dirs, MarchConfig(**{**vars(cfg), "method": "grid"}))
    both = ref.hit & fast.hit
    depth_err = (ref.depth[both] - fast.depth[both]).abs().max() if both.any() else 0.0
    agree = (ref.hit == fast.hit).float().mean().item()
    inside_agree = bool((ref.inside_start == fast.inside_start).all())
    return ref, fast, agree, float(depth_err), inside_agree


def test_thin_legs_same_answer_with_far_fewer_evaluations():
    origins, dirs = view_rays(4, 48)
    cfg = MarchConfig(n_steps=128, n_secant=8)
    ref, fast, agree, depth_err, inside_agree = compare(RodsField(), None, origins, dirs, cfg)
    assert ref.hit.float().mean() > 0.05  # the scene is visible
    assert agree >= 0.995 and depth_err < 1e-3 and inside_agree
    assert fast.evaluations < ref.evaluations / 4


class BumpyDecoder(nn.Module):
    """A random DVR decoder's logits added to a ball's: random latent-dependent surfaces that
    stay inside the cube."""

    def __init__(self, c_dim: int):
        super().__init__()
        self.decoder = Decoder(c_dim=c_dim, hidden=32, n_blocks=2)

    def occupancy(self, points, c):
        return 3 * self.decoder.occupancy(points, c) + 20 * (0.3 - points.norm(dim=-1))

    def rgb(self, points, c):
        return self.decoder.rgb(points, c)


@pytest.mark.parametrize("seed", [0, 1])
def test_random_decoders_same_answer(seed):
    torch.manual_seed(seed)
    decoder = BumpyDecoder(c_dim=8)
    c = torch.randn(2, 8)
    origins, dirs = view_rays(3, 24)
    origins, dirs = origins.expand(2, -1, -1), dirs.expand(2, -1, -1)
    cfg = MarchConfig(n_steps=64, n_secant=6)
    ref, _, agree, depth_err, inside_agree = compare(decoder, c, origins, dirs, cfg)
    assert 0.02 < ref.hit.float().mean() < 0.98, "degenerate scene"
    assert agree >= 0.995 and depth_err < 1e-3 and inside_agree


def test_same_depth_gradients_as_the_reference():
    field = RodsField()
    origins, dirs = view_rays(2, 24)
    grads = []
    for method in ("dense", "grid"):
        field.zero_grad()
        hits = trace_surface(field, None, origins, dirs, MarchConfig(64, 8, method=method))
        hits.depth[hits.hit].sum().backward()
        grads.append(field.k.grad.clone())
    assert grads[0].abs() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_renderer_images_match():
    wm = torch.tensor(look_at(np.array([0.9, 0.8, 1.1])), dtype=torch.float32)[None]
    cm = torch.tensor(intrinsics(), dtype=torch.float32)[None]
    images = [
        Renderer(MarchConfig(128, 8, method=m)).render_images(
            RodsField(), None, wm, cm, torch.eye(4)[None], 32, 32
        )
        for m in ("dense", "grid")
    ]
    assert (images[0]["mask"] == images[1]["mask"]).float().mean() >= 0.995
    assert images[1]["evaluations"] < images[0]["evaluations"]
    same = (images[0]["mask"] > 0) & (images[1]["mask"] > 0)
    assert (images[0]["rgb"] - images[1]["rgb"]).abs().amax(dim=1, keepdim=True)[same].max() < 1e-3


def test_candidate_cells_cover_inside_and_dilate():
    logits = -10 * torch.ones(1, 6, 6, 6)
    logits[0, 3, 3, 3] = 1.0  # one inside vertex
    cells = candidate_cells(logits, margin=0.5)
    assert cells.shape == (1, 5, 5, 5)
    # The 8 cells touching the vertex, dilated by one: cells 1..4 on each axis.
    expected = torch.zeros(5, 5, 5, dtype=torch.bool)
    expected[1:5, 1:5, 1:5] = True
    assert torch.equal(cells[0], expected)


def test_lattice_matches_direct_evaluation():
    field = RodsField()
    grid, evaluations = lattice_logits(field, None, 5, 0.55, chunk=7)
    assert evaluations == 5**3
    axis = torch.linspace(-0.55, 0.55, 5)
    p = torch.stack([axis[1], axis[4], axis[2]])[None, None]
    torch.testing.assert_close(grid[0, 1, 4, 2], field.occupancy(p, None)[0, 0])


def test_config_rejects_unknown_method():
    with pytest.raises(UserError, match="method"):
        MarchConfig(method="sphere-tracing")


@pytest.mark.parametrize(("side", "levels"), [(48, 2), (48, 3), (33, 2)])
def test_coarse_to_fine_lattice_flags_the_same_cells_with_fewer_evaluations(side, levels):
    field = RodsField()  # legs thinner than a cell of the coarsest lattice
    full, n_full = lattice_logits(field, None, side, 0.55, chunk=4096)
    fast, n_fast = lattice_logits(field, None, side, 0.55, chunk=4096, margin=2.0, levels=levels)
    assert torch.equal(candidate_cells(full, 2.0), candidate_cells(fast, 2.0))
    evaluated = torch.isfinite(fast)
    torch.testing.assert_close(fast[evaluated], full[evaluated])
    # The coarse levels' evaluations are counted too.
    assert int(evaluated.sum()) < n_fast < 0.6 * n_full


def test_shipped_decoder_same_answer_at_the_default_settings():
    """The trained decoder that stage 2 renders, at the latent of "a blue chair" (thin legs)."""
    from bench.bench_render import PROMPTS, shipped_latents

    decoder, latents = shipped_latents(torch.device("cpu"))
    latents = latents[PROMPTS.index("a blue chair")].unsqueeze(0)
    origins, dirs = view_rays(4, 48, distance=1.8)  # (1, R, 3): one latent
    ref, fast, agree, depth_err, inside_agree = compare(
        decoder, latents, origins, dirs, MarchConfig(n_steps=128, n_secant=8)
    )
    assert ref.hit.float().mean() > 0.05
    assert agree >= 0.995 and depth_err < 1e-3 and inside_agree
    assert fast.evaluations < ref.evaluations / 5
