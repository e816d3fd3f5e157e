"""Build a synthetic multi-view dataset: sample objects, render them, write the HDF5 file."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from iss3d.core.errors import UserError
from iss3d.data.cameras import DVR_FOCAL, intrinsics, look_at, orbit_eyes
from iss3d.data.records import ObjectRecord
from iss3d.data.synth import world
from iss3d.data.synth.groundtruth import occupancy_samples, surface_samples
from iss3d.data.synth.render import render_object
from iss3d.data.writer import MultiViewWriter

#: Upper bound of the ground-truth samples per object (surface points; uniform and
#: near-surface occupancy samples each): far more than any evaluation uses.
MAX_POINTS = 1_000_000
#: Upper bound of ``--workers`` (each process imports torch).
MAX_WORKERS = 256


@dataclass
class SynthConfig:
    """What ``iss3d data synth`` builds. Same config and seed -> the same file contents."""

    objects: int = 100
    views: int = 24
    res: int = 64
    seed: int = 0
    distance: float = 1.8  # camera distance from the object centre (object frame units)
    elevation_min: float = -20.0  # degrees
    elevation_max: float = 50.0
    focal: float = DVR_FOCAL
    occ_uniform: int = 8192
    occ_near: int = 8192
    surface_points: int = 4096
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def check(self) -> None:
        for name in ("objects", "views", "res", "surface_points"):
            if getattr(self, name) <= 0:
                raise UserError(
                    f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}"
                )
        if self.res < 8 or self.res > 1024:
            raise UserError(f"--res must be between 8 and 1024 pixels, got {self.res}")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        if self.objects > 1_000_000 or self.views > 1000:
            raise UserError(
                f"--objects (up to 1000000) and --views (up to 1000) too large: {self.objects} x "
                f"{self.views}"
            )
        if not self.distance > 0.9 or not math.isfinite(self.distance):  # NaN fails both
            raise UserError(f"--distance must exceed 0.9 (outside the object), got {self.distance}")
        for name in ("elevation_min", "elevation_max", "focal", "val_fraction", "test_fraction"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.surface_points < 2048:
            raise UserError(f"--surface-points must be at least 2048, got {self.surface_points}")
        for flag, value in (
            ("--surface-points", self.surface_points),
            ("--occ-points", self.occ_uniform),
            ("--occ-points", self.occ_near),
        ):
            if not 1 <= value <= MAX_POINTS:
                raise UserError(f"{flag} must be between 1 and {MAX_POINTS}, got {value}")
        if not 0 <= self.val_fraction + self.test_fraction < 1:
            raise UserError("val and test fractions must sum to less than 1")


@dataclass
class ObjectPlan:
    index: int
    spec: world.ObjectSpec
    split: str


def plan_objects(cfg: SynthConfig) -> list[ObjectPlan]:
    """Sample every object's shape, colours and split (cheap, sequential, deterministic)."""
    rng = np.random.default_rng(cfg.seed)
    plans = []
    for i in range(cfg.objects):
        spec = world.sample_object(rng)
        u = rng.random()
        if (spec.category, spec.main_color) in world.HELD_OUT:
            split = "val" if u < 0.5 else "test"
        elif u < cfg.val_fraction:
            split = "val"
        elif u < cfg.val_fraction + cfg.test_fraction:
            split = "test"
        else:
            split = "train"
        plans.append(ObjectPlan(index=i, spec=spec, split=split))
    return plans


def object_cameras(cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(V, 4, 4) world_mats on a sphere (stratified azimuths, random elevations), camera_mats."""
    v = cfg.views
    azimuth = 360.0 * (np.arange(v) + rng.random(v)) / v
    elevation = rng.uniform(cfg.elevation_min, cfg.elevation_max, size=v)
    eyes = orbit_eyes(azimuth, elevation, cfg.distance)
    world_mats = np.stack([look_at(eye) for eye in eyes])
    camera_mats = np.broadcast_to(intrinsics(cfg.focal), (v, 4, 4)).copy()
    return world_mats, camera_mats


def make_object(plan: ObjectPlan, cfg: SynthConfig) -> ObjectRecord:
    """Render one planned object and sample its ground truth."""
    rng = np.random.default_rng([cfg.seed, plan.index])
    field = world.CompositeSDF(plan.spec)
    world_mats, camera_mats = object_cameras(cfg, rng)
    renders = render_object(field, world_mats, camera_mats, cfg.res, cfg.res)
    surface = surface_samples(field, cfg.surface_points, rng)
    occupancy = occupancy_samples(field, cfg.occ_uniform, cfg.occ_near, surface, rng)
    return ObjectRecord(
        object_id=f"synth-{plan.index:06d}",
        category=plan.spec.category,
        split=plan.split,
        rgb=renders.rgb,
        mask=renders.mask,
        depth=renders.depth,
        world_mat=world_mats,
        camera_mat=camera_mats,
        scale_mat=np.eye(4),
        captions=world.captions(plan.spec),
        meta=plan.spec.meta(),
        occupancy=occupancy,
        surface=surface,
    )


def dataset_info(cfg: SynthConfig) -> dict:
    return {
        "generator": "iss3d data synth",
        "config": dataclasses.asdict(cfg),
        "categories": list(world.CATEGORIES),
        "colors": {k: list(v) for k, v in world.COLORS.items()},
        "held_out": [list(pair) for pair in world.HELD_OUT],
    }


def _init_worker() -> None:
    torch.set_num_threads(1)


def _make_object_job(args: tuple[ObjectPlan, SynthConfig]) -> ObjectRecord:
    return make_object(*args)


def worker_count(workers: int | None, objects: int) -> int:
    """The processes to build ``objects`` objects with: ``workers`` (0 or None: one per core),
    never more than the objects.

    Raises:
        UserError: ``workers`` is negative or above :data:`MAX_WORKERS`.
    """
    if workers is not None and not 0 <= workers <= MAX_WORKERS:
        raise UserError(
            f"--workers must be between 0 (one per core) and {MAX_WORKERS}, got {workers}"
        )
    return max(1, min(workers or os.cpu_count() or 1, objects))


def synthesize(
    out: str | os.PathLike,
    cfg: SynthConfig,
    workers: int | None = None,
    progress: bool | None = None,
) -> Path:
    """Build the dataset file ``out``. ``workers``: processes (default: one per core)."""
    cfg.check()
    workers = worker_count(workers, cfg.objects)
    plans = plan_objects(cfg)
    jobs = [(plan, cfg) for plan in plans]
    with MultiViewWriter(
        out, cfg.res, cfg.res, "center", has_depth=True, info=dataset_info(cfg)
    ) as writer:
        bar = tqdm(
            total=len(jobs),
            desc="synth",
            unit="obj",
            disable=None if progress is None else not progress,
        )
        if workers == 1:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # small tensors: one thread is fastest, as in the workers
            try:
                for job in jobs:
                    writer.add(_make_object_job(job))
                    bar.update()
            finally:
                torch.set_num_threads(threads)
        else:
            with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                for rec in pool.imap(_make_object_job, jobs, chunksize=1):
                    writer.add(rec)
                    bar.update()
        bar.close()
    return Path(out)
