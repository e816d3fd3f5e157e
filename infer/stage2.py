"""ISS stage 2: fine-tune the mapper M on one prompt by CLIP consistency of rendered views.

A lean PyTorch loop (no Lightning). From a stage-1 model (:func:`iss3d.infer.stage1.load_stage1`):

1. f_T = E_T(prompt), the stage-1 CLIP model's unit text feature. The mapper input is
   f = f_T (ISS feeds the text feature to the image-trained mapper; stage 1's noisy inputs
   make that work) and the target is f_T. For diversity (``diversity``) both are perturbed
   once per sample, f~ = normalize(tau f + (1 - tau) z) with z a unit Gaussian vector:
   tau_1 for the input (the initial shape), tau_2 for the target. The shape "before stage 2"
   is M_stage1(f), the one after it M_tuned(f).
2. The decoder D and every CLIP model are frozen; only M's parameters are optimised (Adam).
3. Each step draws m cameras (:mod:`iss3d.infer.view_sampling`), renders the latent c = M(f) from
   them with the decoder-drawn ("field") background (:func:`render_views`), augments the
   renders (:class:`iss3d.infer.guidance.Augmenter`), and minimises
   ``lambda_clip * L_C + lambda_bg * L_bg`` (:class:`iss3d.infer.guidance.Guide`; L_bg = mean
   |1 - rgb| over each view's background pixels, reduced over views like L_C; both losses
   are in :mod:`iss3d.models.losses`).

The CLIP score of a step is the mean cosine between the stage-1 CLIP embeddings of that
step's un-augmented renders and the plain (unperturbed) text feature of the prompt.

A step whose loss, CLIP score or gradients are not finite (NaN or infinite) is skipped: no
optimiser update, the reason in its history record (``"skipped"``), never kept by
``keep: best``, and counted in the result's warnings (:func:`skipped_warnings`).
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from iss3d.core.config import StrictConfig
from iss3d.core.errors import UserError
from iss3d.data.cameras import pixel_coords, rays
from iss3d.infer.guidance import AugmentConfig, Augmenter, GuidanceConfig, Guide
from iss3d.infer.view_sampling import CameraConfig, Views, sample_views
from iss3d.models.losses import reduce_views, view_background_loss
from iss3d.models.mapper import Mapper, perturb_feature
from iss3d.models.march import ImplicitField, MarchConfig, cube_interval
from iss3d.models.renderer import Renderer

__all__ = [
    "SKIP_REASONS",
    "BestMapper",
    "DiversityConfig",
    "GuidedLoss",
    "PhaseClock",
    "RenderedViews",
    "Stage2Config",
    "Stage2Loop",
    "Stage2Result",
    "finish_stage2",
    "guarded_step",
    "guided_loss",
    "make_augmenter",
    "parameters_changed",
    "render_views",
    "run_stage2",
    "skip_reason",
    "skipped_warnings",
    "stage2_input",
    "step_record",
]

#: Why a step was skipped (its record's ``"skipped"``) -> how :func:`skipped_warnings` says it.
SKIP_REASONS = {
    "non-finite loss": "a non-finite loss",
    "non-finite CLIP score": "a non-finite CLIP score",
    "non-finite gradients": "non-finite gradients",
}


@dataclass
class DiversityConfig:
    """Feature perturbation for diverse samples (YAML section ``stage2.diversity``).

    tau_1: weight of f in the mapper input normalize(tau_1 f + (1 - tau_1) z) (1: no noise).
    tau_2: the same for the CLIP target.
    when: ``"samples"``: perturb only when several samples are asked for (``--samples K``,
        K > 1; a single sample is plain ISS); ``"always"``; ``"never"``.
    """

    tau_1: float = 0.5
    tau_2: float = 0.8
    when: Literal["samples", "always", "never"] = "samples"

    def __post_init__(self) -> None:
        for name in ("tau_1", "tau_2"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"diversity config: {name!r} must be in [0, 1]")

    def active(self, samples: int) -> bool:
        return self.when == "always" or (self.when == "samples" and samples > 1)


@dataclass
class Stage2Config(StrictConfig):
    """The stage-2 loop (YAML section ``stage2``); defaults are the official code's.

    Attributes:
        steps: optimisation steps (20; harder prompts 30).
        views: views rendered per step, m (10).
        resolution: render side in pixels (90; CLIP resizes to its input size).
        lr, betas: Adam on the mapper (1e-4).
        march: the renderer's :class:`iss3d.models.march.MarchConfig` (n_steps 128, 8 secant steps).
        pixel_convention: "center" (our renders) or "dvr".
        cameras: the camera distribution (:class:`iss3d.infer.view_sampling.CameraConfig`).
        guidance: losses, prompts, augmentations, ensemble (:class:`GuidanceConfig`).
        diversity: tau_1 / tau_2 (:class:`DiversityConfig`).
        keep: which mapper the loop returns: "last" (after the final step, the official
            code's) or "best" (an addition of ours: the one whose renders had the highest
            guidance CLIP score among the steps with a non-empty render and a finite loss and
            score; with a learning rate that suits most prompts, some thin shapes otherwise
            vanish in the last steps).
    """

    CONFIG_NAME: ClassVar[str] = "stage2 config"

    steps: int = 20
    views: int = 10
    resolution: int = 90
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    march: MarchConfig = field(default_factory=MarchConfig)
    pixel_convention: Literal["center", "dvr"] = "center"
    cameras: CameraConfig = field(default_factory=CameraConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    diversity: DiversityConfig = field(default_factory=DiversityConfig)
    keep: Literal["last", "best"] = "last"

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise UserError(f"stage2 config: 'steps' must be positive, got {self.steps}")
        if self.views <= 0:
            raise UserError(f"stage2 config: 'views' must be positive, got {self.views}")
        if self.resolution < 8:
            raise UserError(
                f"stage2 config: 'resolution' must be at least 8, got {self.resolution}"
            )
        if self.lr <= 0:
            raise UserError(f"stage2 config: 'lr' must be > 0, got {self.lr}")


# -- rendering --------------------------------------------------------------------------------


@dataclass
class RenderedViews:
    """Renders of one latent from V views.

    rgb: (V, 3, H, W) in [0, 1], the decoder-drawn background (white where a ray misses the
        padded cube); differentiable with respect to the latent.
    foreground: (V, 1, H, W) float, 1 where the ray hits the surface (or starts inside).
    background: (V, 1, H, W) bool, rays inside the cube that miss the object: where L_bg acts.
    bg_loss: (V,) mean |1 - rgb| over each view's background pixels (0 for a view with none;
        :func:`iss3d.models.losses.view_background_loss`).
    evaluations: decoder points spent.
    """

    rgb: torch.Tensor
    foreground: torch.Tensor
    background: torch.Tensor
    bg_loss: torch.Tensor
    evaluations: int


def render_views(
    renderer: Renderer,
    field: ImplicitField,
    c: torch.Tensor,
    views: Views,
    resolution: int,
    padding: float,
    pixel_convention: str = "center",
) -> RenderedViews:
    """Render one latent ``c`` (1, c_dim) from every camera of ``views`` in one batch of rays.

    Only rays that meet the padded cube are marched (the rest show white, the colour stage 1
    trains the decoder-drawn background to): for distant cameras most rays miss the cube. With
    ``outside_cube: march`` (DVR's convention) every ray is marched.
    """
    v, h, w = len(views), resolution, resolution
    world, camera, scale = views.world_mat, views.camera_mat, views.scale_mat
    device = c.device
    xy = pixel_coords(h, w, pixel_convention).to(device)
    origins, dirs = rays(
        xy.expand(v, -1, -1), world.to(device), camera.to(device), scale.to(device)
    )
    t_near, t_far = cube_interval(origins, dirs, 0.5 + padding / 2)
    marched = t_far > t_near
    if renderer.cfg.outside_cube == "march":  # DVR: rays that miss the cube are marched too
        marched = torch.ones_like(marched)
    index = marched.reshape(-1).nonzero().squeeze(1)
    out = renderer.render_rays(
        field, c, origins.reshape(-1, 3)[index][None], dirs.reshape(-1, 3)[index][None], "field"
    )
    n = v * h * w
    rgb = torch.ones(n, 3, device=device, dtype=out.rgb.dtype).index_put((index,), out.rgb[0])
    fg_rays = out.hits.mask[0]
    foreground = torch.zeros(n, dtype=torch.bool, device=device).index_put((index,), fg_rays)
    background = torch.zeros(n, dtype=torch.bool, device=device).index_put((index,), ~fg_rays)
    rgb = rgb.reshape(v, h * w, 3)
    background = background.reshape(v, h * w)
    bg_loss = view_background_loss(rgb, background)
    return RenderedViews(
        rgb=rgb.transpose(1, 2).reshape(v, 3, h, w),
        foreground=foreground.reshape(v, 1, h, w).float(),
        background=background.reshape(v, 1, h, w),
        bg_loss=bg_loss,
        evaluations=out.hits.evaluations,
    )


# -- one guided step (stage 2 and stylization) ---------------------------------------------------


@dataclass
class GuidedLoss:
    """The CLIP guidance of one step on V views of one latent.

    total: ``lambda_clip * loss_clip + lambda_bg * loss_bg``, a differentiable scalar.
    loss_clip: L_C of the augmented renders (:meth:`iss3d.infer.guidance.Guide.loss`).
    loss_bg: L_bg, the views' background losses reduced like L_C.
    score: the CLIP score: mean cosine between the first CLIP model's embeddings of the
        un-augmented renders and ``guide.prompt_feature``.
    rendered: the renders (:class:`RenderedViews`).
    """

    total: torch.Tensor
    loss_clip: torch.Tensor
    loss_bg: torch.Tensor
    score: float
    rendered: RenderedViews


def make_augmenter(
    cfg: AugmentConfig, generator: torch.Generator, device: torch.device
) -> Augmenter:
    """An :class:`Augmenter` drawing from the CPU ``generator``; off the CPU its crops draw
    from a device generator seeded from ``generator`` (one draw)."""
    device_generator = None
    if device.type != "cpu":
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        device_generator = torch.Generator(device).manual_seed(seed)
    return Augmenter(cfg, generator, device_generator)


def guided_loss(
    renderer: Renderer,
    field: ImplicitField,
    c: torch.Tensor,
    views: Views,
    guide: Guide,
    augment: Augmenter,
    guidance: GuidanceConfig,
    resolution: int,
    padding: float,
    pixel_convention: str = "center",
    lap: Callable[[str], None] | None = None,
) -> GuidedLoss:
    """Render ``c`` (1, c_dim) through ``field`` from ``views`` (:func:`render_views`), augment
    the renders and compute ``lambda_clip * L_C + lambda_bg * L_bg`` (weights and the
    reduction over views from ``guidance``). Gradients reach whatever requires them: the
    latent (stage 2) or the field's parameters (stylization). ``lap`` (a :class:`PhaseClock`'s)
    is called with "render" after the render and "clip" after the loss."""
    r = render_views(renderer, field, c, views, resolution, padding, pixel_convention)
    if lap is not None:
        lap("render")
    images = augment(r.rgb, r.foreground)
    loss_clip, _, embeddings = guide.loss(images, views.azimuth, views.elevation)
    loss_bg = reduce_views(r.bg_loss, guidance.aggregation)
    total = guidance.lambda_clip * loss_clip + guidance.lambda_bg * loss_bg
    with torch.no_grad():
        emb = embeddings[0]
        if guidance.augment.active or emb is None:
            emb = guide.clips[0].encode_image(r.rgb.detach())
        score = float((emb @ guide.prompt_feature.to(emb.device).reshape(-1)).mean())
    if lap is not None:
        lap("clip")
    return GuidedLoss(total, loss_clip, loss_bg, score, r)


class PhaseClock:
    """Wall seconds of the named phases of one step, for benchmarks.

    :meth:`lap` ends the phase named, which began at the previous lap (or :meth:`start`); on
    CUDA it waits for the queued work first, so that a phase's time is its own (this
    synchronisation slows a loop down a little: only timed runs use a clock).

    Args:
        device: where the step runs.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def start(self) -> None:
        """Forget the previous step's phases; the next lap's phase begins now."""
        self.seconds = {}
        self._sync()
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        """End phase ``name`` now (its seconds add up if it is lapped twice in a step)."""
        self._sync()
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# -- non-finite steps -----------------------------------------------------------------------------


