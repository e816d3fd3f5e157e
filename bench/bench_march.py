"""The grid march against the reference (dense) march on the shipped models, prompt by prompt.

Every "a {colour} {category}" prompt of the synthetic world (11 colours x 11 categories = 121)
is rendered through the shipped stage-1 decoder at two latents: the mapper's output before
stage 2 (M(f_T), what stage 2 renders first) and after :data:`STAGE2_STEPS` steps of the tiny
preset's stage 2 (grid march, ``keep: last``, seed 0). Both marchers see the same rays from
two camera sets (three with ``--paper``):

- ``stage2``: one draw of ``configs/generate/tiny.yaml``'s stage-2 cameras and march (4 views
  at 48 px as one batch element, 64 samples, grid 32);
- ``eval``: ``configs/evaluate/tiny.yaml``'s evaluation views (8 views at 64 px, elevation 20,
  distance 1.8), each view marched on its own as ``iss3d evaluate`` renders it;
- ``paper``: ``configs/generate/paper.yaml``'s march (128 samples, grid 64) from one draw of
  its cameras (distance 2.7), 2 views at 90 px (the preset renders 10 a step; fewer here for
  CPU time).

Figures per camera set: rays with a non-finite depth on a hit (grid and dense), rays whose
classification (hit, inside start, miss) differs, the lowest hit-mask agreement over latents,
the largest depth difference on common hits, decoder evaluations per ray of each marcher.
The targets: every grid hit finite, every ray classified as the reference does, depth within
1e-4 of the reference.

Run: ``python -m bench.bench_march [--quick] [--paper]`` (or through ``python -m bench.run``);
progress on stderr, one line per latent. ``--quick``: 3 prompts, 1 view per set, no stage 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence

import torch

from bench.bench_stage2 import make_guide
from bench.common import target, write_result
from iss3d.data.cameras import pixel_coords, rays
from iss3d.data.synth.world import CATEGORIES, COLORS
from iss3d.infer.evaluation.run import load_evaluate_config
from iss3d.infer.generator import load_generate_config
from iss3d.infer.session import resolve_models
from iss3d.infer.stage2 import run_stage2
from iss3d.infer.view_sampling import Views, fixed_views, sample_views
from iss3d.models.grid_march import grid_march
from iss3d.models.march import MarchConfig, MarchResult, march

NAME = "march"
#: Stage-2 steps before the "after" latent is taken.
STAGE2_STEPS = 3
#: Views of the paper camera set (the preset renders 10 per step).
PAPER_VIEWS = 2
QUICK_PROMPTS = ("a blue lamp", "a red chair", "a green torus")


def world_prompts() -> list[str]:
    """The 121 "a {colour} {category}" prompts of the synthetic world."""
    return [f"a {colour} {category}" for category in CATEGORIES for colour in COLORS]


@dataclasses.dataclass
class CameraSet:
    """Rays one latent is marched along: ``batches`` of (B, R, 3) origins and directions (each
    batch one call, as the product marches them) and the march settings."""

    name: str
    batches: list[tuple[torch.Tensor, torch.Tensor]]
    march: MarchConfig


def view_rays(views: Views, resolution: int, one_batch: bool) -> list:
    """Pixel-centre rays of ``views``: one (1, V * H * W, 3) batch (stage 2), or one
    (1, H * W, 3) batch per view (evaluation renders)."""
    xy = pixel_coords(resolution, resolution).expand(len(views), -1, -1)
    o, d = rays(xy, views.world_mat, views.camera_mat, views.scale_mat)
    if one_batch:
        return [(o.reshape(1, -1, 3), d.reshape(1, -1, 3))]
    return [(o[i : i + 1], d[i : i + 1]) for i in range(len(views))]


def camera_sets(quick: bool, paper: bool = False) -> list[CameraSet]:
    """The stage-2 and evaluation camera sets, and with ``paper`` the paper preset's (one
    camera draw each, seed 0)."""
    tiny = load_generate_config("tiny").stage2
    paper = load_generate_config("paper").stage2
    ev = load_evaluate_config("tiny")
    n_tiny, n_eval, n_paper = (1, 1, 1) if quick else (tiny.views, ev.render.views, PAPER_VIEWS)
    g = torch.Generator().manual_seed(0)
    eval_views = fixed_views(
        n_eval, ev.render.elevation, ev.stage2.cameras.mean_distance, ev.stage2.cameras.focal
    )
    eval_march = dataclasses.replace(ev.stage2.march, n_steps=ev.render.march_steps)
    sets = [
        CameraSet(
            "stage2",
            view_rays(sample_views(tiny.cameras, n_tiny, g), tiny.resolution, True),
            tiny.march,
        ),
        CameraSet("eval", view_rays(eval_views, ev.render.resolution, False), eval_march),
    ]
    if paper:
        views = sample_views(paper.cameras, n_paper, g)
        sets.append(CameraSet("paper", view_rays(views, paper.resolution, True), paper.march))
    return sets


def compare(decoder, c: torch.Tensor, cameras: CameraSet) -> dict[str, float]:
    """Dense and grid march of latent ``c`` (1, c_dim) along every batch of ``cameras``."""
    stats = {"rays": 0, "nonfinite_grid": 0, "nonfinite_dense": 0, "differing": 0, "hits": 0}
    stats.update(max_depth_error=0.0, evals_dense=0, evals_grid=0)
    dense_cfg = dataclasses.replace(cameras.march, method="dense")
    for origins, dirs in cameras.batches:
        ref: MarchResult = march(decoder, c, origins, dirs, dense_cfg)
        fast: MarchResult = grid_march(decoder, c, origins, dirs, cameras.march)
        stats["rays"] += ref.hit.numel()
        stats["hits"] += int(ref.hit.sum())
        stats["nonfinite_grid"] += int((fast.hit & ~torch.isfinite(fast.depth)).sum())
        stats["nonfinite_dense"] += int((ref.hit & ~torch.isfinite(ref.depth)).sum())
        differ = (ref.hit != fast.hit) | (ref.inside_start != fast.inside_start)
        stats["differing"] += int(differ.sum())
        both = ref.hit & fast.hit
        if both.any():
            err = float((ref.depth[both] - fast.depth[both]).abs().max())
            stats["max_depth_error"] = max(stats["max_depth_error"], err)
        stats["evals_dense"] += ref.evaluations
        stats["evals_grid"] += fast.evaluations
    return stats


def prompt_latents(
    model, clip, prompts: Sequence[str], after: bool
) -> list[tuple[str, torch.Tensor]]:
    """(label, (1, c_dim) latent) per prompt: M(f_T), and with ``after`` also the latent after
    :data:`STAGE2_STEPS` steps of the tiny preset's stage 2."""
    cfg = dataclasses.replace(load_generate_config("tiny").stage2, steps=STAGE2_STEPS, keep="last")
    out = []
    for prompt in prompts:
        with torch.no_grad():
            before = model.mapper(clip.encode_text([prompt]))
        out.append((f"{prompt} / before", before))
        if after:
            guide = make_guide(clip, prompt, cfg)
            result = run_stage2(
                model.mapper, model.decoder, guide, cfg, torch.Generator().manual_seed(0)
            )
            out.append((f"{prompt} / after", result.latent_after))
    return out


