"""Encoders, the DVR decoder, its branched split, and the strict configs."""

from __future__ import annotations

import pytest
import torch
import torchvision

from iss3d.core.errors import UserError
from iss3d.models.decoder import (
    BranchedDecoder,
    Decoder,
    DecoderConfig,
    ResnetBlockFC,
    split_branches,
)
from iss3d.models.encoder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ConvEncoder,
    EncoderConfig,
    ResNet18Encoder,
    check_images,
    make_encoder,
)
from tests.fixtures.nets import randomise

# ---------------------------------------------------------------- encoders


def test_resnet18_state_dict_keys_match_dvr_layout():
    enc = ResNet18Encoder(c_dim=256)
    tv = torchvision.models.resnet18(weights=None).state_dict()
    expected = [f"features.{k}" for k in tv if not k.startswith("fc.")] + ["fc.weight", "fc.bias"]
    assert list(enc.state_dict()) == expected
    assert enc.state_dict()["fc.weight"].shape == (256, 512)
    assert "features.layer1.0.conv1.weight" in enc.state_dict()
    assert not any(k.startswith("features.fc") for k in enc.state_dict())


def test_resnet18_shapes_and_normalisation_inside():
    enc = ResNet18Encoder(c_dim=16).eval()
    x = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        out = enc(x)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        manual = enc.fc(enc.features((x - mean) / std))
        extremes = enc(torch.stack([torch.zeros(3, 32, 32), torch.ones(3, 32, 32)]))
    assert out.shape == (2, 16)
    torch.testing.assert_close(out, manual)
    assert torch.isfinite(extremes).all()
    assert not torch.allclose(extremes[0], extremes[1])


def test_conv_encoder_shapes_any_size():
    enc = ConvEncoder(c_dim=8, width=4)
    assert enc(torch.rand(3, 3, 16, 16)).shape == (3, 8)
    assert enc(torch.rand(1, 3, 40, 24)).shape == (1, 8)
    out = enc(torch.rand(2, 3, 17, 33))
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.rand(3, 16, 16), "expected shape \\(B, 3, H, W\\)"),
        (torch.rand(1, 4, 16, 16), "expected 3 colour channels"),
        (torch.rand(1, 16, 16, 3), "channels last"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "expected a float tensor"),
        (torch.rand(1, 3, 8, 16), "too small"),
        ([[0.0]], "got list"),
    ],
)
def test_check_images_errors(x, match):
    with pytest.raises(UserError, match=match) as info:
        check_images(x, "input view", min_size=16)
    assert str(info.value).startswith("input view: ")
    assert "\n" not in str(info.value)


def test_encoders_check_their_input():
    with pytest.raises(UserError, match="encoder input"):
        ConvEncoder(c_dim=4, width=2)(torch.rand(1, 1, 16, 16))
    check_images(torch.rand(2, 3, 4, 4))  # defaults: any size


def test_make_encoder():
    assert isinstance(make_encoder("conv", 8, width=4), ConvEncoder)
    enc = make_encoder("resnet18", 12)
    assert isinstance(enc, ResNet18Encoder) and enc.c_dim == 12
    with pytest.raises(UserError, match="unknown encoder kind 'vgg'"):
        make_encoder("vgg", 8)


