"""An SVR trained on an image-only dataset with carved occupancy, against one trained with the
exact occupancy: is a visual hull (``iss3d data carve``) good enough 3D supervision?

A synthetic world (120 objects x 24 views at 64 px, seed 11: about 96 training objects) is
written twice without depth, as an image-only dataset has none: once with its exact occupancy,
once with occupancy and surface samples carved from its masks (24 views). ``svr/tiny`` trains
on each with the same seed and the same number of steps (4200: about 0.37 s per step in float32
on the 2-core CPU machine, validation included, so under 30 minutes each), then both are
scored on the test split against the *exact* occupancy (``iss3d eval svr``'s volumetric IoU at
8,192 uniform points per object) and on held-out view masks. The hull itself is scored
against the exact solid on the same test objects (its IoU bounds what carved supervision can
teach).

Run: ``python -m bench.bench_carved_svr [--quick] [--steps N]`` (quick: 24 objects x 8 views,
60 steps, results in bench/results/tmp/). Target: the carved run's IoU at least 0.9 of the
exact run's; training minutes of each run at most 30.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_carve import hull_scores
from bench.common import target, write_result
from iss3d.core.config import load_config
from iss3d.data.carve import CarveConfig, carve_file
from iss3d.data.reader import MultiViewFile
from iss3d.data.synth.build import SynthConfig, synthesize
from iss3d.data.writer import MultiViewWriter
from iss3d.infer.svr import evaluate_svr
from iss3d.models.loaders import load_svr
from iss3d.train.svr import SVRConfig, fit_svr

NAME = "carved_svr"
RUNS = ("exact", "carved")


def without_depth(src: Path, out: Path) -> Path:
    """A copy of ``src`` with no depth maps (everything else as it is)."""
    with MultiViewFile(src) as f:
        shape = (f.height, f.width, f.pixel_convention, False)
        with MultiViewWriter(out, *shape, info=dict(f.info)) as writer:
            for obj in range(f.num_objects):
                rec = f.read_object(obj)
                rec.depth = None
                writer.add(rec)
    return out


def hull_iou(exact: Path, views: int | None, split: str) -> float:
    """Mean IoU of the carved hull against the exact solid at the uniform occupancy points."""
    with MultiViewFile(exact) as f:
        scores = hull_scores(f, views, [int(o) for o in f.objects_in(split)])
    return float(np.mean([iou for values in scores.values() for iou, _ in values]))


def train(data: Path, run: Path, steps: int, seed: int) -> float:
    """Train ``svr/tiny`` on ``data`` for ``steps``; returns the minutes it took."""
    interval = max(steps // 6, 1)
    sets = [
        ("data.path", str(data)),
        ("trainer.max_steps", steps),
        ("trainer.val_check_interval", interval),
        ("trainer.checkpoint_every", interval),
        ("run.seed", seed),
    ]
    cfg = load_config(SVRConfig, "svr/tiny", sets)
    start = time.perf_counter()
    fit_svr(cfg, run, f"bench.bench_carved_svr ({data.name})", progress=False)
    return (time.perf_counter() - start) / 60


def main(quick: bool = False, steps: int | None = None) -> dict:
    world = SynthConfig(objects=24 if quick else 120, views=8 if quick else 24, res=64, seed=11)
    steps = steps or (60 if quick else 4200)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="iss3d-bench-carved-svr-") as tmp:
        tmp = Path(tmp)
        synthesize(tmp / "world.h5", world, workers=2, progress=False)
        files = {"exact": without_depth(tmp / "world.h5", tmp / "exact.h5")}
        start = time.perf_counter()
        files["carved"] = carve_file(files["exact"], tmp / "carved.h5", CarveConfig(), False)
        figures["carve_minutes"] = (time.perf_counter() - start) / 60
        figures["hull_iou_test"] = hull_iou(files["exact"], None, "test")
        with MultiViewFile(files["exact"]) as f:
            figures["train_objects"] = len(f.objects_in("train"))
            figures["test_objects"] = len(f.objects_in("test"))
        for name in RUNS:
            run = tmp / f"svr-{name}"
            figures[f"{name}_train_minutes"] = train(files[name], run, steps, seed=0)
            model = load_svr(run / "checkpoints" / "last.ckpt")
            with MultiViewFile(files["exact"]) as f:  # both scored against the exact solids
                result = evaluate_svr(model, f, "test", n_steps=64)
            for key in ("iou", "mask_iou", "depth_l1"):
                if key in result["means"]:
                    figures[f"{name}_{key}"] = float(result["means"][key])
    figures["carved_over_exact_iou"] = figures["carved_iou"] / max(figures["exact_iou"], 1e-9)
    targets = {"carved_over_exact_iou": target(figures["carved_over_exact_iou"], 0.9)}
    for name in RUNS:
        key = f"{name}_train_minutes"
        targets[key] = target(figures[key], 30.0, "<=")
    config = {"world": vars(world), "steps": steps, "config": "svr/tiny", "carve": "defaults"}
    notes = [
        "Both files have no depth; IoU of both runs is against the exact occupancy of the test "
        "split (never trained on); hull_iou_test bounds what carved supervision can teach.",
        "Training minutes include validation and checkpoints; other work on the machine "
        "lengthens them (see device.load).",
    ]
    return write_result(NAME, figures, config, quick, targets, notes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="24 objects, 60 steps")
    parser.add_argument("--steps", type=int, default=None, help="training steps of each run")
    args = parser.parse_args()
    main(args.quick, args.steps)
