"""What importers keep beyond views and cameras, and what they say: category names from
``metadata.yaml``, ``captions.json`` (every layout), ONet's 3D ground truth in DVR folders, and
the summary line of what was read and what was not."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from iss3d.core.errors import UserError
from iss3d.data.carve import ground_truth_source
from iss3d.data.importers.blender import import_blender
from iss3d.data.importers.dvr import import_dvr
from iss3d.data.importers.onet import OnetConfig, read_occupancy
from iss3d.data.reader import MultiViewFile
from iss3d.infer.cli import main
from tests.fixtures.cli import error_line
from tests.fixtures.layouts import (
    DVR_SYNSETS,
    assert_fails_cleanly,
    synth_objects,
    write_blender_layout,
    write_dvr_layout,
    write_onet_files,
    write_png,
)
from tests.fixtures.primitives import Primitive, write_folder

# 03001627 reads as an octal number in YAML 1.1: names must still be found by the text id.
METADATA = (
    f"{DVR_SYNSETS[0]}:\n  id: {DVR_SYNSETS[0]}\n  name: jet,airplane\n"
    f"{DVR_SYNSETS[1]}:\n  id: {DVR_SYNSETS[1]}\n  name: armchair,chair\n"
)
NAMES = {DVR_SYNSETS[0]: "jet", DVR_SYNSETS[1]: "armchair"}


@pytest.fixture(scope="module")
def objects():
    return synth_objects(3)


@pytest.fixture
def dvr_root(objects, tmp_path):
    """A DVR layout of 3 objects with metadata.yaml, captions.json (2 of 3 objects and one id
    naming none), ONet files and a folder the importer does not read."""
    root = tmp_path / "ShapeNet"
    models = write_dvr_layout(root, objects, depth=False)
    (root / "metadata.yaml").write_text(METADATA)
    captions = {models[0].object_id: ["a red jet", "a small jet"], models[2].object_id: "one"}
    captions["99999999/none"] = ["nobody"]
    (root / "captions.json").write_text(json.dumps(captions))
    for m in models:
        write_onet_files(m.folder, m.obj.record)
        write_png(m.folder / "visual_hull_depth" / "000.png", np.zeros((4, 4), np.uint8))
    return root, models


def test_dvr_keeps_names_captions_and_onet_ground_truth(dvr_root, tmp_path):
    root, models = dvr_root
    out = tmp_path / "dvr.h5"
    _, summary = import_dvr(root, out, ground_truth=OnetConfig(100, 500, seed=3), progress=False)
    with MultiViewFile(out) as f:
        assert ground_truth_source(f) == "exact" and f.info["ground_truth"]["from"] == "onet"
        assert f.info["synset_names"] == NAMES
        for m in models:
            obj = _row(f, m.object_id)
            assert f.categories[obj] == NAMES[m.synset] and f.meta(obj)["synset"] == m.synset
            src = m.obj.record
            occ, surf = f.read_occupancy(obj), f.read_surface(obj)
            assert occ.n_uniform == len(occ.points) == 100
            # every kept point is one of ONet's, with its flag
            given_occ = src.occupancy
            source = dict(zip(map(tuple, given_occ.points), given_occ.inside, strict=True))
            assert all(source[tuple(p)] == c for p, c in zip(occ.points, occ.inside, strict=True))
            assert len(surf.points) == 500
            given = src.surface.points.astype(np.float16).astype(np.float32)
            index = {tuple(p): i for i, p in enumerate(given)}
            picked = [index[tuple(p)] for p in surf.points]
            normals = src.surface.normals[picked]
            np.testing.assert_allclose(surf.normals, normals, atol=2e-3)  # float16 in the file
            # colours from the views: albedo x shading (the renders shade by 0.5 to 1), never
            # the white background (measured: 71 to 95% in [0.3, 1.15] by object)
            albedo, got = src.surface.colors[picked].astype(float), surf.colors.astype(float)
            lit = albedo > 40
            ratio = got[lit] / albedo[lit]
            assert ((ratio > 0.3) & (ratio < 1.15)).mean() > 0.65, m.object_id
            assert (got > 240).all(-1).mean() < 0.05, m.object_id
        assert list(f.captions[_row(f, models[0].object_id)]) == ["a red jet", "a small jet"]
        assert list(f.captions[_row(f, models[1].object_id)]) == []
        assert list(f.captions[_row(f, models[2].object_id)]) == ["one"]
    assert "read 3 objects (train 1, val 1, test 1) in 2 categories (2 named by metadata" in summary
    assert "3 captions for 2 of 3 objects (captions.json), 1 ids naming no imported" in summary
    assert "100 occupancy + 500 surface points per object" in summary
    assert "no depth" in summary
    assert "not imported: visual_hull_depth/ (3 models)" in summary


def _row(f: MultiViewFile, object_id: str) -> int:
    return int(np.flatnonzero(f.object_ids == object_id)[0])


def test_dvr_cli_prints_the_summary(dvr_root, tmp_path, capsys):
    root, _ = dvr_root
    out = tmp_path / "dvr.h5"
    args = ["data", "import-dvr", str(root), "--out", str(out), "--no-progress"]
    assert main([*args, "--occ-points", "64", "--surface-points", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}: read 3 objects") and "64 occupancy + 0" in printed
    with MultiViewFile(out) as f:
        assert f.has_occupancy and not f.has_surface
    assert main([*args, "--occ-points", "1000"]) == 2  # more than ONet's file holds
    assert "points.npz: holds 128 points, fewer than --occ-points 1000" in error_line(capsys)


def test_dvr_ground_truth_must_be_everywhere_or_skipped(dvr_root, tmp_path):
    root, models = dvr_root
    (models[1].folder / "points.npz").unlink()
    out = tmp_path / "out" / "dvr.h5"
    out.parent.mkdir()
    call = lambda: import_dvr(root, out, progress=False)  # noqa: E731
    assert_fails_cleanly(call, out, models[1].folder, "points.npz", "--occ-points 0")
    _, summary = import_dvr(root, out, ground_truth=OnetConfig(0, 200), progress=False)
    with MultiViewFile(out) as f:
        assert not f.has_occupancy and f.has_surface
    assert "0 occupancy + 200 surface points" in summary


def test_occupancy_flags_packed_or_not_and_frames(tmp_path):
    """ONet's packed flags and plain bool flags read alike; a scale_mat maps points into the
    object frame (points / 2 for a 2x scale)."""
    rng = np.random.default_rng(0)
    points = rng.uniform(-1, 1, (20, 3)).astype(np.float32)
    inside = rng.random(20) < 0.5
    scale = np.diag([2.0, 2.0, 2.0, 1.0])
    for flags in (np.packbits(inside), inside):
        arrays = {"points": points, "occupancies": flags}
        occ = read_occupancy(arrays, tmp_path / "p.npz", 20, scale, np.random.default_rng(1))
        np.testing.assert_allclose(occ.points, points / 2, atol=1e-3)
        np.testing.assert_array_equal(occ.inside, inside)
    bad = {"points": points, "occupancies": np.zeros(7, np.uint8)}
    with pytest.raises(UserError, match="occupancies has shape"):
        read_occupancy(bad, tmp_path / "p.npz", 20, scale, rng)


@pytest.mark.parametrize(
    ("content", "mentions"),
    [
        ("[1, 2]", "must map object ids"),
        ('{"a": 5}', "captions must be a list of texts"),
        ('{"a": ["ok", ""]}', "caption 1 is not a non-empty text"),
        ('{"a": ["two\\nlines"]}', "control character"),
        ('{"a": [', "not valid JSON"),
    ],
)
def test_bad_captions_file_fails_before_writing(dvr_root, tmp_path, content, mentions):
    root, _ = dvr_root
    (root / "captions.json").write_text(content)
    out = tmp_path / "out" / "dvr.h5"
    out.parent.mkdir()
    call = lambda: import_dvr(root, out, progress=False)  # noqa: E731
    assert_fails_cleanly(call, out, "captions.json", mentions)


def test_two_synsets_with_one_name_are_refused(dvr_root, tmp_path):
    root, _ = dvr_root
    (root / "metadata.yaml").write_text(METADATA.replace("armchair,chair", "jet"))
    out = tmp_path / "out" / "dvr.h5"
    out.parent.mkdir()
    call = lambda: import_dvr(root, out, progress=False)  # noqa: E731
    assert_fails_cleanly(call, out, "metadata.yaml", "both named 'jet'")


def test_blender_reads_captions_and_names_unread_images(objects, tmp_path):
    folders = write_blender_layout(tmp_path / "scenes", objects[:2])
    write_png(folders[0] / "test" / "r_5_depth_0000.png", np.zeros((4, 4), np.uint8))
    captions = {folders[1].name: ["a thing"], "elsewhere": ["x"]}
    (tmp_path / "scenes" / "captions.json").write_text(json.dumps(captions))
    out = tmp_path / "b.h5"
    _, summary = import_blender(tmp_path / "scenes", out, splits=("train",), progress=False)
    with MultiViewFile(out) as f:
        assert [list(c) for c in f.captions] == [[], ["a thing"]]
    assert "read 2 objects (train 2) in 2 categories" in summary
    assert "1 captions for 1 of 2 objects (captions.json), 1 ids naming no" in summary
    # val/ and test/ views of both scenes (3 each) and the depth render were not read
    assert "not imported: 7 images no frame names" in summary


def test_folder_adds_captions_json_to_cameras_json(tmp_path, capsys):
    prims = [Primitive("box", "red", (0.3, 0.2, 0.25)), Primitive("cone", "blue", (0.2,) * 3)]
    root = write_folder(tmp_path / "renders", prims, views=2, res=16)
    (root / "captions.json").write_text(json.dumps({"cone-001": ["a tall blue cone"]}))
    out = tmp_path / "f.h5"
    assert main(["data", "import-folder", str(root), "--out", str(out), "--no-progress"]) == 0
    assert "3 captions for 2 of 2 objects (captions.json)" in capsys.readouterr().out
    with MultiViewFile(out) as f:
        assert list(f.captions[1]) == ["a blue cone", "a tall blue cone"]


def test_blender_category_folders_and_split_lists(objects, tmp_path):
    """ROOT/<category>/<scene>: the category folder names the category and prefixes the id;
    a category folder's .lst files give splits, and scenes they do not list are skipped."""
    write_blender_layout(tmp_path / "scenes" / "planes", objects[:2])
    write_blender_layout(tmp_path / "scenes" / "chairs", objects[2:])
    ids = [o.record.object_id for o in objects]
    (tmp_path / "scenes" / "planes" / "test.lst").write_text(ids[1] + "\n")
    (tmp_path / "scenes" / "captions.json").write_text(json.dumps({f"chairs/{ids[2]}": "x"}))
    out = tmp_path / "b.h5"
    _, summary = import_blender(tmp_path / "scenes", out, splits=("train",), progress=False)
    with MultiViewFile(out) as f:
        assert list(f.object_ids) == [f"chairs/{ids[2]}", f"planes/{ids[1]}"]
        assert list(f.categories) == ["chairs", "planes"]
        assert list(f.splits) == ["train", "test"]
        assert [list(c) for c in f.captions] == [["x"], []]
    assert "read 2 objects (train 1, test 1) in 2 categories" in summary
    assert "skipped 1 scene folders no .lst file lists" in summary