def test_resnet18_local_imagenet_weights(tmp_path):
    tv = torchvision.models.resnet18(weights=None)
    state = randomise(tv).state_dict()
    # Old torchvision files have no num_batches_tracked buffers: must still load.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    enc = ResNet18Encoder(c_dim=8, weights=path)
    for k, v in state.items():
        if not k.startswith("fc."):
            torch.testing.assert_close(enc.features.state_dict()[k], v)

    bad = dict(state)
    bad["layer9.weight"] = bad.pop("layer1.0.conv1.weight")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"bad.pth: missing key 'layer1.0.conv1.weight'"):
        ResNet18Encoder(c_dim=8, weights=tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"nothing.pth: no such file"):
        ResNet18Encoder(c_dim=8, weights=tmp_path / "nothing.pth")
    extra = dict(state, **{"layer5.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(UserError, match=r"unexpected key 'layer5.weight'"):
        ResNet18Encoder(c_dim=8, weights=str(tmp_path / "extra.pth"))


# ---------------------------------------------------------------- decoder


def test_decoder_shapes_and_heads():
    dec = randomise(Decoder(c_dim=16, hidden=32, n_blocks=3))
    p = torch.rand(2, 50, 3) - 0.5
    c = torch.randn(2, 16)
    out = dec(p, c)
    assert out.shape == (2, 50, 4)
    occ = dec.occupancy(p, c)
    rgb = dec.rgb(p, c)
    assert occ.shape == (2, 50) and rgb.shape == (2, 50, 3)
    torch.testing.assert_close(occ, out[..., 0])
    torch.testing.assert_close(rgb, torch.sigmoid(out[..., 1:4]))
    assert (rgb >= 0).all() and (rgb <= 1).all()
    both = dec.occupancy_and_rgb(p, c)
    torch.testing.assert_close(both[0], occ)
    torch.testing.assert_close(both[1], rgb)
    # A single latent broadcasts over the batch.
    torch.testing.assert_close(dec(p, c[:1]), dec(p, c[:1].expand(2, -1)))


@pytest.mark.parametrize(
    "c_dim, n_blocks, n_frequencies, dtype",
    [
        (16, 3, 2, torch.float64),
        (0, 2, 0, torch.float64),
        (16, 0, 0, torch.float64),
        (16, 3, 0, torch.float32),
    ],
)
def test_decoder_without_autograd_gives_the_same_outputs(c_dim, n_blocks, n_frequencies, dtype):
    # Without autograd and with one latent, features() folds fc_c into biases and works in
    # place (meshing, marching): the outputs must be those of the plain path.
    dec = randomise(Decoder(c_dim, 32, n_blocks, n_frequencies=n_frequencies)).to(dtype)
    p = torch.rand(2, 50, 3, dtype=dtype) - 0.5
    c = torch.randn(1, c_dim, dtype=dtype) if c_dim else None
    with torch.no_grad():
        fast = dec(p, c)
        assert dec._features_one_latent(p, c).shape == (2, 50, 32)
    plain = dec(p, c)
    assert plain.requires_grad and not fast.requires_grad
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fast, plain.detach(), rtol=tol, atol=tol)
    if dtype == torch.float32:  # autocast casts float32 only
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            fast16 = dec(p, c)
        assert fast16.dtype == torch.bfloat16
        torch.testing.assert_close(fast16.float(), plain.detach(), rtol=0.05, atol=0.05)


def test_decoder_dvr_size_shapes():
    dec = DecoderConfig().build()  # DVR ShapeNet model: c_dim 256, h 512, 5 blocks
    assert dec(torch.rand(1, 7, 3), torch.randn(1, 256)).shape == (1, 7, 4)
    assert dec.fc_p.weight.shape == (512, 3) and dec.fc_out.weight.shape == (4, 512)
    assert len(dec.blocks) == 5 and len(dec.fc_c) == 5
    assert dec.fc_c[0].weight.shape == (512, 256)


def test_decoder_key_names_are_dvrs():
    keys = set(Decoder(c_dim=4, hidden=8, n_blocks=2).state_dict())
    expected = {"fc_p.weight", "fc_p.bias", "fc_out.weight", "fc_out.bias"}
    for n in range(2):
        expected |= {f"fc_c.{n}.weight", f"fc_c.{n}.bias"}
        for layer in ("fc_0", "fc_1"):
            expected |= {f"blocks.{n}.{layer}.weight", f"blocks.{n}.{layer}.bias"}
    assert keys == expected


def test_decoder_unconditional_and_bad_inputs():
    dec = Decoder(c_dim=0, hidden=16, n_blocks=2)
    assert len(dec.fc_c) == 0
    assert dec(torch.rand(3, 5, 3)).shape == (3, 5, 4)
    cond = Decoder(c_dim=4, hidden=8, n_blocks=1)
    with pytest.raises(ValueError, match="no latent c"):
        cond(torch.rand(1, 5, 3))
    with pytest.raises(ValueError, match="points must be"):
        cond(torch.rand(5, 3), torch.rand(1, 4))
    with pytest.raises(ValueError, match="c must be"):
        cond(torch.rand(2, 5, 3), torch.rand(3, 4))
    occ_only = Decoder(c_dim=4, hidden=8, n_blocks=1, out_rgb=False)
    assert occ_only(torch.rand(2, 5, 3), torch.rand(2, 4)).shape == (2, 5, 1)
    with pytest.raises(ValueError, match="out_rgb=False"):
        occ_only.rgb(torch.rand(2, 5, 3), torch.rand(2, 4))


def test_fresh_blocks_are_identity_maps():
    dec = Decoder(c_dim=4, hidden=16, n_blocks=3)
    x = torch.randn(2, 9, 16)
    for block in dec.blocks:
        assert torch.count_nonzero(block.fc_1.weight) == 0
        assert torch.count_nonzero(block.fc_1.bias) == 0
        assert block.shortcut is None
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)


