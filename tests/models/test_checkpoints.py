"""Loading DVR-layout checkpoints into our encoder and decoder, and every way it can fail."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from iss3d.core.errors import UserError
from iss3d.models.checkpoints import (
    load_dvr_checkpoint,
    map_dvr_key,
    safe_load,
    save_dvr_checkpoint,
)
from iss3d.models.decoder import Decoder
from iss3d.models.encoder import ConvEncoder, ResNet18Encoder
from tests.fixtures.nets import randomise

C_DIM, HIDDEN, BLOCKS = 16, 32, 2


def _dvr_state(encoder, decoder) -> dict[str, torch.Tensor]:
    """Our weights under DVR's key names, spelled out independently of our module layout."""
    enc, dec = encoder.state_dict(), decoder.state_dict()
    state = {}
    for k, v in enc.items():
        name = k.removeprefix("features.")
        state[f"encoder.features.{name}" if k.startswith("features.") else f"encoder.{k}"] = v
    state["decoder.fc_p.weight"] = dec["fc_p.weight"]
    state["decoder.fc_p.bias"] = dec["fc_p.bias"]
    for n in range(decoder.n_blocks):
        for part in ("weight", "bias"):
            state[f"decoder.fc_c.{n}.{part}"] = dec[f"fc_c.{n}.{part}"]
            state[f"decoder.blocks.{n}.fc_0.{part}"] = dec[f"blocks.{n}.fc_0.{part}"]
            state[f"decoder.blocks.{n}.fc_1.{part}"] = dec[f"blocks.{n}.fc_1.{part}"]
    state["decoder.fc_out.weight"] = dec["fc_out.weight"]
    state["decoder.fc_out.bias"] = dec["fc_out.bias"]
    return {k: v.clone() for k, v in state.items()}


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(1)
    enc = randomise(ResNet18Encoder(c_dim=C_DIM)).eval()
    dec = randomise(Decoder(c_dim=C_DIM, hidden=HIDDEN, n_blocks=BLOCKS)).eval()
    return enc, dec, _dvr_state(enc, dec)


@pytest.fixture(scope="module")
def small():
    """Like ``source`` with the small conv encoder: fast to save and load."""
    torch.manual_seed(2)
    enc = randomise(ConvEncoder(c_dim=C_DIM, width=4)).eval()
    dec = randomise(Decoder(c_dim=C_DIM, hidden=HIDDEN, n_blocks=BLOCKS)).eval()
    state = {f"encoder.{k}": v.clone() for k, v in enc.state_dict().items()}
    state.update({k: v for k, v in _dvr_state(enc, dec).items() if k.startswith("decoder.")})
    return enc, dec, state


def _fresh(kind: str = "conv"):
    enc = ResNet18Encoder(c_dim=C_DIM) if kind == "resnet18" else ConvEncoder(c_dim=C_DIM, width=4)
    return enc.eval(), Decoder(c_dim=C_DIM, hidden=HIDDEN, n_blocks=BLOCKS).eval()


def _same_outputs(src_enc, src_dec, enc, dec):
    img = torch.rand(2, 3, 32, 32)
    pts = torch.rand(2, 20, 3) - 0.5
    with torch.no_grad():
        c_src, c_new = src_enc(img), enc(img)
        torch.testing.assert_close(c_new, c_src)
        torch.testing.assert_close(dec(pts, c_new), src_dec(pts, c_src))


def _save(obj, path, legacy=False):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_map_dvr_key():
    assert map_dvr_key("module.decoder.fc_p.weight") == "decoder.fc_p.weight"
    assert map_dvr_key("module.module.encoder.fc.bias") == "encoder.fc.bias"
    assert map_dvr_key("encoder.features.layer1.0.bn1.running_mean") == (
        "encoder.features.layer1.0.bn1.running_mean"
    )
    assert map_dvr_key("clip_model.visual.proj") is None


