"""The CLIP2Shape mapper, the feature perturbation, and loading ISS stage-1 checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iss3d.core.errors import UserError
from iss3d.models.checkpoints import load_iss_checkpoint, map_iss_key
from iss3d.models.decoder import Decoder
from iss3d.models.mapper import Mapper, MapperConfig, noisy_input, perturb_feature
from tests.fixtures.nets import randomise

# -- the mapper -------------------------------------------------------------------------------


def test_paper_mapper_layout_and_parameter_count():
    mapper = MapperConfig().build()  # 512 -> 512 x8 -> 256 x4
    shapes = [tuple(layer.weight.shape) for layer in mapper.layers]
    assert shapes == [(512, 512)] * 8 + [(256, 512)] + [(256, 256)] * 3
    # 8 * (512 * 512 + 512) + (512 * 256 + 256) + 3 * (256 * 256 + 256)
    assert sum(p.numel() for p in mapper.parameters()) == 2_429_952
    names = list(mapper.state_dict())
    assert names[:2] == ["linear_1.weight", "linear_1.bias"] and names[-1] == "linear_12.bias"
    assert mapper(torch.randn(3, 512)).shape == (3, 256)


def test_init_statistics():
    torch.manual_seed(0)
    mapper = MapperConfig().build()
    weights = torch.cat([layer.weight.flatten() for layer in mapper.layers])
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.01)
    assert all((layer.bias == 0).all() for layer in mapper.layers)


def test_forward_is_linear_leaky_relu_chain_without_final_activation():
    mapper = randomise(Mapper([6, 6, 4], in_dim=5))
    x = torch.randn(7, 5)
    h = x
    for i, layer in enumerate(mapper.layers):
        h = h @ layer.weight.T + layer.bias
        if i < 2:
            h = torch.where(h > 0, h, 0.02 * h)
    torch.testing.assert_close(mapper(x), h)
    assert (mapper(x) < 0).any()  # no activation after the last layer
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        mapper(torch.randn(7, 4))


def test_config_widths_and_round_trip():
    cfg = MapperConfig(in_dim=64, out_dim=16, hidden=32, n_wide=3, narrow=8, n_narrow=2)
    assert cfg.widths() == [32, 32, 32, 8, 16]
    assert MapperConfig.from_widths(64, cfg.widths()) == cfg
    paper = MapperConfig()
    assert MapperConfig.from_widths(512, paper.widths()) == paper
    for widths in ([16], [32, 32, 16], [32, 8, 8, 16]):
        assert MapperConfig.from_widths(4, widths).widths() == widths
    with pytest.raises(UserError, match=r"widths"):
        MapperConfig.from_widths(4, [32, 8, 32, 16])
    with pytest.raises(UserError, match=r"unknown key 'depth' in mapper config"):
        MapperConfig.from_dict({"depth": 3})
    with pytest.raises(UserError, match=r"n_wide"):
        MapperConfig(n_wide=0, n_narrow=0)


def test_perturb_feature():
    f = F.normalize(torch.randn(4, 32), dim=-1)
    g = torch.Generator().manual_seed(3)
    a = perturb_feature(f, 0.25, torch.Generator().manual_seed(3))
    b = perturb_feature(f, 0.25, g)
    torch.testing.assert_close(a, b)  # reproducible with a generator
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(perturb_feature(2 * f, 1.0), f)  # tau = 1: the feature itself
    # unit f and unit z, nearly orthogonal in 32-d: cos(f, result) ~ tau / sqrt(tau^2 + (1-tau)^2)
    many = F.normalize(torch.randn(2000, 32), dim=-1)
    cos = (perturb_feature(many, 0.25) * many).sum(-1).mean().item()
    assert cos == pytest.approx(0.25 / (0.25**2 + 0.75**2) ** 0.5, abs=0.03)
    assert noisy_input is perturb_feature
    with pytest.raises(ValueError, match="tau"):
        perturb_feature(f, 1.5)


# -- ISS stage-1 checkpoints --------------------------------------------------------------------

MAPPER = MapperConfig(in_dim=24, out_dim=16, hidden=32, n_wide=3, narrow=8, n_narrow=2)
C_DIM, HIDDEN, BLOCKS = 16, 32, 2


def _iss_state(mapper: Mapper, decoder: Decoder, layout: str) -> dict[str, torch.Tensor]:
    """Weights under ISS's key names, spelled out independently of our module layout."""
    state = {}
    for n, layer in enumerate(mapper.layers, start=1):
        name = f"generator.linear_{n}" if layout == "linear" else f"generator.{2 * (n - 1)}"
        state[f"{name}.weight"] = layer.weight.detach().clone()
        state[f"{name}.bias"] = layer.bias.detach().clone()
    for k, v in decoder.state_dict().items():
        state[f"decoder.{k}"] = v.clone()
    state["encoder.fc.weight"] = torch.randn(C_DIM, 8)
    state["encoder.fc.bias"] = torch.randn(C_DIM)
    state["clip_model.visual.proj"] = torch.randn(8, 24).half()
    state["clip_model.logit_scale"] = torch.tensor(4.6)
    return state


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(1)
    mapper = randomise(MAPPER.build())
    decoder = randomise(Decoder(c_dim=C_DIM, hidden=HIDDEN, n_blocks=BLOCKS))
    return mapper, decoder