def skip_reason(loss: torch.Tensor, score: float) -> str | None:
    """Why a step with this scalar ``loss`` and CLIP ``score`` must be skipped (a key of
    :data:`SKIP_REASONS`: "non-finite loss" or "non-finite CLIP score"), or None."""
    if not bool(torch.isfinite(loss.detach())):
        return "non-finite loss"
    if not math.isfinite(score):
        return "non-finite CLIP score"
    return None


def guarded_step(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    reason: str | None,
    lap: Callable[[str], None] | None = None,
) -> str | None:
    """One optimiser step on the scalar ``loss`` unless it is skipped: when ``reason`` (from
    :func:`skip_reason`) is given, or when the gradients are not all finite ("non-finite
    gradients"). A skipped step leaves the parameters, their gradients (None) and the
    optimiser's state as they were. ``lap`` (a :class:`PhaseClock`'s) is called with
    "backward" and "optimizer", skipped or not. Returns the reason the step was skipped, or
    None."""
    optimizer.zero_grad(set_to_none=True)
    if reason is None:
        loss.backward()
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        finite = [torch.isfinite(g).all() for g in grads if g is not None]
        if finite and not bool(torch.stack(finite).all()):
            optimizer.zero_grad(set_to_none=True)
            reason = "non-finite gradients"
    if lap is not None:
        lap("backward")
    if reason is None:
        optimizer.step()
    if lap is not None:
        lap("optimizer")
    return reason


