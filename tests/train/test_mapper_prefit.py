"""The stage-1 mapper pre-fit on cached (CLIP feature, SVR latent) pairs."""

from __future__ import annotations

import pytest
import torch

from iss3d.core.errors import UserError
from iss3d.data.reader import MultiViewFile
from iss3d.models.mapper import MapperConfig
from iss3d.train.mapper_prefit import MapperPrefitConfig, feature_pairs, prefit_mapper


def test_prefit_fits_a_learnable_map():
    """c is a fixed random linear map of f: the pre-fit must raise cosine(M(f), c) from ~0."""
    gen = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(512, 16, generator=gen), dim=-1)
    c = f @ torch.randn(16, 8, generator=gen)
    torch.manual_seed(0)
    mapper = MapperConfig(in_dim=16, out_dim=8, hidden=64, n_wide=2, n_narrow=2).build()
    before = prefit_mapper(mapper, f, c, MapperPrefitConfig(epochs=0), "l2", lambda x: x)
    after = prefit_mapper(
        mapper, f, c, MapperPrefitConfig(epochs=100, batch_size=64, lr=3e-3), "l2", lambda x: x
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
    ],
)
def test_prefit_config_errors(bad, match):
    with pytest.raises(UserError, match=match):
        MapperPrefitConfig(**bad)
