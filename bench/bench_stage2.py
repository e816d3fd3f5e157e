"""Stage 2 (the per-prompt fine-tuning of the mapper): seconds per prompt, per phase, memory.

- tiny: ``configs/generate/tiny.yaml`` with the shipped models (``models/pretrained/stage1.ckpt``
  and the ``clip.pt`` beside it, found as ``iss3d generate`` finds them), a few prompts, the
  preset's steps, :func:`iss3d.infer.stage2.run_stage2` once with each march method (``dense``, the
  reference, and ``grid``, the fast one; the preset's is the one with the target), each after a
  one-step warm-up. Seconds per prompt is the loop's own wall time (``Stage2Result.seconds``):
  no model loading, text encoding or export.
- phases: each step split into the render (the mapper and :func:`iss3d.infer.stage2.render_views`),
  the CLIP forward (augmentations, :meth:`iss3d.infer.guidance.Guide.loss`, the losses), the
  backward and the optimiser step: ``run_stage2(..., phases=True)`` with the preset's march
  method; the peak memory of a one-step run.
- paper: ``configs/generate/paper.yaml`` (10 views at 90 px, 128 march steps, 20 steps) with
  randomly initialised models of the paper sizes: the ``svr/paper`` decoder (h 512, 5 blocks,
  c_dim 256), the ``stage1/paper`` mapper and open_clip's ViT-B-32 architecture. The decoder is
  wrapped in :class:`bench.bench_render.SphereDecoder` (a sphere term added to its occupancy),
  as a trained decoder has a surface that the grid march can find quickly; a random one's
  logits lie near 0, within the grid's margin, so the grid rules out little. On CUDA the
  whole 20-step loop runs (after a warm-up); on a CPU one step, and the 20-step figure is
  extrapolated from it.

Run: ``python -m bench.bench_stage2 [--quick]`` (or through ``python -m bench.run``).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from collections.abc import Sequence
from contextlib import contextmanager

import open_clip
import torch

from bench.bench_render import PROMPTS, SphereDecoder
from bench.common import target, write_result
from iss3d.core.config import load_config
from iss3d.infer.generator import load_generate_config
from iss3d.infer.guidance import Guide, PromptSchedule
from iss3d.infer.session import resolve_models
from iss3d.infer.stage2 import Stage2Config, run_stage2
from iss3d.models.clip import ClipModel, build_open_clip
from iss3d.train.stage1 import Stage1Config
from iss3d.train.svr import SVRConfig

NAME = "stage2"
METHODS = ("dense", "grid")
PHASES = ("render", "clip", "backward", "optimizer")
#: The issue's target: "Stage 2, tiny preset, 2 CPU cores: <= 20 s per prompt".
TINY_TARGET_S = 20.0
#: Seconds per paper-preset prompt on a GPU.
PAPER_CUDA_TARGET_S = 5.0
PAPER_CLIP = "ViT-B-32"


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in KiB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict that holds, on exit, the peak memory of the block in MiB under ``"mb"``.

    CUDA: ``torch.cuda.max_memory_allocated`` (models and everything else allocated included).
    CPU: the peak resident set size during the block minus the one before it (Linux: the
    kernel's peak mark is reset through ``/proc/self/clear_refs``, then read as ``VmHWM``).
    """
    out: dict[str, float] = {}
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        _sync(device)
        out["mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _proc_kib("VmRSS")
    yield out
    # The kernel updates its peak mark lazily (not on every path that returns pages), so it
    # can read below an RSS seen after the reset; that RSS is itself a lower bound of the peak.
    out["mb"] = (max(_proc_kib("VmHWM"), before) - before) / 1024


def make_guide(clip: ClipModel, prompt: str, cfg: Stage2Config) -> Guide:
    """The guide ``iss3d generate`` builds for one prompt with one CLIP model (no ensemble)."""
    schedule = PromptSchedule(prompt, cfg.guidance)
    return Guide([clip], [cfg.guidance.clip_weight], schedule, cfg.guidance)


def loop_seconds(
    mapper: torch.nn.Module,
    decoder: torch.nn.Module,
    clip: ClipModel,
    cfg: Stage2Config,
    prompts: Sequence[str],
    warmup: bool = True,
) -> list[float]:
    """Wall seconds of :func:`run_stage2` (``cfg.steps`` steps) for each prompt, after a
    one-step run of the first prompt when ``warmup``.

    ``mapper``: (1, D) text features -> (1, c_dim) latents; ``clip``: D-d features.
    """
    if warmup:
        run_stage2(
            mapper,
            decoder,
            make_guide(clip, prompts[0], cfg),
            dataclasses.replace(cfg, steps=1),
            torch.Generator().manual_seed(0),
        )
    seconds = []
    for prompt in prompts:
        guide = make_guide(clip, prompt, cfg)
        result = run_stage2(mapper, decoder, guide, cfg, torch.Generator().manual_seed(0))
        seconds.append(result.seconds)
    return seconds


def phase_figures(
    mapper: torch.nn.Module,
    decoder: torch.nn.Module,
    clip: ClipModel,
    cfg: Stage2Config,
    prompt: str,
    steps: int,
    key: str,
) -> dict[str, float]:
    """Phases of stage-2 steps and the peak memory of one, from :func:`run_stage2` with
    ``phases=True`` (a :class:`iss3d.infer.stage2.PhaseClock`, CUDA synchronised at each lap).

    A one-step run measures the peak memory (``<key>_step_peak_cuda_mb`` or
    ``<key>_step_peak_rss_increase_mb``); a ``steps``-step run gives the mean seconds of each
    phase (``<key>_phase_<phase>_s``) and their sum (``<key>_step_s``).
    """
    device = next(mapper.parameters()).device

    def run(n: int):
        one = dataclasses.replace(cfg, steps=n)
        guide = make_guide(clip, prompt, cfg)
        return run_stage2(
            mapper, decoder, guide, one, torch.Generator().manual_seed(0), phases=True
        )

    with peak_memory(device) as memory:
        run(1)
    records = run(steps).history
    figures = {f"{key}_phase_{p}_s": statistics.mean(r[f"{p}_s"] for r in records) for p in PHASES}
    figures[f"{key}_step_s"] = sum(figures[f"{key}_phase_{p}_s"] for p in PHASES)
    figures[f"{key}_evals_per_pixel"] = statistics.mean(r["evaluations_per_pixel"] for r in records)
    kind = "cuda" if device.type == "cuda" else "rss_increase"
    figures[f"{key}_step_peak_{kind}_mb"] = memory["mb"]
    return figures


def paper_models(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, ClipModel]:
    """Randomly initialised models of the paper sizes: the mapper (512-d CLIP features ->
    256-d latents), the decoder (h 512, 5 blocks; with a sphere's occupancy added) and a
    ViT-B-32 CLIP (512-d features)."""
    unused = [("data.path", "unused.h5")]
    decoder = SphereDecoder(load_config(SVRConfig, "svr/paper", unused).decoder.build())
    mapper = load_config(Stage1Config, "stage1/paper", unused).mapper.build()
    model = build_open_clip(open_clip.get_model_config(PAPER_CLIP))
    tokenizer = open_clip.get_tokenizer(PAPER_CLIP)
    clip = ClipModel(model, tokenizer, f"{PAPER_CLIP} (random weights)", trained=False)
    return mapper.to(device).eval(), decoder.to(device).eval(), clip.to(device)


def tiny_figures(
    device: torch.device, prompts: Sequence[str], steps: int | None, phase_steps: int
) -> tuple[dict[str, float], dict]:
    """Figures of the tiny preset with the shipped models; ``steps``: None for the preset's.

    Returns (figures, config)."""
    model, _, clip, clip_spec = resolve_models(None, None, device)
    overrides = [("stage2.steps", steps)] if steps else []
    preset = load_generate_config("tiny", overrides).stage2
    figures: dict[str, float] = {}
    for method in METHODS:
        cfg = load_generate_config("tiny", [*overrides, ("stage2.march.method", method)]).stage2
        seconds = loop_seconds(model.mapper, model.decoder, clip, cfg, prompts)
        figures[f"tiny_{method}_s_per_prompt"] = statistics.mean(seconds)
        figures[f"tiny_{method}_s_per_prompt_max"] = max(seconds)
        figures[f"tiny_{method}_s_per_step"] = statistics.mean(seconds) / cfg.steps
    figures["tiny_dense_over_grid"] = (
        figures["tiny_dense_s_per_prompt"] / figures["tiny_grid_s_per_prompt"]
    )
    figures.update(
        phase_figures(model.mapper, model.decoder, clip, preset, prompts[0], phase_steps, "tiny")
    )
    config = {
        "preset": "tiny",
        "preset_method": preset.march.method,
        "steps_per_prompt": preset.steps,
        "views": preset.views,
        "resolution": preset.resolution,
        "march": {"n_steps": preset.march.n_steps, "grid": preset.march.grid},
        "prompts": list(prompts),
        "clip": clip_spec,
        "phase_steps": phase_steps,
    }
    return figures, config


def paper_figures(device: torch.device, prompt: str) -> tuple[dict[str, float], dict, dict]:
    """Figures of the paper preset with random paper-sized models: on CUDA the full loop
    (and its target), on a CPU one step and the extrapolated prompt.

    Returns (figures, targets, config)."""
    mapper, decoder, clip = paper_models(device)
    preset = load_generate_config("paper").stage2
    cuda = device.type == "cuda"
    cfg = preset if cuda else load_generate_config("paper", [("stage2.steps", 1)]).stage2
    (seconds,) = loop_seconds(mapper, decoder, clip, cfg, [prompt], warmup=cuda)
    figures = {"paper_s_per_step": seconds / cfg.steps}
    targets = {}
    if cuda:
        figures["paper_s_per_prompt"] = seconds
        targets["paper_s_per_prompt"] = target(seconds, PAPER_CUDA_TARGET_S, "<=")
    else:
        figures["paper_s_per_prompt_extrapolated"] = figures["paper_s_per_step"] * preset.steps
    figures.update(phase_figures(mapper, decoder, clip, preset, prompt, 5 if cuda else 1, "paper"))
    config = {
        "preset": "paper",
        "steps_run": cfg.steps,
        "preset_steps": preset.steps,
        "views": preset.views,
        "resolution": preset.resolution,
        "march": {"method": preset.march.method, "n_steps": preset.march.n_steps},
        "models": "random weights: svr/paper decoder, stage1/paper mapper, "
        f"open_clip {PAPER_CLIP} architecture",
        "prompt": prompt,
    }
    return figures, targets, config


def main(quick: bool = False) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    prompts = PROMPTS[:1] if quick else PROMPTS
    figures, tiny_config = tiny_figures(device, prompts, 2 if quick else None, 1 if quick else 5)
    config = {"device": str(device), "torch_threads": torch.get_num_threads(), "tiny": tiny_config}
    targets = {}
    if not quick:
        key = f"tiny_{tiny_config['preset_method']}_s_per_prompt"
        targets[key] = target(figures[key], TINY_TARGET_S, "<=")
        paper, paper_targets, config["paper"] = paper_figures(device, prompts[0])
        figures.update(paper)
        targets.update(paper_targets)
    notes = [
        "s_per_prompt: Stage2Result.seconds, the loop alone (no loading, text encoding, export),"
        " mean (and _max, the slowest) over the prompts, after a one-step warm-up run per march"
        " method (CPU paper: none); the target applies to the preset's own march method; the"
        " cost varies with the shape: what the marcher meets grows as stage 2 shapes it",
        "phases: run_stage2(phases=True) (iss3d.infer.stage2.PhaseClock) on the first prompt;"
        " render includes the mapper's forward, clip the augmentations and the loss; CUDA is"
        " synchronised before each clock read",
        "memory: on CUDA step_peak_cuda_mb is torch.cuda.max_memory_allocated over one step"
        " (models included); on a CPU step_peak_rss_increase_mb is the peak RSS during one"
        " step minus the RSS before it (/proc/self/clear_refs + VmHWM)",
        "paper: random weights, the decoder's occupancy plus a sphere of radius 0.3"
        " (bench_render's SphereDecoder) so that the grid march meets a surface as with a"
        " trained decoder; on a CPU one step runs and"
        " paper_s_per_prompt_extrapolated = paper_s_per_step x 20",
    ]
    if quick:
        notes.append("quick: 1 prompt, 2 steps per prompt, no paper preset, no targets")
    return write_result(NAME, figures, config, quick, targets, notes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
