"""Read iss3d multi-view HDF5 files: lazily, once per process, safe with DataLoader workers."""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from iss3d.core.errors import UserError
from iss3d.core.paths import input_file
from iss3d.data import schema
from iss3d.data.cameras import first_invalid_matrix
from iss3d.data.records import (
    SPLITS,
    InputViews,
    ObjectRecord,
    OccupancySamples,
    SurfaceSamples,
    ViewSample,
)


def open_h5(path: Path) -> h5py.File:
    """Open an HDF5 file read-only, turning every failure into a one-line UserError."""
    input_file(path, "an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        reason = str(err).split("(")[-1].rstrip(")") if "(" in str(err) else str(err)
        raise UserError(f"{path}: not a readable HDF5 file ({reason.strip()})") from None


def check_header(f: h5py.File, path: Path) -> None:
    """Raise UserError unless ``f`` is an iss3d multi-view file of the schema version we read."""
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != schema.FORMAT_NAME:
        raise UserError(
            f"{path}: not an iss3d multi-view file (format attribute {fmt!r}, "
            f"expected {schema.FORMAT_NAME!r})"
        )
    version = f.attrs.get("schema_version")
    if version != schema.SCHEMA_VERSION:
        raise UserError(
            f"{path}: schema version {version}, this iss3d reads version {schema.SCHEMA_VERSION}"
        )
    missing = [a for a in schema.ROOT_ATTRS if a not in f.attrs]
    if missing:
        raise UserError(f"{path}: missing root attribute {missing[0]!r}")
    for name in ("height", "width"):
        value = f.attrs[name]
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value <= 0:
            raise UserError(
                f"{path}: attribute {name} is {value!r}, expected a positive number of pixels"
            )


class MultiViewFile:
    """A multi-view dataset file.

    The small tables (cameras, ids, splits, captions) are read into memory when the object is
    made; images are read on demand. The HDF5 handle is opened lazily and reopened in any new
    process, so an instance can be handed to DataLoader workers (it pickles without the handle).

    Attributes:
        height, width: view size in pixels; pixel_convention: "center" or "dvr".
        object_ids, categories, splits: (O,) str arrays.
        view_offset, view_count: (O,) int64, the rows of each object's views.
        view_object: (N,) int32 object row of each view.
        world_mats, camera_mats: (N, 4, 4) float32; scale_mats: (O, 4, 4) float32.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        f = open_h5(self.path)
        try:
            check_header(f, self.path)
            self._load_tables(f)
        except KeyError as err:
            raise UserError(f"{self.path}: missing dataset {err.args[0]!r}") from None
        finally:
            f.close()

    def _load_tables(self, f: h5py.File) -> None:
        check_structure(f, self.path)
        self.height = int(f.attrs["height"])
        self.width = int(f.attrs["width"])
        self.pixel_convention = _str(f.attrs["pixel_convention"])
        self.has_depth = bool(f.attrs["has_depth"])
        self.info = parse_json(_str(f.attrs.get("info", "{}")), self.path, "attribute info")
        obj = f["objects"]
        self.object_ids = _strings(obj["object_id"])
        self.categories = _strings(obj["category"])
        self.splits = _strings(obj["split"])
        self._meta_json = _strings(obj["meta"])
        self.view_offset = obj["view_offset"][:]
        self.view_count = obj["view_count"][:]
        self.scale_mats = obj["scale_mat"][:]
        caption_offset, caption_count = obj["caption_offset"][:], obj["caption_count"][:]
        all_captions = _strings(f["captions"])
        self.captions = [
            list(all_captions[o : o + c])
            for o, c in zip(caption_offset, caption_count, strict=True)
        ]
        views = f["views"]
        self.world_mats = views["world_mat"][:]
        self.camera_mats = views["camera_mat"][:]
        self.view_object = views["object_index"][:]
        check_camera_tables(
            self.path, self.object_ids, self.view_offset, self.world_mats, self.camera_mats,
            self.scale_mats,
        )  # fmt: skip
        self.has_occupancy = "eval" in f and "occ_points" in f["eval"]
        self.has_surface = "eval" in f and "surface_points" in f["eval"]
        self.occ_uniform_count = (
            int(f["eval"].attrs.get("occ_uniform_count", 0)) if "eval" in f else 0
        )
        self.has_input_views = "input_views" in f
        self._input_view_object = f["input_views/object_index"][:] if self.has_input_views else None

    # -- handle ---------------------------------------------------------------------------
    @property
    def h5(self) -> h5py.File:
        """The open file for this process (opened on first use, reopened after a fork)."""
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = open_h5(self.path)
            self._pid = os.getpid()
            self._datasets = {
                name: self._h5["views"][name]
                for name in ("rgb", "mask", "depth")
                if name in self._h5["views"]
            }
        return self._h5

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        state.pop("_datasets", None)
        return state

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __enter__(self) -> MultiViewFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- sizes and indices ------------------------------------------------------------------
    @property
    def num_objects(self) -> int:
        return len(self.object_ids)

    @property
    def num_views(self) -> int:
        return len(self.view_object)

    def objects_in(self, split: str | None) -> np.ndarray:
        """Object rows in ``split`` (all objects if None), (K,) int64."""
        if split is None:
            return np.arange(self.num_objects)
        return np.flatnonzero(self.splits == split)

    def views_of(self, obj: int) -> np.ndarray:
        """View rows of object ``obj``, (V,) int64."""
        start = int(self.view_offset[obj])
        return np.arange(start, start + int(self.view_count[obj]))

    def views_in(self, split: str | None) -> np.ndarray:
        """View rows of all objects in ``split``, (N,) int64."""
        if split is None:
            return np.arange(self.num_views)
        return np.flatnonzero(self.splits[self.view_object] == split)

    def meta(self, obj: int) -> dict:
        return parse_json(self._meta_json[obj], self.path, f"objects/meta[{obj}]")

    @cached_property
    def category_names(self) -> list[str]:
        """Sorted distinct categories; a category's position is its integer label."""
        return sorted(set(self.categories.tolist()))

    # -- reading ------------------------------------------------------------------------
    def read_rgb(self, view: int) -> np.ndarray:
        """(H, W, 3) uint8 of view row ``view``."""
        self.h5  # noqa: B018 - makes sure the handle is open in this process
        return self._datasets["rgb"][view]

    def read_view(self, view: int) -> ViewSample:
        """One view with its mask, depth and cameras."""
        self.h5  # noqa: B018
        ds = self._datasets
        obj = int(self.view_object[view])
        depth = ds["depth"][view] if self.has_depth else None
        if depth is not None and np.isnan(depth).any():
            raise UserError(f"{self.path}: views/depth[{view}] contains NaN")
        return ViewSample(
            rgb=ds["rgb"][view],
            mask=ds["mask"][view].astype(bool),
            depth=depth,
            world_mat=self.world_mats[view],
            camera_mat=self.camera_mats[view],
            scale_mat=self.scale_mats[obj],
            object_index=obj,
        )

    def read_occupancy(self, obj: int) -> OccupancySamples | None:
        if not self.has_occupancy:
            return None
        ev = self.h5["eval"]
        return OccupancySamples(
            points=self._finite(ev["occ_points"][obj].astype(np.float32), "occ_points", obj),
            inside=ev["occ_inside"][obj],
            n_uniform=self.occ_uniform_count,
        )

    def read_surface(self, obj: int) -> SurfaceSamples | None:
        if not self.has_surface:
            return None
        ev = self.h5["eval"]
        return SurfaceSamples(
            points=self._finite(ev["surface_points"][obj], "surface_points", obj),
            normals=self._finite(ev["surface_normals"][obj], "surface_normals", obj),
            colors=ev["surface_colors"][obj],
        )

    def check_ground_truth(self, objects: np.ndarray | list[int]) -> None:
        """Read the occupancy samples and surface points of ``objects`` (rows), so that a
        non-finite value is a UserError now rather than in the middle of a run."""
        for obj in objects:
            self.read_occupancy(int(obj))
            self.read_surface(int(obj))

    def _finite(self, values: np.ndarray, name: str, obj: int) -> np.ndarray:
        """``values`` (object ``obj``'s row of ``eval/<name>``), if all finite; else UserError."""
        if not np.isfinite(values).all():
            raise UserError(
                f"{self.path}: eval/{name}[{obj}] (object {self.object_ids[obj]}) contains NaN "
                "or infinite values"
            )
        return values

    def read_input_views(self, obj: int) -> InputViews | None:
        if not self.has_input_views:
            return None
        iv = self.h5["input_views"]
        rows = np.flatnonzero(self._input_view_object == obj)
        sl = slice(int(rows[0]), int(rows[-1]) + 1) if len(rows) else slice(0, 0)
        return InputViews(
            rgb=iv["rgb"][sl], world_mat=iv["world_mat"][sl], camera_mat=iv["camera_mat"][sl]
        )

    def read_object(self, obj: int) -> ObjectRecord:
        """Every stored array of one object (contiguous slice reads)."""
        self.h5  # noqa: B018
        rows = self.views_of(obj)
        sl = slice(int(rows[0]), int(rows[-1]) + 1)
        ds = self._datasets
        return ObjectRecord(
            object_id=str(self.object_ids[obj]),
            category=str(self.categories[obj]),
            split=str(self.splits[obj]),
            rgb=ds["rgb"][sl],
            mask=ds["mask"][sl].astype(bool),
            depth=ds["depth"][sl] if self.has_depth else None,
            world_mat=self.world_mats[sl],
            camera_mat=self.camera_mats[sl],
            scale_mat=self.scale_mats[obj],
            captions=list(self.captions[obj]),
            meta=self.meta(obj),
            occupancy=self.read_occupancy(obj),
            surface=self.read_surface(obj),
            input_views=self.read_input_views(obj),
        )


def check_camera_tables(
    path: Path,
    ids: np.ndarray,
    view_offset: np.ndarray,
    world_mats: np.ndarray,
    camera_mats: np.ndarray,
    scale_mats: np.ndarray,
) -> None:
    """UserError naming the first unusable camera matrix (NaN, infinite, singular, or a
    world_mat whose last row is not [0, 0, 0, 1]) and its object: (N, 4, 4) view matrices,
    (O, 4, 4) scale matrices, (O,) ids and view offsets. Every reader of a file checks this."""
    for name, mats in (("world_mat", world_mats), ("camera_mat", camera_mats)):
        found = first_invalid_matrix(mats, affine=name == "world_mat")
        if found:
            i, problem = found
            owner = ids[np.searchsorted(view_offset, i, "right") - 1]
            raise UserError(f"{path}: views/{name}[{i}] (object {owner}) {problem}")
    found = first_invalid_matrix(scale_mats)
    if found:
        i, problem = found
        raise UserError(f"{path}: objects/scale_mat[{i}] (object {ids[i]}) {problem}")


def check_structure(f: h5py.File, path: Path) -> None:
    """UserError naming the first dataset of ``f`` (a file whose header passed
    :func:`check_header`) that is missing or whose shape, dtype or index table does not fit:
    the view and object tables, splits, view ranges and caption ranges. Reads only the small
    tables, so every reader checks this."""
    views, objects = _group(f, "views", path), _group(f, "objects", path)
    h, w = int(f.attrs["height"]), int(f.attrs["width"])
    n = _dataset(views, "rgb", path).shape[0]
    o = _dataset(objects, "object_id", path).shape[0]
    if o == 0:
        raise UserError(f"{path}: objects is empty")
    expect_shape(path, _dataset(views, "rgb", path), (n, h, w, 3), np.uint8)
    expect_shape(path, _dataset(views, "mask", path), (n, h, w))
    if bool(f.attrs["has_depth"]):
        expect_shape(path, _dataset(views, "depth", path), (n, h, w), np.float32)
    for name in schema.VIEW_MATRIX_DATASETS:
        expect_shape(path, _dataset(views, name, path), (n, 4, 4))
    expect_shape(path, _dataset(views, "object_index", path), (n,))
    for name in (*schema.OBJECT_STRING_DATASETS, *schema.OBJECT_INDEX_DATASETS):
        expect_shape(path, _dataset(objects, name, path), (o,))
    expect_shape(path, _dataset(objects, "scale_mat", path), (o, 4, 4))
    _check_index_tables(f, path, n)


def _check_index_tables(f: h5py.File, path: Path, n: int) -> None:
    """Splits, contiguous view ranges, object indices of views and caption ranges."""
    objects = f["objects"]
    bad = [str(s) for s in _strings(objects["split"]) if s not in SPLITS]
    if bad:
        raise UserError(f"{path}: objects/split has {bad[0]!r}, expected one of {SPLITS}")
    offset, count = objects["view_offset"][:], objects["view_count"][:]
    expected_offset = np.concatenate([[0], np.cumsum(count)[:-1]])
    if (count <= 0).any() or not np.array_equal(offset, expected_offset) or count.sum() != n:
        raise UserError(
            f"{path}: objects/view_offset does not describe contiguous, non-empty view ranges"
        )
    if not np.array_equal(f["views/object_index"][:], np.repeat(np.arange(len(count)), count)):
        raise UserError(f"{path}: views/object_index disagrees with objects/view_offset")
    c_offset, c_count = objects["caption_offset"][:], objects["caption_count"][:]
    n_captions = _dataset(f, "captions", path).shape[0]
    if (c_count < 0).any() or (c_offset < 0).any() or (c_offset + c_count > n_captions).any():
        raise UserError(f"{path}: objects/caption_offset points outside captions")


def _group(f: h5py.File, name: str, path: Path) -> h5py.Group:
    if not isinstance(f.get(name), h5py.Group):
        raise UserError(f"{path}: missing dataset {name!r}")
    return f[name]


def _dataset(group: h5py.Group, name: str, path: Path) -> h5py.Dataset:
    if not isinstance(group.get(name), h5py.Dataset):
        full = f"{group.name}/{name}".strip("/")
        raise UserError(f"{path}: missing dataset {full!r}")
    return group[name]


def expect_shape(path: Path, ds: h5py.Dataset, shape: tuple, dtype=None) -> None:
    """UserError unless ``ds`` has ``shape`` (and ``dtype``, when given)."""
    if ds.shape != shape:
        raise UserError(f"{path}: {ds.name} has shape {ds.shape}, expected {shape}")
    if dtype is not None and ds.dtype != np.dtype(dtype):
        raise UserError(f"{path}: {ds.name} has dtype {ds.dtype}, expected {np.dtype(dtype)}")


def parse_json(text: str, path: Path, where: str) -> Any:
    """``text`` (a JSON attribute or row of ``path``) parsed; UserError naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path}: {where} is not valid JSON ({err.msg} at char {err.pos})"
        ) from None


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _strings(ds: h5py.Dataset) -> np.ndarray:
    return np.array(ds.asstr()[:], dtype=object).astype(str) if len(ds) else np.array([], dtype=str)