def main(quick: bool = False, paper: bool = False) -> dict:
    torch.manual_seed(0)
    device = torch.device("cpu")
    model, _, clip, clip_spec = resolve_models(None, None, device)
    decoder = model.decoder.eval()
    prompts = list(QUICK_PROMPTS) if quick else world_prompts()
    start = time.perf_counter()
    latents = prompt_latents(model, clip, prompts, after=not quick)
    figures: dict[str, float] = {}
    targets: dict[str, dict] = {}
    worst: dict[str, list] = {}
    for cameras in camera_sets(quick, paper):
        set_start = time.perf_counter()
        totals: dict[str, float] = {}
        lowest_agreement, depth_error = 1.0, 0.0
        differing_latents = []
        for i, (label, c) in enumerate(latents):
            s = compare(decoder, c, cameras)
            print(f"{cameras.name} {i + 1}/{len(latents)} {label}", file=sys.stderr, flush=True)
            for key in ("rays", "hits", "nonfinite_grid", "nonfinite_dense", "differing"):
                totals[key] = totals.get(key, 0) + s[key]
            for key in ("evals_dense", "evals_grid"):
                totals[key] = totals.get(key, 0) + s[key]
            lowest_agreement = min(lowest_agreement, 1 - s["differing"] / s["rays"])
            depth_error = max(depth_error, s["max_depth_error"])
            if s["differing"]:
                differing_latents.append([label, s["differing"]])
        k = cameras.name
        figures[f"{k}_latents"] = len(latents)
        figures[f"{k}_rays"] = totals["rays"]
        figures[f"{k}_hit_fraction"] = totals["hits"] / totals["rays"]
        figures[f"{k}_nonfinite_grid"] = totals["nonfinite_grid"]
        figures[f"{k}_nonfinite_dense"] = totals["nonfinite_dense"]
        figures[f"{k}_differing_rays"] = totals["differing"]
        figures[f"{k}_lowest_mask_agreement"] = lowest_agreement
        figures[f"{k}_max_depth_error"] = depth_error
        figures[f"{k}_dense_evals_per_ray"] = totals["evals_dense"] / totals["rays"]
        figures[f"{k}_grid_evals_per_ray"] = totals["evals_grid"] / totals["rays"]
        figures[f"{k}_agreeing_ray_fraction"] = 1 - totals["differing"] / totals["rays"]
        figures[f"{k}_grid_finite_hit_fraction"] = 1 - totals["nonfinite_grid"] / max(
            totals["hits"], 1
        )
        targets[f"{k}_agreeing_ray_fraction"] = target(
            figures[f"{k}_agreeing_ray_fraction"], 1.0, ">="
        )
        targets[f"{k}_grid_finite_hit_fraction"] = target(
            figures[f"{k}_grid_finite_hit_fraction"], 1.0, ">="
        )
        targets[f"{k}_max_depth_error"] = target(depth_error, 1e-4, "<=")
        worst[k] = differing_latents
        figures[f"{k}_seconds"] = time.perf_counter() - set_start
    figures["seconds"] = time.perf_counter() - start
    config = {
        "prompts": len(prompts) if not quick else prompts,
        "latents": "M(f_T) before stage 2"
        + ("" if quick else f" and after {STAGE2_STEPS} tiny-preset steps (seed 0, keep last)"),
        "clip": clip_spec,
        "camera_sets": {
            cs.name: {
                "batches": len(cs.batches),
                "rays_per_batch": cs.batches[0][0].shape[1],
                "march": dataclasses.asdict(cs.march),
            }
            for cs in camera_sets(quick, paper)
        },
        "latents_with_differing_rays": worst,
    }
    notes = [
        "dense: iss3d.models.march.march (every sample); grid:"
        " iss3d.models.grid_march.grid_march, same samples; differing_rays: rays whose hit or"
        " inside-start flag differs; max_depth_error:"
        " over rays both marchers hit; nonfinite: hit rays whose depth is NaN or inf",
    ]
    if quick:
        notes.append("quick: 3 prompts, M(f_T) only, 1 view per camera set")
    return write_result(NAME, figures, config, quick, targets, notes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--paper", action="store_true", help="also the paper preset's cameras")
    args = parser.parse_args()
    main(args.quick, args.paper)
