"""TreeGAN's PointNet classifier: layout, FPD features, the key-mapped loader, fit pointnet."""

from __future__ import annotations

import argparse

import pytest
import torch

from iss3d.core.errors import UserError
from iss3d.models.loaders import load_pointnet
from iss3d.models.pointnet import (
    PointNetCls,
    export_pointnet,
    feature_dim,
    map_pointnet_key,
    normalize_clouds,
)


def treegan_shapes(k: int = 16) -> dict[str, tuple[int, ...]]:
    """TreeGAN's ``PointNetCls(k)`` state-dict names and shapes, written out from its source
    (evaluation/pointnet.py) without using our module."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name, cin, cout):
        shapes[f"{name}.weight"] = (cout, cin, 1)
        shapes[f"{name}.bias"] = (cout,)

    def lin(name, cin, cout):
        shapes[f"{name}.weight"] = (cout, cin)
        shapes[f"{name}.bias"] = (cout,)

    def bn(name, n):
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{p}"] = (n,)

    for prefix in ("feat.stn.", "feat."):
        conv(prefix + "conv1", 3, 64)
        conv(prefix + "conv2", 64, 128)
        conv(prefix + "conv3", 128, 1024)
        bn(prefix + "bn1", 64)
        bn(prefix + "bn2", 128)
        bn(prefix + "bn3", 1024)
    lin("feat.stn.fc1", 1024, 512)
    lin("feat.stn.fc2", 512, 256)
    lin("feat.stn.fc3", 256, 9)
    bn("feat.stn.bn4", 512)
    bn("feat.stn.bn5", 256)
    lin("fc1", 1024, 512)
    lin("fc2", 512, 256)
    lin("fc3", 256, k)
    bn("bn1", 512)
    bn("bn2", 256)
    return shapes


def treegan_state(k: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in TreeGAN's naming, as a DataParallel model saves it (``module.``) by an
    old PyTorch (no ``num_batches_tracked``)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in treegan_shapes(k).items():
        t = torch.randn(shape, generator=g) * 0.05
        if name.endswith("running_var"):
            t = t.abs() + 0.5
        state["module." + name] = t
    return state


def test_layout_matches_treegan_and_features_are_1808_d():
    model = PointNetCls(k=16)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = {k: v for k, v in ours.items() if not k.endswith("num_batches_tracked")}
    assert ours == treegan_shapes(16)
    assert feature_dim(16) == 1808 == model.feature_dim
    out = model.eval()(torch.randn(3, 2048, 3))
    assert out.features.shape == (3, 1808) and out.logits.shape == (3, 16)
    assert torch.equal(out.features[:, -16:], out.logits)  # [global | fc1 | fc2 | logits]
    assert (out.features[:, :1024] < 0).any()  # the global feature is taken before any ReLU
    assert (out.features[:, 1024:1792] >= 0).all()  # fc1 and fc2 after ReLU


def test_treegan_state_dict_loads_with_the_key_map(tmp_path):
    state = treegan_state(16)
    path = tmp_path / "cls_model.pth"
    torch.save(state, path)
    model, info = load_pointnet(path)
    assert info.k == 16 and info.categories is None and not model.training
    loaded = model.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[map_pointnet_key(key)], value), key
    # the features follow the weights: another seed gives other features
    other = tmp_path / "other.pth"
    torch.save(treegan_state(16, seed=1), other)
    x = normalize_clouds(torch.randn(2, 256, 3))
    assert not torch.allclose(model(x).features, load_pointnet(other)[0](x).features)


def test_loader_errors_are_one_line(tmp_path):
    state = treegan_state(16)
    del state["module.feat.conv2.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(UserError, match=r"missing key 'feat\.conv2\.weight'"):
        load_pointnet(tmp_path / "missing.pth")
    state = treegan_state(16)
    state["module.feat.bn3.weight"] = torch.zeros(7)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(UserError, match=r"shape mismatch for feat.bn3.weight"):
        load_pointnet(tmp_path / "shape.pth")
    torch.save({"net": argparse.Namespace(x=1)}, tmp_path / "pickle.pth")
    with pytest.raises(UserError, match="weights-only"):
        load_pointnet(tmp_path / "pickle.pth")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="not a TreeGAN-layout PointNet"):
        load_pointnet(tmp_path / "other.pth")
    with pytest.raises(UserError, match="no such file"):
        load_pointnet(tmp_path / "absent.pth")


def test_export_round_trip_and_eval_mode_is_per_cloud(tmp_path):
    torch.manual_seed(0)
    model = PointNetCls(k=3).eval()
    path = export_pointnet(tmp_path / "pn.pt", model, ["a", "b", "c"], 512)
    loaded, info = load_pointnet(path)
    assert info.categories == ["a", "b", "c"] and info.num_points == 512
    x = normalize_clouds(torch.randn(4, 128, 3))
    together = loaded(x).features
    alone = torch.cat([loaded(x[i : i + 1]).features for i in range(4)])
    torch.testing.assert_close(together, alone)
    torch.testing.assert_close(together, model(x).features)


def test_normalize_clouds_centres_and_scales():
    x = torch.randn(2, 100, 3) * 3 + 5
    y = normalize_clouds(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.norm(dim=-1).amax(1), torch.ones(2))


def test_fit_pointnet_trains_and_exports(tiny_world, tmp_path):
    from iss3d.infer.cli import main

    out = tmp_path / "run"
    argv = ["fit", "pointnet", "--config", "pointnet/tiny", "--data", str(tiny_world)]
    argv += ["--out", str(out), "--no-progress", "trainer.max_steps=2"]
    argv += ["trainer.val_check_interval=2", "data.points=128", "data.batch_size=4"]
    assert main(argv) == 0
    model, info = load_pointnet(out / "pointnet.pt")
    assert info.num_points == 128 and info.categories is not None
    assert model.k == len(info.categories) >= 2
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert load_pointnet(out / "checkpoints" / "last.ckpt")[0].k == model.k


def test_fit_pointnet_refuses_data_without_surface_points(tmp_path, capsys):
    from iss3d.infer.cli import main

    missing = tmp_path / "absent.h5"
    assert main(["fit", "pointnet", "--config", "pointnet/tiny", "--data", str(missing)]) == 2
    assert "no such file" in capsys.readouterr().err
