"""DVR ShapeNet layout -> HDF5: round trip, camera/pixel conventions, splits, bad input.

Also covers the image helpers the importers share (data/images.py).
"""

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from iss3d.core.errors import UserError
from iss3d.data.images import composite_over_white, read_exr_depth, read_image, read_mask
from iss3d.data.importers.dvr import SHAPENET_SYNSETS, import_dvr
from iss3d.data.reader import MultiViewFile
from tests.fixtures.layouts import (
    DVR_SYNSETS,
    INPUT_VIEW_SIZE,
    INPUT_VIEWS,
    RES,
    assert_fails_cleanly,
    assert_points_in_masks,
    dilate,
    mask_hit_fraction,
    silhouette_mismatch,
    synth_objects,
    write_dvr_layout,
    write_exr,
    write_npz,
    write_png,
)


@pytest.fixture(scope="module")
def objects():
    return synth_objects(3)


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder / "dvr.h5"


@pytest.fixture(scope="module")
def imported(objects, tmp_path_factory):
    """The full fixture (depth, split lists, input views) imported once: (models, file path)."""
    base = tmp_path_factory.mktemp("dvr")
    models = write_dvr_layout(base / "ShapeNet", objects, input_views=True)
    path, _ = import_dvr(base / "ShapeNet", base / "dvr.h5", input_views=True, progress=False)
    return models, path


def _row(f: MultiViewFile, object_id: str) -> int:
    return int(np.flatnonzero(f.object_ids == object_id)[0])


# -- round trip ---------------------------------------------------------------------------
def test_round_trip_pixels_masks_depth_cameras(imported):
    models, path = imported
    with MultiViewFile(path) as f:
        assert f.pixel_convention == "dvr"
        assert f.has_depth and f.has_input_views
        assert (f.height, f.width) == (RES, RES)
        assert sorted(f.object_ids) == sorted(m.object_id for m in models)
        assert f.info["synset_names"] == {s: SHAPENET_SYNSETS[s] for s in DVR_SYNSETS}
        for m in models:
            obj = _row(f, m.object_id)
            rec = f.read_object(obj)
            src, dvr = m.obj.record, m.obj.dvr
            assert rec.category == SHAPENET_SYNSETS[m.synset]  # named, the id kept in meta
            assert rec.meta["synset"] == m.synset
            assert rec.split == m.split
            np.testing.assert_array_equal(rec.rgb, dvr.rgb)
            np.testing.assert_array_equal(rec.mask, dvr.mask)
            on = dvr.mask
            np.testing.assert_allclose(rec.depth[on], dvr.depth[on], rtol=1e-6)
            assert np.isposinf(rec.depth[~on]).all()
            np.testing.assert_allclose(rec.world_mat, src.world_mat, atol=1e-5)
            np.testing.assert_allclose(rec.camera_mat, src.camera_mat, atol=1e-5)
            np.testing.assert_allclose(rec.scale_mat, np.eye(4), atol=1e-7)  # given or absent


def test_round_trip_input_views(imported):
    models, path = imported
    with MultiViewFile(path) as f:
        for m in models:
            iv = f.read_input_views(_row(f, m.object_id))
            src = m.obj.record
            assert iv.rgb.shape == (len(INPUT_VIEWS), INPUT_VIEW_SIZE, INPUT_VIEW_SIZE, 3)
            # 3x4 [R | t] padded, pixel-unit K converted to normalised image coordinates.
            np.testing.assert_allclose(iv.world_mat, src.world_mat[list(INPUT_VIEWS)], atol=1e-5)
            np.testing.assert_allclose(iv.camera_mat, src.camera_mat[list(INPUT_VIEWS)], atol=1e-5)
            small = [
                np.asarray(
                    Image.fromarray(m.obj.dvr.rgb[v]).resize(
                        (INPUT_VIEW_SIZE, INPUT_VIEW_SIZE), Image.Resampling.BILINEAR
                    ),
                    dtype=np.float32,
                )
                for v in INPUT_VIEWS
            ]
            assert np.abs(iv.rgb.astype(np.float32) - np.stack(small)).mean() < 6.0  # JPEG


