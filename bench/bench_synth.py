"""How long the synthetic world takes to build: 500 objects x 24 views at 64 px, 2 workers.

Uses ``SynthConfig``'s defaults for everything else (the ground truth: 8,192 + 8,192 occupancy
points, 4,096 surface points), i.e. what ``iss3d data synth --objects 500`` builds.
Target: <= 180 s wall time for 500 objects (scaled linearly when ``--objects`` is smaller).
Runs of any other size are written with the quick results (bench/results/tmp/).

Run: ``python -m bench.bench_synth [--objects N] [--quick]`` (or through ``python -m bench.run``).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import tempfile
import time
from pathlib import Path

from bench.common import target, write_result
from iss3d.data.synth.build import SynthConfig, synthesize

NAME = "synth"
TARGET_S_PER_500 = 180.0
FULL_OBJECTS = 500
QUICK_OBJECTS = 16


def main(quick: bool = False, objects: int | None = None) -> dict:
    objects = objects or (QUICK_OBJECTS if quick else FULL_OBJECTS)
    workers = 2
    cfg = SynthConfig(objects=objects, views=24, res=64, seed=0)
    with tempfile.TemporaryDirectory(prefix="iss3d-bench-synth-") as tmp:
        path = Path(tmp) / "world.h5"
        cpu_before = _cpu_seconds()
        start = time.perf_counter()
        synthesize(path, cfg, workers=workers, progress=False)
        wall = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_before
        size_mb = path.stat().st_size / 2**20
    figures = {
        "wall_s": wall,
        "objects_per_s": objects / wall,
        "views_per_s": objects * cfg.views / wall,
        "file_mb": size_mb,
        "cpu_s": cpu,
        "wall_s_if_cpu_bound": cpu / workers,
    }
    goal = TARGET_S_PER_500 * objects / FULL_OBJECTS
    notes = [
        f"wall time includes starting {workers} spawn workers and writing the file",
        "cpu_s: user + system CPU seconds of this process and its workers; "
        f"wall_s_if_cpu_bound = cpu_s / {workers}, what the wall time would be with "
        f"{workers} free cores (wall_s is longer when other jobs share the CPU: see "
        "device.load_average)",
    ]
    if objects != FULL_OBJECTS:
        notes.append(f"target scaled linearly from {TARGET_S_PER_500:.0f} s per 500 objects")
    config = {**dataclasses.asdict(cfg), "workers": workers}
    scratch = quick or objects != FULL_OBJECTS  # only the full size lands in bench/results/
    return write_result(NAME, figures, config, scratch, {"wall_s": target(wall, goal, "<=")}, notes)


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished (waited-for) children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=None, help="objects to build (500)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_OBJECTS} objects")
    args = parser.parse_args()
    main(args.quick, args.objects)
