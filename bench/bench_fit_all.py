"""``iss3d fit all`` on datasets the project never generated, in DVR's and in Blender's layout:
does the result know the set's classes and colours, before and after stage 2?

The set: 96 primitives (sphere, box, cylinder, cone x red, green, blue, yellow; 6 of each pair,
random proportions) ray-cast by the tests' own renderer (tests/fixtures/primitives.py), 16
views at 64 px, two captions each ("a red cone", "a cone that is red"); every 8th object test,
the next val. Written in DVR's layout (made-up synset ids named by ``metadata.yaml``,
``captions.json``, .lst splits, DVR's pixel convention) and in Blender's (category folders of
scenes, RGBA, OpenGL cameras, .lst splits), imported with the CLI, then ``iss3d fit all
--budget B`` on each: carving, SVR, a stand-in CLIP trained on the captions, stage 1.

Then, for each of the 16 prompts "a <colour> <kind>", ``iss3d.Generator`` (tiny preset) makes
a shape, judged on the mapper's latent (before stage 2) and on stage 2's:
- colour: the named colour is the palette colour nearest (in chromaticity, so shading does
  not count) to the median colour of the shape's rendered object pixels;
- class: the training object whose exact solid is nearest (IoU at a 24^3 lattice of the padded
  cube, the decoder's logit > 0 against the primitive's inside test) has the named kind.
Chance is 0.25 for each. The prompts are the training captions' own words (the set has no
other), so these figures say the chain learned the set, not that it generalises.

Run: ``python -m bench.bench_fit_all [--quick] [--budget MIN]`` (quick: 24 objects x 4 views at
32 px, 3 steps a stage, DVR layout only, results in bench/results/tmp/). Default budget: 12
minutes per layout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import write_result
from iss3d.data.samples import padded_grid
from iss3d.infer.cli import main as cli
from iss3d.infer.generator import Generator
from tests.fixtures.primitives import (
    COLOURS,
    KINDS,
    layout_split,
    random_primitive,
    write_blender,
    write_dvr,
)

NAME = "fit_all"
LATTICE = 24


def primitives(per_pair: int, seed: int = 0) -> list:
    """``per_pair`` primitives of every (kind, colour), interleaved so splits mix them."""
    rng = np.random.default_rng(seed)
    pairs = [(k, c) for c in COLOURS for k in KINDS]
    return [random_primitive(rng, *pairs[i % len(pairs)]) for i in range(per_pair * len(pairs))]


def chromaticity(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) colours -> (..., 3) r, g, b over their sum."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb / rgb.sum(-1, keepdims=True).clip(1e-6)


def judged_colour(views: np.ndarray) -> str | None:
    """The palette colour nearest the median of the object pixels (not near white) of (V, H,
    W, 3) uint8 renders; None when nothing was drawn."""
    pixels = views.reshape(-1, 3)
    pixels = pixels[(pixels < 235).any(-1)]
    if len(pixels) < 10:
        return None
    median = chromaticity(np.median(pixels, axis=0))
    names = list(COLOURS)
    ref = chromaticity(np.array([COLOURS[n] for n in names]))
    return names[int(np.argmin(((ref - median) ** 2).sum(-1)))]


def judged_kind(
    decoder, latent: torch.Tensor, grid: np.ndarray, solids: np.ndarray, kinds: list[str]
) -> str:
    """The kind of the training solid (rows of (O, P) bool ``solids`` at the (P, 3) points
    ``grid``) nearest in IoU to the decoder's shape at ``latent``."""
    with torch.no_grad():
        inside = decoder.occupancy(torch.from_numpy(grid)[None], latent)[0].numpy() > 0
    union = (solids | inside).sum(-1).clip(1)
    return kinds[int(np.argmax((solids & inside).sum(-1) / union))]


