"""The grid march against the reference (dense) march on the shipped models, prompt by prompt.

Every "a {colour} {category}" prompt of the synthetic world (11 colours x 11 categories = 121)
is rendered through the shipped stage-1 decoder at two latents: the mapper's output before
stage 2 (M(f_T), what stage 2 renders first) and after :data:`STAGE2_STEPS` steps of the tiny
preset's stage 2 (grid march, ``keep: last``, seed 0). Both marchers see the same rays from
two camera sets (three with ``--paper``); latent i (of 242) sees:

- ``stage2``: one camera of ``configs/generate/tiny.yaml``'s stage-2 distribution drawn with
  seed i, at its resolution (48 px) and march (64 samples, grid 32); ``--all-views``: a
  draw of 4 views as one batch element, as a stage-2 step renders them;
- ``eval``: view i mod 8 of ``configs/evaluate/tiny.yaml``'s evaluation views (64 px,
  elevation 20, distance 1.8, azimuths 0, 45, ... 315), marched as ``iss3d evaluate``
  renders it, so the 242 latents cover every view 30 times; ``--all-views``: all 8;
- ``paper`` (``--paper``): 2 views of ``configs/generate/paper.yaml``'s cameras (distance
  2.7) drawn with seed i, at 90 px with its march (128 samples, grid 64).

Figures per camera set: rays with a non-finite depth on a hit (grid and dense), rays whose
classification (hit, inside start, miss) differs, the lowest hit-mask agreement over latents,
the largest depth difference on common hits, decoder evaluations per ray of each marcher.
The targets: every grid hit finite, every ray classified as the reference does, depth within
1e-4 of the reference.

Run: ``python -m bench.bench_march [--quick] [--paper] [--all-views]`` (or through
``python -m bench.run``); progress on stderr, one line per latent; the stage-2 latents are
kept in ``bench/results/tmp/`` for a rerun. ``--quick``: 3 prompts, M(f_T) only. With
``--all-views`` the run is about 6x longer (an hour of dense marching per set on 2 CPU
cores).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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
    """Rays each latent is marched along: ``rays_of(i)`` gives latent i's batches of (B, R, 3)
    origins and directions (each batch one call, as the product marches them); ``views``
    says which views; ``march`` the settings."""

    name: str
    rays_of: Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]]
    views: str
    march: MarchConfig


def view_rays(views: Views, resolution: int, one_batch: bool) -> list:
    """Pixel-centre rays of ``views``: one (1, V * H * W, 3) batch (stage 2), or one
    (1, H * W, 3) batch per view (evaluation renders)."""
    xy = pixel_coords(resolution, resolution).expand(len(views), -1, -1)
    o, d = rays(xy, views.world_mat, views.camera_mat, views.scale_mat)
    if one_batch:
        return [(o.reshape(1, -1, 3), d.reshape(1, -1, 3))]
    return [(o[i : i + 1], d[i : i + 1]) for i in range(len(views))]


def _view(views: Views, i: int) -> Views:
    """The i-th of ``views`` alone."""
    return Views(
        views.world_mat[i : i + 1],
        views.camera_mat[i : i + 1],
        views.scale_mat[i : i + 1],
        views.azimuth[i : i + 1],
        views.elevation[i : i + 1],
        views.distance[i : i + 1],
    )


def camera_sets(all_views: bool = False, paper: bool = False) -> list[CameraSet]:
    """The stage-2 and evaluation camera sets, and with ``paper`` the paper preset's.

    Latent i sees one stage-2 camera drawn with seed i and evaluation view i mod 8 (so the
    121 prompts x 2 latents cover every evaluation azimuth); ``all_views``: every latent sees
    a full stage-2 draw (4 views, seed i) and all 8 evaluation views.
    """
    tiny = load_generate_config("tiny").stage2
    paper_s2 = load_generate_config("paper").stage2
    ev = load_evaluate_config("tiny")
    eval_views = fixed_views(
        ev.render.views, ev.render.elevation, ev.stage2.cameras.mean_distance,
        ev.stage2.cameras.focal,
    )  # fmt: skip
    eval_march = dataclasses.replace(ev.stage2.march, n_steps=ev.render.march_steps)
    n_tiny = tiny.views if all_views else 1

    def stage2_rays(i: int) -> list:
        draw = sample_views(tiny.cameras, n_tiny, torch.Generator().manual_seed(i))
        return view_rays(draw, tiny.resolution, True)

    def eval_rays(i: int) -> list:
        chosen = eval_views if all_views else _view(eval_views, i % len(eval_views))
        return view_rays(chosen, ev.render.resolution, False)

    def paper_rays(i: int) -> list:
        draw = sample_views(paper_s2.cameras, PAPER_VIEWS, torch.Generator().manual_seed(i))
        return view_rays(draw, paper_s2.resolution, True)

    sets = [
        CameraSet(
            "stage2",
            stage2_rays,
            f"{n_tiny} view(s) of configs/generate/tiny.yaml's stage-2 cameras drawn with seed i"
            f" at {tiny.resolution} px, one batch",
            tiny.march,
        ),
        CameraSet(
            "eval",
            eval_rays,
            (f"all {len(eval_views)}" if all_views else f"view i mod {len(eval_views)} of the")
            + f" evaluation views at {ev.render.resolution} px, one batch per view",
            eval_march,
        ),
    ]
    if paper:
        sets.append(
            CameraSet(
                "paper",
                paper_rays,
                f"{PAPER_VIEWS} views of configs/generate/paper.yaml's cameras, seed i,"
                f" {paper_s2.resolution} px",
                paper_s2.march,
            )
        )
    return sets


def compare(decoder, c: torch.Tensor, batches: list, cfg: MarchConfig) -> dict[str, float]:
    """Dense and grid march (settings ``cfg``) of latent ``c`` (1, c_dim) along every batch
    of ``batches``."""
    stats = {"rays": 0, "nonfinite_grid": 0, "nonfinite_dense": 0, "differing": 0, "hits": 0}
    stats.update(max_depth_error=0.0, evals_dense=0, evals_grid=0)
    dense_cfg = dataclasses.replace(cfg, method="dense")
    for origins, dirs in batches:
        ref: MarchResult = march(decoder, c, origins, dirs, dense_cfg)
        fast: MarchResult = grid_march(decoder, c, origins, dirs, cfg)
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


def cached_latents(model, clip, prompts: list[str], after: bool) -> list:
    """:func:`prompt_latents`, kept in ``bench/results/tmp/`` for a rerun with the same prompts
    and models (stage 2 of 121 prompts takes minutes)."""
    from iss3d.infer.shape_files import decoder_fingerprint

    key = {
        "prompts": prompts,
        "after": after,
        "steps": STAGE2_STEPS,
        "decoder": decoder_fingerprint(model.decoder),
        "mapper": decoder_fingerprint(model.mapper),
    }
    path = Path(__file__).parent / "results" / "tmp" / "march_latents.pt"
    if path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached["key"] == key:
            return [tuple(x) for x in cached["latents"]]
    latents = prompt_latents(model, clip, prompts, after)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"key": key, "latents": latents}, path)
    return latents


def measure_set(decoder, latents: list, cameras: CameraSet) -> tuple[dict, dict, list]:
    """Figures and targets of one camera set over every latent, and the latents whose rays
    differ; progress on stderr."""
    start = time.perf_counter()
    totals = dict.fromkeys(
        ("rays", "hits", "nonfinite_grid", "nonfinite_dense", "differing", "evals_dense",
         "evals_grid"), 0,
    )  # fmt: skip
    lowest_agreement, depth_error, differing_latents = 1.0, 0.0, []
    for i, (label, c) in enumerate(latents):
        s = compare(decoder, c, cameras.rays_of(i), cameras.march)
        print(f"{cameras.name} {i + 1}/{len(latents)} {label}", file=sys.stderr, flush=True)
        for key in totals:
            totals[key] += s[key]
        lowest_agreement = min(lowest_agreement, 1 - s["differing"] / s["rays"])
        depth_error = max(depth_error, s["max_depth_error"])
        if s["differing"]:
            differing_latents.append([label, s["differing"]])
    k, rays = cameras.name, totals["rays"]
    figures = {
        f"{k}_latents": len(latents),
        f"{k}_rays": rays,
        f"{k}_hit_fraction": totals["hits"] / rays,
        f"{k}_nonfinite_grid": totals["nonfinite_grid"],
        f"{k}_nonfinite_dense": totals["nonfinite_dense"],
        f"{k}_differing_rays": totals["differing"],
        f"{k}_agreeing_ray_fraction": 1 - totals["differing"] / rays,
        f"{k}_lowest_mask_agreement": lowest_agreement,
        f"{k}_max_depth_error": depth_error,
        f"{k}_grid_finite_hit_fraction": 1 - totals["nonfinite_grid"] / max(totals["hits"], 1),
        f"{k}_dense_evals_per_ray": totals["evals_dense"] / rays,
        f"{k}_grid_evals_per_ray": totals["evals_grid"] / rays,
        f"{k}_seconds": time.perf_counter() - start,
    }
    targets = {
        f"{k}_agreeing_ray_fraction": target(figures[f"{k}_agreeing_ray_fraction"], 1.0, ">="),
        f"{k}_grid_finite_hit_fraction": target(
            figures[f"{k}_grid_finite_hit_fraction"], 1.0, ">="
        ),
        f"{k}_max_depth_error": target(depth_error, 1e-4, "<="),
    }
    return figures, targets, differing_latents


def main(quick: bool = False, paper: bool = False, all_views: bool = False) -> dict:
    torch.manual_seed(0)
    model, _, clip, clip_spec = resolve_models(None, None, torch.device("cpu"))
    decoder = model.decoder.eval()
    prompts = list(QUICK_PROMPTS) if quick else world_prompts()
    start = time.perf_counter()
    latents = cached_latents(model, clip, prompts, after=not quick)
    figures: dict[str, float] = {"stage2_latents_seconds": time.perf_counter() - start}
    targets: dict[str, dict] = {}
    worst: dict[str, list] = {}
    sets = camera_sets(all_views, paper)
    for cameras in sets:
        set_figures, set_targets, worst[cameras.name] = measure_set(decoder, latents, cameras)
        figures.update(set_figures)
        targets.update(set_targets)
    figures["seconds"] = time.perf_counter() - start
    config = {
        "prompts": len(prompts) if not quick else prompts,
        "latents": "M(f_T) before stage 2"
        + ("" if quick else f" and after {STAGE2_STEPS} tiny-preset steps (seed 0, keep last)"),
        "clip": clip_spec,
        "camera_sets": {
            cs.name: {"views": cs.views, "march": dataclasses.asdict(cs.march)} for cs in sets
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
        notes.append("quick: 3 prompts, M(f_T) only")
    return write_result(NAME, figures, config, quick, targets, notes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--paper", action="store_true", help="also the paper preset's cameras")
    parser.add_argument(
        "--all-views", action="store_true", help="every latent sees all views of each set"
    )
    args = parser.parse_args()
    main(args.quick, args.paper, args.all_views)