def test_resnet_block_with_shortcut():
    block = ResnetBlockFC(6, 10)
    assert block.shortcut is not None and block.fc_0.out_features == 6
    x = torch.randn(4, 6)
    torch.testing.assert_close(block(x), block.shortcut(x))


def test_split_branches_starts_identical():
    dec = randomise(Decoder(c_dim=8, hidden=24, n_blocks=3)).eval()
    branched = split_branches(dec)
    assert isinstance(branched, BranchedDecoder) and not branched.training
    p, c = torch.rand(2, 30, 3), torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(branched(p, c), dec(p, c))
        torch.testing.assert_close(branched.occupancy(p, c), dec.occupancy(p, c))
        torch.testing.assert_close(branched.rgb(p, c), dec.rgb(p, c))
        occ, rgb = branched.occupancy_and_rgb(p, c)
        torch.testing.assert_close(occ, dec.occupancy(p, c))
        torch.testing.assert_close(rgb, dec.rgb(p, c))
    assert branched.occupancy_branch.fc_out.weight.shape == (1, 24)
    assert branched.color_branch.fc_out.weight.shape == (3, 24)


def test_fourier_point_encoding():
    dec = randomise(Decoder(c_dim=8, hidden=24, n_blocks=2, n_frequencies=3)).eval()
    assert dec.fc_p.weight.shape == (24, 3 + 6 * 3)
    assert "frequencies" not in dec.state_dict()  # a constant, not a checkpoint entry
    p = torch.rand(2, 5, 3) * 2 - 1
    enc = dec.encode_points(p)
    assert enc.shape == (2, 5, 21)
    torch.testing.assert_close(enc[..., :3], p)
    # sin(2^k pi p_i) sits at column 3 + F i + k, the cosines 3F columns further
    torch.testing.assert_close(enc[..., 3 + 1], torch.sin(2 * torch.pi * p[..., 0]))
    torch.testing.assert_close(enc[..., 3 + 9 + 3 * 2 + 2], torch.cos(4 * torch.pi * p[..., 2]))
    assert Decoder(c_dim=8, hidden=24, n_blocks=2).encode_points(p) is p
    assert dec.occupancy(p, torch.randn(2, 8)).shape == (2, 5)
    with pytest.raises(ValueError, match="n_frequencies=-1"):
        Decoder(c_dim=8, hidden=24, n_blocks=2, n_frequencies=-1)


def test_split_branches_keep_the_fourier_encoding():
    dec = randomise(Decoder(c_dim=8, hidden=24, n_blocks=2, n_frequencies=2)).eval()
    branched = split_branches(dec)
    assert branched.n_frequencies == 2
    p, c = torch.rand(2, 30, 3), torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(branched(p, c), dec(p, c))


