"""Import NeRF "Blender" scenes (``transforms_{split}.json``) into the iss3d HDF5 format.

Layout read: ROOT is one scene folder, a folder of scene folders (one object each), or a
folder of category folders of scene folders::

    SCENE/transforms_train.json, transforms_val.json, transforms_test.json
    SCENE/train/r_0.png ...          RGBA images; file_path may omit ".png"
    ROOT/<category>/<scene>/...      (object id <category>/<scene>; else the scene's name)
    train.lst, val.lst, test.lst     optional, beside the scene folders: their dataset split
                                     (DVR's convention; unlisted scenes are skipped)
    ROOT/captions.json               optional (data/importers/common.py)

An object's category is ``--category`` if given, else its category folder, else its scene
folder's name; its split is the one its .lst file gives, else ``--object-split``.

Each transforms file holds ``camera_angle_x`` (horizontal field of view, radians) and
``frames: [{file_path, transform_matrix}]`` with camera-to-world matrices in OpenGL's camera
convention (x right, y up, z backward). They become ours (data/cameras.py):

    world_mat = inv(c2w_gl @ diag(1, -1, -1, 1))
    camera_mat = intrinsics(focal_from_fov(camera_angle_x), aspect=W / H)
    scale_mat = diag(2 bound, 2 bound, 2 bound, 1)   # object unit cube -> [-bound, bound]^3

The mask is alpha > 127 and the colour is composited over white. Blender samples pixel centres,
so the file's pixel convention is "center". There is no depth: the depth and normal PNGs of
NeRF's test split are 8-bit renders, not distances, and like any other image no frame names
they are counted as not imported in the summary line.
"""

from __future__ import annotations

import math
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from iss3d.core.errors import UserError
from iss3d.core.paths import name_taken, read_json
from iss3d.data.cameras import focal_from_fov, intrinsics, is_valid_matrix
from iss3d.data.images import composite_over_white, image_size, read_image
from iss3d.data.importers.common import caption_note, read_captions, read_split_lists
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
    category: str | None = None  # its category folder's name
    split: str | None = None  # from a .lst file
    frames: list[BlenderFrame] = field(default_factory=list)
    view_splits: list[tuple[str, int]] = field(default_factory=list)

    @property
    def object_id(self) -> str:
        return self.name if self.category is None else f"{self.category}/{self.name}"


def import_blender(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    splits: tuple[str, ...] | list[str] | None = None,
    object_split: str = "train",
    bound: float = 1.5,
    category: str | None = None,
    progress: bool | None = None,
) -> tuple[Path, str]:
    """Convert NeRF Blender scene(s) under ``root`` into the HDF5 file ``out``.

    Args:
        root: a scene folder (with ``transforms_<split>.json``) or a folder of scene folders.
        out: output ``.h5`` path; written atomically (nothing appears there on error).
        splits: which transforms files to read (each must exist); their views are merged
            into one object. None: every ``transforms_{train,val,test}.json`` a scene has.
        object_split: the dataset split ("train", "val" or "test") of objects no .lst file
            places.
        bound: the scene lies in [-bound, bound]^3 (world units of the transforms files).
        category: category of every object (default: its category folder's name, else its
            scene folder's name).
        progress: show a progress bar (None: only on a terminal).
    Returns:
        ``out`` as a Path, and a one-line summary of what was read and what was not.
    Raises:
        UserError naming the offending file or argument for any problem with the input.
    """
    root = Path(root)
    if splits is not None:
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

    scenes, skipped = scan_blender(root, splits)
    captions, captions_path = read_captions(root)
    first = scenes[0].frames[0].image
    height, width = image_size(first)
    scale = np.diag([2.0 * bound, 2.0 * bound, 2.0 * bound, 1.0])
    info = {
        "importer": "nerf-blender",
        "root": str(root.resolve()),
        "splits": list(splits) if splits is not None else "present",
        "bound": float(bound),
    }
    with MultiViewWriter(out, height, width, "center", has_depth=False, info=info) as writer:
        bar = tqdm(
            scenes, desc="blender", unit="obj", disable=None if progress is None else not progress
        )
        written = []  # (category, split) of each object
        for scene in bar:
            rec = load_scene(scene, (height, width), first, scale, object_split, category)
            rec.captions = captions.get(scene.object_id, [])
            writer.add(rec)
            written.append((rec.category, rec.split))
        bar.close()
    split_of = [split for _, split in written]
    counts = ", ".join(f"{s} {split_of.count(s)}" for s in SPLITS if s in split_of)
    categories = len({c for c, _ in written})
    parts = [
        f"read {len(scenes)} objects ({counts}) in {categories} categories",
        f"{sum(len(s.frames) for s in scenes)} views at {width}x{height} (transforms "
        f"{', '.join(sorted({name for s in scenes for name, _ in s.view_splits}))})",
        "no depth",
        caption_note(captions, captions_path, {s.object_id for s in scenes}),
        "no 3D ground truth (iss3d data carve adds it from the masks)",
    ]
    unread = [p for s in scenes for p in unread_images(s)]
    if unread:
        example = unread[0].relative_to(root) if unread[0] != root else unread[0]
        parts.append(f"not imported: {len(unread)} images no frame names (e.g. {example})")
    if skipped:
        parts.append(f"skipped {skipped} scene folders no .lst file lists")
    return Path(out), "; ".join(parts)


