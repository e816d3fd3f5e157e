"""Numbers that parse but cannot be meant: negative seeds, sizes past what the machine holds,
and argparse's own errors, each one line naming the flag, exit status 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from iss3d.infer.cli import main
from tests.fixtures.cli import error_line


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["data", "synth", "--out", "{tmp}/w.h5", "--seed", "-1"], "--seed"),
        (["data", "synth", "--out", "{tmp}/w.h5", "--objects", "10000000"], "--objects"),
        (["data", "synth", "--out", "{tmp}/w.h5", "--res", "100000"], "--res"),
        (["data", "synth", "--out", "{tmp}/w.h5", "--distance", "nan"], "--distance"),
        (["data", "synth", "--out", "{tmp}/w.h5", "--distance", "inf"], "--distance"),
        (["data", "synth", "--out", "{tmp}/w.h5", "--workers", "-1"], "--workers"),
        (["data", "synth", "--out", "{tmp}/w.h5", "--occ-points", "-1"], "--occ-points"),
        (["data", "synth", "--out", "{tmp}/w.h5", "--occ-points", "0"], "--occ-points"),
        (["data", "synth", "--out", "{tmp}/w.h5", "--occ-points", "10**9"], "--occ-points"),
        (["data", "synth", "--out", "{tmp}/w.h5", "--surface-points", "10**9"], "--surface-points"),
        (["data", "carve", "{tmp}/w.h5", "--occ-points", "0"], "--occ-points"),
        (["data", "sheet", "{tmp}/w.h5", "-o", "{tmp}/s.png", "--seed", "-1"], "--seed"),
        (["generate", "a red chair", "--res", "100000", "--out", "{tmp}/o"], "--res"),
        (["generate", "a red chair", "--steps", "10000000", "--out", "{tmp}/o"], "--steps"),
        (["generate", "a red chair", "--samples", "5000", "--out", "{tmp}/o"], "--samples"),
        (["generate", "a red chair", "--seed", "-1", "--out", "{tmp}/o"], "--seed"),
        (["gallery", "{tmp}", "--out", "{tmp}/g.png", "--frames", "100000"], "--frames"),
        (["generate", "a red chair", "--bogus"], "--bogus"),
        (["generate", "a red chair", "--steps", "many"], "--steps"),
    ],
)
def test_absurd_numbers_are_one_line(argv, flag, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path).replace("10**9", "1000000000") for a in argv]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's errors exit from inside parse_args
        code = exit_.code
    assert code == 2
    assert flag in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "{ckpt}", "--image", "{img}", "--out", "{tmp}/missing/out"],
        ["eval", "svr", "{ckpt}", "--data", "{tmp}/w.h5", "--out", "{tmp}/missing/r.json"],
        ["eval", "stage1", "{ckpt}", "--data", "{tmp}/w.h5", "--out", "{tmp}/missing/r.json"],
        ["eval", "clip", "clip/tiny-64", "--data", "{tmp}/w.h5", "--out", "{tmp}/missing/r.json"],
    ],
)
def test_outputs_are_checked_before_the_work(argv, tmp_path, capsys):
    """An --out whose folder does not exist fails first, naming it (not after the model ran;
    the data file named here does not exist either, so any work would fail differently)."""
    from pathlib import Path

    ckpt = Path(__file__).parent / "fixtures" / "old_layout" / "svr.ckpt"
    argv = [a.format(tmp=tmp_path, ckpt=ckpt, img=tmp_path / "i.png") for a in argv]
    assert main(argv) == 2
    assert "missing: output folder does not exist" in error_line(capsys)


def test_synth_workers_are_bounded_and_never_more_than_the_objects():
    """``--workers 100000`` started processes until the machine gave out (not run through the
    command line here: without the bound, that test would do the same)."""
    from iss3d.core.errors import UserError
    from iss3d.data.synth.build import MAX_WORKERS, worker_count

    with pytest.raises(UserError, match="--workers must be between 0"):
        worker_count(MAX_WORKERS + 1, 10)
    assert worker_count(8, 2) == 2 and worker_count(1, 5) == 1
    assert 1 <= worker_count(0, 3) <= 3 and worker_count(None, 1) == 1


OLD_LAYOUT = Path(__file__).parent / "fixtures" / "old_layout"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["eval", "svr", "{svr}", "--data", "{tmp}/w.h5", "--n-steps", "10000000"], "--n-steps"),
        (["eval", "svr", "{svr}", "--data", "{tmp}/w.h5", "--max-objects", "-1"], "--max-objects"),
        (["eval", "stage1", "{s1}", "--data", "{tmp}/w.h5", "--n-steps", "10000000"], "--n-steps"),
        (["export", "{svr}", "--image", "{tmp}/i.png", "--out", "{tmp}/o", "--resolution",
          "100000"], "--resolution"),
        (["export", "{svr}", "--image", "{tmp}/i.png", "--out", "{tmp}/o", "--turntable-views",
          "100000"], "--turntable-views"),
        (["evaluate", "--texts", "{tmp}/t.txt", "--ref-data", "{tmp}/w.h5", "--out", "{tmp}/e",
          "--samples", "1000000"], "--samples"),
        (["evaluate", "--texts", "{tmp}/t.txt", "--ref-data", "{tmp}/w.h5", "--out", "{tmp}/e",
          "--workers", "1000"], "--workers"),
    ],
)  # fmt: skip
def test_sizes_of_the_work_are_bounded(argv, flag, tmp_path, capsys):
    """Sizes that parse but exhaust the machine (a 10^7-step march, a 100000 px turntable,
    a million samples, a thousand worker processes; --max-objects -1 meant "all but the last")
    are refused before anything is read (the files named here do not exist)."""
    svr, s1 = OLD_LAYOUT / "svr.ckpt", OLD_LAYOUT / "stage1.ckpt"
    assert main([a.format(tmp=tmp_path, svr=svr, s1=s1) for a in argv]) == 2
    assert flag in error_line(capsys)
    assert list(tmp_path.iterdir()) == []
