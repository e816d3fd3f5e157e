"""Import the plainest layout: a folder of images (with masks, or alpha) and one
``cameras.json`` describing every view. The layout, the camera conventions and a worked
example are in docs/FORMAT.md ("Importing your own renders").

``cameras.json``::

    {
      "convention": "opencv",                    # or "opengl" (see below)
      "objects": {
        "mug-01": {"category": "mug", "split": "train", "captions": ["a red mug"]}
      },
      "frames": [
        {"object": "mug-01", "image": "mug-01/000.png", "mask": "mug-01/000_mask.png",
         "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],
         "world_to_camera": [[r11, r12, r13, t1], [r21, r22, r23, t2], [r31, r32, r33, t3]]}
      ]
    }

- ``K`` is in pixels, OpenCV's convention: pixel (col, row) has its centre at (u, v) = (col,
  row); ``world_to_camera`` is 3x4 or 4x4 (or give ``camera_to_world`` instead).
- ``"opencv"``: camera x right, y down, z forward (iss3d's own, DVR's); ``"opengl"``: x right,
  y up, looking down -z (NeRF, Blender): flipped to iss3d's axes on import.
- Objects must lie in the unit cube [-0.5, 0.5]^3 of the world frame, or give a per-object
  ``"object_to_world"`` 4x4 (iss3d's ``scale_mat``) that puts the unit cube around them.
- ``mask`` is optional when the image has alpha (mask = alpha > 127); RGBA images are
  composited over white. Every image has the same size. ``split`` defaults to ``train``;
  ``category`` to ``"object"``; ``captions`` to none.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from iss3d.core.errors import UserError
from iss3d.core.paths import input_file, read_json
from iss3d.data.cameras import is_valid_matrix
from iss3d.data.images import composite_over_white, read_image, read_mask
from iss3d.data.importers.common import caption_note, check_captions, read_captions
from iss3d.data.records import SPLITS, ObjectRecord
from iss3d.data.writer import MultiViewWriter

CAMERAS_FILE = "cameras.json"
CONVENTIONS = ("opencv", "opengl")
#: opengl -> opencv camera axes (y and z flipped).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def pixel_intrinsics_to_camera_mat(k: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV pixel intrinsics K (3, 3) -> iss3d ``camera_mat`` (4, 4): camera coordinates to
    normalised image coordinates, pixel centres at (2 col + 1) / W - 1 (``"center"``).

    Pixel u (centre of column u at u) is x = 2 (u + 0.5) / W - 1, so x = 2 fx / W * X / Z +
    2 s / W * Y / Z + 2 (cx + 0.5) / W - 1, and likewise for y.
    """
    mat = np.eye(4)
    mat[0, :3] = [2 * k[0, 0] / width, 2 * k[0, 1] / width, 2 * (k[0, 2] + 0.5) / width - 1]
    mat[1, 1:3] = [2 * k[1, 1] / height, 2 * (k[1, 2] + 0.5) / height - 1]
    return mat


def read_cameras_json(root: Path) -> dict[str, Any]:
    """``root/cameras.json`` parsed and checked for shape (one-line UserError naming the
    file and the entry at fault)."""
    path = root / CAMERAS_FILE
    spec = read_json(path, f"a {CAMERAS_FILE}")
    if not isinstance(spec, dict) or not isinstance(spec.get("frames"), list):
        raise UserError(f"{path}: needs a 'frames' list")
    convention = spec.get("convention", "opencv")
    if convention not in CONVENTIONS:
        raise UserError(f"{path}: 'convention' must be one of {CONVENTIONS}, got {convention!r}")
    objects = spec.get("objects", {})
    if not isinstance(objects, dict):
        raise UserError(f"{path}: 'objects' must map object ids to their facts")
    if not spec["frames"]:
        raise UserError(f"{path}: 'frames' is empty")
    return {"path": path, "convention": convention, "objects": objects, "frames": spec["frames"]}


def _matrix(value: Any, shapes: tuple[tuple[int, int], ...], where: str) -> np.ndarray:
    try:
        mat = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{where}: not a matrix of numbers") from None
    if mat.shape not in shapes:
        raise UserError(f"{where}: shape {mat.shape}, expected one of {list(shapes)}")
    if not np.isfinite(mat).all():
        raise UserError(f"{where}: not finite")
    if mat.shape == (3, 4):
        mat = np.vstack([mat, [0.0, 0.0, 0.0, 1.0]])
    return mat


def _world_to_camera(frame: dict, convention: str, where: str) -> np.ndarray:
    if ("world_to_camera" in frame) == ("camera_to_world" in frame):
        raise UserError(f"{where}: give exactly one of 'world_to_camera' and 'camera_to_world'")
    key = "world_to_camera" if "world_to_camera" in frame else "camera_to_world"
    mat = _matrix(frame[key], ((3, 4), (4, 4)), f"{where} {key}")
    problem = is_valid_matrix(mat)
    if problem:
        raise UserError(f"{where} {key}: {problem}")
    if key == "camera_to_world":
        mat = np.linalg.inv(mat)
    return GL_TO_CV @ mat if convention == "opengl" else mat


