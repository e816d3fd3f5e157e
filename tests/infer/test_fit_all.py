"""``iss3d fit all``: a set the project never generated (primitives from the tests' own
renderer, imported from the plain folder layout, no 3D ground truth) to a stage-1 model and
its evaluation, resumable; bad requests are one line and leave nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from iss3d.data.reader import MultiViewFile
from iss3d.infer.cli import main
from tests.fixtures.cli import error_line
from tests.fixtures.primitives import (
    COLOURS,
    KINDS,
    random_primitive,
    write_blender,
    write_dvr,
    write_folder,
)


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    """8 captioned primitives x 4 views at 32 px, imported (train and test splits only)."""
    root = tmp_path_factory.mktemp("prims")
    rng = np.random.default_rng(0)
    colours = list(COLOURS)
    prims = [random_primitive(rng, KINDS[i % 4], colours[i // 4]) for i in range(8)]
    write_folder(root / "renders", prims, views=4, res=32)
    out = root / "prims.h5"
    assert main(["data", "import-folder", str(root / "renders"), "--out", str(out)]) == 0
    return out


TINY = ["--steps", "3", "--no-progress"]


def test_fit_all_trains_evaluates_and_resumes(renders, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "all", "--data", str(renders), "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "next: iss3d generate 'a red" in printed
    plan = json.loads((out / "plan.json").read_text())
    assert plan["ground_truth"] == "visual_hull" and plan["train_clip"] is True
    assert plan["steps"] == {"svr": 3, "clip": 3, "stage1": 3}
    assert (out / "data.h5").is_file() and (out / "clip" / "clip.pt").is_file()
    summary = json.loads((out / "summary.json").read_text())
    evaluation = summary["evaluation"]
    assert evaluation["ground_truth"] == "visual_hull"
    assert 0 <= evaluation["svr"]["iou"] <= 1 and 0 <= evaluation["stage1"]["mask_iou_mapper"] <= 1
    assert evaluation["clip"]["classes"] == 8  # every first caption of the file is a class
    assert 0 <= evaluation["clip"]["top1"] <= 1
    assert summary["generate"].endswith(f"--clip {out / 'clip' / 'clip.pt'}")

    assert main(["fit", "all", "--data", str(renders), "--out", str(out), *TINY, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert all(f"{stage}: done (3 steps)" in printed for stage in ("svr", "clip", "stage1"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budget", "0"], "--budget 0.0: give minutes"),
        (["--steps", "0"], "--steps 0: give a count"),
        (["--resume", "--steps", "3"], "has no plan.json"),
    ],
)
def test_bad_requests_are_one_line_and_leave_nothing(renders, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["fit", "all", "--data", str(renders), "--out", str(out), *extra]) == 2
    assert message in error_line(capsys)
    assert not out.exists()


def test_a_filled_folder_is_not_overwritten(renders, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["fit", "all", "--data", str(renders), "--out", str(out), *TINY]) == 2
    assert "exists and is not empty" in error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("layout", ["dvr", "blender"])
def test_fit_all_from_dvr_and_blender_layouts(layout, tmp_path, capsys):
    """Each layout, imported with its captions.json, category names and split lists, goes
    through the whole chain (carve, SVR, stand-in CLIP on the captions, stage 1)."""
    rng = np.random.default_rng(1)
    colours = list(COLOURS)
    prims = [random_primitive(rng, KINDS[i % 4], colours[i // 4]) for i in range(8)]
    root = (write_dvr if layout == "dvr" else write_blender)(tmp_path / layout, prims, 4, 32)
    data = tmp_path / f"{layout}.h5"
    extra = ["--bound", "0.5"] if layout == "blender" else []
    command = ["data", f"import-{layout}", str(root), "--out", str(data), "--no-progress"]
    assert main([*command, *extra]) == 0
    printed = capsys.readouterr().out
    assert "read 8 objects (train 6, val 1, test 1) in 4 categories" in printed
    assert "16 captions for 8 of 8 objects (captions.json)" in printed
    with MultiViewFile(data) as f:
        assert sorted(set(f.categories)) == sorted(KINDS)
    out = tmp_path / "run"
    assert main(["fit", "all", "--data", str(data), "--out", str(out), *TINY]) == 0
    assert "next: iss3d generate" in capsys.readouterr().out
    plan = json.loads((out / "plan.json").read_text())
    assert plan["ground_truth"] == "visual_hull" and plan["train_clip"] is True
    evaluation = json.loads((out / "summary.json").read_text())["evaluation"]
    assert 0 <= evaluation["svr"]["iou"] <= 1 and evaluation["clip"]["classes"] == 8