def test_surface_points_land_in_imported_masks(imported):
    """GT surface points projected with the imported cameras and the file's pixel convention
    fall on the imported masks. Rounded to the nearest pixel, points near the silhouette rim and
    on sub-pixel parts alias at low resolution, so a point may land within one pixel of the mask.
    A wrong camera convention fails this check."""
    models, path = imported
    pooled = []
    with MultiViewFile(path) as f:
        for m in models:
            rec = f.read_object(_row(f, m.object_id))
            points = m.obj.record.surface.points
            args = (rec.world_mat, rec.camera_mat, rec.scale_mat)
            hits = mask_hit_fraction(points, *args, dilate(rec.mask), f.pixel_convention)
            pooled.append(hits)
            # Negative control: camera-to-world used as world-to-camera.
            c2w = np.linalg.inv(rec.world_mat)
            wrong = mask_hit_fraction(
                points, c2w, rec.camera_mat, rec.scale_mat, dilate(rec.mask), "dvr"
            )
            assert wrong.mean() < 0.5, wrong
    assert_points_in_masks(pooled)


def test_pixel_convention_matches_the_data(imported):
    """Silhouettes re-rendered with the imported cameras, sampling pixels in the file's
    convention, reproduce the imported masks; DVR's renders disagree with pixel centres."""
    models, path = imported
    right = wrong = 0
    with MultiViewFile(path) as f:
        for m in models:
            rec = f.read_object(_row(f, m.object_id))
            args = (rec.world_mat, rec.camera_mat, rec.scale_mat, rec.mask)
            right += silhouette_mismatch(m.obj, *args, f.pixel_convention)
            wrong += silhouette_mismatch(m.obj, *args, "center")
    assert right <= 2, right  # exact up to float32 storage of the cameras
    assert wrong >= 30, wrong  # measured: about 145 rim pixels over the 18 views


# -- splits, categories, depth ------------------------------------------------------------
def test_unlisted_models_are_skipped_and_said(objects, tmp_path, out):
    write_dvr_layout(tmp_path / "root", objects[:2], unlisted=True)
    _, summary = import_dvr(tmp_path / "root", out, progress=False)
    assert "skipped 1 model folders no .lst file lists" in summary
    with MultiViewFile(out) as f:
        assert "unlisted-model" not in " ".join(f.object_ids)
        assert f.num_objects == 2


def test_without_split_lists_everything_is_train(objects, tmp_path, out):
    write_dvr_layout(tmp_path / "root", objects[:2], split_lists=False, depth=False)
    import_dvr(tmp_path / "root", out, progress=False)
    with MultiViewFile(out) as f:
        assert list(f.splits) == ["train", "train"]
        assert not f.has_depth and not f.has_input_views


def test_categories_filter(objects, tmp_path, out):
    models = write_dvr_layout(tmp_path / "root", objects)
    import_dvr(tmp_path / "root", out, categories=[DVR_SYNSETS[1]], progress=False)
    with MultiViewFile(out) as f:
        assert list(f.object_ids) == [m.object_id for m in models if m.synset == DVR_SYNSETS[1]]
        assert set(f.categories) == {SHAPENET_SYNSETS[DVR_SYNSETS[1]]}


def test_background_and_invalid_depth_become_inf(objects, tmp_path, out):
    models = write_dvr_layout(tmp_path / "root", objects[:1])
    dvr = models[0].obj.dvr
    rows, cols = np.nonzero(dvr.mask[0])
    depth = dvr.depth[0].copy()
    depth[~dvr.mask[0]] = 1e10
    depth[rows[0], cols[0]] = np.nan
    depth[rows[1], cols[1]] = 2e5
    write_exr(models[0].folder / "depth" / "000.exr", {"Y": depth.astype(np.float32)})
    import_dvr(tmp_path / "root", out, progress=False)
    with MultiViewFile(out) as f:
        view = f.read_view(0)
    assert np.isposinf(view.depth[~view.mask]).all()
    assert np.isposinf(view.depth[rows[0], cols[0]]) and np.isposinf(view.depth[rows[1], cols[1]])
    np.testing.assert_allclose(view.depth[rows[2:], cols[2:]], depth[rows[2:], cols[2:]])


def test_rgba_views_are_composited_over_white(objects, tmp_path, out):
    models = write_dvr_layout(tmp_path / "root", objects[:1], depth=False)
    dvr = models[0].obj.dvr
    alpha = np.where(dvr.mask[0], 255, 0).astype(np.uint8)
    alpha[0, 0] = 128
    rgba = np.concatenate([dvr.rgb[0], alpha[..., None]], -1)
    assert not dvr.mask[0][0, 0]
    rgba[~dvr.mask[0], :3] = 0  # black behind transparent pixels
    write_png(models[0].folder / "image" / "000.png", rgba)
    import_dvr(tmp_path / "root", out, progress=False)
    with MultiViewFile(out) as f:
        rgb = f.read_rgb(0)
    np.testing.assert_array_equal(rgb, composite_over_white(rgba))
    assert (rgb[~dvr.mask[0]][1:] == 255).all()