def _object_facts(objects: dict, name: str, path: Path) -> dict[str, Any]:
    facts = objects.get(name, {})
    where = f"{path}: objects[{name!r}]"
    if not isinstance(facts, dict):
        raise UserError(f"{where}: must be a mapping")
    split = facts.get("split", "train")
    if split not in SPLITS:
        raise UserError(f"{where}: split must be one of {SPLITS}, got {split!r}")
    captions = check_captions(facts.get("captions", []), where)
    scale = np.eye(4)
    if "object_to_world" in facts:
        scale = _matrix(facts["object_to_world"], ((4, 4),), f"{where} object_to_world")
    return {
        "category": str(facts.get("category", "object")),
        "split": split,
        "captions": captions,
        "scale": scale,
    }


def load_view(root: Path, frame: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(rgb (H, W, 3) uint8 on white, mask (H, W) bool) of one frame."""
    if not isinstance(frame.get("image"), str):
        raise UserError(f"{where}: needs an 'image' path")
    image = read_image(input_file(root / frame["image"], "an image"))
    if "mask" in frame:
        mask = read_mask(input_file(root / frame["mask"], "a mask image"))
        if mask.shape != image.shape[:2]:
            raise UserError(f"{root / frame['mask']}: mask size differs from its image's")
    elif image.shape[-1] == 4:
        mask = image[..., 3] > 127
    else:
        raise UserError(f"{where}: no 'mask' and {frame['image']} has no alpha channel")
    rgb = composite_over_white(image) if image.shape[-1] == 4 else image
    return rgb, mask


def import_folder(
    root: str | os.PathLike, out: str | os.PathLike, progress: bool | None = None
) -> tuple[Path, str]:
    """Write ``out`` from ``root``'s images, masks and ``cameras.json``.

    Returns (out, a one-line summary of what was read).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    spec = read_cameras_json(root)
    path, convention = spec["path"], spec["convention"]
    by_object: dict[str, list[tuple[int, dict]]] = {}
    for i, frame in enumerate(spec["frames"]):
        if not isinstance(frame, dict) or not isinstance(frame.get("object"), str):
            raise UserError(f"{path}: frames[{i}] needs an 'object' id")
        by_object.setdefault(frame["object"], []).append((i, frame))
    unknown = sorted(set(spec["objects"]) - set(by_object))
    if unknown:
        raise UserError(f"{path}: objects[{unknown[0]!r}] has no frames")
    height = width = None
    captions, captions_path = read_captions(root)  # added to cameras.json's own
    with MultiViewWriter(out, *_first_size(root, spec["frames"][0], path), "center", False) as w:
        height, width = w.height, w.width
        for name, frames in tqdm(
            by_object.items(),
            desc="folder",
            unit="obj",
            disable=None if progress is None else not progress,
        ):
            facts = _object_facts(spec["objects"], name, path)
            views = []
            for i, frame in frames:
                where = f"{path}: frames[{i}]"
                rgb, mask = load_view(root, frame, where)
                if rgb.shape[:2] != (height, width):
                    raise UserError(
                        f"{root / frame['image']}: {rgb.shape[1]}x{rgb.shape[0]} pixels, the "
                        f"first image's {width}x{height} (one size per file)"
                    )
                k = _matrix(frame.get("K"), ((3, 3),), f"{where} K")
                if not (k[0, 0] > 0 and k[1, 1] > 0 and math.isclose(k[2, 2], 1.0)):
                    raise UserError(f"{where} K: needs fx, fy > 0 and K[2][2] = 1")
                world = _world_to_camera(frame, convention, where)
                views.append((rgb, mask, world, pixel_intrinsics_to_camera_mat(k, height, width)))
            captions[name] = facts["captions"] + captions.get(name, [])
            w.add(
                ObjectRecord(
                    object_id=name,
                    category=facts["category"],
                    split=facts["split"],
                    rgb=np.stack([v[0] for v in views]),
                    mask=np.stack([v[1] for v in views]),
                    world_mat=np.stack([v[2] for v in views]).astype(np.float32),
                    camera_mat=np.stack([v[3] for v in views]).astype(np.float32),
                    scale_mat=facts["scale"].astype(np.float32),
                    captions=captions[name],
                )
            )
    note = caption_note(captions, captions_path or path, set(by_object))
    summary = (
        f"read {len(by_object)} objects, {len(spec['frames'])} views at {width}x{height} "
        f"({convention} cameras); {note}; no depth; no 3D ground truth "
        "(iss3d data carve adds it from the masks)"
    )
    return Path(out), summary


def _first_size(root: Path, frame: Any, path: Path) -> tuple[int, int]:
    """(height, width) of the first frame's image."""
    if not isinstance(frame, dict) or not isinstance(frame.get("image"), str):
        raise UserError(f"{path}: frames[0] needs an 'image' path")
    image = read_image(input_file(root / frame["image"], "an image"))
    return int(image.shape[0]), int(image.shape[1])
