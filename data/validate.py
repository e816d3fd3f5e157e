"""Deep validation of a multi-view HDF5 file: layout, tables, matrices and every image chunk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from iss3d.core.errors import UserError
from iss3d.data import schema
from iss3d.data.cameras import PIXEL_CONVENTIONS
from iss3d.data.reader import (
    check_camera_tables,
    check_header,
    check_structure,
    expect_shape,
    open_h5,
    parse_json,
)

BLOCK = 256  # views read per step when scanning images


def check_file(path: str | os.PathLike) -> dict:
    """Validate ``path``; raise UserError with the first problem, else return a summary dict."""
    path = Path(path)
    with open_h5(path) as f:
        check_header(f, path)
        try:
            return _check(f, path)
        except KeyError as err:
            raise UserError(f"{path}: missing dataset or attribute {err.args[0]!r}") from None
        except OSError as err:  # HDF5 read errors: corrupt chunks, truncated data
            raise UserError(f"{path}: unreadable data ({err})") from None


def _fail(path: Path, where: str, what: str) -> None:
    raise UserError(f"{path}: {where} {what}")


def _check(f: h5py.File, path: Path) -> dict:
    check_structure(f, path)
    h, w = int(f.attrs["height"]), int(f.attrs["width"])
    convention = f.attrs["pixel_convention"]
    convention = convention.decode() if isinstance(convention, bytes) else str(convention)
    if convention not in PIXEL_CONVENTIONS:
        _fail(
            path,
            "attribute pixel_convention",
            f"is {convention!r}, expected one of {PIXEL_CONVENTIONS}",
        )
    has_depth = bool(f.attrs["has_depth"])
    views, objects = f["views"], f["objects"]
    n = views["rgb"].shape[0]
    o = objects["object_id"].shape[0]

    declared = int(f.attrs.get("num_objects", o))
    if declared != o:
        _fail(path, "attribute num_objects", f"is {declared}, but objects/ holds {o}")
    ids = objects["object_id"].asstr()[:]
    if len(set(ids)) != len(ids):
        _fail(path, "objects/object_id", "has duplicate ids")
    info = f.attrs.get("info", "{}")
    parse_json(info.decode() if isinstance(info, bytes) else str(info), path, "attribute info")
    for i, text in enumerate(objects["meta"].asstr()[:]):
        parse_json(text, path, f"objects/meta[{i}] (object {ids[i]})")
    offset = objects["view_offset"][:]
    n_captions = f["captions"].shape[0]

    check_camera_tables(
        path, ids, offset, views["world_mat"][:], views["camera_mat"][:], objects["scale_mat"][:]
    )

    for start, stop in _blocks(n):
        mask = views["mask"][start:stop]
        if mask.max(initial=0) > 1:
            _fail(path, f"views/mask[{start}:{stop}]", "has values other than 0 and 1")
        _ = views["rgb"][start:stop]  # reading every chunk finds corrupt data
        if has_depth:
            depth = views["depth"][start:stop]
            if np.isnan(depth).any():
                _fail(path, f"views/depth[{start}:{stop}]", "contains NaN")
            if (depth[mask.astype(bool)] <= 0).any():
                _fail(path, f"views/depth[{start}:{stop}]", "has non-positive depth on the object")

    summary = {"objects": o, "views": n, "height": h, "width": w, "captions": n_captions}
    summary.update(_check_eval(f, path, o))
    summary.update(_check_input_views(f, path, o))
    return summary


def _check_eval(f: h5py.File, path: Path, o: int) -> dict:
    if "eval" not in f:
        return {}
    ev, out = f["eval"], {}
    if "occ_points" in ev:
        p = ev["occ_points"].shape[1]
        expect_shape(path, ev["occ_points"], (o, p, 3))
        expect_shape(path, ev["occ_inside"], (o, p))
        n_uniform = int(ev.attrs["occ_uniform_count"])
        if not 0 <= n_uniform <= p:
            _fail(path, "eval attribute occ_uniform_count", f"is {n_uniform}, outside [0, {p}]")
        for start, stop in _blocks(o, 64):
            if not np.isfinite(ev["occ_points"][start:stop]).all():
                _fail(path, f"eval/occ_points[{start}:{stop}]", "contains NaN or infinite values")
        out["occupancy_points"] = p
    if "surface_points" in ev:
        s = ev["surface_points"].shape[1]
        for name in schema.EVAL_SURFACE:
            expect_shape(path, ev[name], (o, s, 3))
        for start, stop in _blocks(o, 64):
            for name in ("surface_points", "surface_normals"):
                if not np.isfinite(ev[name][start:stop]).all():
                    _fail(path, f"eval/{name}[{start}:{stop}]", "contains NaN or infinite values")
            _ = ev["surface_colors"][start:stop]
        out["surface_points"] = s
    return out


def _check_input_views(f: h5py.File, path: Path, o: int) -> dict:
    if "input_views" not in f:
        return {}
    iv = f["input_views"]
    m = iv["rgb"].shape[0]
    h, w = int(iv.attrs["height"]), int(iv.attrs["width"])
    expect_shape(path, iv["rgb"], (m, h, w, 3), np.uint8)
    for name in schema.VIEW_MATRIX_DATASETS:
        expect_shape(path, iv[name], (m, 4, 4))
    index = iv["object_index"][:]
    if len(index) != m or (np.diff(index) < 0).any() or (index >= o).any():
        _fail(path, "input_views/object_index", "is not a sorted list of object rows")
    for start, stop in _blocks(m):
        _ = iv["rgb"][start:stop]
    return {"input_views": m}


def _blocks(n: int, size: int = BLOCK) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(start + size, n)