def test_blender_reads_the_transforms_files_a_scene_has(objects, tmp_path):
    folders = write_blender_layout(tmp_path / "scenes", objects[:2])
    (folders[1] / "transforms_test.json").unlink()
    out = tmp_path / "b.h5"
    import_blender(tmp_path / "scenes", out, progress=False)
    with MultiViewFile(out) as f:
        assert [len(f.views_of(o)) for o in range(2)] == [6, 5]  # 3 + 2 + 1, and no test view
    for name in ("train", "val"):
        (folders[1] / f"transforms_{name}.json").rename(folders[1] / f"transforms_{name}.bak")
    (folders[1] / "transforms_extra.json").write_text("{}")
    message = assert_fails_cleanly(
        lambda: import_blender(tmp_path / "scenes", tmp_path / "none" / "b.h5", progress=False),
        tmp_path / "none" / "b.h5",
        folders[1],
    )
    assert "--splits" in message


def test_blender_refuses_a_fifo_in_place_of_a_transforms_file(objects, tmp_path):
    """Reading the files a scene has must not skip (or open) one that is not a regular file."""
    folders = write_blender_layout(tmp_path / "scenes", objects[:1])
    (folders[0] / "transforms_train.json").unlink()
    os.mkfifo(folders[0] / "transforms_train.json")
    out = tmp_path / "none" / "b.h5"
    call = lambda: import_blender(tmp_path / "scenes", out, progress=False)  # noqa: E731
    assert_fails_cleanly(call, out, "transforms_train.json", "not a regular file")
