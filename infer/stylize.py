"""``iss3d stylize``: restyle a generated shape with a text ("wooden"), the ISS way.

Two modes (DESIGN.md, "Stylization"), both against the CLIP text feature of the style text
and with the generated shape's latent c fixed:

- ``texture``: the decoder is split into an occupancy branch D_o and a colour branch D_c
  (:func:`iss3d.models.decoder.split_branches`); only D_c is fine-tuned, so the shape cannot change
  (its occupancy logits stay bit for bit the initial decoder's).
- ``shape+texture``: a copy of the whole decoder D is fine-tuned with
  ``L_C + lambda_prior * L_P``, where the 3D prior loss L_P = mean |D_o(p) - D'_o(p)| compares
  the occupancy logits (or probabilities: ``prior.target``) of the tuned decoder D and of the
  frozen initial decoder D' at points p drawn each step, part uniform in the padded cube and
  part near the initial surface.

Each step renders ``views`` random views (:func:`iss3d.infer.stage2.guided_loss`, the stage-2
renderer and guidance), puts a random solid background colour behind every view (the preset's
``guidance.augment.background: random``) and takes the loss over *all* views (the official
texture code resets its loss inside the view loop, so only its last view counts). L_bg
(``guidance.lambda_bg``) keeps the decoder-drawn background white, as stage 1 trained it. A
step whose loss, CLIP score or gradients are not finite is skipped and counted in the
warnings, as in stage 2 (:func:`iss3d.infer.stage2.guarded_step`).

The run folder of ``iss3d generate`` holds ``latent.pt``
(:func:`iss3d.infer.shape_files.save_latent`): the final
latent c, the stage-1 checkpoint and the CLIP model it used. ``iss3d stylize RUN_DIR STYLE``
writes ``RUN_DIR/style-<style>`` (``-shape`` appended in shape+texture mode) or ``--out``:
``mesh.glb`` / ``mesh.ply`` with vertex colours, ``turntable.gif`` (+ ``.png`` strip),
``views.png`` (a row per evaluation view: before | after), ``stylized.pt`` (the tuned decoder
and c), ``report.json`` (IoU to the initial shape on a lattice, colour change, CLIP scores per
step and before / after, times), ``config.yaml`` and ``command.txt``; all written into a
temporary folder renamed at the end, so an error or Ctrl-C leaves nothing.
"""

from __future__ import annotations

import copy
import re
import sys
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from iss3d.core import config as config_lib
from iss3d.core.config import StrictConfig, load_preset
from iss3d.core.device import resolve_device
from iss3d.core.errors import UserError
from iss3d.infer.guidance import AugmentConfig, GuidanceConfig, Guide
from iss3d.infer.session import device_info, versions, warn, warning_suffix
from iss3d.infer.shape_files import LATENT_FILE, ExportConfig, load_latent
from iss3d.infer.view_sampling import CameraConfig
from iss3d.models.decoder import BranchedDecoder, Decoder, split_branches
from iss3d.models.losses import prior_loss
from iss3d.models.march import ImplicitField, MarchConfig, occupancy_in_chunks
from iss3d.models.renderer import Renderer

__all__ = [
    "MODES",
    "PriorConfig",
    "StyleConfig",
    "StylizeConfig",
    "StylizeResult",
    "default_style_out",
    "load_stylize_config",
    "occupancy_lattice",
    "run_stylize",
    "shape_iou",
    "stylize",
]

_STYLIZED_FORMAT = "iss3d-stylized"
MODES = ("texture", "shape+texture")
Mode = Literal["texture", "shape+texture"]


# -- configs --------------------------------------------------------------------------------------


@dataclass
class PriorConfig:
    """The 3D prior loss L_P of shape+texture mode (YAML section ``stylize.prior``).

    Attributes:
        points: points per step where D_o and D'_o are compared.
        near_surface: share of them near the initial surface: lattice points of a
            ``grid``^3 lattice whose 26 neighbours straddle the initial surface, moved by a
            uniform offset of up to one lattice cell; the rest are uniform in the padded cube.
        grid: cells per side of that lattice (over the unit cube).
        target: ``"logits"``: |D_o(p) - D'_o(p)| on occupancy logits (our default; the loss
            also holds the field's slope, not just its sign); ``"probabilities"``: on
            sigmoid(logit), which saturates away from the surface.
    """

    points: int = 4096
    near_surface: float = 0.5
    grid: int = 32
    target: Literal["logits", "probabilities"] = "logits"

    def __post_init__(self) -> None:
        if self.points < 1:
            raise UserError(f"prior config: 'points' must be >= 1, got {self.points}")
        if not 0.0 <= self.near_surface <= 1.0:
            raise UserError("prior config: 'near_surface' must be in [0, 1]")
        if self.grid < 2:
            raise UserError(f"prior config: 'grid' must be >= 2, got {self.grid}")


