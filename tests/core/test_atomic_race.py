"""Outputs that appear whole or not at all, also when two runs race for one folder and when a
killed run (SIGKILL) left its temporary folder behind."""

from __future__ import annotations

import os

import pytest

from iss3d.core.atomic import atomic_directory, atomic_output, temporary_sibling
from iss3d.core.errors import UserError


def test_the_run_that_loses_a_race_says_so_and_leaves_the_winner(tmp_path):
    out = tmp_path / "out"
    race = pytest.raises(UserError, match="another run wrote it while this one ran")
    with race, atomic_directory(out) as folder:
        (folder / "mine.txt").write_text("loser")
        out.mkdir()  # the other run renames its folder into place meanwhile
        (out / "theirs.txt").write_text("winner")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "theirs.txt").read_text() == "winner"


def _dead_pid() -> int:
    pid = 2**22 + 1  # above Linux's largest pid_max (2^22): no such process
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


def test_leftovers_of_dead_processes_are_removed(tmp_path):
    out = tmp_path / "out"
    dead = tmp_path / f".out.tmp-{_dead_pid()}-abcd1234"
    dead.mkdir()
    (dead / "half.glb").write_bytes(b"half")
    alive = tmp_path / f".out.tmp-{os.getpid()}-abcd1234"  # a run of this process: kept
    alive.mkdir()
    other = tmp_path / f".other.tmp-{_dead_pid()}-abcd1234"  # another output's: not ours
    other.write_text("x")
    with atomic_directory(out) as folder:
        (folder / "a.txt").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", alive.name, other.name])
    stale_file = tmp_path / f".r.json.tmp-{_dead_pid()}-00000000"
    stale_file.write_text("{")
    with atomic_output(tmp_path / "r.json") as tmp:
        tmp.write_text("{}")
    assert not stale_file.exists() and (tmp_path / "r.json").read_text() == "{}"
    assert f".out.tmp-{os.getpid()}-" in temporary_sibling(out).name


def test_outputs_the_file_system_refuses_are_one_line(tmp_path, capsys):
    from iss3d.infer.cli import main

    long = tmp_path / ("x" * 300)
    with pytest.raises(UserError, match="file name too long"):
        atomic_directory(long).__enter__()
    if os.path.isdir("/proc"):
        with pytest.raises(UserError, match=r"/proc/x\.h5: cannot write here"):
            atomic_output("/proc/x.h5").__enter__()
    assert main(["generate", "a red chair", "--out", str(long), "--no-progress"]) == 2
    assert "file name too long" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
