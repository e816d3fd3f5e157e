"""``fit --resume`` with a damaged ``last.ckpt``: one line, exit 2, and the run folder as it was
(no rewritten config.yaml / command.txt, no new metrics version)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

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
