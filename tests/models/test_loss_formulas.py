"""Every loss of the paper pinned to its formula, computed by hand on a few rays and points.

The expected values are written out term by term from the formulas (plain arithmetic with
``math``), never by calling the code under test or by re-vectorising it. The formulas, from
DESIGN.md section 1 and the reference code:

- DVR (Niemeyer et al. 2020; ``im2mesh/losses.py`` and ``im2mesh/dvr/training.py``): each loss
  is reduced with ``sum`` and divided by the batch size B. rgb: L1 summed over the 3 channels,
  on rays where both the prediction and the GT mask hit (``l1_loss(..., feat_dim=True)``);
  depth: L1 (``feat_dim=False``); freespace: BCE of the logit towards 0 (empty); occupancy:
  BCE towards 1 (full); normal: ``torch.norm(n(p) - n(p + delta), dim=-1).sum()``, the plain
  (not squared) norm. Weights: rgb 1, depth 10 (the combined model), freespace 1, occupancy 1,
  normal 0.05.
- ISS stage 1: L_M, the squared L2 distance (paper, mean over objects) or mean L1 x 2000
  (official ``stage1/im2mesh/dvr/training.py``: ``torch.mean(torch.abs(c - c_std)) * 2000``),
  on M's noisy input normalize(tau f + (1 - tau) z), z unit-norm; L_bg = mean |1 - rgb| over
  the rays that hit nothing (x 30; DESIGN.md's definition: the official code divides by all
  rays instead, as configs/stage1/paper.yaml notes).
- ISS stage 2: per view 1 - cos(E_I(R_v), f_T), reduced over the views (official: summed);
  per view L_bg = mean |1 - rgb| over that view's background pixels, reduced like L_C; total
  lambda_clip L_C + lambda_bg L_bg (official 4 and 3).
- Stylization: L_P compares the tuned and frozen initial occupancy D_o, D'_o at points p.
  DESIGN.md writes sum_p |D_o(p) - D'_o(p)|; :func:`iss3d.models.losses.prior_loss` and its
  docstring define the mean over p, as the official shape+texture code does
  (``torch.mean(torch.abs(logits - logits_std)) * 100``): the mean is pinned here (the factor
  N, points per step, is folded into ``lambda_prior``).
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from iss3d.core.config import load_config
from iss3d.data.cameras import intrinsics, look_at
from iss3d.infer.guidance import AugmentConfig, Augmenter, GuidanceConfig
from iss3d.infer.stage2 import guided_loss
from iss3d.infer.view_sampling import fixed_views
from iss3d.models import losses as L
from iss3d.models.losses import (
    background_ray_loss,
    clip_loss,
    mapper_loss,
    prior_loss,
    reduce_views,
    view_losses,
)
from iss3d.models.mapper import perturb_feature
from iss3d.models.march import MarchConfig
from iss3d.models.renderer import RayHits, Renderer
from iss3d.train.stage1 import Stage1Config, Stage1LossConfig, Stage1System
from iss3d.train.svr import SVRConfig, SVRLossConfig, svr_losses, weighted_total
from tests.models.test_renderer import SphereField

LN2, LN3 = math.log(2.0), math.log(3.0)


def softplus(x: float) -> float:
    """ln(1 + e^x): BCE of logit x towards 0 is softplus(x), towards 1 softplus(-x)."""
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def approx(x: torch.Tensor | float, expected: float, tol: float = 1e-6) -> None:
    """A scalar tensor (or float) equals a hand-computed value."""
    assert float(torch.as_tensor(x).detach()) == pytest.approx(expected, abs=tol, rel=tol)


class AffineField(nn.Module):
    """Occupancy logit ``scale * x + shift`` (x: the point's first coordinate); colour = the
    point itself. Hand-chosen points give hand-chosen logits and colours."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))
        self.shift = nn.Parameter(torch.tensor(shift))

    def occupancy(self, points, c):
        return self.scale * points[..., 0] + self.shift

    def rgb(self, points, c):
        return points


def at_x(xs: list[list[float]]) -> torch.Tensor:
    """(B, R) x coordinates -> (B, R, 3) points (x, 0, 0)."""
    x = torch.tensor(xs)
    return torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], -1)


# -- DVR (models/losses.py) -----------------------------------------------------------------------