def parameters_changed(before: list[torch.Tensor], after: list[torch.Tensor]) -> bool:
    """Whether any of the tensors ``after`` differs from its copy in ``before``."""
    return any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def skipped_warnings(label: str, history: list[dict[str, Any]]) -> list[str]:
    """One warning per reason steps of a loop's ``history`` were skipped (the records'
    ``"skipped"``), e.g. "stage 2: 10 of 10 steps had a non-finite loss and were skipped"
    for ``label`` "stage 2"."""
    counts = Counter(r["skipped"] for r in history if r["skipped"] is not None)
    return [
        f"{label}: {n} of {len(history)} steps had {SKIP_REASONS[reason]} and "
        f"{'was' if n == 1 else 'were'} skipped"
        for reason, n in counts.items()
    ]


# -- the loop -----------------------------------------------------------------------------------


@dataclass
class Stage2Result:
    """What stage 2 gives for one sample.

    mapper: the fine-tuned copy of M (eval mode, frozen).
    mapper_input: (1, D) the feature fed to M (f_T, perturbed by tau_1 when diversity is on).
    latent_before: (1, c_dim) M_stage1(f); latent_after: (1, c_dim) M_tuned(f). Detached.
    history: per step ``{"step", "clip_score", "loss", "loss_clip", "loss_bg", "seconds",
        "evaluations_per_pixel", "skipped"}`` (decoder points per rendered pixel; why the
        step made no update, a key of :data:`SKIP_REASONS`, or None) and the phase seconds
        when timed.
    perturbed: whether the input and target were perturbed.
    seconds: wall time of the loop.
    kept_step: the step whose mapper was kept (``keep: best``): its renders' score is the
        best; None: the mapper after the last step (``keep: last``, or no step with a
        non-empty render and a finite loss and score).
    warnings: what went wrong, one line each: skipped steps (:func:`skipped_warnings`) and
        "stage 2 left the shape unchanged" when the returned mapper is the stage-1 one.
    """

    mapper: Mapper
    mapper_input: torch.Tensor
    latent_before: torch.Tensor
    latent_after: torch.Tensor
    history: list[dict[str, Any]]
    perturbed: bool
    seconds: float
    kept_step: int | None = None
    warnings: list[str] = field(default_factory=list)