def test_map_iss_key():
    assert map_iss_key("generator.linear_12.weight") == ("mapper", "linear_12.weight")
    assert map_iss_key("module.generator.0.bias") == ("mapper", "linear_1.bias")
    assert map_iss_key("generator.22.weight") == ("mapper", "linear_12.weight")
    assert map_iss_key("generator.1.weight") is None  # a LeakyReLU has no weights
    assert map_iss_key("decoder.fc_c.3.weight") == ("decoder", "fc_c.3.weight")
    assert map_iss_key("clip_model.visual.conv1.weight") == ("clip", "visual.conv1.weight")
    assert map_iss_key("discriminator.w") is None


@pytest.mark.parametrize("layout", ["linear", "sequential"])
def test_iss_checkpoint_round_trip(source, tmp_path, layout):
    mapper, decoder = source
    path = tmp_path / "model.pt"
    torch.save({"model": _iss_state(mapper, decoder, layout), "it": 7, "epoch_it": 1}, path)
    ckpt = load_iss_checkpoint(path)
    assert ckpt.mapper_config == MAPPER
    assert (ckpt.decoder_config.c_dim, ckpt.decoder_config.hidden) == (C_DIM, HIDDEN)
    assert ckpt.decoder_config.n_blocks == BLOCKS
    assert ckpt.meta == {"it": 7, "epoch_it": 1}
    assert ckpt.clip["visual.proj"].dtype == torch.float16  # returned as stored
    assert set(ckpt.encoder) == {"fc.weight", "fc.bias"}
    f = torch.randn(5, 24)
    points = torch.rand(5, 30, 3) - 0.5
    new_mapper, new_decoder = ckpt.build_mapper(), ckpt.build_decoder()
    with torch.no_grad():
        torch.testing.assert_close(new_mapper(f), mapper(f))
        c = mapper(f)
        torch.testing.assert_close(new_decoder(points, c), decoder(points, c))
    # and into given modules, in place
    target = MAPPER.build()
    load_iss_checkpoint(path, mapper=target)
    torch.testing.assert_close(target(f), mapper(f))


def test_iss_wrong_shape_names_the_iss_key(source, tmp_path):
    mapper, decoder = source
    path = tmp_path / "model.pt"
    torch.save({"model": _iss_state(mapper, decoder, "sequential")}, path)
    wider = MapperConfig(in_dim=24, out_dim=16, hidden=40, n_wide=3, narrow=8, n_narrow=2)
    with pytest.raises(UserError) as err:
        load_iss_checkpoint(path, mapper=wider.build())
    message = str(err.value)
    assert "generator.0.weight" in message and "(32, 24)" in message and "(40, 24)" in message
    assert "\n" not in message
    with pytest.raises(UserError, match=r"decoder\.fc_p\.weight.*\(32, 3\).*\(64, 3\)"):
        load_iss_checkpoint(path, decoder=Decoder(c_dim=C_DIM, hidden=64, n_blocks=BLOCKS))


def test_iss_bad_checkpoints(source, tmp_path):
    mapper, decoder = source
    good = _iss_state(mapper, decoder, "linear")

    def saved(state, name="bad.pt"):
        path = tmp_path / name
        torch.save({"model": state}, path)
        return path

    with pytest.raises(UserError, match=r"unexpected key 'generator\.3\.weight'"):
        load_iss_checkpoint(saved({**good, "generator.3.weight": torch.zeros(1)}))
    no_layer = {k: v for k, v in good.items() if not k.startswith("generator.linear_2.")}
    with pytest.raises(UserError, match=r"missing mapper layer generator\.linear_2"):
        load_iss_checkpoint(saved(no_layer))
    broken = dict(good, **{"generator.linear_3.weight": torch.zeros(32, 31)})
    with pytest.raises(UserError, match=r"generator\.linear_3\.weight.*31 inputs"):
        load_iss_checkpoint(saved(broken))
    no_mapper = {k: v for k, v in good.items() if not k.startswith("generator.")}
    with pytest.raises(UserError, match=r"no generator\.\* keys"):
        load_iss_checkpoint(saved(no_mapper))
    with pytest.raises(UserError, match="no such file"):
        load_iss_checkpoint(tmp_path / "missing.pt")
    both = {**good, "generator.0.weight": good["generator.linear_1.weight"]}
    with pytest.raises(UserError, match="same parameter"):
        load_iss_checkpoint(saved(both))


def test_import_iss_gives_a_stage1_file_with_the_same_weights(source, tmp_path, capsys):
    from iss3d.infer.cli import main
    from iss3d.models.loaders import load_stage1

    mapper, decoder = source
    src = tmp_path / "iss.pth"
    torch.save({"model": _iss_state(mapper, decoder, "linear"), "it": 7}, src)
    out = tmp_path / "stage1.ckpt"
    assert main(["import-iss", str(src), "--out", str(out), "--clip", "clip/tiny-64"]) == 0
    model = load_stage1(out)
    f = torch.randn(3, MAPPER.in_dim)
    p, c = torch.rand(3, 50, 3) - 0.5, torch.randn(3, C_DIM)
    with torch.no_grad():
        torch.testing.assert_close(model.mapper(f), mapper(f))
        torch.testing.assert_close(model.decoder.occupancy(p, c), decoder.occupancy(p, c))
    assert model.clip_spec == "clip/tiny-64" and model.clip_embed_dim == MAPPER.in_dim
    assert model.decoder_config.hidden == HIDDEN and model.decoder_config.n_blocks == BLOCKS
    bad = tmp_path / "dvr.pt"
    torch.save({"model": {f"decoder.{k}": v for k, v in decoder.state_dict().items()}}, bad)
    capsys.readouterr()
    assert main(["import-iss", str(bad), "--out", str(tmp_path / "x.ckpt")]) == 2
    assert "no generator.* keys" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()