def test_official_layout_round_trip(tmp_path, source):
    src_enc, src_dec, state = source
    assert "encoder.features.layer4.1.bn2.running_var" in state
    ckpt = {
        "model": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999)}]},
        "it": 12,
        "epoch_it": 3,
        "loss_val_best": float("inf"),
    }
    path = _save(ckpt, tmp_path / "model.pt")
    enc, dec = _fresh("resnet18")
    meta = load_dvr_checkpoint(path, enc, dec)
    assert meta["it"] == 12 and meta["epoch_it"] == 3 and meta["loss_val_best"] == float("inf")
    assert "model" not in meta
    _same_outputs(src_enc, src_dec, enc, dec)


def test_dataparallel_prefix_bare_dict_and_decoder_only(tmp_path, small):
    src_enc, src_dec, state = small
    prefixed = {f"module.{k}": v for k, v in state.items()}
    enc, dec = _fresh()
    assert load_dvr_checkpoint(_save(prefixed, tmp_path / "dp.pt"), enc, dec) == {}
    _same_outputs(src_enc, src_dec, enc, dec)

    dec_only = Decoder(c_dim=C_DIM, hidden=HIDDEN, n_blocks=BLOCKS).eval()
    load_dvr_checkpoint(_save({"model": state}, tmp_path / "m.pt"), None, dec_only)
    c = torch.randn(1, C_DIM)
    pts = torch.rand(1, 9, 3)
    torch.testing.assert_close(dec_only(pts, c), src_dec(pts, c))


def test_legacy_format_and_numpy_scalar(tmp_path, small):
    """A DVR-era file: legacy serialisation, loss_val_best a numpy-1 numpy.float64."""
    src_enc, src_dec, state = small
    path = tmp_path / "model_best.pt"
    _save({"model": state, "it": 5, "loss_val_best": np.float64(0.25)}, path, legacy=True)
    raw = path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(raw)
    enc, dec = _fresh()
    meta = load_dvr_checkpoint(path, enc, dec)
    assert meta["loss_val_best"] == 0.25 and type(meta["loss_val_best"]) is float
    _same_outputs(src_enc, src_dec, enc, dec)


def test_other_architecture_gives_shape_error(tmp_path):
    big = Decoder(c_dim=8, hidden=512, n_blocks=1)
    path = save_dvr_checkpoint(tmp_path / "big.pt", None, big, it=0)
    with pytest.raises(UserError) as info:
        load_dvr_checkpoint(path, None, Decoder(c_dim=8, hidden=128, n_blocks=1))
    msg = str(info.value)
    assert msg == (
        f"{path}: shape mismatch for decoder.fc_p.weight: checkpoint (512, 3) vs model (128, 3)"
    )


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_file(tmp_path, small, legacy):
    path = _save({"model": small[2]}, tmp_path / "cut.pt", legacy=legacy)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="cannot read as a PyTorch checkpoint") as info:
        load_dvr_checkpoint(path, *_fresh())
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_missing_and_unexpected_keys(tmp_path, small):
    state = dict(small[2])
    del state["decoder.fc_out.bias"]
    path = _save({"model": state}, tmp_path / "missing.pt")
    with pytest.raises(UserError, match=r"missing key 'decoder.fc_out.bias' in checkpoint$"):
        load_dvr_checkpoint(path, *_fresh())

    state = dict(small[2])
    del state["encoder.fc.weight"], state["encoder.fc.bias"]
    path = _save({"model": state}, tmp_path / "noenc.pt")
    with pytest.raises(UserError, match=r"missing key 'encoder.fc.weight' in checkpoint \(and 1"):
        load_dvr_checkpoint(path, *_fresh())

    state = dict(small[2], **{"decoder.blocks.9.fc_0.weight": torch.zeros(2)})
    path = _save({"model": state}, tmp_path / "extra.pt")
    with pytest.raises(UserError, match=r"unexpected key 'decoder.blocks.9.fc_0.weight'"):
        load_dvr_checkpoint(path, *_fresh())