def write_layout(layout: str, root: Path, prims: list, views: int, res: int) -> Path:
    """Write ``prims`` in ``layout`` and import them; returns the .h5 file."""
    writer = write_dvr if layout == "dvr" else write_blender
    writer(root / layout, prims, views, res)
    data = root / f"{layout}.h5"
    extra = ["--bound", "0.5"] if layout == "blender" else []
    args = ["data", f"import-{layout}", str(root / layout), "--out", str(data), "--no-progress"]
    if cli([*args, *extra]) != 0:
        raise RuntimeError(f"import-{layout} failed")
    return data


def judge(run: Path, prims: list) -> dict[str, float]:
    """Colour and class accuracy of the 16 prompts before and after stage 2, and seconds per
    prompt."""
    grid, _ = padded_grid(LATTICE)
    train = [p for i, p in enumerate(prims) if layout_split(i) == "train"]
    solids = np.stack([p.inside(grid.astype(np.float64)) for p in train])
    kinds = [p.kind for p in train]
    gen = Generator(
        run / "stage1" / "checkpoints" / "last.ckpt", clip=str(run / "clip" / "clip.pt")
    )
    hits = {f"{what}_{when}": 0 for what in ("colour", "class") for when in ("before", "after")}
    start = time.perf_counter()
    prompts = [(k, c) for c in COLOURS for k in KINDS]
    for kind, colour in prompts:
        shape = gen(f"a {colour} {kind}")
        for when, views, latent in (
            ("before", shape.views_before, shape.latent_before),
            ("after", shape.views, shape.latent),
        ):
            hits[f"colour_{when}"] += judged_colour(views) == colour
            hits[f"class_{when}"] += (
                judged_kind(gen.model.decoder, latent, grid, solids, kinds) == kind
            )
    figures = {key: value / len(prompts) for key, value in hits.items()}
    figures["s_per_prompt"] = (time.perf_counter() - start) / len(prompts)
    return figures


def main(quick: bool = False, budget: float = 12.0) -> dict:
    per_pair, views, res = (1, 4, 32) if quick else (6, 16, 64)
    layouts = ("dvr",) if quick else ("dvr", "blender")
    prims = primitives(per_pair)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="iss3d-bench-fit-all-") as tmp:
        tmp = Path(tmp)
        for layout in layouts:
            data = write_layout(layout, tmp, prims, views, res)
            run = tmp / f"run-{layout}"
            limit = ["--steps", "3"] if quick else ["--budget", str(budget)]
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli(["fit", "all", "--data", str(data), "--out", str(run), *limit,
                            "--no-progress"])  # fmt: skip
            if code != 0:
                raise RuntimeError(f"fit all on the {layout} layout failed")
            figures[f"{layout}_fit_all_minutes"] = (time.perf_counter() - start) / 60
            summary = json.loads((run / "summary.json").read_text())
            evaluation = summary["evaluation"]
            figures[f"{layout}_svr_iou_vs_hull"] = evaluation["svr"]["iou"]
            figures[f"{layout}_clip_top1"] = evaluation["clip"]["top1"]
            for key, value in summary["plan"]["steps"].items():
                figures[f"{layout}_{key}_steps"] = value
            for key, value in judge(run, prims).items():
                figures[f"{layout}_{key}"] = value
    config = {
        "objects": len(prims),
        "views": views,
        "res": res,
        "budget_minutes": None if quick else budget,
        "layouts": list(layouts),
        "prompts": len(COLOURS) * len(KINDS),
        "preset": "tiny",
    }
    notes = [
        "Prompts are the training captions' words: accuracy on the set the chain trained on.",
        "Chance: 0.25 for colour and for class. svr_iou_vs_hull is fit all's own eval svr "
        "(test split, against the carved hull).",
    ]
    return write_result(NAME, figures, config, quick, notes=notes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny set, 3 steps a stage")
    parser.add_argument("--budget", type=float, default=12.0, help="fit all minutes per layout")
    args = parser.parse_args()
    main(args.quick, args.budget)