class BestMapper:
    """The mapper state of the step whose renders scored best, for ``keep: best``.

    score, step: that step's CLIP score and index; state: a copy of the mapper's state dict
    before that step's update (the mapper that made the renders). All None until
    :meth:`offer` is first called.
    """

    def __init__(self) -> None:
        self.score: float | None = None
        self.step: int | None = None
        self.state: dict[str, torch.Tensor] | None = None

    def offer(self, score: float, step: int, mapper: Mapper) -> None:
        """Keep a copy of ``mapper``'s state when ``score`` beats the best so far."""
        if self.state is None or score > self.score:
            self.score, self.step = score, step
            self.state = {k: v.clone() for k, v in mapper.state_dict().items()}

    def restore(self, mapper: Mapper) -> None:
        """Load the kept state into ``mapper`` (nothing when none was kept)."""
        if self.state is not None:
            mapper.load_state_dict(self.state)


def stage2_input(
    guide: Guide, diversity: DiversityConfig, generator: torch.Generator, perturb: bool
) -> torch.Tensor:
    """The mapper input f (1, D) on the CPU: ``guide.prompt_feature`` f_T, or with ``perturb``
    normalize(tau_1 f_T + (1 - tau_1) z); then ``guide``'s targets are perturbed in place by
    tau_2 (both draws from ``generator``, in this order)."""
    f_text = guide.prompt_feature.detach().float().cpu().reshape(1, -1)
    if not perturb:
        return f_text
    f_in = perturb_feature(f_text, diversity.tau_1, generator)
    guide.perturb_targets(diversity.tau_2, generator)
    return f_in