def test_iss_style_extra_components_need_ignore(tmp_path, small):
    src_enc, src_dec, state = small
    iss = dict(
        state, **{"clip_model.visual.proj": torch.zeros(2), "generator.0.weight": torch.ones(1)}
    )
    path = _save({"model": iss, "it": 1}, tmp_path / "iss.pt")
    with pytest.raises(UserError, match=r"unexpected key 'clip_model.visual.proj'"):
        load_dvr_checkpoint(path, *_fresh())
    enc, dec = _fresh()
    load_dvr_checkpoint(path, enc, dec, ignore_prefixes=["clip_model.", "generator."])
    _same_outputs(src_enc, src_dec, enc, dec)


def test_bad_files(tmp_path):
    dec = Decoder(c_dim=4, hidden=8, n_blocks=1)
    with pytest.raises(UserError, match=r"nope.pt: no such file"):
        load_dvr_checkpoint(tmp_path / "nope.pt", None, dec)
    with pytest.raises(UserError, match="is a folder"):
        load_dvr_checkpoint(tmp_path, None, dec)
    with pytest.raises(UserError, match="expected a dict checkpoint, got list"):
        load_dvr_checkpoint(_save([1, 2], tmp_path / "list.pt"), None, dec)
    with pytest.raises(UserError, match="no 'model' entry"):
        load_dvr_checkpoint(_save({"it": 3}, tmp_path / "meta.pt"), None, dec)
    with pytest.raises(UserError, match="'model' entry is a Tensor"):
        load_dvr_checkpoint(_save({"model": torch.zeros(1)}, tmp_path / "t.pt"), None, dec)
    bad = {f"decoder.{k}": v for k, v in dec.state_dict().items()}
    bad["decoder.fc_p.bias"] = 1.5
    with pytest.raises(UserError, match=r"decoder.fc_p.bias is a float in the checkpoint"):
        load_dvr_checkpoint(_save({"model": bad}, tmp_path / "f.pt"), None, dec)
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    with pytest.raises(UserError, match=r"text.pt: cannot read"):
        safe_load(tmp_path / "text.pt")


def test_save_round_trip_with_conv_encoder(tmp_path):
    enc = randomise(ConvEncoder(c_dim=8, width=4))
    dec = randomise(Decoder(c_dim=8, hidden=16, n_blocks=2))
    path = save_dvr_checkpoint(tmp_path / "tiny.pt", enc, dec, it=7, epoch_it=1)
    enc2, dec2 = ConvEncoder(c_dim=8, width=4), Decoder(c_dim=8, hidden=16, n_blocks=2)
    assert load_dvr_checkpoint(path, enc2, dec2) == {"it": 7, "epoch_it": 1}
    img, pts = torch.rand(1, 3, 16, 16), torch.rand(1, 5, 3)
    torch.testing.assert_close(dec2(pts, enc2(img)), dec(pts, enc(img)))
    assert not list(tmp_path.glob(".*tmp*"))


class _Payload:
    """Unpickling this would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout", ["plain-pickle", "torch-zip"])
def test_a_code_payload_is_refused_silently_and_never_runs(tmp_path, layout, recwarn):
    """A pickle that would run code: one UserError, no warning (torch warned about the pickle
    protocol of a plain pickle: a second stderr line), and the code never ran."""
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    if layout == "plain-pickle":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    else:
        torch.save(_Payload(marker), path)
    with pytest.raises(UserError, match=r"evil\.pt: cannot read as a PyTorch checkpoint"):
        safe_load(path)
    assert not marker.exists()
    assert [str(w.message) for w in recwarn] == []


def test_non_finite_weights_are_refused(tmp_path, small):
    """A checkpoint whose weights are NaN (a diverged run) loaded silently: export and eval svr
    then wrote empty meshes and NaN metrics with exit 0. The loader names the tensor."""
    _, dec, _ = small
    state = {f"decoder.{k}": v.clone() for k, v in dec.state_dict().items()}
    state["decoder.blocks.0.fc_1.weight"][0, 0] = float("nan")
    path = _save({"model": state}, tmp_path / "nan.pt")
    with pytest.raises(UserError, match=r"nan\.pt: decoder\.blocks\.0\.fc_1\.weight holds NaN"):
        load_dvr_checkpoint(path, None, Decoder(c_dim=C_DIM, hidden=HIDDEN, n_blocks=BLOCKS))
