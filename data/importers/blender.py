"""Import NeRF "Blender" scenes (``transforms_{split}.json``) into the iss3d HDF5 format.

Layout read: ROOT is one scene folder, or a folder of scene folders (one object each)::

    SCENE/transforms_train.json, transforms_val.json, transforms_test.json
    SCENE/train/r_0.png ...          RGBA images; file_path may omit ".png"

Each transforms file holds ``camera_angle_x`` (horizontal field of view, radians) and
``frames: [{file_path, transform_matrix}]`` with camera-to-world matrices in OpenGL's camera
convention (x right, y up, z backward). They become ours (data/cameras.py):

    world_mat = inv(c2w_gl @ diag(1, -1, -1, 1))
    camera_mat = intrinsics(focal_from_fov(camera_angle_x), aspect=W / H)
    scale_mat = diag(2 bound, 2 bound, 2 bound, 1)   # object unit cube -> [-bound, bound]^3

The mask is alpha > 127 and the colour is composited over white. Blender samples pixel centres,
so the file's pixel convention is "center". There is no depth.
"""

from __future__ import annotations

import json
import math
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from iss3d.core.errors import UserError
from iss3d.data.cameras import focal_from_fov, intrinsics, is_valid_matrix
from iss3d.data.images import composite_over_white, image_size, read_image
from iss3d.data.records import SPLITS, ObjectRecord
from iss3d.data.writer import MultiViewWriter

# OpenGL camera axes (y up, z backward) -> ours (y down, z forward).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


@dataclass
class BlenderFrame:
    image: Path
    c2w_gl: np.ndarray  # (4, 4) camera-to-world, OpenGL camera axes
    angle_x: float
    split: str


@dataclass
class BlenderScene:
    folder: Path
    name: str
    frames: list[BlenderFrame] = field(default_factory=list)
    view_splits: list[tuple[str, int]] = field(default_factory=list)


def import_blender(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: tuple[str, ...] | list[str] = ("train", "val", "test"),
    object_split: str = "train",
    bound: float = 1.5,
    category: str | None = None,
    progress: bool | None = None,
) -> Path:
    """Convert NeRF Blender scene(s) under ``root`` into the HDF5 file ``out``.

    Args:
        root: a scene folder (with ``transforms_<split>.json``) or a folder of scene folders.
        out: output ``.h5`` path; written atomically (nothing appears there on error).
        splits: which transforms files to read; their views are merged into one object.
        object_split: the dataset split ("train", "val" or "test") of every imported object.
        bound: the scene lies in [-bound, bound]^3 (world units of the transforms files).
        category: category of every object (default: the scene folder's name).
        progress: show a progress bar (None: only on a terminal).
    Returns:
        ``out`` as a Path.
    Raises:
        UserError naming the offending file or argument for any problem with the input.
    """
    root = Path(root)
    splits = tuple(splits)
    if not splits or any(not isinstance(s, str) or not s for s in splits):
        raise UserError(f"splits (--splits) must be non-empty names, got {list(splits)!r}")
    if len(set(splits)) != len(splits):
        raise UserError(f"splits (--splits) has repeated names: {list(splits)!r}")
    if object_split not in SPLITS:
        raise UserError(f"object split (--object-split) {object_split!r} is not one of {SPLITS}")
    if not (isinstance(bound, int | float) and math.isfinite(bound) and bound > 0):
        raise UserError(f"bound (--bound) must be a positive number, got {bound!r}")
    if category is not None and not category.strip():
        raise UserError("category (--category) must not be empty")
    if category is not None and any(unicodedata.category(ch) == "Cc" for ch in category):
        raise UserError(f"category (--category) {category!r} holds a control character")

    scenes = scan_blender(root, splits)
    first = scenes[0].frames[0].image
    height, width = image_size(first)
    scale = np.diag([2.0 * bound, 2.0 * bound, 2.0 * bound, 1.0])
    info = {
        "importer": "nerf-blender",
        "root": str(root.resolve()),
        "splits": list(splits),
        "bound": float(bound),
    }
    with MultiViewWriter(out, height, width, "center", has_depth=False, info=info) as writer:
        bar = tqdm(
            scenes, desc="blender", unit="obj", disable=None if progress is None else not progress
        )
        for scene in bar:
            writer.add(load_scene(scene, (height, width), first, scale, object_split, category))
        bar.close()
    return Path(out)


# -- scanning -----------------------------------------------------------------------------
def _is_scene(folder: Path) -> bool:
    return any(p.is_file() for p in folder.glob("transforms_*.json"))


