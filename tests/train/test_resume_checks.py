"""``fit --resume`` with a damaged ``last.ckpt``: one line, exit 2, and the run folder as it was
(no rewritten config.yaml / command.txt, no new metrics version)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from iss3d.core.errors import UserError
from tests.fixtures.cli import error_line
from tests.train.test_svr import fit


def _snapshot(run: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(run)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(run.rglob("*"))
    }


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "run"
    assert fit(tiny_world, run, "trainer.max_steps=2", "trainer.val_check_interval=0") == 0
    return run


def _damage(kind: str, last: Path, good: dict) -> None:
    if kind == "empty":
        last.write_bytes(b"")
    elif kind == "truncated":
        last.write_bytes(last.read_bytes()[:500])
    elif kind == "random":
        last.write_bytes(os.urandom(4096))
    elif kind == "slim":
        torch.save({k: good[k] for k in ("state_dict", "hyper_parameters")}, last)
    elif kind == "folder":
        last.unlink()
        last.mkdir()
    elif kind == "code":

        class Payload:
            def __reduce__(self):
                return (print, ("ran",))

        torch.save({"state_dict": {}, "x": Payload()}, last)


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "slim", "folder", "code"])
def test_a_damaged_checkpoint_is_refused_before_the_folder_changes(
    kind, trained, tiny_world, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    last = run / "checkpoints" / "last.ckpt"
    good = torch.load(last, weights_only=False)
    _damage(kind, last, good)
    before = _snapshot(run)
    argv = ["trainer.max_steps=4", "trainer.val_check_interval=0", "--resume"]
    assert fit(tiny_world, run, *argv) == 2
    line = error_line(capsys)
    assert "last.ckpt" in line
    assert _snapshot(run) == before
    assert "ran" not in capsys.readouterr().out


# -- several processes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),
        ({"RANK": "3"}, 3),
        ({"RANK": "0", "LOCAL_RANK": "0"}, 0),
        ({"SLURM_PROCID": "2"}, 2),
        ({"LOCAL_RANK": "1"}, 1),  # Lightning's launcher starts ranks 1... with LOCAL_RANK
        ({"NODE_RANK": "1"}, 1),  # the first process of a second machine is not rank 0
    ],
)
def test_launch_rank_reads_the_launchers_environment(env, rank, monkeypatch):
    from iss3d.train.runs import launch_rank

    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert (launch_rank() == 0) == (rank == 0)


def test_other_ranks_leave_the_run_folder_to_rank_zero(trained, tmp_path):
    """Rank 1 runs the same command into a folder rank 0 already filled: no 'not empty' error,
    nothing written; resuming, it reads rank 0's checkpoint."""
    from iss3d.train.runs import RunDir

    before = _snapshot(trained)
    other = RunDir(trained, rank=1)
    assert other.check({"anything": 1}, resume=False) is None
    other.create({"anything": 1}, "iss3d fit svr ...")
    assert other.check({"anything": 1}, resume=True) == trained / "checkpoints" / "last.ckpt"
    assert _snapshot(trained) == before
    with pytest.raises(UserError, match="not empty"):
        RunDir(trained, rank=0).check({"anything": 1}, resume=False)


def test_keep_checkpoints_keeps_the_latest_steps(tiny_world, tmp_path):
    run = tmp_path / "run"
    extra = ["trainer.checkpoint_every=1", "trainer.keep_checkpoints=2"]
    assert fit(tiny_world, run, "trainer.max_steps=4", "trainer.val_check_interval=0", *extra) == 0
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["last.ckpt", "step_3.ckpt", "step_4.ckpt"]
    step_3 = torch.load(run / "checkpoints" / "step_3.ckpt", weights_only=True)
    assert step_3["global_step"] == 3


def test_out_in_a_missing_folder_is_refused_before_anything(tiny_world, tmp_path, capsys):
    out = tmp_path / "missing" / "run"
    assert fit(tiny_world, out, "trainer.max_steps=1") == 2
    assert "missing: output folder does not exist" in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tiny_world, tmp_path):
    """Bad values the data module meets only while training (NaN occupancy samples): one
    line, exit 2, and no run folder (it holds nothing to resume)."""
    import h5py

    bad = tmp_path / "nan.h5"
    shutil.copy(tiny_world, bad)
    with h5py.File(bad, "r+") as f:
        points = f["eval/occ_points"]
        points[...] = np.full(points.shape, np.nan, dtype=points.dtype)
    out = tmp_path / "run"
    assert fit(bad, out, "trainer.max_steps=2", "trainer.val_check_interval=0") == 2
    assert not out.exists()


def test_a_failure_mid_training_removes_the_folder_it_made(tiny_world, tmp_path, monkeypatch):
    """A problem met at the second step (no checkpoint yet) leaves no run folder; the same
    after a checkpoint leaves the folder to resume from."""
    from iss3d.train.svr import SVRSystem

    plain = SVRSystem.training_step

    def fails_at_step_1(self, batch, batch_idx):
        if self.global_step == 1:
            raise UserError("object 3: broken")
        return plain(self, batch, batch_idx)

    monkeypatch.setattr(SVRSystem, "training_step", fails_at_step_1)
    out = tmp_path / "run"
    assert fit(tiny_world, out, "trainer.max_steps=3", "trainer.val_check_interval=0") == 2
    assert not out.exists()
    every = ["trainer.max_steps=3", "trainer.val_check_interval=0", "trainer.checkpoint_every=1"]
    assert fit(tiny_world, out, *every) == 2
    assert (out / "checkpoints" / "last.ckpt").is_file()
