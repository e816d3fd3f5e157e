"""How close a visual hull carved from masks (``iss3d data carve``) comes to the exact shape.

A synthetic world (60 objects x 24 views at 64 px, seed 7) has exact occupancy; each object's
hull, carved from its first K views (K = 3, 6, 12, 24: views at random azimuths and
elevations), is compared with the exact solid at the object's 8,192 uniform occupancy points:
IoU per category and overall, and how much of the solid the hull keeps (containment: it should
be all of it, up to the masks' pixels). Hulls are larger than the solid wherever no view sees
in (mug interiors, the space under tables), so some categories stay low at any K.

Run: ``python -m bench.bench_carve [--quick]`` (quick: 12 objects, K = 6 only, results in
bench/results/tmp/). No target: the figures describe carved ground truth for users choosing it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import write_result
from iss3d.data.carve import Hull
from iss3d.data.reader import MultiViewFile
from iss3d.data.synth.build import SynthConfig, synthesize

NAME = "carve"
VIEWS = (3, 6, 12, 24)


def hull_scores(
    file: MultiViewFile, views: int | None, objects=None
) -> dict[str, list[tuple[float, float]]]:
    """(IoU, containment) of the ``views``-view hull (None: all views) of every object (or of
    the rows ``objects``), by category."""
    scores: dict[str, list[tuple[float, float]]] = {}
    for obj in range(file.num_objects) if objects is None else objects:
        rec = file.read_object(obj)
        occ = file.read_occupancy(obj)
        points, exact = occ.points[: occ.n_uniform], occ.inside[: occ.n_uniform]
        hull = Hull(rec, file.pixel_convention, views).inside(points)
        iou = (hull & exact).sum() / max((hull | exact).sum(), 1)
        kept = hull[exact].mean() if exact.any() else 1.0
        scores.setdefault(str(file.categories[obj]), []).append((float(iou), float(kept)))
    return scores


def main(quick: bool = False) -> dict:
    cfg = SynthConfig(objects=12 if quick else 60, views=24, res=64, seed=7)
    views = (6,) if quick else VIEWS
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="iss3d-bench-carve-") as tmp:
        path = synthesize(Path(tmp) / "world.h5", cfg, workers=2, progress=False)
        with MultiViewFile(path) as file:
            for k in views:
                start = time.perf_counter()
                scores = hull_scores(file, k)
                elapsed = time.perf_counter() - start
                every = [s for values in scores.values() for s in values]
                figures[f"iou_{k}_views"] = float(np.mean([iou for iou, _ in every]))
                figures[f"containment_{k}_views"] = float(np.mean([kept for _, kept in every]))
                figures[f"s_per_object_{k}_views"] = elapsed / len(every)
                for category, values in sorted(scores.items()):
                    figures[f"iou_{k}_views_{category}"] = float(np.mean([v[0] for v in values]))
    config = {"objects": cfg.objects, "views": list(views), "res": cfg.res, "seed": cfg.seed}
    notes = [
        "IoU at each object's uniform occupancy points, hull vs exact solid; containment: the "
        "share of the solid's points the hull keeps",
        "s_per_object: the inside test at 8,192 points (carving a file also meshes a 96^3 "
        "lattice and colours the surface)",
    ]
    return write_result(NAME, figures, config, quick, None, notes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 objects, 6 views")
    main(parser.parse_args().quick)
