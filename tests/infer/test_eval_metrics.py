"""Metrics of iss3d evaluate: the Frechet distance against scipy, FPD features, R-precision,
lattice IoU, colour, prompt parsing, FID feature networks."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from iss3d.core.errors import UserError
from iss3d.infer.evaluation import metrics as em
from iss3d.models.pointnet import PointNetCls


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The reference: pytorch-fid's formula with scipy's matrix square root."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_on_fixed_features():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(6, 6))
    a = rng.normal(size=(80, 6)) @ mix
    b = rng.normal(size=(60, 6)) @ mix * 1.3 + 0.7
    expected = scipy_frechet(a, b)
    assert expected > 1.0
    assert em.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert em.frechet_distance(torch.from_numpy(b), torch.from_numpy(a)) == pytest.approx(
        expected, rel=1e-6
    )
    assert em.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="two samples"):
        em.frechet_distance(a[:1], b)
    with pytest.raises(ValueError):
        em.frechet_distance(a, b[:, :5])


def test_pointnet_features_normalise_and_keep_every_cloud():
    torch.manual_seed(0)
    model = PointNetCls(k=4)
    clouds = torch.rand(5, 64, 3)
    feats = em.pointnet_features(model, clouds, batch=2)  # 2 + 2 + 1: the last one is kept
    assert feats.shape == (5, 1024 + 512 + 256 + 4) and feats.dtype == torch.float64
    moved = em.pointnet_features(model, clouds * 3.0 + 2.0, batch=5)
    torch.testing.assert_close(feats, moved, rtol=1e-4, atol=1e-4)
    one = em.pointnet_features(model, clouds[4:], batch=64)
    torch.testing.assert_close(feats[4:], one)


def test_sample_cloud():
    rng = np.random.default_rng(0)
    pts = np.arange(30, dtype=np.float32).reshape(10, 3)
    few = em.sample_cloud(pts, 4, rng)
    assert few.shape == (4, 3) and len({tuple(p) for p in few}) == 4
    assert em.sample_cloud(pts, 25, rng).shape == (25, 3)
    with pytest.raises(ValueError):
        em.sample_cloud(pts[:0], 4, rng)


def test_r_precision_ranks_with_ties_against_the_shape():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.2],  # prompt 0 first: rank 1
            [0.5, 0.4, 0.6],  # prompt 1 third: rank 3
            [0.3, 0.3, 0.3],  # all tied: rank 3
            [0.1, 0.2, 0.8],  # prompt 2 first
        ]
    )
    r = em.r_precision(scores, [0, 1, 2, 2])
    assert r["ranks"] == [1, 3, 3, 1]
    assert r["r_at_1"] == 0.5 and r["r_at_5"] == 1.0 and r["mean_rank"] == 2.0


def test_lattice_occupancy_interpolates_in_xyz_order():
    half, n = 0.55, 8
    axis = torch.linspace(-half, half, n + 1)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    grid = x + 2 * y - 3 * z + 0.1  # trilinear interpolation is exact for linear functions
    pts = torch.rand(50, 3) - 0.5
    expected = pts[:, 0] + 2 * pts[:, 1] - 3 * pts[:, 2] + 0.1
    torch.testing.assert_close(em.lattice_occupancy(grid, half, pts), expected, atol=1e-5, rtol=0)


def test_occupancy_iou_at_a_sphere():
    half, n = 0.55, 32
    axis = torch.linspace(-half, half, n + 1)
    p = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    grid = 0.3 - p.norm(dim=-1)  # a sphere of radius 0.3
    pts = (torch.rand(20000, 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 1.1
    inside = pts.norm(dim=-1) < 0.3
    assert em.occupancy_iou_at(grid, half, pts, inside) > 0.95
    smaller = pts.norm(dim=-1) < 0.2  # IoU (0.2 / 0.3)^3 ~ 0.30
    assert em.occupancy_iou_at(grid, half, pts, smaller) == pytest.approx(0.296, abs=0.03)
    assert em.occupancy_iou_at(grid - 10, half, pts, torch.zeros(20000, dtype=bool)) == 1.0


def test_dominant_color_and_prompt_parsing():
    from iss3d.data.synth.world import CATEGORIES, COLORS

    rgb = np.array([COLORS["red"]] * 6 + [COLORS["blue"]] * 3 + [(250, 250, 250)], np.uint8)
    name, shares = em.dominant_color(rgb, COLORS)
    assert name == "red" and shares["red"] == pytest.approx(0.6)
    assert em.dominant_color(rgb[:0], COLORS) == (None, {})
    cases = {
        "a red chair": ("chair", "red"),
        "a chair that is red": ("chair", "red"),
        "a chair with a red seat and blue legs": ("chair", "red"),
        "an orange box": ("box", "orange"),
        "a wooden thing": (None, None),
    }
    for prompt, expected in cases.items():
        assert em.parse_prompt(prompt, CATEGORIES, list(COLORS)) == expected


def test_judge_scores_are_mean_view_cosines():
    from iss3d.models.clip import load_clip

    torch.manual_seed(0)
    judge = load_clip("clip/tiny-64")
    rng = np.random.default_rng(0)
    renders = [rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8) for _ in range(3)]
    texts = ["a red mug", "a blue cone"]
    scores = em.judge_scores(judge, renders, texts, batch=4)
    assert scores.shape == (3, 2)
    t = judge.encode_text(texts).double()
    x = torch.from_numpy(renders[1]).permute(0, 3, 1, 2).float() / 255
    manual = (judge.encode_image(x).double() @ t.T).mean(0)
    torch.testing.assert_close(scores[1], manual)


def test_fid_feature_networks(tmp_path, monkeypatch):
    from iss3d.models.clip import load_clip

    monkeypatch.setattr(em, "_torch_fidelity_available", lambda: False)
    net, reason = em.image_feature_network("auto", "cpu", judge=None)
    assert net is None and "torch-fidelity is not installed" in reason
    with pytest.raises(UserError, match="torch-fidelity"):
        em.image_feature_network("inception", "cpu")
    with pytest.raises(UserError, match="expected auto"):
        em.image_feature_network("resnet", "cpu")
    torch.manual_seed(0)
    judge = load_clip("clip/tiny-64")
    net, reason = em.image_feature_network("auto", "cpu", judge=judge)
    assert reason is None and net.dim == judge.embed_dim and not net.paper_comparable
    images = np.random.default_rng(0).integers(0, 255, (5, 20, 20, 3), dtype=np.uint8)
    assert em.image_features(net, images, batch=2).shape == (5, judge.embed_dim)

    class Mean(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still works
        torch.jit.script(Mean()).save(str(tmp_path / "mean.pt"))
    net, _ = em.image_feature_network(f"torchscript:{tmp_path / 'mean.pt'}", "cpu")
    feats = em.image_features(net, images, batch=3)
    expected = torch.from_numpy(images).double().mean(dim=(1, 2)) / 255
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-6)
