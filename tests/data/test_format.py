"""The multi-view HDF5 format: writer -> reader round trip, validation and bad files."""

import pickle

import h5py
import numpy as np
import pytest

from iss3d.core.errors import UserError
from iss3d.data import schema
from iss3d.data.cameras import intrinsics, look_at, orbit_eyes
from iss3d.data.reader import MultiViewFile
from iss3d.data.records import ObjectRecord, OccupancySamples, SurfaceSamples
from iss3d.data.validate import check_file
from iss3d.data.writer import MultiViewWriter

H, W = 8, 10


def make_record(i: int, views: int = 3, split: str = "train", seed: int = 0) -> ObjectRecord:
    rng = np.random.default_rng([seed, i])
    mask = rng.random((views, H, W)) > 0.5
    depth = np.where(mask, rng.uniform(1.0, 2.0, (views, H, W)), np.inf).astype(np.float32)
    eyes = orbit_eyes(rng.uniform(0, 360, views), rng.uniform(-10, 40, views), 1.8)
    return ObjectRecord(
        object_id=f"obj-{i}",
        category=["a", "b"][i % 2],
        split=split,
        rgb=(rng.integers(0, 4, (views, H, W, 3)) * 60).astype(np.uint8),  # compressible
        mask=mask,
        depth=depth,
        world_mat=np.stack([look_at(e) for e in eyes]),
        camera_mat=np.stack([intrinsics()] * views),
        captions=[f"caption {i} {k}" for k in range(i % 3)],
        meta={"index": i},
        occupancy=OccupancySamples(
            points=rng.uniform(-0.55, 0.55, (20, 3)).astype(np.float16),
            inside=rng.random(20) > 0.5,
            n_uniform=12,
        ),
        surface=SurfaceSamples(
            points=rng.normal(size=(16, 3)).astype(np.float32),
            normals=rng.normal(size=(16, 3)).astype(np.float32),
            colors=rng.integers(0, 256, (16, 3), dtype=np.uint8),
        ),
    )


def write(path, records, **kw):
    with MultiViewWriter(path, H, W, "center", has_depth=True, info={"hello": 1}, **kw) as w:
        for rec in records:
            w.add(rec)
    return path


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_round_trip(tmp_path):
    records = [make_record(i, views=2 + i, split=["train", "val", "test"][i % 3]) for i in range(5)]
    path = write(tmp_path / "f.h5", records)
    mv = MultiViewFile(path)
    assert (mv.num_objects, mv.num_views) == (5, sum(r.num_views for r in records))
    assert mv.info == {"hello": 1}
    for i, rec in enumerate(records):
        back = mv.read_object(i)
        assert (
            back.object_id == rec.object_id
            and back.category == rec.category
            and back.split == rec.split
        )
        np.testing.assert_array_equal(back.rgb, rec.rgb)
        np.testing.assert_array_equal(back.mask, rec.mask)
        np.testing.assert_array_equal(back.depth, rec.depth)
        np.testing.assert_allclose(back.world_mat, rec.world_mat, atol=1e-6)
        assert back.captions == rec.captions and back.meta == rec.meta
        np.testing.assert_array_equal(
            back.occupancy.points, rec.occupancy.points.astype(np.float32)
        )
        np.testing.assert_array_equal(back.occupancy.inside, rec.occupancy.inside)
        assert back.occupancy.n_uniform == 12
        np.testing.assert_array_equal(back.surface.colors, rec.surface.colors)
        for k, view in enumerate(mv.views_of(i)):
            sample = mv.read_view(int(view))
            np.testing.assert_array_equal(sample.rgb, rec.rgb[k])
            assert sample.object_index == i
    assert list(mv.objects_in("val")) == [1, 4]
    assert check_file(path)["objects"] == 5


def test_depth_is_inf_off_the_mask(tmp_path):
    rec = make_record(0)
    rec.depth = np.ones_like(rec.depth)  # finite everywhere on input
    mv = MultiViewFile(write(tmp_path / "f.h5", [rec]))
    back = mv.read_object(0)
    assert np.isinf(back.depth[~back.mask]).all() and (back.depth[back.mask] == 1).all()


def test_reader_pickles_without_handle_and_reopens(tmp_path):
    mv = MultiViewFile(write(tmp_path / "f.h5", [make_record(0)]))
    mv.read_rgb(0)
    clone = pickle.loads(pickle.dumps(mv))
    assert clone._h5 is None
    np.testing.assert_array_equal(clone.read_rgb(1), mv.read_rgb(1))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: setattr(r, "split", "training"), "split 'training'"),
        (lambda r: setattr(r, "rgb", r.rgb[:, :-1]), "rgb has shape"),
        (lambda r: r.world_mat.__setitem__((1, 0, 0), np.nan), "world_mat of view 1 contains NaN"),
        (
            lambda r: r.camera_mat.__setitem__(0, np.zeros((4, 4))),
            "camera_mat of view 0 is singular",
        ),
        (lambda r: setattr(r, "depth", None), "has no depth"),
        (lambda r: setattr(r, "rgb", r.rgb.astype(np.float32)), "dtype float32"),
    ],
)
def test_writer_rejects_bad_records_and_leaves_nothing(tmp_path, mutate, message):
    bad = make_record(1)
    mutate(bad)
    with pytest.raises(UserError, match=message):
        write(tmp_path / "f.h5", [make_record(0), bad])
    assert not (tmp_path / "f.h5").exists()
    assert leftovers(tmp_path) == []


