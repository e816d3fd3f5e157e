"""Numbers that parse but cannot be meant: negative seeds, sizes past what the machine holds,
and argparse's own errors, each one line naming the flag, exit status 2, nothing written."""

from __future__ import annotations

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
    argv = [a.format(tmp=tmp_path) for a in argv]
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