def test_rgb_loss_sums_l1_over_channels_and_masked_rays_divided_by_batch():
    """rgb: sum over rays in the mask of sum_c |pred - gt|, / B (2 objects x 3 rays)."""
    pred = torch.tensor(
        [
            [[0.5, 0.5, 0.5], [0.1, 0.2, 0.3], [0.9, 0.9, 0.9]],
            [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.25, 0.5, 0.75]],
        ]
    )
    gt = torch.tensor(
        [
            [[0.2, 0.5, 0.9], [0.1, 0.2, 0.3], [0.0, 0.0, 0.0]],
            [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]],
        ]
    )
    mask = torch.tensor([[True, True, False], [False, True, True]])
    obj0 = (0.3 + 0.0 + 0.4) + 0.0  # ray 2 (|diff| 2.7) is off the mask
    obj1 = (0.5 + 0.5 + 0.5) + (0.0 + 0.25 + 0.5)  # ray 0 (|diff| 3) is off the mask
    approx(L.rgb_loss(pred, gt, mask), (obj0 + obj1) / 2)


def test_depth_loss_is_masked_l1_divided_by_batch_and_ignores_inf_off_the_mask():
    """depth: sum over the mask of |pred - gt|, / B; inf depths off the mask neither count nor
    poison the gradient (d/dpred = sign(pred - gt) / B on the mask, 0 elsewhere)."""
    inf = math.inf
    pred = torch.tensor([[1.0, 2.0, inf], [0.75, inf, 3.0]], requires_grad=True)
    gt = torch.tensor([[1.5, inf, 1.0], [1.0, 2.0, 2.0]])
    mask = torch.tensor([[True, False, False], [True, False, True]])
    loss = L.depth_loss(pred, gt, mask)
    approx(loss, (0.5 + 0.25 + 1.0) / 2)
    loss.backward()
    expected = torch.tensor([[-0.5, 0.0, 0.0], [-0.5, 0.0, 0.5]])
    torch.testing.assert_close(pred.grad, expected)


def test_freespace_loss_is_bce_towards_empty_summed_divided_by_batch():
    """freespace: sum over the mask of -log(1 - sigmoid(l)) = softplus(l), / B."""
    field = AffineField()
    points = at_x([[0.0, LN3, -LN3], [2.0, -1.0, 0.5]])
    mask = torch.tensor([[True, True, False], [False, True, True]])
    # softplus(0) = ln 2, softplus(ln 3) = ln 4
    expected = (LN2 + math.log(4.0) + softplus(-1.0) + softplus(0.5)) / 2
    approx(L.freespace_loss(field, None, points, mask), expected)


def test_occupancy_loss_is_bce_towards_full_summed_divided_by_batch():
    """occupancy: sum over the mask of -log(sigmoid(l)) = softplus(-l), / B."""
    field = AffineField()
    points = at_x([[0.0, LN3, -LN3], [2.0, -1.0, 0.5]])
    mask = torch.tensor([[True, False, True], [True, True, False]])
    # softplus(-0) = ln 2, softplus(ln 3) = ln 4
    expected = (LN2 + math.log(4.0) + softplus(-2.0) + softplus(1.0)) / 2
    approx(L.occupancy_loss(field, None, points, mask), expected)


def test_occupancy_samples_loss_is_bce_towards_inside_summed_divided_by_batch():
    """occupancy3d: sum over all samples of BCE(l, inside), / B."""
    field = AffineField()
    points = at_x([[1.0, -2.0], [0.0, 3.0]])
    inside = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = (softplus(-1.0) + softplus(-2.0) + LN2 + softplus(-3.0)) / 2
    approx(L.occupancy_samples_loss(field, None, points, inside), expected)


