"""Visual hulls: 3D ground truth carved from multi-view masks, for files that have none.

A point of the object frame is inside the hull when every view that sees it (it lies in front
of the camera and projects into the image) shows the object there. The mask is read bilinearly
(pixel centres as the file's pixel convention places them), so the hull's indicator
``min over seeing views of mask(point)`` is continuous: its 0.5 level set is a smooth surface
(marching cubes on a lattice of the padded cube) and ``>= 0.5`` is the inside test of the
occupancy samples. Points no view sees are outside.

The hull contains the object (every view's silhouette does) and is larger where no view sees a
concavity (the inside of a mug, the space under a table): ground truth "derived from masks",
which files record (:data:`HULL_SOURCE`). Surface colours are the median over the views that
face the point and see it unoccluded by the hull itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.measure import marching_cubes
from tqdm import tqdm

from iss3d.core.errors import UserError
from iss3d.data.cameras import project, rays
from iss3d.data.reader import MultiViewFile
from iss3d.data.records import ObjectRecord, OccupancySamples, SurfaceSamples
from iss3d.data.samples import PADDED_HALF, area_samples, occupancy_samples, padded_grid
from iss3d.data.writer import MultiViewWriter

#: What ``info["ground_truth"]["source"]`` of a carved file says.
HULL_SOURCE = "visual_hull"
#: Points per projection batch (bounds memory: points x views floats).
CHUNK = 65536
#: Samples along the way from a surface point to a camera when testing occlusion.
OCCLUSION_SAMPLES = 24


@dataclass
class CarveConfig:
    """How ``iss3d data carve`` carves.

    grid: lattice size of the hull's surface mesh (grid^3 points over the padded cube).
    occ_uniform, occ_near: occupancy points uniform in the padded cube / near the surface.
    surface_points: area-uniform surface samples.
    views: carve with the first this many views of each object (None: all).
    seed: seed of the samples (with the object's row).
    """

    grid: int = 96
    occ_uniform: int = 8192
    occ_near: int = 8192
    surface_points: int = 4096
    views: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        # occ_uniform and occ_near are both set by --occ-points
        for name, flag, least in (
            ("grid", "--grid", 16),
            ("occ_uniform", "--occ-points", 1),
            ("occ_near", "--occ-points", 0),
        ):
            if getattr(self, name) < least:
                raise UserError(f"carve: {flag} must be >= {least}")
        if self.surface_points < 1:
            raise UserError("carve: --surface-points must be >= 1")
        if self.views is not None and self.views < 1:
            raise UserError("carve: --views must be >= 1")


class Hull:
    """The visual hull of one object's views.

    Args:
        rec: the object (masks (V, H, W), cameras); only its first ``views`` views carve.
        pixel_convention: the file's (``"center"`` or ``"dvr"``).
        views: how many views carve (None: all).
    """

    def __init__(self, rec: ObjectRecord, pixel_convention: str, views: int | None = None):
        v = rec.num_views if views is None else min(views, rec.num_views)
        self.masks = torch.from_numpy(rec.mask[:v].astype(np.float32)).unsqueeze(1)  # (V,1,H,W)
        self.rgb = torch.from_numpy(rec.rgb[:v]).permute(0, 3, 1, 2).float() / 255.0
        self.world = torch.as_tensor(rec.world_mat[:v], dtype=torch.float32)
        self.camera = torch.as_tensor(rec.camera_mat[:v], dtype=torch.float32)
        self.scale = torch.as_tensor(rec.scale_mat, dtype=torch.float32).expand(v, 4, 4)
        self.align_corners = pixel_convention == "dvr"  # "dvr": end pixels at -1 and +1
        origins, _ = rays(torch.zeros(v, 1, 2), self.world, self.camera, self.scale)
        self.centres = origins[:, 0]  # (V, 3) camera centres, object frame

    def _sample(self, images: torch.Tensor, points: torch.Tensor):
        """Bilinear samples of (V, C, H, W) ``images`` at (P, 3) points in every view ->
        values (V, C, P) and whether each view sees each point (V, P)."""
        v = images.shape[0]
        xy, depth = project(points.expand(v, -1, -1), self.world, self.camera, self.scale)
        seen = (depth > 0) & (xy.abs() <= 1).all(-1)
        grid = xy.unsqueeze(1)  # (V, 1, P, 2)
        values = F.grid_sample(images, grid, align_corners=self.align_corners)[:, :, 0]
        return values, seen

    def values(self, points: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(P, 3) object-frame points -> (P,) hull indicator in [0, 1] (>= 0.5: inside)."""
        points = torch.as_tensor(points, dtype=torch.float32)
        out = []
        for chunk in points.split(CHUNK):
            mask, seen = self._sample(self.masks, chunk)
            mask = torch.where(seen, mask[:, 0], torch.ones_like(mask[:, 0]))
            out.append(torch.where(seen.any(0), mask.amin(0), torch.zeros(len(chunk))))
        return torch.cat(out) if out else torch.zeros(0)

    def inside(self, points: np.ndarray) -> np.ndarray:
        """(P, 3) points -> (P,) bool, inside the hull."""
        return (self.values(points) >= 0.5).numpy()

    def colours(self, points: np.ndarray, normals: np.ndarray, spacing: float) -> np.ndarray:
        """(S, 3) uint8 colours of surface points: the median over views that face the point
        and see it past the hull (else over the facing views, else over every seeing view)."""
        p = torch.as_tensor(points, dtype=torch.float32)
        n = torch.as_tensor(normals, dtype=torch.float32)
        rgb, seen = self._sample(self.rgb, p)  # (V, 3, S), (V, S)
        to_cam = self.centres[:, None, :] - p[None]  # (V, S, 3)
        dist = to_cam.norm(dim=-1).clamp_min(1e-6)
        facing = seen & ((to_cam * n[None]).sum(-1) / dist > 0.25)
        steps = torch.linspace(2 * spacing, 2 * PADDED_HALF * 3**0.5, OCCLUSION_SAMPLES)
        along = p[None, :, None] + (to_cam / dist[..., None])[:, :, None] * steps[:, None]
        blocked = self.values(along.reshape(-1, 3)).reshape(along.shape[:3]) >= 0.5
        visible = facing & ~blocked.any(-1)
        colour = torch.zeros(len(p), 3)
        for use in (visible, facing, seen):
            todo = (colour.sum(-1) == 0) & use.any(0)
            if todo.any():
                samples = torch.where(use[:, None, :], rgb, torch.nan)[:, :, todo]
                colour[todo] = samples.nanmedian(0).values.T
        return (colour.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()


def carve_object(
    rec: ObjectRecord, pixel_convention: str, cfg: CarveConfig, index: int
) -> tuple[OccupancySamples, SurfaceSamples]:
    """Occupancy and surface samples of ``rec``'s visual hull (``index``: the object's row,
    which seeds its samples with ``cfg.seed``)."""
    rng = np.random.default_rng([cfg.seed, index])
    hull = Hull(rec, pixel_convention, cfg.views)
    grid, spacing = padded_grid(cfg.grid)
    values = hull.values(grid).reshape((cfg.grid,) * 3).numpy()
    if not values.min() < 0.5 <= values.max():
        what = "nothing" if values.max() < 0.5 else "the whole padded cube"
        raise UserError(f"object {rec.object_id}: its masks carve {what}; check masks and cameras")
    verts, faces, _, _ = marching_cubes(values, level=0.5, spacing=(spacing,) * 3)
    verts = verts - PADDED_HALF
    tri = verts[faces]
    face_normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    outward = (face_normals * (tri.mean(1) - verts.mean(0))).sum(-1).sum() >= 0
    face_normals = face_normals if outward else -face_normals
    points, face = area_samples(verts, faces, cfg.surface_points, rng)
    normals = face_normals[face]
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True).clip(1e-12)
    points = points.astype(np.float32)
    surface = SurfaceSamples(
        points=points,
        normals=normals.astype(np.float32),
        colors=hull.colours(points, normals, spacing),
    )
    occupancy = occupancy_samples(hull.inside, cfg.occ_uniform, cfg.occ_near, points, rng)
    return occupancy, surface


#: How ``eval`` commands name where their ground truth came from (``"views"``: a file without
#: occupancy, measured on held-out views only).
GROUND_TRUTH_NAMES = {
    "exact": "exact occupancy",
    HULL_SOURCE: "occupancy of the visual hull of the masks (iss3d data carve)",
    "views": "held-out views only (no 3D ground truth: mask IoU and depth error)",
}


def ground_truth_source(file: MultiViewFile) -> str | None:
    """Where a file's ``eval/`` data comes from: ``"visual_hull"`` (carved by
    :func:`carve_file`), ``"exact"`` (any other file with occupancy: the synthetic world's
    SDFs, imported meshes), or None (no occupancy)."""
    if not file.has_occupancy:
        return None
    truth = file.info.get("ground_truth") if isinstance(file.info, dict) else None
    if isinstance(truth, dict) and truth.get("source") == HULL_SOURCE:
        return HULL_SOURCE
    return "exact"


def carve_file(
    src: str | os.PathLike, out: str | os.PathLike, cfg: CarveConfig, progress: bool | None = None
) -> Path:
    """Write ``out``: every object of ``src`` with ``eval/`` occupancy and surface samples of
    its visual hull, and ``info["ground_truth"]`` saying so (``out`` may be ``src``: replaced
    at the end, atomically). A file with exact ground truth is only carved into another file."""
    src, out = Path(src), Path(out)
    with MultiViewFile(src) as f:
        if ground_truth_source(f) == "exact" and out.resolve() == src.resolve():
            raise UserError(
                f"{src}: holds exact 3D ground truth, which carving would replace; give "
                "--out NEW.h5 to write a carved copy"
            )
        info = dict(f.info) if isinstance(f.info, dict) else {}
        info["ground_truth"] = {
            "source": HULL_SOURCE,
            "views": "all" if cfg.views is None else cfg.views,
            "grid": cfg.grid,
            "seed": cfg.seed,
        }
        shape = (f.height, f.width, f.pixel_convention, f.has_depth)
        with MultiViewWriter(out, *shape, info=info) as writer:
            bar = tqdm(range(f.num_objects), desc="carve", unit="obj", disable=_quiet(progress))
            for obj in bar:
                rec = f.read_object(obj)
                try:
                    rec.occupancy, rec.surface = carve_object(rec, f.pixel_convention, cfg, obj)
                except UserError as err:
                    raise UserError(f"{src}: {err}") from None
                writer.add(rec)
            bar.close()
    return out


def _quiet(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` flag (None: only on a terminal)."""
    return None if progress is None else not progress
