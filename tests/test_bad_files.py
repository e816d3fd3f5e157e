"""Inputs that are not what they claim: a FIFO where a file is expected (refused, never read:
reading one blocks forever), a YAML "billion laughs" (aliases refused), a config in UTF-16,
and SIGTERM during a command (unwinds like Ctrl-C). One line, a non-zero exit, nothing left."""

from __future__ import annotations

import contextlib
import io
import os
import signal

import pytest
from PIL import Image

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


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "stage1", "{long}", "--data", "{tmp}/w.h5"],
        ["data", "info", "{long}"],
        ["data", "import-dvr", "{long}", "--out", "{tmp}/d.h5"],
        ["data", "import-blender", "{long}", "--out", "{tmp}/d.h5"],
        ["generate", "a red chair", "--preset", "{long}", "--out", "{tmp}/g"],
        ["stylize", "{long}", "wooden"],
        ["gallery", "{long}", "--out", "{tmp}/g.png"],
        ["evaluate", "--texts", "{long}", "--ref-data", "{tmp}/w.h5", "--out", "{tmp}/e"],
        ["fit", "svr", "--config", "{long}", "--data", "{tmp}/w.h5", "--out", "{tmp}/r"],
    ],
    ids=lambda argv: "-".join(a for a in argv[:2] if not a.startswith("{")),
)
def test_a_file_name_too_long_is_one_line(argv, tmp_path, capsys):
    """A 300-character file name: ``Path.exists()`` / ``is_file()`` raise (ENAMETOOLONG)
    instead of answering False, which ended in a traceback."""
    long = tmp_path / ("x" * 300)
    assert main([a.format(long=long, tmp=tmp_path) for a in argv]) == 2
    assert "xxxxxxxxxx" in error_line(capsys)
    assert list(tmp_path.iterdir()) == []


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


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("report", "strip", "culprit", "message"),
    [
        (b"[1, 2, 3]", _png(64, 16), "report.json", "expected a JSON object"),
        (b"{not json", _png(64, 16), "report.json", "not a readable JSON report"),
        ('{"prompt": "a"}'.encode("utf-16"), _png(64, 16), "report.json", "not a readable JSON"),
        (b"[" * 100_000 + b"]" * 100_000, _png(64, 16), "report.json", "not a readable JSON"),
        (b"{}", b"\x89PNG\r\n\x1a\ncorrupt", "turntable.png", "not an image"),
        (b"{}", _png(4, 64), "turntable.png", "not a strip of square frames"),
    ],
    ids=[
        "report-list",
        "report-not-json",
        "report-utf16",
        "report-deep",
        "strip-corrupt",
        "strip-tall",
    ],
)
def test_gallery_of_a_damaged_run_is_one_line(tmp_path, capsys, report, strip, culprit, message):
    """A generate output whose report or turntable strip is damaged: one line naming the file
    (a report holding a list ended in an AttributeError traceback), no gallery written."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_bytes(report)
    (run / "turntable.png").write_bytes(strip)
    out = tmp_path / "gallery.png"
    assert main(["gallery", str(run), "--out", str(out)]) == 2
    line = error_line(capsys)
    assert str(run / culprit) in line and message in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_eval_stage1_refuses_non_finite_ground_truth_before_lightning(
    tiny_world, tmp_path, capsys, monkeypatch
):
    """NaN occupancy samples: the error came from inside Lightning's validation loop, after
    Lightning's own lines on stderr; the split's ground truth is read before a Trainer exists."""
    import shutil
    from pathlib import Path

    import h5py
    import numpy as np
    import pytorch_lightning as pl

    def no_trainer(*args, **kwargs):
        raise AssertionError("Lightning started before the data was checked")

    monkeypatch.setattr(pl, "Trainer", no_trainer)
    world = shutil.copy(tiny_world, tmp_path / "nan.h5")
    with h5py.File(world, "a") as f:
        points = f["eval/occ_points"][:]
        points[:, 0, 0] = np.nan
        f["eval/occ_points"][...] = points
    ckpt = Path(__file__).parent / "fixtures" / "old_layout" / "stage1.ckpt"
    argv = ["eval", "stage1", str(ckpt), "--data", str(world), "--split", "val", "--device", "cpu"]
    assert main(argv) == 2
    assert "eval/occ_points[" in error_line(capsys)


def test_fit_all_checks_clip_and_run_folder_before_training(tmp_path, capsys):
    """``fit all --clip clip/bogus`` trained the SVR before finding out (and left its run
    folder); a run folder that cannot be made (under a file, in a read-only folder) was an
    OSError traceback."""
    from iss3d.data.synth.build import SynthConfig, synthesize

    argv = ["fit", "all", "--data", str(tmp_path / "absent.h5"), "--steps", "1"]
    assert main([*argv, "--out", str(tmp_path / "run"), "--clip", "clip/bogus"]) == 2
    assert "clip/bogus" in error_line(capsys)
    assert list(tmp_path.iterdir()) == []
    # seed 1: 3 training objects and a test one, as fit all needs
    cfg = SynthConfig(objects=4, views=2, res=16, seed=1, occ_uniform=64, occ_near=64)
    world = synthesize(tmp_path / "w.h5", cfg, workers=1, progress=False)
    (tmp_path / "afile").write_text("x")
    argv = ["fit", "all", "--data", str(world), "--steps", "1", "--clip", "clip/tiny-64"]
    assert main([*argv, "--out", str(tmp_path / "afile" / "run")]) == 2
    assert "afile/run: cannot create the run folder" in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "w.h5"]


def test_evaluate_refuses_non_finite_reference_ground_truth_first(tmp_path, capsys):
    """NaN occupancy samples in --ref-data: evaluate generated every item, then failed in the
    metrics, leaving the items behind; the reference is checked before any item now."""
    import h5py
    import numpy as np

    from iss3d.data.synth.build import SynthConfig, synthesize

    cfg = SynthConfig(objects=3, views=2, res=16, seed=1, occ_uniform=64, occ_near=64)
    world = synthesize(tmp_path / "w.h5", cfg, workers=1, progress=False)
    with h5py.File(world, "a") as f:
        points = f["eval/occ_points"][:]
        points[:, 0, 0] = np.nan
        f["eval/occ_points"][...] = points
    (tmp_path / "texts.txt").write_text("a red chair\n")
    argv = ["evaluate", "--texts", str(tmp_path / "texts.txt"), "--ref-data", str(world)]
    argv += ["--out", str(tmp_path / "ev"), "--methods", "full", "--device", "cpu"]
    assert main([*argv, "--no-progress", "reference.split=null", "stage2.steps=1"]) == 2
    assert "eval/occ_points[0]" in error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt", "w.h5"]