def _random_background() -> GuidanceConfig:
    return GuidanceConfig(augment=AugmentConfig(background="random"))


@dataclass
class StyleConfig:
    """The stylization loop (YAML section ``stylize``).

    Attributes:
        mode: ``"texture"`` (colour branch only) or ``"shape+texture"`` (the whole decoder,
            with L_P); ``--mode`` overrides it.
        steps: optimisation steps.
        views: views rendered per step, all of them in the loss.
        resolution: render side in pixels.
        lr, betas: Adam on the tuned decoder parameters.
        march: the renderer's :class:`iss3d.models.march.MarchConfig`.
        pixel_convention: "center" or "dvr".
        cameras: the camera distribution (:class:`iss3d.infer.view_sampling.CameraConfig`).
        guidance: the CLIP guidance (:class:`iss3d.infer.guidance.GuidanceConfig`); the default
            background is ``random`` (one random colour per view and step).
        lambda_prior: weight of L_P in shape+texture mode (unused in texture mode, where the
            occupancy cannot change).
        prior: where and how L_P compares the decoders (:class:`PriorConfig`).
        iou_grid: cells per side of the lattice ((n+1)^3 points over the unit cube) on which
            the report's IoU to the initial shape is measured.
    """

    mode: Mode = "texture"
    steps: int = 30
    views: int = 10
    resolution: int = 90
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    march: MarchConfig = field(default_factory=MarchConfig)
    pixel_convention: Literal["center", "dvr"] = "center"
    cameras: CameraConfig = field(default_factory=CameraConfig)
    guidance: GuidanceConfig = field(default_factory=_random_background)
    lambda_prior: float = 1.0
    prior: PriorConfig = field(default_factory=PriorConfig)
    iou_grid: int = 64

    def __post_init__(self) -> None:
        for name in ("steps", "views"):
            if getattr(self, name) <= 0:
                raise UserError(
                    f"stylize config: {name!r} must be positive, got {getattr(self, name)}"
                )
        if self.resolution < 8:
            raise UserError(
                f"stylize config: 'resolution' must be at least 8, got {self.resolution}"
            )
        if self.lr <= 0:
            raise UserError(f"stylize config: 'lr' must be > 0, got {self.lr}")
        if self.lambda_prior < 0:
            raise UserError(f"stylize config: 'lambda_prior' must be >= 0, got {self.lambda_prior}")
        if self.iou_grid < 2:
            raise UserError(f"stylize config: 'iou_grid' must be >= 2, got {self.iou_grid}")


