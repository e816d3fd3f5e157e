"""The stage-1 mapper pre-fit on cached (CLIP feature, SVR latent) pairs."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from data.errors import UserError
from data.reader import MultiViewFile
from models.mapper import MapperConfig
from train.mapper_prefit import MapperPrefitConfig, feature_pairs, prefit_mapper


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_prefit_fits_a_learnable_map(schedule):
    """c is a fixed random linear map of f: the pre-fit must raise cosine(M(f), c) from ~0."""
    gen = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(512, 16, generator=gen), dim=-1)
    c = f @ torch.randn(16, 8, generator=gen)
    torch.manual_seed(0)
    mapper = MapperConfig(in_dim=16, out_dim=8, hidden=64, n_wide=2, n_narrow=2).build()
    before = prefit_mapper(mapper, f, c, MapperPrefitConfig(epochs=0), "l2", lambda x: x)
    after = prefit_mapper(
        mapper,
        f,
        c,
        MapperPrefitConfig(epochs=100, batch_size=64, lr=3e-3, schedule=schedule),
        "l2",
        lambda x: x,
    )
    assert abs(before["cos"]) < 0.3 and before["loss"] == 0.0  # no epoch, no loss
    assert after["cos"] > 0.9, after


def test_feature_pairs_cover_every_view(tiny_world):
    file = MultiViewFile(tiny_world)
    seen = []

    def targets(images):
        seen.append(images.shape[0])
        return images.mean((2, 3))[:, :2], images.mean((2, 3))

    f, c = feature_pairs(targets, file, "train", 5, torch.device("cpu"))
    assert f.shape == (len(file.views_in("train")), 3) and c.shape == (f.shape[0], 2)
    assert max(seen) == 5 and sum(seen) == f.shape[0]
    with pytest.raises(UserError, match="split 'nope' is not one of"):
        feature_pairs(targets, file, "nope", 5, torch.device("cpu"))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"epochs": -1}, "'epochs' must be >= 0"),
        ({"batch_size": 0}, "'batch_size' must be >= 1"),
        ({"lr": 0.0}, "'lr' must be > 0"),
        ({"schedule": "step"}, "'schedule' must be one of constant, cosine"),
    ],
)
def test_prefit_config_errors(bad, match):
    with pytest.raises(UserError, match=match):
        MapperPrefitConfig(**bad)


def test_cosine_schedule_anneals_the_rate_to_zero():
    """The rate of every update: from lr down towards 0, one step per batch."""
    f, c = torch.randn(40, 4), torch.randn(40, 3)
    mapper = MapperConfig(in_dim=4, out_dim=3, hidden=8, n_wide=1, n_narrow=1).build()
    rates = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: rates.append(opt.param_groups[0]["lr"])
    )
    try:
        cfg = MapperPrefitConfig(epochs=3, batch_size=16, lr=0.1, schedule="cosine")
        prefit_mapper(mapper, f, c, cfg, "l2", lambda x: x)
    finally:
        handle.remove()
    assert len(rates) == 9  # 3 epochs x ceil(40 / 16)
    assert rates[0] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert rates[-1] < 0.01
