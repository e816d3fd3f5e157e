"""The loaders build models from the architecture card alone: checkpoints of the layout before
cards (tests/fixtures/old_layout/) still load, and a training key added later never matters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from iss3d.core.errors import UserError
from iss3d.models.decoder import DecoderConfig
from iss3d.models.loaders import (
    ArchitectureCard,
    load_eid,
    load_stage1,
    load_stage1_encoder,
    load_svr,
    read_card,
)
from iss3d.models.mapper import MapperConfig

OLD = Path(__file__).resolve().parents[1] / "fixtures" / "old_layout"


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in module.state_dict().items()}


def test_old_layout_svr_loads():
    model = load_svr(OLD / "svr.ckpt")
    assert model.card.kind == "svr" and model.image_size == (32, 32)
    assert model.card.encoder.c_dim == 16 and model.card.decoder.hidden == 16
    stored = torch.load(OLD / "svr.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(model.decoder.fc_p.weight, stored["decoder.fc_p.weight"].float())
    assert model.encode(torch.rand(2, 3, 32, 32)).shape == (2, 16)


def test_old_layout_stage1_loads_with_its_encoder():
    model = load_stage1(OLD / "stage1.ckpt")
    assert (model.mapper_config.in_dim, model.mapper_config.out_dim) == (128, 16)
    assert model.clip_spec == "models/pretrained/clip.pt" and model.clip_embed_dim == 128
    assert model.latent(torch.randn(3, 128)).shape == (3, 16)
    encoder = load_stage1_encoder(OLD / "stage1.ckpt")
    assert encoder(torch.rand(1, 3, 32, 32)).shape == (1, 16)


def test_stage1_of_9f16dba_parent_loads():
    """aca90c9's stage-1 hyper-parameters name prefit.extra_data, a training key that no longer
    exists: the card is read from the architecture sections only."""
    hp = torch.load(OLD / "stage1-aca90c9.ckpt", weights_only=True)["hyper_parameters"]
    assert "extra_data" in hp["config"]["prefit"]
    old = load_stage1(OLD / "stage1-aca90c9.ckpt")
    same = load_stage1(OLD / "stage1.ckpt")
    assert old.card.image_size == (64, 64) and old.clip_spec == "runs/models/clip/clip.pt"
    for name, value in _state(same.mapper).items():
        assert torch.equal(_state(old.mapper)[name], value), name


def test_old_layout_eid_loads():
    model = load_eid(OLD / "eid.ckpt")
    assert model.clip_embed_dim == 128 and model.decoder.c_dim == 128
    assert model.clip_spec == "models/pretrained/clip.pt"


def test_card_wins_over_any_training_key(tmp_path):
    """With a card, the training recipe is not read at all: unknown keys, renamed sections or
    none at all."""
    ckpt = torch.load(OLD / "svr.ckpt", weights_only=True)
    card = read_card(ckpt, OLD / "svr.ckpt", "svr")
    ckpt["architecture"] = card.to_checkpoint()
    ckpt["hyper_parameters"] = {"config": {"a_key_from_the_future": 1, "encoder": "renamed"}}
    torch.save(ckpt, tmp_path / "svr.ckpt")
    model = load_svr(tmp_path / "svr.ckpt")
    assert model.card == card


def test_card_round_trip_and_errors(tmp_path):
    card = ArchitectureCard(
        kind="stage1",
        decoder=DecoderConfig(c_dim=8, hidden=16, n_blocks=1),
        mapper=MapperConfig(in_dim=4, out_dim=8, hidden=16, n_wide=1, n_narrow=1),
        clip_spec="clip/tiny",
        clip_embed_dim=4,
        image_size=(32, 32),
    )
    assert ArchitectureCard.from_dict(card.to_checkpoint()) == card
    with pytest.raises(UserError, match="kind 'stage1' lacks mapper"):
        ArchitectureCard(kind="stage1", decoder=card.decoder, clip_embed_dim=4)
    with pytest.raises(UserError, match="unknown key 'widht' in architecture card"):
        ArchitectureCard.from_dict({**card.to_checkpoint(), "widht": 3})
    torch.save({"state_dict": {}, "architecture": card.to_checkpoint()}, tmp_path / "s1.ckpt")
    with pytest.raises(UserError, match=r"s1\.ckpt: not an iss3d SVR checkpoint \(a stage-1"):
        load_svr(tmp_path / "s1.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 1}}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match=r"not an iss3d E_I \+ D checkpoint .*iss3d fit eid"):
        load_eid(tmp_path / "other.ckpt")