def test_normal_loss_is_plain_norm_of_normal_difference_summed_divided_by_batch(monkeypatch):
    """normal: sum over valid points of ||n(p) - n(p + sigma delta)|| (not squared), / B, on a
    sphere (n(p) = p / |p|) with the offsets delta fixed by hand."""
    field = SphereField(radius=0.3, k=10.0)
    points = torch.tensor(
        [
            [[0.3, 0.0, 0.0], [0.0, 0.0, 0.5]],
            [[0.0, 0.4, 0.0], [0.2, 0.0, 0.0]],
        ],
        dtype=torch.float64,
    )
    delta = torch.tensor(
        [
            [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            [[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
        ],
        dtype=torch.float64,
    )
    monkeypatch.setattr(torch, "randn_like", lambda x, *args, **kwargs: delta.clone())
    mask = torch.tensor([[True, True], [True, False]])
    # (0.3, 0, 0) -> (0.3, 0.3, 0): n (1, 0, 0) vs (1, 1, 0) / sqrt 2, |diff|^2 = 2 - sqrt 2
    # (0, 0, 0.5) -> (0, 0, 0.8): radial, same normal, 0
    # (0, 0.4, 0) -> (-0.3, 0.4, 0): n (0, 1, 0) vs (-0.6, 0.8, 0), |diff|^2 = 0.36 + 0.04
    expected = (math.sqrt(2 - math.sqrt(2)) + 0.0 + math.sqrt(0.4)) / 2
    approx(L.normal_loss(field, None, points, mask, sigma=0.3), expected)
    assert float(L.normal_loss(field, None, points, torch.zeros_like(mask))) == 0.0


def test_background_loss_is_mean_over_background_rays_of_channel_mean():
    """L_bg: mean over background rays of mean_c |target - rgb| (not over all rays)."""
    rgb = torch.tensor(
        [
            [[1.0, 1.0, 1.0], [0.4, 0.7, 1.0], [0.0, 0.0, 0.0]],
            [[0.5, 0.5, 0.5], [0.2, 0.2, 0.2], [0.9, 0.6, 0.3]],
        ]
    )
    background = torch.tensor([[True, True, False], [True, False, False]])
    white = (0.0 + (0.6 + 0.3 + 0.0) / 3 + 0.5) / 3
    approx(L.background_loss(rgb, background), white)
    black = (1.0 + (0.4 + 0.7 + 1.0) / 3 + 0.5) / 3
    approx(L.background_loss(rgb, background, target=0.0), black)
    assert float(L.background_loss(rgb, torch.zeros_like(background))) == 0.0


# -- DVR in training (train/svr.py) ---------------------------------------------------------------


def test_svr_weights_are_dvrs_and_weighted_total_multiplies_each_loss_by_its_lambda(tmp_path):
    """weighted_total = sum_name lambda_name * loss_name; defaults and svr/paper are DVR's
    weights (rgb 1, depth 10, freespace 1, occupancy 1, normal 0.05)."""
    cfg = SVRLossConfig()
    paper = load_config(SVRConfig, "svr/paper", [("data.path", str(tmp_path / "x.h5"))])
    for c in (cfg, paper.loss):
        weights = (c.lambda_rgb, c.lambda_depth, c.lambda_freespace, c.lambda_occupancy)
        assert weights == (1.0, 10.0, 1.0, 1.0) and c.lambda_normal == 0.05
    names = ("rgb", "depth", "freespace", "occupancy", "normal", "occupancy3d")
    losses = {f"loss_{n}": torch.tensor(float(i + 1)) for i, n in enumerate(names)}
    approx(weighted_total(losses, cfg), 1 * 1 + 10 * 2 + 1 * 3 + 1 * 4 + 0.05 * 5 + 0 * 6)
    custom = SVRLossConfig(lambda_rgb=2.0, lambda_depth=0.5, lambda_normal=1.0)
    approx(weighted_total(losses, custom), 2 * 1 + 0.5 * 2 + 3 + 4 + 1.0 * 5)


def test_svr_losses_on_a_sphere_are_unweighted_and_use_dvrs_masks():
    """svr_losses on a sphere (r 0.3, camera at z = 2): rgb and depth on hit & GT-mask rays,
    freespace at the hit point of a hit ray off the GT mask, occupancy at the GT depth of a GT
    ray the prediction misses; rays that miss the padded cube count nowhere; all / B and
    unweighted (lambda_depth 10 does not scale loss_depth); lambda 0 skips a loss."""
    field = SphereField(radius=0.3, k=10.0)
    f = 2.1875  # DVR's focal length
    world = torch.tensor(look_at(np.array([0.0, 0.0, 2.0])))  # looking down -z at the origin
    camera = torch.tensor(intrinsics(f))
    inf = math.inf
    # object 0: the centre pixel (hits) and (0.4, 0.4) (in the cube, misses the sphere);
    # object 1: the centre pixel and (0.9, 0.9) (misses the padded cube)
    batch = {
        "pixel_xy": torch.tensor([[[[0.0, 0.0], [0.4, 0.4]]], [[[0.0, 0.0], [0.9, 0.9]]]]),
        "pixel_rgb": torch.tensor([[[[0.5] * 3, [0.0] * 3]], [[[0.0] * 3, [0.0] * 3]]]),
        "pixel_mask": torch.tensor([[[1.0, 1.0]], [[0.0, 0.0]]]),
        "pixel_depth": torch.tensor([[[1.5, 2.0]], [[inf, inf]]]),
        "world_mat": world.expand(2, 1, 4, 4),
        "camera_mat": camera.expand(2, 1, 4, 4),
        "scale_mat": torch.eye(4, dtype=torch.float64).expand(2, 1, 4, 4),
    }
    batch = {k: v.double() for k, v in batch.items()}
    cfg = SVRLossConfig(lambda_normal=0.0)
    march = MarchConfig(n_steps=64, n_secant=8, method="dense")
    losses, _, hits = svr_losses(field, None, batch, cfg, march)
    assert hits.hit.tolist() == [[True, False], [True, False]]
    assert sorted(losses) == ["loss_depth", "loss_freespace", "loss_occupancy", "loss_rgb"]
    # rgb: object 0, centre ray: colour (0.2, 0.4, 0.6) vs GT 0.5
    approx(losses["loss_rgb"], (0.3 + 0.1 + 0.1) / 2)
    # depth: the sphere is hit at depth 2 - 0.3 = 1.7, GT 1.5
    approx(losses["loss_depth"], abs(1.7 - 1.5) / 2, tol=1e-5)
    # freespace: object 1's centre ray hits where the GT is empty: at the surface, logit 0
    approx(losses["loss_freespace"], LN2 / 2, tol=1e-5)
    # occupancy: object 0's (0.4, 0.4) ray at its GT depth 2 lies in the plane z = 0 at radius
    # 2 * 0.4 * sqrt 2 / f, logit 10 (0.3 - radius), BCE towards full
    radius = 2 * 0.4 * math.sqrt(2) / f
    approx(losses["loss_occupancy"], softplus(-10.0 * (0.3 - radius)) / 2, tol=1e-5)


# -- ISS stage 1 (models/losses.py, train/stage1.py) ----------------------------------------------


def test_mapper_loss_l2_and_l1():
    """L_M "l2": mean over objects of sum_d (pred - target)^2; "l1": mean |pred - target| over
    objects and channels."""
    target = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    pred = target + torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, -1.0]])
    approx(mapper_loss(pred, target, "l2"), ((1 + 4 + 0) + (0.25 + 0 + 1)) / 2)
    approx(mapper_loss(pred, target, "l1"), (1 + 2 + 0 + 0.5 + 0 + 1) / 6)


