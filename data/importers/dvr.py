"""Import DVR's ShapeNet renders into the iss3d multi-view HDF5 format.

Layout read (one folder per ShapeNet synset, one per model)::

    ROOT/<synset>/train.lst, val.lst, test.lst      model ids, one per line (optional)
    ROOT/<synset>/<model>/image/000.png ...         RGB or RGBA views
    ROOT/<synset>/<model>/mask/000.png ...          masks (first channel > 127)
    ROOT/<synset>/<model>/depth/000.exr ...         camera-space z (optional)
    ROOT/<synset>/<model>/cameras.npz               world_mat_i, camera_mat_i, scale_mat_i (opt.)
    ROOT/<synset>/<model>/img_choy2016/*.jpg + cameras.npz   input views (optional)
    ROOT/<synset>/<model>/points.npz, pointcloud.npz         ONet's 3D ground truth (optional)
    ROOT/metadata.yaml                              synset id -> {id, name} (optional; checked)
    ROOT/captions.json                              object id -> texts (optional; importers/common)

View i is the i-th file of image/ in name order (as DVR loads it) and uses the matrices
``*_mat_i``; mask/ and depth/ files must have the same names. The cameras are DVR's own
convention, which is ours (data/cameras.py), so they are stored unchanged; the file records
DVR's pixel convention ("dvr"). Depth that is not finite or above 1e5 (Blender's background)
becomes inf. RGBA views are composited over white.

Categories are named: the first of ``metadata.yaml``'s comma-separated names of the synset
("airplane,aeroplane,plane" -> "airplane"), else the 13 ShapeNet classes' names, else the folder
name; ``meta["synset"]`` keeps the id. Object ids are ``<synset>/<model>``. ONet's
``points.npz`` and ``pointcloud.npz`` become exact occupancy and surface samples (see
data/importers/onet.py). Whatever else a model folder holds is named in the summary line as
not imported.

Input views (``img_choy2016``): a 3x4 ``world_mat`` is padded to 4x4 and a 3x3 pixel-unit
``camera_mat`` K (mapping to [0, w] x [0, h], ONet's convention) is converted to normalised
image coordinates. ONet's ``img_choy2016`` cameras refer to the un-normalised ShapeNet frame
(ONet corrects them with each model's loc/scale); they are stored as given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from iss3d.core.config import TextYamlLoader, read_yaml
from iss3d.core.errors import UserError
from iss3d.core.paths import name_taken
from iss3d.data.cameras import is_valid_matrix
from iss3d.data.images import (
    DEPTH_BACKGROUND,
    composite_over_white,
    image_size,
    read_exr_depth,
    read_image,
    read_mask,
)
from iss3d.data.importers.common import caption_note, read_captions, read_split_lists
from iss3d.data.importers.onet import (
    OCCUPANCY_FILE,
    SURFACE_FILE,
    OnetConfig,
    read_occupancy,
    read_surface,
)
from iss3d.data.records import SPLITS, InputViews, ObjectRecord
from iss3d.data.writer import MultiViewWriter

# The 13 ShapeNet classes of DVR / ONet / ISS.
SHAPENET_SYNSETS = {
    "02691156": "airplane",
    "02828884": "bench",
    "02933112": "cabinet",
    "02958343": "car",
    "03001627": "chair",
    "03211117": "display",
    "03636649": "lamp",
    "03691459": "loudspeaker",
    "04090263": "rifle",
    "04256520": "sofa",
    "04379243": "table",
    "04401088": "telephone",
    "04530566": "watercraft",
}

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
INPUT_VIEWS_FOLDER = "img_choy2016"
METADATA_FILE = "metadata.yaml"
#: What a model folder holds that the importer reads (anything else is reported as not read).
MODEL_ENTRIES = ("image", "mask", "depth", "cameras.npz", OCCUPANCY_FILE, SURFACE_FILE)


@dataclass
class DvrModel:
    """One model folder found by :func:`scan_dvr` (nothing read yet but file names)."""

    synset: str
    model: str
    folder: Path
    split: str
    images: list[Path]
    masks: list[Path]
    depths: list[Path] | None
    cameras: Path
    occupancy: Path | None  # ONet's points.npz
    surface: Path | None  # ONet's pointcloud.npz
    unread: list[str]  # names of the folder's other entries (img_choy2016 included)

    @property
    def object_id(self) -> str:
        return f"{self.synset}/{self.model}"


def import_dvr(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    categories: list[str] | None = None,
    input_views: bool = False,
    ground_truth: OnetConfig | None = None,
    progress: bool | None = None,
) -> tuple[Path, str]:
    """Convert DVR's ShapeNet layout under ``root`` into the HDF5 file ``out``.

    Args:
        root: the folder holding one folder per synset.
        out: output ``.h5`` path; written atomically (nothing appears there on error).
        categories: synset ids to import (default: all).
        input_views: also import each model's ``img_choy2016`` views as input views.
        ground_truth: how much of ONet's ``points.npz`` / ``pointcloud.npz`` to keep (default
            ``OnetConfig()``; counts of 0 skip that file).
        progress: show a progress bar (None: only on a terminal).
    Returns:
        ``out`` as a Path, and a one-line summary of what was read and what was not.
    Raises:
        UserError naming the offending file or folder for any problem with the input.
    """
    root = Path(root)
    ground_truth = ground_truth or OnetConfig()
    models, skipped, missing = scan_dvr(root, categories)
    has_depth = _presence(models, "depths", "depth/ maps", "")
    take_occ = ground_truth.occ_points > 0 and _presence(
        models, "occupancy", OCCUPANCY_FILE, " (or --occ-points 0 to import none)"
    )
    take_surface = ground_truth.surface_points > 0 and _presence(
        models, "surface", SURFACE_FILE, " (or --surface-points 0 to import none)"
    )
    names, named_by = category_names(root, sorted({m.synset for m in models}))
    captions, captions_path = read_captions(root)
    height, width = image_size(models[0].images[0])
    info = {
        "importer": "dvr",
        "root": str(root.resolve()),
        "synset_names": names,
        "skipped_unlisted_models": skipped,
        "input_views": bool(input_views),
    }
    if take_occ or take_surface:
        info["ground_truth"] = {"source": "exact", "from": "onet", "seed": ground_truth.seed}
    first_image = models[0].images[0]
    input_size: tuple[tuple[int, int], Path] | None = None
    with MultiViewWriter(out, height, width, "dvr", has_depth=has_depth, info=info) as writer:
        bar = tqdm(
            models, desc="dvr", unit="obj", disable=None if progress is None else not progress
        )
        for row, model in enumerate(bar):
            rec = load_model(model, names[model.synset], (height, width), first_image, has_depth)
            rec.captions = captions.get(model.object_id, [])
            rng = np.random.default_rng([ground_truth.seed, row])
            if take_occ:
                occ, path = ground_truth.occ_points, model.occupancy
                rec.occupancy = read_occupancy(load_npz(path), path, occ, rec.scale_mat, rng)
            if take_surface:
                count, path = ground_truth.surface_points, model.surface
                rec.surface = read_surface(load_npz(path), path, count, rec, "dvr", rng)
            if input_views:
                rec.input_views, input_size = _load_input_views(model, input_size)
            writer.add(rec)
        bar.close()
    summary = _summary(
        models,
        (height, width),
        (named_by, len(names)),
        caption_note(captions, captions_path, {m.object_id for m in models}),
        has_depth,
        (
            ground_truth.occ_points if take_occ else 0,
            ground_truth.surface_points if take_surface else 0,
        ),
        input_views,
        (skipped, missing),
    )
    return Path(out), summary


def category_names(root: Path, synsets: list[str]) -> tuple[dict[str, str], str]:
    """synset id -> category name, and where the names came from (for the summary).

    A synset's name is the first of ``metadata.yaml``'s comma-separated names for it, else the
    ShapeNet class's name, else the id itself.
    """
    table = check_metadata(root) or {}
    listed = {s: str(table.get(s, {}).get("name", "")).split(",")[0].strip() for s in synsets}
    names = {s: listed[s] or SHAPENET_SYNSETS.get(s, s) for s in synsets}
    clashes = [(a, b) for a in names for b in names if a < b and names[a] == names[b]]
    if clashes:
        a, b = clashes[0]
        raise UserError(
            f"{root / METADATA_FILE}: synsets {a} and {b} are both named {names[a]!r} "
            "(categories need distinct names)"
        )
    named = sum(1 for name in listed.values() if name)
    return names, f"{named} named by {METADATA_FILE}" if named else "named by synset"


def _summary(
    models: list[DvrModel],
    size: tuple[int, int],
    categories: tuple[str, int],
    captions: str,
    has_depth: bool,
    samples: tuple[int, int],
    input_views: bool,
    dropped: tuple[int, int],
) -> str:
    """One line: what was read, and what was absent or not read."""
    counts = {s: sum(m.split == s for m in models) for s in SPLITS}
    views = sum(len(m.images) for m in models)
    occ, surface = samples
    truth = (
        f"3D ground truth {occ} occupancy + {surface} surface points per object (ONet files)"
        if occ or surface
        else f"no 3D ground truth ({OCCUPANCY_FILE}/{SURFACE_FILE} absent or skipped; "
        "iss3d data carve adds it from the masks)"
    )
    parts = [
        f"read {len(models)} objects ({', '.join(f'{s} {n}' for s, n in counts.items())}) in "
        f"{categories[1]} categories ({categories[0]})",
        f"{views} views at {size[1]}x{size[0]}",
        "depth" if has_depth else "no depth",
        captions,
        truth,
    ]
    if input_views:
        parts.append(f"{INPUT_VIEWS_FOLDER} input views")
    unread: dict[str, int] = {}
    for m in models:
        for name in m.unread:
            if not (input_views and name == INPUT_VIEWS_FOLDER):
                unread[name] = unread.get(name, 0) + 1
    skipped, missing = dropped
    if unread:
        listed = ", ".join(f"{k} ({n} models)" for k, n in sorted(unread.items()))
        parts.append(f"not imported: {listed}")
    if skipped:
        parts.append(f"skipped {skipped} model folders no .lst file lists")
    if missing:
        parts.append(f"{missing} ids listed in .lst files have no folder")
    return "; ".join(parts)


# -- scanning -----------------------------------------------------------------------------
def scan_dvr(root: Path, categories: list[str] | None = None) -> tuple[list[DvrModel], int, int]:
    """Find every model to import and check the folder structure.

    Returns:
        models (sorted by synset, then model id), the number of model folders skipped because
        no .lst file lists them, and the number of listed ids without a folder.
    """
    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if not root.is_dir():
        raise UserError(f"{root}: is not a folder (expected DVR's ShapeNet folder)")
    synset_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if isinstance(categories, str):
        categories = [categories]
    if categories is not None:
        if not categories or any(not isinstance(c, str) or not c.strip() for c in categories):
            raise UserError(f"categories (--categories) must be synset ids, got {categories!r}")
        found = {p.name for p in synset_dirs}
        for cat in categories:
            if cat not in found:
                raise UserError(f"{root / cat}: no such category folder")
        wanted = set(categories)
        synset_dirs = [p for p in synset_dirs if p.name in wanted]
    models: list[DvrModel] = []
    skipped = missing = 0
    for synset_dir in synset_dirs:
        model_dirs = sorted(
            p for p in synset_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        splits = read_split_lists(synset_dir)
        if splits is not None:
            names = {p.name for p in model_dirs}
            missing += sum(1 for name in splits if name not in names)
        for model_dir in model_dirs:
            if splits is None:
                split = "train"
            elif model_dir.name in splits:
                split = splits[model_dir.name]
            else:
                skipped += 1
                continue
            models.append(_scan_model(synset_dir.name, model_dir, split))
    if not models:
        what = f" in categories {sorted(categories)}" if categories is not None else ""
        raise UserError(
            f"{root}: no models found{what} (expected <synset>/<model>/image, mask, cameras.npz)"
        )
    return models, skipped, missing


def check_metadata(root: Path) -> dict[Any, Any] | None:
    """``ROOT/metadata.yaml`` (DVR's category table: synset id -> {id, name}, every scalar read
    as text), checked; None when the folder has none.

    Raises:
        UserError naming the file: not a regular file (a FIFO is never opened), not UTF-8,
            invalid YAML (aliases refused), or not a mapping of synset ids to mappings whose
            ``name`` (when given) is text.
    """
    path = root / METADATA_FILE
    if not name_taken(path):
        return None
    table = read_yaml(path, contents="synset ids to categories", loader=TextYamlLoader)
    for synset, entry in table.items():
        if not isinstance(entry, dict):
            raise UserError(
                f"{path}: entry {synset!r} is {type(entry).__name__}, expected a mapping with "
                "the category's id and name"
            )
        if not isinstance(entry.get("name", ""), str):
            raise UserError(f"{path}: entry {synset!r} has a name that is not text")
    return table


def _list_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def _scan_model(synset: str, folder: Path, split: str) -> DvrModel:
    for sub in ("image", "mask"):
        if not (folder / sub).is_dir():
            raise UserError(f"{folder}: model folder has no {sub}/ folder")
    cameras = folder / "cameras.npz"
    if not cameras.is_file():
        raise UserError(f"{cameras}: missing (every model folder needs its cameras.npz)")
    images = _list_files(folder / "image", IMAGE_SUFFIXES)
    masks = _list_files(folder / "mask", IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"{folder / 'image'}: no .png or .jpg images")
    if len(images) != len(masks):
        raise UserError(f"{folder}: {len(images)} images in image/ but {len(masks)} masks in mask/")
    _check_same_stems(images, masks)
    depths = None
    if (folder / "depth").is_dir():
        depths = _list_files(folder / "depth", (".exr",)) or None
        if depths is not None:
            if len(depths) != len(images):
                raise UserError(
                    f"{folder}: {len(images)} images in image/ but {len(depths)} depth maps "
                    "in depth/"
                )
            _check_same_stems(images, depths)
    occupancy, surface = (folder / name for name in (OCCUPANCY_FILE, SURFACE_FILE))
    unread = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in folder.iterdir()
        if p.name not in MODEL_ENTRIES and not p.name.startswith(".")
    )
    return DvrModel(
        synset,
        folder.name,
        folder,
        split,
        images,
        masks,
        depths,
        cameras,
        occupancy if occupancy.exists() else None,
        surface if surface.exists() else None,
        unread,
    )


def _check_same_stems(images: list[Path], others: list[Path]) -> None:
    for image, other in zip(images, others, strict=True):
        if image.stem != other.stem:
            raise UserError(
                f"{other}: does not match view {image.name} (files of one view share a name)"
            )


def _presence(models: list[DvrModel], field: str, what: str, hint: str) -> bool:
    """Whether every model has ``field`` (False when none has); UserError when only some do."""
    having = [m for m in models if getattr(m, field) is not None]
    if not having:
        return False
    if len(having) == len(models):
        return True
    without = next(m for m in models if getattr(m, field) is None)
    raise UserError(
        f"{without.folder}: has no {what}, but {having[0].folder} has "
        f"(give it for every model or for none{hint})"
    )


# -- loading ------------------------------------------------------------------------------
def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array in an .npz file, with read errors as UserError."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: np.asarray(npz[key]) for key in npz.files}
    except Exception as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"{path}: not a readable .npz file ({reason})") from None


def camera_matrix(
    arrays: dict[str, np.ndarray],
    key: str,
    npz: Path,
    *,
    affine: bool,
    what: str = "",
    pixel_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """The (4, 4) float64 matrix ``key`` of an npz, checked.

    ``affine``: a world or scale matrix (last row [0, 0, 0, 1]; a 3x4 [R | t] is padded).
    ``pixel_size``: (h, w); when given, a 3x3 intrinsic matrix K in pixel units (mapping to
    [0, w] x [0, h], as in ONet's ``img_choy2016``) is accepted and converted to ours.
    """
    if key not in arrays:
        raise UserError(f"{npz}: missing key {key!r}{what}")
    try:
        mat = np.asarray(arrays[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{npz}: {key} is not a numeric matrix") from None
    if affine and mat.shape == (3, 4):
        mat = np.vstack([mat, [0.0, 0.0, 0.0, 1.0]])
    elif not affine and mat.shape == (3, 3) and pixel_size is not None:
        h, w = pixel_size
        to_normalised = np.array([[2.0 / w, 0.0, -1.0], [0.0, 2.0 / h, -1.0], [0.0, 0.0, 1.0]])
        full = np.eye(4)
        full[:3, :3] = to_normalised @ mat
        mat = full
    problem = is_valid_matrix(mat, affine=affine)
    if problem:
        raise UserError(f"{npz}: {key} {problem}")
    return mat


def _read_view_image(path: Path, size: tuple[int, int], first: Path) -> np.ndarray:
    img = read_image(path)
    _check_size(path, img.shape[:2], size, first)
    return composite_over_white(img) if img.shape[-1] == 4 else img


def _check_size(path: Path, got: tuple[int, ...], size: tuple[int, int], first: Path) -> None:
    if tuple(got) != tuple(size):
        raise UserError(
            f"{path}: is {got[1]}x{got[0]} pixels but {first} is {size[1]}x{size[0]} "
            "(all views must have one size)"
        )


def load_model(
    model: DvrModel, category: str, size: tuple[int, int], first_image: Path, has_depth: bool
) -> ObjectRecord:
    """Read one model's views, masks, depth and cameras into an ObjectRecord of ``category``."""
    n = len(model.images)
    rgb = np.stack([_read_view_image(p, size, first_image) for p in model.images])
    masks = []
    for path in model.masks:
        mask = read_mask(path)
        _check_size(path, mask.shape, size, first_image)
        masks.append(mask)
    depth = None
    if has_depth:
        assert model.depths is not None
        maps = []
        for path in model.depths:
            d = read_exr_depth(path)
            _check_size(path, d.shape, size, first_image)
            maps.append(np.where(np.isfinite(d) & (d <= DEPTH_BACKGROUND), d, np.inf))
        depth = np.stack(maps).astype(np.float32)

    arrays = load_npz(model.cameras)
    world = np.stack(
        [
            camera_matrix(arrays, f"world_mat_{i}", model.cameras, affine=True, what=_for(model, i))
            for i in range(n)
        ]
    )
    camera = np.stack(
        [
            camera_matrix(
                arrays, f"camera_mat_{i}", model.cameras, affine=False, what=_for(model, i)
            )
            for i in range(n)
        ]
    )
    scale = _scale_mat(arrays, model, n)
    return ObjectRecord(
        object_id=model.object_id,
        category=category,
        split=model.split,
        rgb=rgb,
        mask=np.stack(masks),
        depth=depth,
        world_mat=world,
        camera_mat=camera,
        scale_mat=scale,
        meta={"synset": model.synset, "model": model.model},
    )


def _for(model: DvrModel, i: int) -> str:
    return f" (for view {i}, {model.images[i].name})"


def _scale_mat(arrays: dict[str, np.ndarray], model: DvrModel, n: int) -> np.ndarray:
    """view 0's scale_mat (identity when the file has none); every view must agree."""
    if not any(key.startswith("scale_mat_") for key in arrays):
        return np.eye(4)
    npz = model.cameras
    first = camera_matrix(arrays, "scale_mat_0", npz, affine=True, what=_for(model, 0))
    for i in range(1, n):
        mat = camera_matrix(arrays, f"scale_mat_{i}", npz, affine=True, what=_for(model, i))
        if not np.allclose(mat, first, rtol=1e-6, atol=1e-8):
            raise UserError(
                f"{npz}: scale_mat_{i} differs from scale_mat_0 (all views of a model must "
                "share one scale_mat)"
            )
    return first


def _load_input_views(
    model: DvrModel, size: tuple[tuple[int, int], Path] | None
) -> tuple[InputViews, tuple[tuple[int, int], Path]]:
    folder = model.folder / INPUT_VIEWS_FOLDER
    if not folder.is_dir():
        raise UserError(f"{folder}: missing (input views were requested)")
    images = _list_files(folder, IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"{folder}: no .jpg or .png images")
    npz = folder / "cameras.npz"
    if not npz.is_file():
        raise UserError(f"{npz}: missing (input views need their cameras)")
    if size is None:
        size = (image_size(images[0]), images[0])
    rgb = np.stack([_read_view_image(p, size[0], size[1]) for p in images])
    arrays = load_npz(npz)
    where = [f" (for input view {i}, {p.name})" for i, p in enumerate(images)]
    world = np.stack(
        [
            camera_matrix(arrays, f"world_mat_{i}", npz, affine=True, what=where[i])
            for i in range(len(images))
        ]
    )
    camera = np.stack(
        [
            camera_matrix(
                arrays, f"camera_mat_{i}", npz, affine=False, what=where[i], pixel_size=size[0]
            )
            for i in range(len(images))
        ]
    )
    return InputViews(rgb=rgb, world_mat=world, camera_mat=camera), size