@dataclass
class Stage2Loop:
    """What the steps of one :func:`run_stage2` share.

    tuned: the mapper being fine-tuned (train mode); f_in: (1, D) its input on its device.
    decoder, guide, renderer, augment, optimizer: as :func:`guided_loss` and
    :func:`guarded_step` take them. generator: the CPU generator (cameras).
    clock: the phase clock when timed, else None. best: the best-scored mapper so far.
    """

    cfg: Stage2Config
    tuned: Mapper
    f_in: torch.Tensor
    decoder: torch.nn.Module
    guide: Guide
    renderer: Renderer
    augment: Augmenter
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    clock: PhaseClock | None
    best: BestMapper

    def step(self, step: int) -> dict[str, Any]:
        """One step: sample views, render M(f), the guided loss, an optimiser update unless
        skipped (:func:`skip_reason`, :func:`guarded_step`); returns the step's record."""
        cfg, clock = self.cfg, self.clock
        t0 = time.perf_counter()
        if clock is not None:
            clock.start()
        lap = clock.lap if clock is not None else None
        views = sample_views(cfg.cameras, cfg.views, self.generator)
        c = self.tuned(self.f_in)
        out = guided_loss(
            self.renderer,
            self.decoder,
            c,
            views,
            self.guide,
            self.augment,
            cfg.guidance,
            cfg.resolution,
            cfg.march.padding,
            cfg.pixel_convention,
            lap=lap,
        )
        skipped = skip_reason(out.total, out.score)
        candidate = skipped is None and bool(out.rendered.foreground.any())
        if cfg.keep == "best" and candidate:
            # the mapper that made these renders, before this step's update
            self.best.offer(out.score, step, self.tuned)
        skipped = guarded_step(self.optimizer, out.total, skipped, lap)
        return step_record(step, out, skipped, time.perf_counter() - t0, clock)