def test_stage1_paper_weights_l1_by_2000_and_bg_by_30(tmp_path):
    """stage1/paper (the official code): L_M = L1 x 2000 on a noisy input (0.25), L_bg x 30, the
    DVR losses with DVR's weights; weighted_total applies each lambda once."""
    path = [("data.path", str(tmp_path / "x.h5"))]
    lc = load_config(Stage1Config, "stage1/paper", path).loss
    assert (lc.mapper_loss, lc.lambda_mapper, lc.noise_alpha, lc.lambda_bg) == (
        "l1",
        2000.0,
        0.25,
        30.0,
    )
    default = Stage1LossConfig()  # the paper's formula: squared L2, weight 1, no noise
    assert (default.mapper_loss, default.lambda_mapper, default.noise_alpha) == ("l2", 1.0, None)
    target = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    pred = target + torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, -1.0]])
    losses = {
        "loss_mapper": mapper_loss(pred, target, lc.mapper_loss),  # 4.5 / 6 = 0.75
        "loss_bg": torch.tensor(0.1),
        "loss_rgb": torch.tensor(0.5),
        "loss_depth": torch.tensor(0.2),
        "loss_freespace": torch.tensor(0.3),
        "loss_occupancy": torch.tensor(0.4),
        "loss_normal": torch.tensor(2.0),
    }
    expected = 2000 * 0.75 + 30 * 0.1 + 0.5 + 10 * 0.2 + 0.3 + 0.4 + 0.05 * 2.0
    approx(weighted_total(losses, lc), expected, tol=1e-4)