def test_split_branches_are_disjoint_and_colour_tuning_keeps_shape():
    dec = randomise(Decoder(c_dim=8, hidden=24, n_blocks=2))
    before = {k: v.clone() for k, v in dec.state_dict().items()}
    branched = split_branches(dec)
    occ_ids = {id(t) for t in branched.occupancy_parameters()}
    col_ids = {id(t) for t in branched.color_parameters()}
    assert occ_ids and col_ids and not occ_ids & col_ids
    assert occ_ids | col_ids == {id(t) for t in branched.parameters()}
    assert not occ_ids & {id(t) for t in dec.parameters()}

    p, c = torch.rand(2, 40, 3), torch.randn(2, 8)
    occ0, rgb0 = branched.occupancy(p, c).detach(), branched.rgb(p, c).detach()
    opt = torch.optim.Adam(branched.color_parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        out = branched(p, c)
        (out[..., 0].sum() + (1 - torch.sigmoid(out[..., 1:])).abs().mean()).backward()
        opt.step()
    torch.testing.assert_close(branched.occupancy(p, c), occ0, rtol=0, atol=0)
    assert not torch.allclose(branched.rgb(p, c), rgb0)
    for k, v in dec.state_dict().items():  # the original decoder is untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_split_branches_keeps_frozen_flags_and_rejects_occupancy_only():
    dec = Decoder(c_dim=4, hidden=8, n_blocks=1).requires_grad_(False)
    branched = split_branches(dec)
    assert not any(p.requires_grad for p in branched.parameters())
    with pytest.raises(ValueError, match="4 outputs"):
        split_branches(Decoder(c_dim=4, hidden=8, n_blocks=1, out_rgb=False))


# ---------------------------------------------------------------- configs


def test_decoder_config_strict():
    assert DecoderConfig.from_dict(None) == DecoderConfig(256, 512, 5)
    cfg = DecoderConfig.from_dict({"c_dim": 16, "hidden": 32})
    assert (cfg.c_dim, cfg.hidden, cfg.n_blocks) == (16, 32, 5)
    assert cfg.build().hidden == 32
    with pytest.raises(UserError, match=r"^unknown key 'x' in decoder config"):
        DecoderConfig.from_dict({"x": 1})
    with pytest.raises(UserError, match="decoder config: 'hidden' must be an int, got str 'big'"):
        DecoderConfig.from_dict({"hidden": "big"})
    with pytest.raises(UserError, match="'hidden' must be an int, got bool"):
        DecoderConfig.from_dict({"hidden": True})
    with pytest.raises(UserError, match="'n_blocks' must be an int, got float"):
        DecoderConfig.from_dict({"n_blocks": 2.0})
    with pytest.raises(UserError, match="'hidden' must be >= 1"):
        DecoderConfig.from_dict({"hidden": 0})
    with pytest.raises(UserError, match="decoder config must be a mapping"):
        DecoderConfig.from_dict([1, 2])
    assert DecoderConfig.from_dict({"n_frequencies": 4}).build().n_frequencies == 4
    with pytest.raises(UserError, match="'n_frequencies' must be in \\[0, 16\\], got 17"):
        DecoderConfig.from_dict({"n_frequencies": 17})


def test_encoder_config_strict():
    cfg = EncoderConfig.from_dict({"kind": "conv", "c_dim": 8, "width": 4})
    enc = cfg.build()
    assert isinstance(enc, ConvEncoder) and enc(torch.rand(1, 3, 16, 16)).shape == (1, 8)
    assert EncoderConfig.from_dict({}).kind == "resnet18"
    with pytest.raises(UserError, match="unknown key 'depth' in encoder config"):
        EncoderConfig.from_dict({"depth": 3})
    with pytest.raises(UserError, match="unknown kind 'vgg'"):
        EncoderConfig.from_dict({"kind": "vgg"})
    with pytest.raises(UserError, match="'weights' must be a string or null, got int 3"):
        EncoderConfig.from_dict({"weights": 3})
    with pytest.raises(UserError, match="'weights' is only used by kind 'resnet18'"):
        EncoderConfig.from_dict({"kind": "conv", "weights": "w.pth"})
