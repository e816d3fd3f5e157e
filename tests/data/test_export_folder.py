"""``iss3d data export-folder``: a file written out as the folder layout and imported again
gives the same views, masks, cameras, categories, splits and captions, for files in either
pixel convention."""

from __future__ import annotations

import numpy as np
import pytest

from iss3d.data.export_folder import camera_mat_to_pixel_intrinsics, folder_names
from iss3d.data.importers.dvr import import_dvr
from iss3d.data.importers.folder import pixel_intrinsics_to_camera_mat
from iss3d.data.reader import MultiViewFile
from iss3d.infer.cli import main
from tests.fixtures.cli import error_line
from tests.fixtures.layouts import synth_objects, write_dvr_layout


@pytest.fixture(scope="module")
def dvr_file(tmp_path_factory):
    base = tmp_path_factory.mktemp("dvr")
    write_dvr_layout(base / "root", synth_objects(3), depth=False)
    return import_dvr(base / "root", base / "dvr.h5", progress=False)[0]


@pytest.mark.parametrize("which", ["tiny_world", "dvr_file"])
def test_export_then_import_is_the_same_file(which, request, tmp_path, capsys):
    src = request.getfixturevalue(which)
    folder, again = tmp_path / "renders", tmp_path / "again.h5"
    assert main(["data", "export-folder", str(src), "--out", str(folder), "--no-progress"]) == 0
    assert "as RGBA PNGs and cameras.json" in capsys.readouterr().out
    assert main(["data", "import-folder", str(folder), "--out", str(again), "--no-progress"]) == 0
    with MultiViewFile(src) as a, MultiViewFile(again) as b:
        assert a.num_objects == b.num_objects and a.pixel_convention in ("center", "dvr")
        assert list(b.categories) == list(a.categories) and list(b.splits) == list(a.splits)
        assert [list(c) for c in b.captions] == [list(c) for c in a.captions]
        for obj in range(a.num_objects):
            x, y = a.read_object(obj), b.read_object(obj)
            np.testing.assert_array_equal(y.rgb, x.rgb)
            np.testing.assert_array_equal(y.mask, x.mask)
            np.testing.assert_allclose(y.world_mat, x.world_mat, atol=1e-5)
            np.testing.assert_allclose(y.scale_mat, x.scale_mat, atol=1e-6)
            if a.pixel_convention == "center":
                np.testing.assert_allclose(y.camera_mat, x.camera_mat, atol=1e-5)
            else:  # the same rays through every pixel, now named in pixel centres
                k = camera_mat_to_pixel_intrinsics(x.camera_mat[0], a.height, a.width, "dvr")
                u = np.array([0.0, a.width - 1.0])
                dvr_x = 2 * u / (a.width - 1) - 1  # DVR: end pixels at -1 and +1
                centre_x = (2 * u + 1) / a.width - 1
                ray = (dvr_x - x.camera_mat[0, 0, 2]) / x.camera_mat[0, 0, 0]
                again_ray = (centre_x - y.camera_mat[0, 0, 2]) / y.camera_mat[0, 0, 0]
                np.testing.assert_allclose(again_ray, ray, atol=1e-5)
                assert k[0, 2] == pytest.approx((a.width - 1) / 2)


def test_intrinsics_round_trip_in_pixel_centres():
    rng = np.random.default_rng(0)
    for _ in range(5):
        k = np.array([[rng.uniform(20, 90), rng.uniform(-1, 1), rng.uniform(10, 50)],
                      [0, rng.uniform(20, 90), rng.uniform(10, 50)], [0, 0, 1]])  # fmt: skip
        mat = pixel_intrinsics_to_camera_mat(k, 48, 64)
        np.testing.assert_allclose(camera_mat_to_pixel_intrinsics(mat, 48, 64, "center"), k)


def test_folder_names_are_safe_and_distinct():
    assert folder_names(["02691156/abc", "a b", "a_b", "..", "x/../y"]) == [
        "02691156_abc",
        "a_b",
        "a_b-2",
        "object",
        "x_.._y",
    ]


def test_a_filled_out_folder_is_refused(tiny_world, tmp_path, capsys):
    out = tmp_path / "renders"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["data", "export-folder", str(tiny_world), "--out", str(out)]) == 2
    assert "already exists and is not an empty folder" in error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