def step_record(
    step: int, out: GuidedLoss, skipped: str | None, seconds: float, clock: PhaseClock | None
) -> dict[str, Any]:
    """A step's history record (see :class:`Stage2Result`), with the phase seconds when timed."""
    record = {
        "step": step,
        "clip_score": out.score,
        "loss": float(out.total.detach()),
        "loss_clip": float(out.loss_clip.detach()),
        "loss_bg": float(out.loss_bg.detach()),
        "seconds": seconds,
        "evaluations_per_pixel": out.rendered.evaluations / out.rendered.rgb[:, 0].numel(),
        "skipped": skipped,
    }
    if clock is not None:
        record.update({f"{name}_s": value for name, value in clock.seconds.items()})
    return record


def run_stage2(
    mapper: Mapper,
    decoder: torch.nn.Module,
    guide: Guide,
    cfg: Stage2Config,
    generator: torch.Generator,
    *,
    perturb: bool = False,
    renderer: Renderer | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    phases: bool = False,
) -> Stage2Result:
    """Fine-tune a copy of ``mapper`` for ``guide``'s prompt; ``mapper`` is not modified.

    Args:
        mapper: the stage-1 mapper M, on the device to run on.
        decoder: the stage-1 decoder D (frozen here: its requires_grad is switched off).
        guide: the prompt(s) and CLIP model(s); its targets are perturbed in place by tau_2
            when ``perturb``.
        cfg: the loop's settings.
        generator: a CPU ``torch.Generator``: every random draw (noise, cameras, augmentations)
            comes from it, so a seed gives the same result (bit for bit on the CPU).
        perturb: apply the diversity perturbation (tau_1 on the input, tau_2 on the target).
        renderer: the renderer (default: the reference :class:`Renderer` with ``cfg.march``).
        callback: called with each step's record (progress bars).
        phases: time each step's phases (a :class:`PhaseClock`, which synchronises CUDA): the
            records get ``render_s`` (mapper and render), ``clip_s`` (augmentations, CLIP
            and the losses), ``backward_s`` and ``optimizer_s``.
    """
    device = next(mapper.parameters()).device
    renderer = renderer or Renderer(cfg.march)
    decoder.eval().requires_grad_(False)
    f_in = stage2_input(guide, cfg.diversity, generator, perturb).to(device)
    tuned = copy.deepcopy(mapper).train().requires_grad_(True)
    with torch.no_grad():
        latent_before = mapper(f_in).detach()
    augment = make_augmenter(cfg.guidance.augment, generator, device)
    optimizer = torch.optim.Adam(tuned.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    clock = PhaseClock(device) if phases else None
    loop = Stage2Loop(
        cfg,
        tuned,
        f_in,
        decoder,
        guide,
        renderer,
        augment,
        optimizer,
        generator,
        clock,
        BestMapper(),
    )
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    for step in range(cfg.steps):
        record = loop.step(step)
        history.append(record)
        if callback is not None:
            callback(record)
    return finish_stage2(mapper, loop, history, latent_before, perturb, start)


def finish_stage2(
    mapper: Mapper,
    loop: Stage2Loop,
    history: list[dict[str, Any]],
    latent_before: torch.Tensor,
    perturb: bool,
    start: float,
) -> Stage2Result:
    """The result of a finished loop: the kept mapper (the best-scored one with ``keep: best``,
    else the last), frozen in eval mode, its latent, and the warnings (skipped steps; "stage 2
    left the shape unchanged" when it equals the stage-1 ``mapper``). ``start``: the loop's
    ``time.perf_counter()`` at its start."""
    tuned, f_in = loop.tuned, loop.f_in
    loop.best.restore(tuned)
    tuned.eval().requires_grad_(False)
    with torch.no_grad():
        latent_after = tuned(f_in).detach()
    warnings = skipped_warnings("stage 2", history)
    if not parameters_changed(list(mapper.parameters()), list(tuned.parameters())):
        warnings.append("stage 2 left the shape unchanged")
    return Stage2Result(
        mapper=tuned,
        mapper_input=f_in.detach(),
        latent_before=latent_before,
        latent_after=latent_after,
        history=history,
        perturbed=perturb,
        seconds=time.perf_counter() - start,
        kept_step=loop.best.step,
        warnings=warnings,
    )