@dataclass
class StylizeConfig(StrictConfig):
    """A ``configs/stylize/*.yaml`` preset: the loop and the export of its result."""

    CONFIG_NAME: ClassVar[str] = "stylize config"

    stylize: StyleConfig = field(default_factory=StyleConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def load_stylize_config(
    preset: str, overrides: list[str | tuple[str, Any]] | tuple = ()
) -> StylizeConfig:
    """A preset name (``configs/stylize/<name>.yaml``) or a YAML path, plus ``key=value``
    overrides, parsed strictly (UserError for unknown keys, bad types or values)."""
    return load_preset(StylizeConfig, "stylize", preset, overrides)


# -- losses and measures ---------------------------------------------------------------------------


def occupancy_lattice(grid: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, (grid+1)^3, 3) points of a regular lattice over the unit cube [-0.5, 0.5]^3,
    indexed [x, y, z] (x slowest)."""
    axis = torch.linspace(-0.5, 0.5, grid + 1, device=device)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)


@torch.no_grad()
def shape_iou(
    a: ImplicitField, b: ImplicitField, c: torch.Tensor, grid: int = 64, chunk: int = 65536
) -> float:
    """Volumetric IoU of two fields' shapes for latent ``c`` (1, c_dim): the occupied points
    (logit > 0) of the (grid+1)^3 :func:`occupancy_lattice`. 1.0 when both are empty."""
    points = occupancy_lattice(grid, c.device)
    inside_a = occupancy_in_chunks(a, c, points, chunk)[0] > 0
    inside_b = occupancy_in_chunks(b, c, points, chunk)[0] > 0
    union = int((inside_a | inside_b).sum())
    return 1.0 if union == 0 else int((inside_a & inside_b).sum()) / union


@torch.no_grad()
def _surface_points(field: ImplicitField, c: torch.Tensor, grid: int, chunk: int) -> torch.Tensor:
    """(M, 3) lattice points (``grid``^3 cells over the unit cube) with an occupancy different
    from one of their 26 neighbours: the points next to the surface (M may be 0)."""
    points = occupancy_lattice(grid, c.device)
    n = grid + 1
    inside = (occupancy_in_chunks(field, c, points, chunk)[0] > 0).float().reshape(1, 1, n, n, n)
    any_in = F.max_pool3d(inside, 3, stride=1, padding=1)
    any_out = F.max_pool3d(1.0 - inside, 3, stride=1, padding=1)
    near = ((any_in > 0) & (any_out > 0)).reshape(-1)
    return points[0, near]


def _prior_points(
    surface: torch.Tensor,
    cfg: PriorConfig,
    half: float,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """(1, cfg.points, 3): near-surface points (``surface`` jittered by up to a lattice cell)
    and uniform points in [-half, half]^3, drawn from the CPU ``generator``."""
    n_near = round(cfg.points * cfg.near_surface) if len(surface) else 0
    uniform = (torch.rand(cfg.points - n_near, 3, generator=generator) * 2 - 1) * half
    parts = [uniform]
    if n_near:
        index = torch.randint(0, len(surface), (n_near,), generator=generator)
        cell = 1.0 / cfg.grid
        jitter = (torch.rand(n_near, 3, generator=generator) * 2 - 1) * cell
        parts.insert(0, surface.cpu()[index] + jitter)
    return torch.cat(parts).to(device)[None]


# -- the loop -------------------------------------------------------------------------------------


@dataclass
class StylizeResult:
    """What a stylization run gives.

    decoder: the tuned field (eval mode, frozen): a :class:`iss3d.models.decoder.BranchedDecoder`
        in texture mode, a :class:`iss3d.models.decoder.Decoder` in shape+texture mode.
    mode: the mode run.
    history: per step ``{"step", "clip_score", "loss", "loss_clip", "loss_bg", "loss_prior",
        "seconds", "skipped"}`` (loss_prior 0 in texture mode; skipped: why the step made no
        update, a key of :data:`iss3d.infer.stage2.SKIP_REASONS`, or None).
    seconds: wall time of the loop.
    warnings: what went wrong, one line each: skipped steps
        (:func:`iss3d.infer.stage2.skipped_warnings`) and "stylize left the shape and its colours
        unchanged" when no tuned parameter moved.
    """

    decoder: nn.Module
    mode: str
    history: list[dict[str, Any]]
    seconds: float
    warnings: list[str] = field(default_factory=list)


def _trainable(decoder: Decoder, mode: str) -> tuple[nn.Module, list[nn.Parameter]]:
    """The field to tune and the parameters to optimise (copies; ``decoder`` is untouched)."""
    if mode == "texture":
        branched: BranchedDecoder = split_branches(decoder).eval()
        branched.requires_grad_(False)
        params = list(branched.color_parameters())
        for p in params:
            p.requires_grad_(True)
        return branched, params
    if mode == "shape+texture":
        tuned = copy.deepcopy(decoder).eval().requires_grad_(True)
        return tuned, list(tuned.parameters())
    raise UserError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def run_stylize(
    decoder: Decoder,
    c: torch.Tensor,
    guide: Guide,
    cfg: StyleConfig,
    generator: torch.Generator,
    *,
    mode: str | None = None,
    renderer: Renderer | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> StylizeResult:
    """Fine-tune a copy of ``decoder`` so that latent ``c`` looks like ``guide``'s text.

    Args:
        decoder: the stage-1 decoder D (not modified; frozen here).
        c: (1, c_dim) the shape's latent, on the decoder's device (fixed).
        guide: the style text and CLIP model(s) (:class:`iss3d.infer.guidance.Guide`).
        cfg: the loop's settings.
        generator: a CPU ``torch.Generator``: cameras, backgrounds, augmentations and L_P's
            points come from it (same seed, same result on the CPU).
        mode: ``"texture"`` or ``"shape+texture"`` (default ``cfg.mode``).
        renderer: the renderer (default: :class:`Renderer` with ``cfg.march``).
        callback: called with each step's record (progress bars).
    """
    from iss3d.infer.stage2 import (
        guarded_step,
        guided_loss,
        make_augmenter,
        parameters_changed,
        skip_reason,
        skipped_warnings,
    )
    from iss3d.infer.view_sampling import sample_views

    mode = mode or cfg.mode
    device = c.device
    renderer = renderer or Renderer(cfg.march)
    decoder.eval().requires_grad_(False)
    c = c.detach()
    tuned, params = _trainable(decoder, mode)
    initial = [p.detach().clone() for p in params]
    shape_mode = mode == "shape+texture"
    surface = torch.zeros(0, 3)
    if shape_mode and cfg.lambda_prior > 0 and cfg.prior.near_surface > 0:
        surface = _surface_points(decoder, c, cfg.prior.grid, cfg.march.chunk)
    half = 0.5 + cfg.march.padding / 2
    augment = make_augmenter(cfg.guidance.augment, generator, device)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas))
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        views = sample_views(cfg.cameras, cfg.views, generator)
        out = guided_loss(
            renderer, tuned, c, views, guide, augment, cfg.guidance, cfg.resolution,
            cfg.march.padding, cfg.pixel_convention,
        )  # fmt: skip
        total, loss_prior = out.total, torch.zeros((), device=device)
        if shape_mode and cfg.lambda_prior > 0:
            points = _prior_points(surface, cfg.prior, half, generator, device)
            loss_prior = prior_loss(tuned, decoder, c, points, cfg.prior.target)
            total = total + cfg.lambda_prior * loss_prior
        skipped = guarded_step(optimizer, total, skip_reason(total, out.score))
        record = _step_record(step, out, total, loss_prior, time.perf_counter() - t0, skipped)
        history.append(record)
        if callback is not None:
            callback(record)
    tuned.eval().requires_grad_(False)
    messages = skipped_warnings("stylize", history)
    if not parameters_changed(initial, params):
        messages.append("stylize left the shape and its colours unchanged")
    return StylizeResult(tuned, mode, history, time.perf_counter() - start, messages)


def _step_record(step: int, out, total, loss_prior, seconds: float, skipped) -> dict[str, Any]:
    """A stylization step's entry of the history (report.json): the CLIP score, the losses,
    the time and why the step was skipped (None: it was taken)."""
    return {
        "step": step,
        "clip_score": out.score,
        "loss": float(total.detach()),
        "loss_clip": float(out.loss_clip.detach()),
        "loss_bg": float(out.loss_bg.detach()),
        "loss_prior": float(loss_prior.detach()),
        "seconds": seconds,
        "skipped": skipped,
    }


# -- the command ----------------------------------------------------------------------------------


def check_style(style: str) -> str:
    """The style text, checked like a prompt (UserError: empty, control characters)."""
    from iss3d.infer.generate import check_generation_prompt

    if isinstance(style, str) and not style.strip():
        raise UserError('empty style text (give some words, e.g. "wooden")')
    return check_generation_prompt(style)


def default_style_out(run_dir: str | Path, style: str, mode: str) -> Path:
    """``RUN_DIR/style-<style as a file name>``, ``-shape`` appended in shape+texture mode."""
    words = re.findall(r"\w+", unicodedata.normalize("NFKC", style).lower())
    slug = "-".join(words)[:48].strip("-") or "style"
    return Path(run_dir) / f"style-{slug}{'-shape' if mode == 'shape+texture' else ''}"


@torch.no_grad()
def _color_change(a: ImplicitField, b: ImplicitField, c: torch.Tensor, vertices: np.ndarray):
    """Mean |rgb_a - rgb_b| (colours in [0, 1], averaged over channels) at mesh vertices."""
    if len(vertices) == 0:
        return None
    pts = torch.from_numpy(np.asarray(vertices, dtype=np.float32)).to(c.device)
    total = 0.0
    for i in range(0, len(pts), 65536):
        chunk = pts[None, i : i + 65536]
        total += float((a.rgb(chunk, c) - b.rgb(chunk, c)).abs().mean(-1).sum())
    return total / len(pts)


def stylize(
    run_dir: str | Path,
    style: str,
    cfg: StylizeConfig,
    out: str | Path | None = None,
    *,
    mode: str | None = None,
    seed: int = 0,
    stage1: Path | None = None,
    clip: str | None = None,
    device: str = "auto",
    progress: bool = True,
    command: str | None = None,
    preset: str | None = None,
    check_text: bool = True,
) -> int:
    """Stylize the shape of an ``iss3d generate`` folder and write every output to ``out``
    (default :func:`default_style_out`).

    ``mode``: overrides ``cfg.stylize.mode``. ``stage1`` / ``clip``: override the checkpoint
    and CLIP model ``latent.pt`` records. ``check_text``: check the style text (the command
    line has done it already).

    Raises:
        UserError: bad style text, mode, run folder, output folder, models or config (before
            any work is done).
    """
    t_start = time.perf_counter()
    if check_text:
        check_style(style)
    mode = mode or cfg.stylize.mode
    if mode not in MODES:
        raise UserError(f"--mode must be texture or shape+texture, got {mode!r}")
    run_dir = Path(run_dir)
    latent = load_latent(run_dir)
    out = Path(out) if out is not None else default_style_out(run_dir, style, mode)
    return _stylize(
        run_dir, latent, style, cfg, out, mode, seed, stage1, clip, device, progress, command,
        preset, t_start,
    )  # fmt: skip


def _stylize(
    run_dir: Path,
    latent: dict[str, Any],
    style: str,
    cfg: StylizeConfig,
    out: Path,
    mode: str,
    seed: int,
    stage1: Path | None,
    clip: str | None,
    device: str,
    progress: bool,
    command: str | None,
    preset: str | None,
    t_start: float,
) -> int:
    from iss3d.core.atomic import atomic_directory
    from iss3d.infer.session import Progress, build_guide, load_ensemble
    from iss3d.infer.shape_files import frames_score, render_shape, write_run_files, write_shape

    st, ex = cfg.stylize, cfg.export
    timings: dict[str, float] = {}
    seen: list[str] = []
    with atomic_directory(out) as folder:
        t0 = time.perf_counter()
        dev, note = resolve_device(device)
        torch.manual_seed(seed)  # random-weight CLIP specs (clip/<name>) draw from it
        model, stage1_path, clip_model, clip_spec = _resolve_for(run_dir, latent, stage1, clip, dev)
        if note:
            print(f"iss3d: {note}", file=sys.stderr)
        decoder, c = model.decoder, _latent_for(run_dir, latent, model, stage1_path, dev, seen)
        members, weights = load_ensemble(clip_model, st.guidance, dev)
        timings["load_models_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        guide, schedule = build_guide(members, weights, style, st.guidance, seen)
        prompt_feature = clip_model.encode_text([latent["prompt"]])[0]
        timings["encode_text_s"] = time.perf_counter() - t0

        bar = Progress(st.steps, f"stylize ({mode})", progress)
        try:
            result = run_stylize(
                decoder, c, guide, st, torch.Generator().manual_seed(seed), mode=mode, callback=bar
            )
        finally:
            bar.close()
        timings["stylize_s"] = result.seconds
        seen += result.warnings
        tuned = result.decoder

        t0 = time.perf_counter()
        iou = shape_iou(decoder, tuned, c, st.iou_grid, st.march.chunk)
        timings["iou_s"] = time.perf_counter() - t0
        render = render_shape(tuned, c, (decoder, c), ex, st.march, st.cameras.mean_distance)
        timings.update(render.times)
        if not render.mesh_info["written"]:
            warn("the stylized shape is empty (no surface); no mesh written")
        color_change = _color_change(tuned, decoder, c, render.mesh.vertices)
        write_shape(render, folder)
        scores = {
            "clip_score_before": frames_score(clip_model, render.before, guide.prompt_feature),
            "clip_score_after": frames_score(clip_model, render.after, guide.prompt_feature),
            "prompt_score_before": frames_score(clip_model, render.before, prompt_feature),
            "prompt_score_after": frames_score(clip_model, render.after, prompt_feature),
        }
        _save_stylized(folder, mode, style, tuned, model.decoder_config, c, stage1_path)
        timings["total_s"] = time.perf_counter() - t_start
        facts = {"style": style, "mode": mode, "seed": seed, "run_dir": str(run_dir)}
        facts.update(prompt=latent["prompt"], preset=preset, command=command)
        report = _style_report(facts, cfg, stage1_path, clip_model, clip_spec, schedule, dev, seen)
        report.update(iou_to_initial=iou, iou_grid=st.iou_grid + 1, color_change=color_change)
        report.update(scores, clip_score_per_step=[h["clip_score"] for h in result.history])
        report.update(history=result.history, mesh=render.mesh_info, timings=timings)
        write_run_files(folder, report, cfg.to_dict(), command)
    change = "n/a" if color_change is None else f"{color_change:.3f}"
    print(
        f"wrote {out} ({'mesh.glb/.ply, ' if render.mesh_info['written'] else ''}turntable.gif, "
        f"views.png, report.json): CLIP score for {style!r} {scores['clip_score_before']:.4f} "
        f"-> {scores['clip_score_after']:.4f}, IoU to the initial shape {iou:.3f}, colour "
        f"change {change}{warning_suffix(result.warnings)}"
    )
    return 0


def _style_report(
    facts, cfg, stage1_path, clip_model, clip_spec, schedule, dev, seen
) -> dict[str, Any]:
    """The head of a stylization's report.json: ``facts`` (style, mode, seed, run folder,
    prompt, preset, command), the models, prompts, config, device, versions and warnings."""
    st = cfg.stylize
    return {
        **facts,
        "stage1": str(stage1_path),
        "clip": clip_spec,
        "clip_trained": bool(clip_model.trained),
        "ensemble": [m.spec for m in st.guidance.ensemble],
        "prompts": schedule.texts,
        "config": cfg.to_dict(),
        "device": device_info(dev),
        "versions": versions(),
        "warnings": seen,
    }


def _resolve_for(run_dir: Path, latent: dict[str, Any], stage1, clip, dev: torch.device):
    """The stage-1 model and CLIP of a generated shape: ``stage1`` / ``clip`` when given, else
    those its ``latent.pt`` records. Returns (model, stage-1 path, CLIP model, CLIP spec)."""
    from iss3d.infer.session import resolve_models

    stage1_path = Path(stage1) if stage1 is not None else Path(latent["stage1"])
    if stage1 is None and not stage1_path.is_file():
        raise UserError(
            f"{run_dir}: was generated with {stage1_path}, which does not exist; pass --stage1 CKPT"
        )
    clip_spec = clip if clip is not None else latent["clip"]
    try:
        return resolve_models(stage1_path, clip_spec, dev)
    except UserError as err:
        if clip is None and str(clip_spec) in str(err):
            raise UserError(
                f"{err} (the CLIP model {LATENT_FILE} records; pass --clip SPEC)"
            ) from None
        raise


def _latent_for(
    run_dir: Path, latent: dict[str, Any], model, stage1_path: Path, dev, seen: list[str]
) -> torch.Tensor:
    """The generated shape's (1, c_dim) latent on ``dev``, checked against the decoder; a
    decoder other than the one it was generated with is a warning (appended to ``seen``)."""
    from iss3d.infer.shape_files import decoder_fingerprint

    decoder = model.decoder
    if decoder_fingerprint(decoder) != latent.get("decoder_sha256"):
        text = (
            f"the decoder of {stage1_path} is not the one {run_dir} was generated with; "
            "the shape will differ"
        )
        seen.append(text)
        warn(text)
    c = latent["latent"].to(dev)
    if c.shape[1] != decoder.c_dim:
        raise UserError(
            f"{run_dir / LATENT_FILE}: a {c.shape[1]}-d latent, but the decoder of "
            f"{stage1_path} takes {decoder.c_dim}-d latents"
        )
    return c


def _save_stylized(folder: Path, mode, style, tuned, decoder_config, c, stage1_path) -> None:
    """``stylized.pt``: the tuned decoder, its kind and config, the latent and the stage-1
    checkpoint (``torch.load(..., weights_only=True)`` reads it)."""
    torch.save(
        {
            "format": _STYLIZED_FORMAT,
            "version": 1,
            "mode": mode,
            "style": style,
            "kind": "branched" if isinstance(tuned, BranchedDecoder) else "decoder",
            "decoder": {k: v.detach().cpu() for k, v in tuned.state_dict().items()},
            "decoder_config": config_lib.to_dict(decoder_config),
            "latent": c.detach().cpu(),
            "stage1": str(Path(stage1_path).resolve()),
        },
        folder / "stylized.pt",
    )
