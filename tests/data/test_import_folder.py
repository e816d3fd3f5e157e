"""``iss3d data import-folder``: images, masks (or alpha) and a cameras.json, on primitives
rendered by the tests' own renderer; the imported cameras must put every pixel where the
renderer did (an SVR decoder of the same shape renders the imported views exactly)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from iss3d.data.reader import MultiViewFile
from iss3d.infer.cli import main
from tests.fixtures.cli import error_line
from tests.fixtures.primitives import Primitive, camera, orbit, write_folder

PRIMS = [
    Primitive("box", "red", (0.3, 0.2, 0.25)),
    Primitive("cone", "green", (0.25, 0.3, 0.25)),
    Primitive("sphere", "blue", (0.3, 0.3, 0.3)),
]


@pytest.mark.parametrize(("convention", "alpha"), [("opencv", False), ("opengl", True)])
def test_import_reads_cameras_captions_and_masks(convention, alpha, tmp_path, capsys):
    root = write_folder(tmp_path / "renders", PRIMS, views=3, res=24, convention=convention,
                        alpha=alpha)  # fmt: skip
    out = tmp_path / "renders.h5"
    assert main(["data", "import-folder", str(root), "--out", str(out), "--no-progress"]) == 0
    assert "3 objects, 9 views at 24x24" in capsys.readouterr().out
    f = MultiViewFile(out)
    assert list(f.categories) == ["box", "cone", "sphere"]
    assert f.captions[1] == ["a green cone"] and list(f.splits) == ["test", "train", "train"]
    for obj in range(3):
        for v, eye in enumerate(orbit(3, seed=obj)):
            world, cam = camera(eye, 2.1875)
            row = f.views_of(obj)[v]
            np.testing.assert_allclose(f.world_mats[row], world, atol=1e-5)
            np.testing.assert_allclose(f.camera_mats[row], cam, atol=1e-5)
    view = f.read_view(int(f.views_of(2)[0]))
    assert view.mask.any() and (view.rgb[~view.mask] == 255).all()
    assert main(["data", "check", str(out)]) == 0


def test_imported_views_render_like_the_shape_they_show(tiny_world, tmp_path):
    """An octahedron decoder (tests/fixtures/octahedron.py) renders the imported views of the
    same octahedron as the tests' renderer drew them (cameras, intrinsics, pixel centres)."""
    from tests.fixtures.octahedron import octahedron_checkpoint
    from tests.train.test_svr import fit

    run = tmp_path / "svr"
    assert fit(tiny_world, run, "trainer.max_steps=1", "trainer.val_check_interval=0") == 0
    ckpt = octahedron_checkpoint(run / "checkpoints" / "last.ckpt", tmp_path / "octa.ckpt")
    octa = Primitive("octahedron", "red", (0.3, 0.3, 0.3))
    root = write_folder(tmp_path / "octa", [octa, octa], views=4, res=32)
    data = tmp_path / "octa.h5"
    assert main(["data", "import-folder", str(root), "--out", str(data), "--no-progress"]) == 0
    report = tmp_path / "eval.json"
    argv = ["eval", "svr", str(ckpt), "--data", str(data), "--split", "train", "--out"]
    assert main([*argv, str(report), "--n-steps", "64"]) == 0
    # per view 0.97 to 1.0: a silhouette edge pixel or two where two ray marchers differ; the
    # views written directly (tests.fixtures.primitives.write_file) score the same per view
    assert json.loads(report.read_text())["means"]["mask_iou"] > 0.95


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: s.pop("frames"), "needs a 'frames' list"),
        (lambda s: s.update(convention="blender"), "'convention' must be one of"),
        (lambda s: s["frames"][1].update(K=[[1, 0], [0, 1]]), "frames[1] K: shape"),
        (lambda s: s["frames"][2].update(world_to_camera=[[float("nan")] * 4] * 3), "not finite"),
        (lambda s: s["frames"][0].pop("mask"), "has no alpha channel"),
        (lambda s: s["objects"].update(ghost={}), "objects['ghost'] has no frames"),
        (lambda s: s["objects"]["box-000"].update(split="dev"), "split must be one of"),
        (lambda s: s["frames"][0].update(image="nope.png"), "nope.png: no such file"),
    ],
)
def test_bad_layouts_are_one_line_and_write_nothing(damage, message, tmp_path, capsys):
    root = write_folder(tmp_path / "renders", PRIMS[:1], views=3, res=16)
    spec = json.loads((root / "cameras.json").read_text())
    damage(spec)
    (root / "cameras.json").write_text(json.dumps(spec))
    out = tmp_path / "out.h5"
    assert main(["data", "import-folder", str(root), "--out", str(out), "--no-progress"]) == 2
    assert message in error_line(capsys)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["renders"]


def test_a_deeply_nested_cameras_json_is_one_line(tmp_path, capsys):
    """JSON nested 100,000 deep: json.loads raised RecursionError, a traceback."""
    root = write_folder(tmp_path / "renders", PRIMS[:1], views=3, res=16)
    (root / "cameras.json").write_text('{"frames": ' + "[" * 100_000 + "]" * 100_000 + "}")
    out = tmp_path / "out.h5"
    assert main(["data", "import-folder", str(root), "--out", str(out), "--no-progress"]) == 2
    assert "cameras.json: JSON nested too deeply" in error_line(capsys)
    assert not out.exists()
