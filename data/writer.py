"""Write objects into an iss3d multi-view HDF5 file, atomically."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import h5py
import numpy as np

from iss3d.core.atomic import atomic_output, json_text
from iss3d.core.errors import UserError
from iss3d.data import schema
from iss3d.data.cameras import PIXEL_CONVENTIONS, is_valid_matrix
from iss3d.data.records import SPLITS, ObjectRecord

_STR = h5py.string_dtype(encoding="utf-8")


class MultiViewWriter:
    """Append :class:`ObjectRecord` s to a new file; the file appears under its name on success.

    Use as a context manager. The data is written to a hidden temporary file next to ``path``
    and renamed at the end; on any error (or Ctrl-C) the temporary file is deleted and nothing
    is left under ``path``.

    Args:
        path: output ``.h5`` path.
        height, width: the size of every view in this file.
        pixel_convention: ``"center"`` or ``"dvr"`` (see data/cameras.py).
        has_depth: whether every object carries depth maps.
        info: dataset-level JSON-serialisable facts (provenance, category lists, ...).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        height: int,
        width: int,
        pixel_convention: str,
        has_depth: bool,
        info: dict | None = None,
    ):
        if pixel_convention not in PIXEL_CONVENTIONS:
            raise ValueError(f"pixel_convention must be one of {PIXEL_CONVENTIONS}")
        self.path = Path(path)
        self.height, self.width = int(height), int(width)
        self.pixel_convention = pixel_convention
        self.has_depth = bool(has_depth)
        self.info = info or {}
        self._file: h5py.File | None = None
        self._ids: set[str] = set()
        self._eval_sizes: tuple[int, int, int] | None = None  # (P, n_uniform, S) or zeros
        self._input_size: tuple[int, int] | None = None

    # -- context management -------------------------------------------------------------
    def __enter__(self) -> MultiViewWriter:
        self._atomic = atomic_output(self.path)  # checks the folder; renames on success
        self._tmp = self._atomic.__enter__()
        self._file = h5py.File(self._tmp, "w")
        self._create_layout()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and not self._ids:
                raise UserError(f"{self.path}: no objects to write")
            self._file.attrs["num_objects"] = len(self._ids)
        except BaseException:
            self._file.close()
            self._atomic.__exit__(*sys.exc_info())  # removes the temporary file
            raise
        self._file.close()
        self._atomic.__exit__(exc_type, exc, tb)  # renames into place, or removes on error

    # -- layout -------------------------------------------------------------------------
    def _create_layout(self) -> None:
        f = self._file
        f.attrs.update(
            {
                "format": schema.FORMAT_NAME,
                "schema_version": schema.SCHEMA_VERSION,
                "height": self.height,
                "width": self.width,
                "pixel_convention": self.pixel_convention,
                "has_depth": self.has_depth,
                "info": json_text(self.info, sort_keys=True),
            }
        )
        h, w = self.height, self.width
        views = f.create_group("views")
        _growing(views, "rgb", (h, w, 3), np.uint8, chunk_rows=1)
        _growing(views, "mask", (h, w), np.uint8, chunk_rows=1)
        if self.has_depth:
            _growing(views, "depth", (h, w), np.float32, chunk_rows=1)
        for name in schema.VIEW_MATRIX_DATASETS:
            _growing(views, name, (4, 4), np.float32, chunk_rows=1024, compress=False)
        _growing(views, "object_index", (), np.int32, chunk_rows=4096, compress=False)
        objects = f.create_group("objects")
        for name in schema.OBJECT_STRING_DATASETS:
            _growing(objects, name, (), _STR, chunk_rows=1024, compress=False)
        for name in schema.OBJECT_INDEX_DATASETS:
            _growing(objects, name, (), np.int64, chunk_rows=1024, compress=False)
        _growing(objects, "scale_mat", (4, 4), np.float32, chunk_rows=1024, compress=False)
        _growing(f, "captions", (), _STR, chunk_rows=1024, compress=False)

    def _create_eval(self, n_points: int, n_uniform: int, n_surface: int) -> None:
        ev = self._file.create_group("eval")
        if n_points:
            _growing(ev, "occ_points", (n_points, 3), np.float16, chunk_rows=1)
            _growing(ev, "occ_inside", (n_points,), np.bool_, chunk_rows=1)
            ev.attrs["occ_uniform_count"] = n_uniform
        if n_surface:
            _growing(ev, "surface_points", (n_surface, 3), np.float32, chunk_rows=1)
            _growing(ev, "surface_normals", (n_surface, 3), np.float32, chunk_rows=1)
            _growing(ev, "surface_colors", (n_surface, 3), np.uint8, chunk_rows=1)

    def _create_input_views(self, h: int, w: int) -> None:
        iv = self._file.create_group("input_views")
        _growing(iv, "rgb", (h, w, 3), np.uint8, chunk_rows=1)
        for name in schema.VIEW_MATRIX_DATASETS:
            _growing(iv, name, (4, 4), np.float32, chunk_rows=1024, compress=False)
        _growing(iv, "object_index", (), np.int32, chunk_rows=4096, compress=False)
        iv.attrs["height"], iv.attrs["width"] = h, w

    # -- appending ----------------------------------------------------------------------
    def add(self, rec: ObjectRecord) -> None:
        """Validate ``rec`` and append it. Raises UserError naming the object on bad data."""
        if self._file is None:
            raise RuntimeError("MultiViewWriter.add() outside of a `with` block")
        self._check(rec)
        f = self._file
        obj_index = len(self._ids)
        views = f["views"]
        start = views["rgb"].shape[0]
        n = rec.num_views
        mask = rec.mask.astype(bool)
        _append(views["rgb"], rec.rgb.astype(np.uint8))
        _append(views["mask"], mask.astype(np.uint8))
        if self.has_depth:
            depth = np.where(mask, rec.depth, np.inf).astype(np.float32)
            _append(views["depth"], depth)
        _append(views["world_mat"], np.asarray(rec.world_mat, np.float32))
        _append(views["camera_mat"], np.asarray(rec.camera_mat, np.float32))
        _append(views["object_index"], np.full(n, obj_index, np.int32))

        objects = f["objects"]
        caption_start = f["captions"].shape[0]
        _append(f["captions"], np.array(list(rec.captions), dtype=object))
        _append(objects["object_id"], np.array([rec.object_id], dtype=object))
        _append(objects["category"], np.array([rec.category], dtype=object))
        _append(objects["split"], np.array([rec.split], dtype=object))
        _append(objects["meta"], np.array([json_text(rec.meta, sort_keys=True)], dtype=object))
        _append(objects["view_offset"], np.array([start], np.int64))
        _append(objects["view_count"], np.array([n], np.int64))
        _append(objects["caption_offset"], np.array([caption_start], np.int64))
        _append(objects["caption_count"], np.array([len(rec.captions)], np.int64))
        _append(objects["scale_mat"], np.asarray(rec.scale_mat, np.float32)[None])

        self._add_eval(rec)
        self._add_input_views(rec, obj_index)
        self._ids.add(rec.object_id)

    def _add_eval(self, rec: ObjectRecord) -> None:
        occ, surf = rec.occupancy, rec.surface
        sizes = (
            len(occ.points) if occ else 0,
            occ.n_uniform if occ else 0,
            len(surf.points) if surf else 0,
        )
        if self._eval_sizes is None:
            self._eval_sizes = sizes
            if any(sizes):
                self._create_eval(*sizes)
        elif sizes != self._eval_sizes:
            raise UserError(
                f"object {rec.object_id}: evaluation data sizes (occupancy points, uniform, "
                f"surface points) {sizes} differ from earlier objects' {self._eval_sizes}"
            )
        if occ:
            # float16 storage: producers compute `inside` on float16-rounded points (records.py).
            ev = self._file["eval"]
            _append(ev["occ_points"], occ.points.astype(np.float16)[None])
            _append(ev["occ_inside"], occ.inside.astype(bool)[None])
        if surf:
            ev = self._file["eval"]
            _append(ev["surface_points"], surf.points.astype(np.float32)[None])
            _append(ev["surface_normals"], surf.normals.astype(np.float32)[None])
            _append(ev["surface_colors"], surf.colors.astype(np.uint8)[None])

    def _add_input_views(self, rec: ObjectRecord, obj_index: int) -> None:
        iv_rec = rec.input_views
        size = iv_rec.rgb.shape[1:3] if iv_rec is not None else (0, 0)
        if self._input_size is None:
            self._input_size = size
            if iv_rec is not None:
                self._create_input_views(*size)
        elif size != self._input_size:
            raise UserError(
                f"object {rec.object_id}: input views of size {size} differ from earlier "
                f"objects' {self._input_size} (every object needs input views of one size, or none)"
            )
        if iv_rec is None:
            return
        iv = self._file["input_views"]
        _append(iv["rgb"], iv_rec.rgb.astype(np.uint8))
        _append(iv["world_mat"], np.asarray(iv_rec.world_mat, np.float32))
        _append(iv["camera_mat"], np.asarray(iv_rec.camera_mat, np.float32))
        _append(iv["object_index"], np.full(len(iv_rec.rgb), obj_index, np.int32))

    def _check(self, rec: ObjectRecord) -> None:
        where = f"object {rec.object_id}"
        if not rec.object_id:
            raise UserError("an object has an empty id")
        if rec.object_id in self._ids:
            raise UserError(f"{where}: duplicate object id")
        if rec.split not in SPLITS:
            raise UserError(f"{where}: split {rec.split!r} is not one of {SPLITS}")
        n = rec.num_views
        if n == 0:
            raise UserError(f"{where}: has no views")
        expect = {
            "rgb": (n, self.height, self.width, 3),
            "mask": (n, self.height, self.width),
            "world_mat": (n, 4, 4),
            "camera_mat": (n, 4, 4),
        }
        if self.has_depth:
            if rec.depth is None:
                raise UserError(f"{where}: has no depth, but this file stores depth")
            expect["depth"] = (n, self.height, self.width)
        for name, shape in expect.items():
            got = np.shape(getattr(rec, name))
            if got != shape:
                raise UserError(f"{where}: {name} has shape {got}, expected {shape}")
        if rec.rgb.dtype != np.uint8:
            raise UserError(f"{where}: rgb has dtype {rec.rgb.dtype}, expected uint8")
        if self.has_depth and np.isnan(rec.depth[rec.mask.astype(bool)]).any():
            raise UserError(f"{where}: depth has NaN values on the object")
        for name in schema.VIEW_MATRIX_DATASETS:
            for i, mat in enumerate(getattr(rec, name)):
                problem = is_valid_matrix(mat, affine=(name == "world_mat"))
                if problem:
                    raise UserError(f"{where}: {name} of view {i} {problem}")
        problem = is_valid_matrix(rec.scale_mat)
        if problem:
            raise UserError(f"{where}: scale_mat {problem}")


def _growing(group, name, row_shape, dtype, chunk_rows, compress=True):
    """A dataset that starts with 0 rows and grows along axis 0."""
    return group.create_dataset(
        name,
        shape=(0, *row_shape),
        maxshape=(None, *row_shape),
        dtype=dtype,
        chunks=(chunk_rows, *row_shape),
        compression=schema.COMPRESSION if compress else None,
    )


def _append(ds, rows) -> None:
    n = len(rows)
    if n == 0:
        return
    start = ds.shape[0]
    ds.resize(start + n, axis=0)
    ds[start : start + n] = rows