def scan_blender(root: Path, splits: tuple[str, ...]) -> list[BlenderScene]:
    """Find the scenes under ``root`` and read (and check) all their transforms files."""
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if not root.is_dir():
        raise UserError(f"{root}: is not a folder (expected a NeRF Blender scene folder)")
    if _is_scene(root):
        folders = [root]
    else:
        folders = sorted(
            p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _is_scene(p)
        )
    if not folders:
        raise UserError(
            f"{root}: no scenes found (no transforms_<split>.json here or in its subfolders)"
        )
    scenes = []
    for folder in folders:
        scene = BlenderScene(folder=folder, name=folder.resolve().name)
        for split in splits:
            frames = read_transforms(folder / f"transforms_{split}.json", split)
            scene.frames.extend(frames)
            scene.view_splits.append((split, len(frames)))
        scenes.append(scene)
    return scenes


def read_transforms(path: Path, split: str) -> list[BlenderFrame]:
    """Parse and check one ``transforms_<split>.json``; image files must exist."""
    if not path.is_file():
        raise UserError(f"{path}: missing (split {split!r} was requested)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to be a transforms file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object with camera_angle_x and frames")
    angle = data.get("camera_angle_x")
    if angle is None:
        raise UserError(f"{path}: missing camera_angle_x")
    if isinstance(angle, bool) or not isinstance(angle, int | float) or not 0 < angle < math.pi:
        raise UserError(
            f"{path}: camera_angle_x must be a field of view in radians in (0, pi), got {angle!r}"
        )
    frames = data.get("frames")
    if not isinstance(frames, list):
        raise UserError(f"{path}: missing frames list")
    if not frames:
        raise UserError(f"{path}: frames list is empty")
    out = []
    for j, frame in enumerate(frames):
        where = f"{path}: frame {j}"
        if not isinstance(frame, dict):
            raise UserError(f"{where}: expected an object with file_path and transform_matrix")
        file_path = frame.get("file_path")
        if not isinstance(file_path, str) or not file_path:
            raise UserError(f"{where}: missing file_path")
        where = f"{path}: frame {j} ({file_path})"
        if "transform_matrix" not in frame:
            raise UserError(f"{where}: missing transform_matrix")
        try:
            c2w = np.array(frame["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise UserError(f"{where}: transform_matrix is not a matrix of numbers") from None
        if c2w.shape == (3, 4):
            c2w = np.vstack([c2w, [0.0, 0.0, 0.0, 1.0]])
        problem = is_valid_matrix(c2w)
        if problem:
            raise UserError(f"{where}: transform_matrix {problem}")
        out.append(BlenderFrame(_frame_image(path, file_path), c2w, float(angle), split))
    return out


def _frame_image(transforms: Path, file_path: str) -> Path:
    given = transforms.parent / file_path
    if given.is_file():
        return given
    with_png = given.with_name(given.name + ".png")
    if with_png.is_file():
        return with_png
    shown = given if given.suffix.lower() == ".png" else with_png
    raise UserError(f"{shown}: image listed in {transforms} does not exist")


# -- loading ------------------------------------------------------------------------------
def world_mat_from_c2w_gl(c2w_gl: np.ndarray) -> np.ndarray:
    """(4, 4) OpenGL camera-to-world -> our world_mat (world -> camera, y down, z forward)."""
    return np.linalg.inv(np.asarray(c2w_gl, dtype=np.float64) @ GL_TO_CV)


def load_scene(
    scene: BlenderScene,
    size: tuple[int, int],
    first: Path,
    scale_mat: np.ndarray,
    object_split: str,
    category: str | None,
) -> ObjectRecord:
    """Read one scene's images and convert its cameras into an ObjectRecord."""
    height, width = size
    n = len(scene.frames)
    rgb = np.empty((n, height, width, 3), np.uint8)
    mask = np.empty((n, height, width), bool)
    world = np.empty((n, 4, 4))
    camera = np.empty((n, 4, 4))
    for i, frame in enumerate(scene.frames):
        img = read_image(frame.image)
        if img.shape[:2] != size:
            raise UserError(
                f"{frame.image}: is {img.shape[1]}x{img.shape[0]} pixels but {first} is "
                f"{width}x{height} (all views must have one size)"
            )
        if img.shape[-1] != 4:
            raise UserError(
                f"{frame.image}: has no alpha channel (the Blender layout needs RGBA images; "
                "alpha is the mask)"
            )
        rgb[i] = composite_over_white(img)
        mask[i] = img[..., 3] > 127
        world[i] = world_mat_from_c2w_gl(frame.c2w_gl)
        camera[i] = intrinsics(focal_from_fov(frame.angle_x), aspect=width / height)
    return ObjectRecord(
        object_id=scene.name,
        category=category if category is not None else scene.name,
        split=object_split,
        rgb=rgb,
        mask=mask,
        world_mat=world,
        camera_mat=camera,
        scale_mat=scale_mat,
        meta={
            "source": "nerf-blender",
            "scene": scene.name,
            "view_splits": [[s, c] for s, c in scene.view_splits],
        },
    )