def test_writer_rejects_duplicate_ids_and_empty_files(tmp_path):
    with pytest.raises(UserError, match="duplicate object id"):
        write(tmp_path / "f.h5", [make_record(0), make_record(0)])
    with pytest.raises(UserError, match="no objects"):
        write(tmp_path / "f.h5", [])
    assert list(tmp_path.iterdir()) == []


def test_writer_interrupted_leaves_nothing(tmp_path):
    with (
        pytest.raises(KeyboardInterrupt),
        MultiViewWriter(tmp_path / "f.h5", H, W, "center", True) as w,
    ):
        w.add(make_record(0))
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_writer_missing_output_folder(tmp_path):
    with pytest.raises(UserError, match="output folder does not exist"):
        write(tmp_path / "nope" / "f.h5", [make_record(0)])


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        MultiViewFile(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(UserError, match="not a readable HDF5 file"):
        MultiViewFile(junk)


def test_truncated_file(tmp_path):
    path = write(tmp_path / "f.h5", [make_record(i) for i in range(3)])
    data = path.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.h5"):
        check_file(cut)


def test_wrong_schema_version_and_foreign_files(tmp_path):
    path = write(tmp_path / "f.h5", [make_record(0)])
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = schema.SCHEMA_VERSION + 1
    with pytest.raises(UserError, match="schema version 2, this iss3d reads version 1"):
        MultiViewFile(path)
    with pytest.raises(UserError, match="schema version"):
        check_file(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(UserError, match="not an iss3d multi-view file"):
        MultiViewFile(other)


def test_check_finds_corrupt_tables(tmp_path):
    path = write(tmp_path / "f.h5", [make_record(0), make_record(1)])
    with h5py.File(path, "a") as f:
        f["views/world_mat"][2] = np.full((4, 4), np.nan, np.float32)
    with pytest.raises(UserError, match=r"views/world_mat\[2\] \(object obj-0\) contains NaN"):
        check_file(path)
    path = write(tmp_path / "g.h5", [make_record(0), make_record(1)])
    with h5py.File(path, "a") as f:
        f["objects/view_count"][0] = 5
    with pytest.raises(UserError, match="contiguous"):
        check_file(path)
    path = write(tmp_path / "h.h5", [make_record(0)])
    with h5py.File(path, "a") as f:
        del f["views/mask"]
    with pytest.raises(UserError, match="missing dataset"):
        check_file(path)


def test_check_reads_every_image_chunk(tmp_path):
    """Flip bytes in the middle of the file (inside compressed image chunks): check must fail."""
    path = write(tmp_path / "f.h5", [make_record(i, views=6) for i in range(4)])
    with h5py.File(path, "r") as f:
        chunk = f["views/rgb"].id.get_chunk_info(5)
        assert chunk.filter_mask == 0  # the chunk is lzf-compressed, so garbage fails to decode
        offset, size = chunk.byte_offset, chunk.size
    data = bytearray(path.read_bytes())
    data[offset : offset + size] = b"\xff" * size
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"f\.h5: unreadable data"):
        check_file(path)


def test_check_and_reader_refuse_bad_metadata(tmp_path):
    """num_objects that disagrees with objects/, and JSON that does not parse: `data check`
    fails, and the reader (every command) says which attribute or row, in one line."""
    from iss3d.data.reader import MultiViewFile

    path = write(tmp_path / "n.h5", [make_record(0), make_record(1)])
    with h5py.File(path, "a") as f:
        f.attrs["num_objects"] = 3
    with pytest.raises(UserError, match="attribute num_objects is 3, but objects/ holds 2"):
        check_file(path)
    path = write(tmp_path / "i.h5", [make_record(0)])
    with h5py.File(path, "a") as f:
        f.attrs["info"] = "{not json"
    for read in (check_file, MultiViewFile):
        with pytest.raises(UserError, match="attribute info is not valid JSON") as info:
            read(path)
        assert "\n" not in str(info.value)
    path = write(tmp_path / "m.h5", [make_record(0), make_record(1)])
    with h5py.File(path, "a") as f:
        f["objects/meta"][1] = "[1, 2"
    with pytest.raises(UserError, match=r"objects/meta\[1\] \(object obj-1\) is not valid JSON"):
        check_file(path)
    with pytest.raises(UserError, match=r"objects/meta\[1\] is not valid JSON"):
        MultiViewFile(path).meta(1)


def test_every_reader_refuses_what_check_refuses(tmp_path, capsys):
    """NaN cameras: `data check`, the reader and `fit svr` (which trained on them) all stop
    with the same line, before a run folder exists."""
    from iss3d.data.reader import MultiViewFile
    from iss3d.infer.cli import main

    path = write(tmp_path / "f.h5", [make_record(0), make_record(1)])
    with h5py.File(path, "a") as f:
        f["views/camera_mat"][3] = np.full((4, 4), np.nan, np.float32)
    message = r"views/camera_mat\[3\] \(object obj-1\) contains NaN"
    for read in (check_file, MultiViewFile):
        with pytest.raises(UserError, match=message):
            read(path)
    out = tmp_path / "run"
    argv = ["fit", "svr", "--config", "svr/tiny", "--data", str(path), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 2
    assert "views/camera_mat[3] (object obj-1) contains NaN" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("value", ["tall", 0, -3, 2.5, True])
def test_check_and_reader_refuse_an_image_size_that_is_not_a_count(tmp_path, value):
    """A root height / width attribute that is not a positive integer: one line naming it
    (``int("tall")`` used to end in a ValueError traceback)."""
    path = write(tmp_path / "f.h5", [make_record(0)])
    with h5py.File(path, "a") as f:
        f.attrs["height"] = value
    for read in (check_file, MultiViewFile):
        with pytest.raises(UserError, match=r"f\.h5: attribute height is .*, expected a pos"):
            read(path)


@pytest.mark.parametrize("name", ["surface_points", "surface_normals", "occ_points"])
def test_check_refuses_non_finite_ground_truth(tmp_path, name):
    """NaN or infinite ground-truth points or normals (FPD and IoU would be NaN): `data check`
    names the dataset (normals were not checked)."""
    path = write(tmp_path / "f.h5", [make_record(0), make_record(1)])
    with h5py.File(path, "a") as f:
        values = f[f"eval/{name}"][:]
        values[1, 0, 0] = np.inf
        f[f"eval/{name}"][...] = values
    with pytest.raises(UserError, match=rf"eval/{name}\[0:2\] contains NaN or infinite"):
        check_file(path)


def _replace(f: h5py.File, name: str, value: np.ndarray) -> None:
    del f[name]
    f[name] = value


def _set_row(name: str, row: int, value):
    def edit(f: h5py.File) -> None:
        values = f[name][:]
        values[row] = value
        _replace(f, name, values)

    return edit


TABLE_DAMAGE = {
    "no-rgb": (lambda f: f.__delitem__("views/rgb"), "missing dataset 'views/rgb'"),
    "rgb-size": (lambda f: _replace(f, "views/rgb", np.zeros((6, 4, 4, 3), np.uint8)), "shape"),
    "rgb-float": (lambda f: _replace(f, "views/rgb", np.zeros((6, H, W, 3))), "dtype float64"),
    "world-mat-3x3": (lambda f: _replace(f, "views/world_mat", np.zeros((6, 3, 3))), "shape"),
    "split": (
        lambda f: _replace(f, "objects/split", np.array([b"x", b"y"], dtype=object)),
        "objects/split has 'x'",
    ),
    "object-index": (_set_row("views/object_index", 0, 7), "views/object_index disagrees"),
    "view-offset": (_set_row("objects/view_offset", 1, 10**6), "contiguous"),
    "caption-range": (_set_row("objects/caption_count", 0, 10**6), "points outside captions"),
}


@pytest.mark.parametrize("damage", sorted(TABLE_DAMAGE))
def test_every_reader_refuses_broken_tables(tmp_path, damage):
    """Missing image datasets, shapes and dtypes that do not fit the header, unknown splits,
    view and caption ranges that point elsewhere: `data check` refused them, but the reader
    (every other command) went on to a traceback (a missing dataset, a 3x3 matrix), or
    silently used them (`data sheet` drew a 16 px dataset at 32 px)."""
    path = write(tmp_path / "f.h5", [make_record(0), make_record(1)])
    edit, message = TABLE_DAMAGE[damage]
    with h5py.File(path, "a") as f:
        edit(f)
    for read in (check_file, MultiViewFile):
        with pytest.raises(UserError, match=message) as info:
            read(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_non_finite_depth_and_ground_truth_are_refused_when_read(tmp_path):
    """NaN depth, occupancy points and surface normals went into the metrics (eval svr wrote
    NaN-based IoU and depth error) and the losses; the reader names the row when it reads it."""
    path = write(tmp_path / "f.h5", [make_record(0), make_record(1)])
    with h5py.File(path, "a") as f:
        _set_row("views/depth", 4, np.nan)(f)
        _set_row("eval/occ_points", 1, np.nan)(f)
        _set_row("eval/surface_normals", 1, np.inf)(f)
    mv = MultiViewFile(path)
    assert mv.read_view(3).depth is not None and mv.read_occupancy(0) is not None
    with pytest.raises(UserError, match=r"views/depth\[4\] contains NaN"):
        mv.read_view(4)
    with pytest.raises(UserError, match=r"eval/occ_points\[1\] \(object obj-1\) contains NaN"):
        mv.read_occupancy(1)
    with pytest.raises(UserError, match=r"eval/surface_normals\[1\] \(object obj-1\)"):
        mv.read_surface(1)
    mv.check_ground_truth([0])
    with pytest.raises(UserError, match=r"eval/occ_points\[1\]"):
        mv.check_ground_truth([0, 1])