def test_perturb_feature_mixes_then_normalises(monkeypatch):
    """normalize(tau f + (1 - tau) z) with z fixed by hand (tau 0.25)."""
    z = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.8, -0.6]])
    monkeypatch.setattr("iss3d.models.mapper.unit_gaussian", lambda shape, like, generator=None: z)
    f = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.8]])
    n = math.sqrt(0.625)
    # 0.25 (1, 0, 0) + 0.75 (0, 1, 0) = (0.25, 0.75, 0)
    # 0.25 (0, 0.6, 0.8) + 0.75 (0, 0.8, -0.6) = (0, 0.75, -0.25)
    expected = torch.tensor([[0.25 / n, 0.75 / n, 0.0], [0.0, 0.75 / n, -0.25 / n]])
    torch.testing.assert_close(perturb_feature(f, 0.25), expected)
    # stage 1's input scales f to noise_feature_norm s first: normalize(tau s f + (1 - tau) z)
    lc = Stage1LossConfig(noise_alpha=0.25, noise_feature_norm=2.0)
    n2 = math.sqrt(0.8125)
    # 0.5 (1, 0, 0) + 0.75 (0, 1, 0); 0.5 (0, 0.6, 0.8) + 0.75 (0, 0.8, -0.6) = (0, 0.9, -0.05)
    expected2 = torch.tensor([[0.5 / n2, 0.75 / n2, 0.0], [0.0, 0.9 / n2, -0.05 / n2]])
    system = SimpleNamespace(cfg=SimpleNamespace(loss=lc))
    torch.testing.assert_close(Stage1System.mapper_input(system, f), expected2)
    plain = SimpleNamespace(cfg=SimpleNamespace(loss=Stage1LossConfig()))
    assert Stage1System.mapper_input(plain, f) is f