def unread_images(scene: BlenderScene) -> list[Path]:
    """PNG/JPEG files under the scene folder that no frame of the read splits names (depth and
    normal renders, splits not asked for), sorted."""
    named = {frame.image.resolve() for frame in scene.frames}
    return sorted(
        p
        for p in scene.folder.rglob("*")
        if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.is_file()
        if p.resolve() not in named
    )


# -- scanning -----------------------------------------------------------------------------
def _is_scene(folder: Path) -> bool:
    return any(not p.is_dir() for p in folder.glob("transforms_*.json"))


def scan_blender(root: Path, splits: tuple[str, ...] | None) -> tuple[list[BlenderScene], int]:
    """Find the scenes under ``root`` (itself, its subfolders, or those of its category
    folders) and read (and check) their transforms files: ``splits``' (each must exist), or
    (None) every ``transforms_{train,val,test}.json`` a scene has.

    Returns:
        the scenes (by category, then name) and how many scene folders no .lst file listed.
    """
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if not root.is_dir():
        raise UserError(f"{root}: is not a folder (expected a NeRF Blender scene folder)")
    if _is_scene(root):
        found = [BlenderScene(folder=root, name=root.resolve().name)]
        skipped = 0
    else:
        found, skipped = _scenes_in(root, None)
        for sub in _subfolders(root):
            if not _is_scene(sub):
                more, unlisted = _scenes_in(sub, sub.name)
                found += more
                skipped += unlisted
    if not found:
        raise UserError(
            f"{root}: no scenes found (no transforms_<split>.json here, in its subfolders or "
            "in theirs)"
        )
    for scene in found:
        present = [s for s in SPLITS if name_taken(scene.folder / f"transforms_{s}.json")]
        if splits is None and not present:
            raise UserError(
                f"{scene.folder}: no transforms_train/val/test.json (name the files to read "
                "with --splits)"
            )
        for split in splits if splits is not None else present:
            frames = read_transforms(scene.folder / f"transforms_{split}.json", split)
            scene.frames.extend(frames)
            scene.view_splits.append((split, len(frames)))
    return found, skipped


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scenes_in(folder: Path, category: str | None) -> tuple[list[BlenderScene], int]:
    """The scene folders directly in ``folder``, with the split their .lst file gives (those
    no list names are left out when the folder has lists), and how many were left out."""
    lists = read_split_lists(folder)
    scenes, skipped = [], 0
    for sub in _subfolders(folder):
        if not _is_scene(sub):
            continue
        if lists is not None and sub.name not in lists:
            skipped += 1
            continue
        split = lists[sub.name] if lists is not None else None
        scenes.append(BlenderScene(folder=sub, name=sub.name, category=category, split=split))
    return scenes, skipped


def read_transforms(path: Path, split: str) -> list[BlenderFrame]:
    """Parse and check one ``transforms_<split>.json``; image files must exist."""
    if not name_taken(path):
        raise UserError(f"{path}: missing (split {split!r} was requested)")
    data = read_json(path, "a transforms file")  # refuses a folder or a FIFO in its place
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
        object_id=scene.object_id,
        category=category or scene.category or scene.name,
        split=scene.split or object_split,
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
