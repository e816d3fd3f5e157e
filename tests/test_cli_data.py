"""`iss3d data ...` as a user runs it: outputs, one-line errors, exit codes, no partial files."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from PIL import Image

from iss3d.infer.cli import main

SYNTH = [
    "--objects",
    "3",
    "--views",
    "2",
    "--res",
    "16",
    "--surface-points",
    "2048",
    "--occ-points",
    "64",
]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_check_info_sheet(tmp_path, capsys):
    world = tmp_path / "w.h5"
    code, out, _ = run(capsys, "data", "synth", "--out", str(world), *SYNTH, "--workers", "1")
    assert code == 0 and "wrote" in out and world.exists()
    code, out, _ = run(capsys, "data", "check", str(world))
    assert code == 0 and out.strip() == f"{world}: ok (3 objects, 6 views)"
    code, out, _ = run(capsys, "data", "info", str(world), "--json")
    info = json.loads(out)
    assert (
        code == 0 and info["objects"] == 3 and info["resolution"] == [16, 16] and info["has_depth"]
    )
    assert sum(info["splits"].values()) == 3 and info["surface_points"] == 2048
    code, out, _ = run(capsys, "data", "info", str(world))
    assert code == 0 and "pixel convention: center" in out
    sheet = tmp_path / "sheet.png"
    code, _, _ = run(capsys, "data", "sheet", str(world), "-o", str(sheet), "--views", "2")
    image = Image.open(sheet)
    assert code == 0 and image.size[1] == 3 * 96  # 16 px tiles are upscaled to 96
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.png", "w.h5"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "check", "{tmp}/missing.h5"], "missing.h5: no such file"),
        (["data", "info", "{tmp}"], "is a folder"),
        (["data", "synth", "--out", "{tmp}/x.h5", "--objects", "0"], "--objects must be positive"),
        (["data", "synth", "--out", "{tmp}/no/such/x.h5", *SYNTH], "output folder does not exist"),
        (["data", "sheet", "{tmp}/missing.h5", "-o", "{tmp}/s.png"], "no such file"),
    ],
)
def test_errors_are_one_line_and_leave_nothing(tmp_path, capsys, argv, message):
    before = set(tmp_path.rglob("*"))
    code, _, err = run(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("iss3d: error: ") and message in err
    assert set(tmp_path.rglob("*")) == before


def test_truncated_and_foreign_files(tmp_path, capsys):
    world = tmp_path / "w.h5"
    assert run(capsys, "data", "synth", "--out", str(world), *SYNTH, "--workers", "1")[0] == 0
    cut = tmp_path / "cut.h5"
    cut.write_bytes(world.read_bytes()[:20000])
    code, _, err = run(capsys, "data", "check", str(cut))
    assert code == 2 and "cut.h5" in err and err.count("\n") == 1
    with h5py.File(world, "a") as f:
        f.attrs["schema_version"] = 99
    code, _, err = run(capsys, "data", "info", str(world))
    assert code == 2 and "schema version 99" in err
    code, _, err = run(capsys, "data", "sheet", str(world), "-o", str(tmp_path / "s.txt"))
    assert code == 2


def test_console_script_exit_code_without_traceback(tmp_path):
    script = Path(sys.executable).parent / "iss3d"
    proc = subprocess.run(
        [str(script), "data", "check", str(tmp_path / "nope.h5")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().endswith("nope.h5: no such file")
