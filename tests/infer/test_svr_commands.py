"""`iss3d eval svr` and `iss3d export` on a trained checkpoint and on one with a known shape."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from iss3d.infer.cli import main
from iss3d.models.loaders import load_svr
from tests.fixtures.octahedron import octahedron_checkpoint
from tests.train.test_svr import fit


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory):
    """A real checkpoint from `iss3d fit svr` (a few steps of the tiny config)."""
    out = tmp_path_factory.mktemp("svr") / "run"
    assert fit(tiny_world, out, "trainer.max_steps=2", "trainer.val_check_interval=2") == 0
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def octahedron(trained, tmp_path_factory):
    """The trained checkpoint with its decoder set by hand to |x| + |y| + |z| < 0.3, red."""
    return octahedron_checkpoint(trained, tmp_path_factory.mktemp("octa") / "octahedron.ckpt")


def test_eval_svr_reports_iou(trained, tiny_world, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = main(
        [
            "eval",
            "svr",
            str(trained),
            "--data",
            str(tiny_world),
            "--split",
            "val",
            "--n-steps",
            "8",
            "--input-views",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 2 * result["objects"]
    assert 0.0 <= result["means"]["iou"] <= 1.0 and 0.0 <= result["means"]["mask_iou"] <= 1.0
    assert "iou:" in capsys.readouterr().out


@pytest.fixture(scope="module")
def octahedra(tmp_path_factory) -> Path:
    """Renders of the octahedron checkpoint's shape (red, |x| + |y| + |z| < 0.3) by the tests'
    own renderer, at the tiny SVR's 32 px, without 3D ground truth."""
    from tests.fixtures.primitives import Primitive, write_file

    prims = [Primitive("octahedron", "red", (0.3, 0.3, 0.3)) for _ in range(2)]
    return write_file(tmp_path_factory.mktemp("octa") / "octahedra.h5", prims, views=6, res=32)


def test_eval_svr_without_3d_ground_truth_measures_held_out_views(octahedron, octahedra, tmp_path):
    """No occupancy: mask IoU and depth error of the rendered held-out views, and the report
    says so; carved (`data carve`): the volumetric IoU against the hull as well."""
    out = tmp_path / "views.json"
    argv = ["eval", "svr", str(octahedron), "--data", str(octahedra), "--n-steps", "64"]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ground_truth"] == "views" and "iou" not in result["means"]
    # the decoder is the octahedron the views show: mask IoU 0.97 to 1.0 per view (an edge
    # pixel or two), depth error 3e-5: our renderer and the tests' own agree on the cameras
    assert result["means"]["mask_iou"] > 0.95
    assert result["means"]["depth_l1"] < 1e-3
    carved = tmp_path / "carved.h5"
    assert main(["data", "carve", str(octahedra), "--out", str(carved), "--no-progress"]) == 0
    argv[argv.index(str(octahedra))] = str(carved)
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ground_truth"] == "visual_hull"
    assert result["means"]["iou"] > 0.75  # measured 0.83: six views' hull is larger than the solid


def test_export_writes_mesh_turntable_and_input(octahedron, tiny_world, tmp_path):
    out = tmp_path / "export"
    argv = ["export", str(octahedron), "--data", str(tiny_world), "--object", "synth-000001"]
    code = main(
        [
            *argv,
            "--out",
            str(out),
            "--mesh-resolution",
            "64",
            "--resolution",
            "16",
            "--turntable-views",
            "3",
        ]
    )
    assert code == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "info.json",
        "input.png",
        "mesh.glb",
        "mesh.obj",
        "mesh.ply",
        "turntable.gif",
        "turntable.png",
    ]
    mesh = trimesh.load(out / "mesh.ply", process=False)
    assert abs(np.abs(mesh.vertices).sum(-1).max() - 0.3) < 0.03, "the octahedron |x|+|y|+|z| = 0.3"
    assert (np.asarray(mesh.visual.vertex_colors)[:, :3] == [250, 5, 5]).all()
    assert Image.open(out / "turntable.png").size == (3 * 16, 16)


def test_export_from_an_image_checks_its_size(octahedron, tmp_path, capsys):
    model = load_svr(octahedron)
    h, w = model.image_size
    good = tmp_path / "in.png"
    Image.new("RGBA", (w, h), (255, 0, 0, 255)).save(good)
    assert (
        main(
            [
                "export",
                str(octahedron),
                "--image",
                str(good),
                "--out",
                str(tmp_path / "a"),
                "--mesh-resolution",
                "64",
                "--resolution",
                "8",
                "--turntable-views",
                "1",
            ]
        )
        == 0
    )
    bad = tmp_path / "big.png"
    Image.new("RGB", (w + 3, h)).save(bad)
    capsys.readouterr()
    assert main(["export", str(octahedron), "--image", str(bad), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "big.png: image is" in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"not a checkpoint"), "cannot read"),
        (lambda p: torch.save({"state_dict": {}}, p), "not an iss3d SVR checkpoint"),
    ],
)
def test_bad_checkpoints(tmp_path, tiny_world, capsys, make, message):
    path = tmp_path / "bad.ckpt"
    make(path)
    assert main(["eval", "svr", str(path), "--data", str(tiny_world)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_checkpoint_of_another_architecture(trained, tmp_path, tiny_world, capsys):
    ckpt = torch.load(trained, weights_only=True)
    ckpt["architecture"]["decoder"]["hidden"] *= 2
    path = tmp_path / "other.ckpt"
    torch.save(ckpt, path)
    assert main(["eval", "svr", str(path), "--data", str(tiny_world)]) == 2
    err = capsys.readouterr().err
    assert "shape mismatch" in err and err.count("\n") == 1


def test_empty_reconstruction_is_an_error_and_writes_nothing(
    octahedron, tiny_world, tmp_path, capsys
):
    ckpt = torch.load(octahedron, weights_only=True)
    ckpt["state_dict"]["decoder.fc_out.bias"][0] = -10.0  # empty everywhere
    path = tmp_path / "empty.ckpt"
    torch.save(ckpt, path)
    out = tmp_path / "export"
    argv = [
        "export",
        str(path),
        "--data",
        str(tiny_world),
        "--object",
        "synth-000001",
        "--out",
        str(out),
    ]
    assert (
        main([*argv, "--mesh-resolution", "64", "--resolution", "8", "--turntable-views", "1"]) == 2
    )
    assert "empty" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.glob(".export*")) == []
