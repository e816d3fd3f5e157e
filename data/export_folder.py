"""Write a multi-view file out as the plain folder layout ``iss3d data import-folder`` reads:
``<object>/<view>.png`` (RGBA: alpha is the mask), ``cameras.json`` (OpenCV cameras, pixel
intrinsics, each object's category, split, captions and ``object_to_world``). Importing the
folder again gives the same views, masks, cameras (up to float32) and captions; depth and
``eval/`` ground truth are not part of the layout.

Pixel intrinsics from a ``camera_mat`` (normalised image coordinates x = fx X / Z + s Y / Z +
cx): with pixel centres at x = (2u + 1) / W - 1 (``"center"``), u = (x + 1) W / 2 - 0.5, so
K = [[fx W / 2, s W / 2, (cx + 1) W / 2 - 0.5], [0, fy H / 2, (cy + 1) H / 2 - 0.5], [0, 0,
1]]; with DVR's x = 2u / (W - 1) - 1 (``"dvr"``), u = (x + 1) (W - 1) / 2 and W - 1 replaces
W without the half-pixel shift. A DVR-convention file so becomes OpenCV cameras exactly.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from iss3d.core.atomic import atomic_directory
from iss3d.data.reader import MultiViewFile

#: Characters kept in folder names made from object ids (others become "_").
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def camera_mat_to_pixel_intrinsics(
    mat: np.ndarray, height: int, width: int, pixel_convention: str
) -> np.ndarray:
    """(4, 4) ``camera_mat`` -> (3, 3) OpenCV pixel intrinsics K (see the module docstring)."""
    mat = np.asarray(mat, dtype=np.float64)
    if pixel_convention == "dvr":
        sx, sy, shift = (width - 1) / 2, (height - 1) / 2, 0.0
    else:
        sx, sy, shift = width / 2, height / 2, 0.5
    k = np.eye(3)
    k[0] = [mat[0, 0] * sx, mat[0, 1] * sx, (mat[0, 2] + 1) * sx - shift]
    k[1, 1:] = [mat[1, 1] * sy, (mat[1, 2] + 1) * sy - shift]
    return k


def folder_names(object_ids: list[str]) -> list[str]:
    """A distinct, path-safe folder name per object id (``02691156/abc`` -> ``02691156_abc``;
    a clash gets ``-<row>``)."""
    names, seen = [], set()
    for row, object_id in enumerate(object_ids):
        name = SAFE_NAME.sub("_", object_id).strip(".") or "object"
        if name in seen:
            name = f"{name}-{row}"
        seen.add(name)
        names.append(name)
    return names


def export_folder(
    src: str | os.PathLike, out: str | os.PathLike, progress: bool | None = None
) -> tuple[Path, str]:
    """Write ``src``'s objects as the folder layout at ``out`` (a new or empty folder; written
    under a temporary name, renamed at the end). Returns (out, a one-line summary)."""
    out = Path(out)
    with MultiViewFile(src) as f, atomic_directory(out) as tmp:
        names = folder_names([str(i) for i in f.object_ids])
        objects, frames = {}, []
        quiet = None if progress is None else not progress
        for obj in tqdm(range(f.num_objects), desc="export", unit="obj", disable=quiet):
            rec = f.read_object(obj)
            name = names[obj]
            (tmp / name).mkdir()
            objects[name] = {
                "category": rec.category,
                "split": rec.split,
                "captions": list(rec.captions),
                "object_to_world": np.asarray(rec.scale_mat, dtype=np.float64).tolist(),
            }
            for v in range(rec.num_views):
                image = f"{name}/{v:03d}.png"
                alpha = np.where(rec.mask[v], 255, 0).astype(np.uint8)[..., None]
                Image.fromarray(np.concatenate([rec.rgb[v], alpha], -1)).save(tmp / image)
                k = camera_mat_to_pixel_intrinsics(
                    rec.camera_mat[v], f.height, f.width, f.pixel_convention
                )
                frames.append(
                    {
                        "object": name,
                        "image": image,
                        "K": k.tolist(),
                        "world_to_camera": np.asarray(rec.world_mat[v], np.float64).tolist(),
                    }
                )
        spec = {"convention": "opencv", "objects": objects, "frames": frames}
        (tmp / "cameras.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
        summary = (
            f"{f.num_objects} objects, {len(frames)} views at {f.width}x{f.height} as RGBA "
            "PNGs and cameras.json (depth and 3D ground truth are not part of this layout)"
        )
    return out, summary