# -- bad input ----------------------------------------------------------------------------
def _rewrite_npz(path, **changes):
    arrays = dict(np.load(path))
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    write_npz(path, arrays)


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _resize_png(path, size):
    Image.open(path).resize(size).save(path)


BAD_INPUTS = {}


def bad_input(fn):
    """Register a case: fn(root, models) mutates the layout and returns (extra import_dvr
    kwargs, things the error message must mention)."""
    BAD_INPUTS[fn.__name__] = fn
    return fn


@bad_input
def root_missing(root, ms):
    return {"root": root.parent / "nope"}, [root.parent / "nope", "no such folder"]


@bad_input
def root_is_a_file(root, ms):
    (root.parent / "file.txt").write_text("x")
    return {"root": root.parent / "file.txt"}, [root.parent / "file.txt", "not a folder"]


@bad_input
def no_models(root, ms):
    (root.parent / "empty").mkdir()
    return {"root": root.parent / "empty"}, [root.parent / "empty", "no models"]


@bad_input
def no_image_folder(root, ms):
    shutil.rmtree(ms[0].folder / "image")
    return {}, [ms[0].folder, "image/"]


@bad_input
def no_mask_folder(root, ms):
    shutil.rmtree(ms[1].folder / "mask")
    return {}, [ms[1].folder, "mask/"]


@bad_input
def no_cameras(root, ms):
    (ms[0].folder / "cameras.npz").unlink()
    return {}, [ms[0].folder / "cameras.npz", "missing"]


@bad_input
def image_and_mask_counts_differ(root, ms):
    (ms[1].folder / "mask" / "005.png").unlink()
    return {}, [ms[1].folder, "6 images", "5 masks"]


@bad_input
def truncated_image(root, ms):
    _truncate(ms[1].folder / "image" / "002.png")
    return {}, [ms[1].folder / "image" / "002.png", "truncated"]


@bad_input
def not_an_image(root, ms):
    (ms[0].folder / "mask" / "001.png").write_text("not a png")
    return {}, [ms[0].folder / "mask" / "001.png", "not an image"]


@bad_input
def truncated_depth(root, ms):
    _truncate(ms[1].folder / "depth" / "003.exr")
    return {}, [ms[1].folder / "depth" / "003.exr", "OpenEXR"]


@bad_input
def missing_world_mat_3(root, ms):
    _rewrite_npz(ms[1].folder / "cameras.npz", world_mat_3=None)
    return {}, [ms[1].folder / "cameras.npz", "missing key 'world_mat_3'"]


@bad_input
def nan_world_mat(root, ms):
    _rewrite_npz(ms[0].folder / "cameras.npz", world_mat_2=np.full((4, 4), np.nan))
    return {}, [ms[0].folder / "cameras.npz", "world_mat_2", "NaN"]


@bad_input
def singular_camera_mat(root, ms):
    _rewrite_npz(ms[1].folder / "cameras.npz", camera_mat_1=np.zeros((4, 4)))
    return {}, [ms[1].folder / "cameras.npz", "camera_mat_1", "singular"]


@bad_input
def scale_mats_differ(root, ms):
    assert ms[0].has_scale_mat
    _rewrite_npz(ms[0].folder / "cameras.npz", scale_mat_3=np.diag([2.0, 2.0, 2.0, 1.0]))
    return {}, [ms[0].folder / "cameras.npz", "scale_mat_3"]


@bad_input
def corrupt_npz(root, ms):
    (ms[1].folder / "cameras.npz").write_bytes(b"PK\x03\x04garbage")
    return {}, [ms[1].folder / "cameras.npz", "not a readable .npz"]


@bad_input
def views_of_different_sizes(root, ms):
    _resize_png(ms[1].folder / "image" / "004.png", (24, 24))
    return {}, [ms[1].folder / "image" / "004.png", "24x24"]


@bad_input
def depth_for_some_models_only(root, ms):
    shutil.rmtree(ms[1].folder / "depth")
    return {}, [ms[1].folder, "no depth/"]


@bad_input
def unknown_category(root, ms):
    return {"categories": ["99999999"]}, [root / "99999999"]


@bad_input
def empty_category_ids(root, ms):
    """``--categories ,,``: the error named the root folder as a missing category."""
    return {"categories": ["", ""]}, ["--categories", "synset ids"]


@bad_input
def split_list_is_a_fifo(root, ms):
    """A FIFO named train.lst: reading it blocked forever (the import hung)."""
    path = root / ms[0].synset / "train.lst"
    path.unlink()
    os.mkfifo(path)
    return {}, [path, "not a regular file"]