def test_stage1_background_ray_loss_is_mean_over_rays_that_neither_hit_nor_start_inside():
    """L_bg in stage 1: mean over rays with neither a hit nor an inside start of
    mean_c |1 - rgb| at the ray's shown point; also returns the share of such rays."""
    field = AffineField()  # colour = the point
    inf = math.inf
    points = torch.tensor(
        [
            [[0.1, 0.1, 0.1], [0.0, 0.0, 0.0], [0.4, 0.7, 1.0]],
            [[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [0.9, 0.9, 0.9]],
        ]
    )
    hits = RayHits(
        depth=torch.tensor([[1.0, 0.0, inf], [inf, inf, 1.0]]),
        hit=torch.tensor([[True, False, False], [False, False, True]]),
        inside_start=torch.tensor([[False, True, False], [False, False, False]]),
        points=points,
        evaluations=0,
    )
    loss, share = background_ray_loss(field, None, hits)
    approx(loss, ((0.6 + 0.3 + 0.0) / 3 + 0.5 + 1.0) / 3)
    approx(share, 3 / 6)


# -- ISS stage 2 (models/losses.py, infer/stage2.py) ----------------------------------------------


def test_view_losses_cosine_and_inner():
    """ "cosine": 1 - <e, t> / (|e| |t|); "inner": -<e, t> on the raw embedding."""
    e = torch.tensor([[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]])
    t = torch.tensor([1.0, 0.0])
    torch.testing.assert_close(view_losses(e, t, "cosine"), torch.tensor([0.4, 1.0, 2.0]))
    torch.testing.assert_close(view_losses(e, t, "inner"), torch.tensor([-3.0, 0.0, 1.0]))


def test_clip_loss_aggregations_on_three_views():
    """L_C over 3 views, one prompt: "sum" (official) and "mean" of the per-view losses, and
    "mean_embedding": the loss of the views' mean embedding."""
    e = torch.tensor([[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0]])
    w = torch.ones(3, 1)
    total, per_view = clip_loss(e, t, w, "cosine", "sum")
    torch.testing.assert_close(per_view, torch.tensor([0.4, 1.0, 2.0]))
    approx(total, 0.4 + 1.0 + 2.0)
    approx(clip_loss(e, t, w, "cosine", "mean")[0], (0.4 + 1.0 + 2.0) / 3)
    # mean embedding (2/3, 2): cos = (2/3) / sqrt(4/9 + 4) = 1 / sqrt(10)
    approx(clip_loss(e, t, w, "cosine", "mean_embedding")[0], 1 - 1 / math.sqrt(10))
    approx(clip_loss(e, t, w, "inner", "sum")[0], -3.0 + 0.0 + 1.0)
    approx(clip_loss(e, t, w, "inner", "mean")[0], (-3.0 + 0.0 + 1.0) / 3)
    approx(clip_loss(e, t, w, "inner", "mean_embedding")[0], -2 / 3)


def test_reduce_views_sums_for_sum_and_averages_otherwise():
    """Per-view L_bg is reduced like L_C: sum for "sum", mean for "mean" / "mean_embedding"."""
    values = torch.tensor([0.2, 0.4, 0.9])
    approx(reduce_views(values, "sum"), 0.2 + 0.4 + 0.9)
    approx(reduce_views(values, "mean"), (0.2 + 0.4 + 0.9) / 3)
    approx(reduce_views(values, "mean_embedding"), (0.2 + 0.4 + 0.9) / 3)


class TwoToneSphere(SphereField):
    """A sphere of radius 0.3, grey 0.9 near it (|p| < 0.45) and (0.2, 0.5, 0.8) farther out,
    where background rays leave the padded cube (|p| >= 0.55)."""

    def rgb(self, points, c):
        near = points.norm(dim=-1, keepdim=True) < 0.45
        far = torch.tensor([0.2, 0.5, 0.8], dtype=points.dtype).expand_as(points)
        return torch.where(near, torch.full_like(points, 0.9), far)


class FakeGuide:
    """Stands in for :class:`iss3d.infer.guidance.Guide`: a fixed L_C; embeddings at cos 0.5 to the
    prompt feature."""

    def __init__(self, loss_clip: float):
        self.loss_clip = torch.tensor(loss_clip)
        self.prompt_feature = torch.tensor([1.0, 0.0, 0.0, 0.0])
        self.images = None

    def loss(self, images, azimuth, elevation):
        self.images = images
        v = images.shape[0]
        return self.loss_clip, torch.zeros(v), [F.normalize(torch.ones(v, 4), dim=-1)]


@pytest.mark.parametrize("aggregation", ["sum", "mean"])
def test_guided_loss_is_lambda_clip_lc_plus_lambda_bg_of_per_view_background_means(aggregation):
    """Stage 2: each view's L_bg = mean over its background pixels (rays in the padded cube
    that miss the object) of mean_c |1 - rgb|, here (0.8 + 0.5 + 0.2) / 3 = 0.5 per view
    whatever the pixel count (foreground pixels, grey 0.9, and pixels off the cube, white,
    do not count); total = lambda_clip L_C + lambda_bg (sum or mean of the views' L_bg)."""
    field = TwoToneSphere(radius=0.3, k=10.0, dtype=torch.float32)
    views = fixed_views(2, elevation=20.0, distance=2.7)
    guide = FakeGuide(0.3)
    guidance = GuidanceConfig(aggregation=aggregation, lambda_clip=4.0, lambda_bg=3.0)
    augment = Augmenter(AugmentConfig(), torch.Generator().manual_seed(0))
    renderer = Renderer(MarchConfig(n_steps=32, n_secant=8, method="dense"))
    out = guided_loss(renderer, field, torch.zeros(1, 4), views, guide, augment, guidance, 16, 0.1)
    r = out.rendered
    fg, bg = r.foreground.bool(), r.background
    off_cube = ~fg & ~bg
    for m in (fg, bg, off_cube):  # every kind of pixel in every view
        assert m.flatten(1).any(1).all()
    assert torch.equal(guide.images, r.rgb)  # no augmentation with the "field" background
    torch.testing.assert_close(r.bg_loss, torch.tensor([0.5, 0.5]))
    bg_total = 0.5 + 0.5 if aggregation == "sum" else (0.5 + 0.5) / 2
    approx(out.loss_bg, bg_total)
    approx(out.total, 4.0 * 0.3 + 3.0 * bg_total)
    assert out.score == pytest.approx(0.5)


# -- stylization (infer/stylize.py) ---------------------------------------------------------------


def test_prior_loss_is_mean_abs_occupancy_difference_with_no_gradient_to_the_initial_decoder():
    """L_P = mean_p |D_o(p) - D'_o(p)| on logits (or sigmoid probabilities); D' is frozen."""
    initial = AffineField(1.0, 0.0)  # logits x
    tuned = AffineField(2.0, -1.0)  # logits 2 x - 1
    points = at_x([[0.0, 1.0, -2.0]])  # initial (0, 1, -2), tuned (-1, 1, -5)
    loss = prior_loss(tuned, initial, None, points)
    approx(loss, (1.0 + 0.0 + 3.0) / 3)
    loss.backward()
    approx(tuned.shift.grad, (-1.0 + 0.0 - 1.0) / 3)  # d/dshift: mean of sign(tuned - initial)
    assert initial.shift.grad is None and initial.scale.grad is None
    probs = prior_loss(tuned, initial, None, points, "probabilities")
    expected = (abs(sigmoid(-1.0) - 0.5) + 0.0 + abs(sigmoid(-5.0) - sigmoid(-2.0))) / 3
    approx(probs, expected)
