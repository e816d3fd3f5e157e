"""Inputs that are not what they claim: a FIFO where a file is expected (refused, never read:
reading one blocks forever), a YAML "billion laughs" (aliases refused), a config in UTF-16,
and SIGTERM during a command (unwinds like Ctrl-C). One line, a non-zero exit, nothing left."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

from iss3d.infer.cli import main
from tests.fixtures.cli import error_line
from tests.infer.test_generate import leftovers, run, stage1  # noqa: F401


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    """Fail instead of blocking forever."""

    def hung(signum, frame):
        raise AssertionError(f"the command blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "info", "{fifo}"],
        ["data", "check", "{fifo}"],
        ["generate", "a red chair", "--stage1", "{fifo}", "--out", "{tmp}/out"],
        ["fit", "svr", "--config", "{fifo}", "--data", "{fifo}", "--out", "{tmp}/run"],
        ["eval", "clip", "{fifo}", "--data", "{fifo}"],
    ],
)
def test_a_fifo_is_refused_not_read(argv, fifo, tmp_path, capsys):
    argv = [a.format(fifo=fifo, tmp=tmp_path) for a in argv]
    with no_hang():
        assert main(argv) != 0
    line = error_line(capsys)
    assert str(fifo) in line and "not a regular file" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


def test_yaml_aliases_are_refused(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for a, b in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{b}: &{b} [" + ", ".join([f"*{a}"] * 9) + "]")
    bomb.write_text("\n".join(lines) + "\n")
    with no_hang():
        assert main(["fit", "svr", "--config", str(bomb), "--data", "x.h5"]) == 2
    line = error_line(capsys)
    assert "bomb.yaml" in line and "aliases" in line and "line 2" in line


def test_a_utf16_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "svr.yaml"
    path.write_text("trainer:\n  max_steps: 3\n", encoding="utf-16")
    assert main(["fit", "svr", "--config", str(path), "--data", "x.h5"]) == 2
    assert "svr.yaml: not UTF-8 text" in error_line(capsys)


def test_sigterm_during_generate_leaves_nothing(stage1, tmp_path, capsys, monkeypatch):  # noqa: F811
    import iss3d.infer.stage2

    real = iss3d.infer.stage2.render_views
    calls = []

    def terminated(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(iss3d.infer.stage2, "render_views", terminated)
    assert run(stage1, tmp_path / "out") == 143
    assert "terminated; no partial outputs were kept" in capsys.readouterr().err
    assert leftovers(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is restored