@bad_input
def model_in_two_lists(root, ms):
    (root / ms[0].synset / "val.lst").write_text(ms[0].model + "\n")
    return {}, [root / ms[0].synset / "val.lst", ms[0].model]


@bad_input
def input_views_missing(root, ms):
    return {"input_views": True}, [ms[0].folder / "img_choy2016", "missing"]


def _metadata(content: str | bytes | None):
    """A case writing ROOT/metadata.yaml (None: a FIFO, which must never be opened)."""

    def case(root, ms):
        path = root / "metadata.yaml"
        if content is None:
            os.mkfifo(path)
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return {}, [path]

    return case


# ROOT/metadata.yaml that cannot be DVR's category table: the importer used to ignore it.
for _name, _content in {
    "metadata_invalid_yaml": "02691156: {id: [\n",
    "metadata_a_list": "- airplane\n- chair\n",
    "metadata_entry_not_a_mapping": "02691156: 5\n",
    "metadata_name_not_text": "02691156: {id: 02691156, name: [1, 2]}\n",
    "metadata_utf16": "02691156:\n  name: airplane\n".encode("utf-16"),
    "metadata_aliases": "a: &a {name: x}\nb: *a\n",
    "metadata_fifo": None,
}.items():
    BAD_INPUTS[_name] = _metadata(_content)


def test_a_valid_metadata_file_is_accepted(objects, tmp_path, out):
    root = tmp_path / "ShapeNet"
    write_dvr_layout(root, objects[:1], depth=False)
    (root / "metadata.yaml").write_text("02691156:\n  id: 02691156\n  name: airplane\n")
    assert import_dvr(root, out, progress=False)[0] == out


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_one_line_error_and_leaves_nothing(case, objects, tmp_path, out):
    root = tmp_path / "ShapeNet"
    models = write_dvr_layout(root, objects[:2])
    kwargs, mentions = BAD_INPUTS[case](root, models)
    kwargs = {"root": root, **kwargs}
    assert_fails_cleanly(lambda: import_dvr(out=out, progress=False, **kwargs), out, *mentions)


def test_output_folder_missing_is_a_user_error(objects, tmp_path):
    write_dvr_layout(tmp_path / "root", objects[:1], depth=False)
    with pytest.raises(UserError, match="output folder does not exist"):
        import_dvr(tmp_path / "root", tmp_path / "missing" / "x.h5", progress=False)


# -- image helpers ------------------------------------------------------------------------
def test_read_exr_depth_picks_the_depth_channel(tmp_path):
    depth = np.arange(12, dtype=np.float32).reshape(3, 4)
    other = np.full((3, 4), -1.0, np.float32)
    cases = {
        "y.exr": {"Y": depth, "A": other},
        "z.exr": {"Z": depth, "A": other},
        "depth.exr": {"depth": depth, "A": other},
        "r.exr": {"R": depth},
        "rgb.exr": {"RGB": np.stack([depth, other, other], -1)},
        "half.exr": {"V": depth.astype(np.float16)},
    }
    for name, channels in cases.items():
        write_exr(tmp_path / name, channels)
        got = read_exr_depth(tmp_path / name)
        assert got.dtype == np.float32 and got.shape == (3, 4), name
        np.testing.assert_array_equal(got, depth, err_msg=name)
    (tmp_path / "bad.exr").write_text("not an exr")
    with pytest.raises(UserError, match=r"bad\.exr: not a readable OpenEXR file"):
        read_exr_depth(tmp_path / "bad.exr")
    with pytest.raises(UserError, match=r"missing\.exr: no such file"):
        read_exr_depth(tmp_path / "missing.exr")


def test_read_image_and_mask_modes(tmp_path):
    grey = np.array([[0, 127], [128, 255]], np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    Image.fromarray(np.stack([grey, grey], -1), "LA").save(tmp_path / "la.png")
    Image.fromarray(grey, "L").convert("P").save(tmp_path / "p.png")
    rgb = np.stack([grey, 255 - grey, grey], -1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=100)

    assert read_image(tmp_path / "l.png").shape == (2, 2, 3)
    assert read_image(tmp_path / "la.png").shape == (2, 2, 4)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png")[..., 0], grey)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), rgb)
    assert read_image(tmp_path / "rgb.jpg").shape == (2, 2, 3)
    expect = np.array([[False, False], [True, True]])
    for name in ("l.png", "la.png", "p.png", "rgb.png"):
        mask = read_mask(tmp_path / name)
        assert mask.dtype == bool
        np.testing.assert_array_equal(mask, expect, err_msg=name)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(UserError, match=r"dir\.png: is a folder"):
        read_image(tmp_path / "dir.png")
