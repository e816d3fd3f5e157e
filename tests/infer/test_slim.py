"""iss3d slim: optimizer state dropped, float16 on request, the result still loads."""

from pathlib import Path

import pytest
import torch

from iss3d.infer.cli import main
from iss3d.models.loaders import load_svr
from tests.train.test_svr import fit


@pytest.fixture(scope="module")
def svr_ckpt(tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("svr") / "run"
    assert fit(tiny_world, out, "trainer.max_steps=2", "trainer.val_check_interval=0") == 0
    return out / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("half", [False, True])
def test_slim_loads_like_the_original(svr_ckpt, tmp_path, half):
    out = tmp_path / "svr.pt"
    assert main(["slim", str(svr_ckpt), "--out", str(out), *(["--half"] if half else [])]) == 0
    slim = torch.load(out, weights_only=True)
    assert "optimizer_states" not in slim and "optimizer_states" in torch.load(svr_ckpt)
    dtypes = {v.dtype for v in slim["state_dict"].values() if v.is_floating_point()}
    assert dtypes == ({torch.float16} if half else {torch.float32})
    a, b = load_svr(svr_ckpt), load_svr(out)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ca, cb = a.encoder(images), b.encoder(images)
    torch.testing.assert_close(cb, ca, atol=0 if not half else 5e-2, rtol=0 if not half else 1e-2)
    assert out.stat().st_size < svr_ckpt.stat().st_size


def test_slim_rejects_a_non_checkpoint(tmp_path, capsys):
    bad = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, bad)
    out = tmp_path / "out.pt"
    assert main(["slim", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not an iss3d training checkpoint" in err
    assert not out.exists()


def test_slim_refuses_a_wrong_shaped_tensor(svr_ckpt, tmp_path, capsys):
    ckpt = torch.load(svr_ckpt, weights_only=True)
    ckpt["state_dict"]["decoder.fc_p.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    out = tmp_path / "out.pt"
    assert main(["slim", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "decoder.fc_p.weight" in err
    assert not out.exists()
