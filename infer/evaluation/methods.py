"""The methods ``iss3d evaluate`` compares: each turns one prompt into one shape.

A shape is an implicit field plus its latent (:class:`GeneratedShape`): the stage-1 decoder
with a latent c for the ISS variants, an E_I + D decoder with c = f_T, or a voxel grid whose
values are the latent for pure CLIP guidance. Every variant with a stage 2 runs
:func:`iss3d.infer.stage2.run_stage2` (no second loop here).

==============  ===========================================================================
method          what it does (models it needs)
==============  ===========================================================================
``full``        ISS: stage 2 from the stage-1 mapper (``stage1``)
``no-stage2``   the stage-1 mapper's M(f_T), no stage 2 (``stage1``)
``no-stage1``   stage 2 from an untrained mapper (ISS init, seeded per item) with the stage-1
                decoder (``stage1``)
``ei-d``        E_I + D: a decoder trained on CLIP image features used directly as the
                latent, fed f_T; no mapper, no stage 2 (``ei_d``: ``iss3d fit eid``)
``no-bg1``      ISS with a stage 1 trained without L_bg (``stage1_nobg``: ``iss3d fit stage1
                ... loss.lambda_bg=0``)
``no-bg2``      ISS with stage 2 without L_bg (``stage2.guidance.lambda_bg = 0``; ``stage1``)
``no-bg``       both (``stage1_nobg``)
``pure-clip``   no mapper, no shape prior: a voxel grid (occupancy + colour logits, trilinear)
                optimised from a small sphere per prompt by CLIP loss with random
                backgrounds, crops and perspective (Dream Fields / pure-CLIP voxel grids;
                the same stage-2 loop, the grid as the "mapper" output; needs a CLIP only)
==============  ===========================================================================

With diversity on (several samples), the mapper input (or E_I + D's f_T) is perturbed with
tau_1 and the stage-2 target with tau_2, as in ``iss3d generate``.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from iss3d.core import config as config_lib
from iss3d.core.errors import UserError
from iss3d.infer.guidance import GuidanceConfig, Guide, PromptSchedule
from iss3d.infer.stage2 import Stage2Config, run_stage2
from iss3d.models.loaders import EIDModel
from iss3d.models.mapper import perturb_feature

__all__ = [
    "METHODS",
    "MODEL_FLAGS",
    "GeneratedShape",
    "LatentParameter",
    "MethodContext",
    "MethodSpec",
    "PureClipConfig",
    "ShapeRequest",
    "VoxelField",
]


# -- pure CLIP guidance: a voxel grid as the latent ---------------------------------------------


class VoxelField(nn.Module):
    """An occupancy + colour voxel grid used as an implicit field; the grid is the latent.

    c: (1, 4 G^3) (or (B, 4 G^3)): channel 0 the occupancy logit, 1:4 RGB logits, on a G^3
    lattice spanning [-half, half]^3 (corners on the lattice; trilinear in between, the
    border value outside). No parameters of its own: :func:`iss3d.infer.stage2.run_stage2`
    optimises the grid through :class:`LatentParameter`.
    """

    def __init__(self, resolution: int, half: float):
        super().__init__()
        if resolution < 2:
            raise ValueError(f"voxel grid resolution must be >= 2, got {resolution}")
        self.resolution = int(resolution)
        self.half = float(half)

    @property
    def latent_dim(self) -> int:
        return 4 * self.resolution**3

    def _sample(self, points: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) points, (1 or B, 4 G^3) -> (B, N, 4)."""
        b, n = points.shape[:2]
        g = self.resolution
        grid = c.reshape(c.shape[0], 4, g, g, g).expand(b, 4, g, g, g)
        # the grid is stored [x, y, z]; grid_sample's coordinates index (W, H, D) = (z, y, x)
        coords = (points[..., [2, 1, 0]] / self.half).reshape(b, 1, 1, n, 3)
        out = F.grid_sample(
            grid, coords.to(grid.dtype), mode="bilinear", padding_mode="border", align_corners=True
        )
        return out.reshape(b, 4, n).transpose(1, 2)

    def occupancy(self, points: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, 3) -> (B, N) occupancy logits (surface at 0)."""
        return self._sample(points, c)[..., 0]

    def rgb(self, points: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, 3) -> (B, N, 3) colours in [0, 1]."""
        return torch.sigmoid(self._sample(points, c)[..., 1:])

    def occupancy_and_rgb(
        self, points: torch.Tensor, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, 3) -> (B, N) occupancy logits and (B, N, 3) colours, one lookup."""
        out = self._sample(points, c)
        return out[..., 0], torch.sigmoid(out[..., 1:])

    def initial_latent(self, radius: float, sharpness: float) -> torch.Tensor:
        """(1, 4 G^3): a grey sphere of ``radius``, occupancy logit sharpness * (radius - |p|)."""
        g = self.resolution
        axis = torch.linspace(-self.half, self.half, g)
        p = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), 0)  # (3, G, G, G)
        occ = sharpness * (radius - p.norm(dim=0))
        grid = torch.cat([occ[None], torch.zeros(3, g, g, g)], 0)
        return grid.reshape(1, -1)


class LatentParameter(nn.Module):
    """A "mapper" whose output is one learnt latent, whatever its input: lets
    :func:`iss3d.infer.stage2.run_stage2` optimise a latent (a voxel grid) directly."""

    def __init__(self, initial: torch.Tensor):
        super().__init__()
        self.latent = nn.Parameter(initial.detach().clone().reshape(1, -1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.latent.expand(features.shape[0], -1)


def _pure_clip_stage2() -> Stage2Config:
    guidance = GuidanceConfig(lambda_clip=1.0, lambda_bg=0.0)
    guidance.augment = dataclasses.replace(
        guidance.augment, background="random", crop=True, perspective=0.2
    )
    return Stage2Config(steps=200, views=8, resolution=64, lr=5e-2, guidance=guidance)


@dataclass
class PureClipConfig:
    """The pure-CLIP baseline (YAML section ``pure_clip``).

    grid: voxels per side G (4 G^3 values are optimised).
    init_radius, init_sharpness: the initial grey sphere (object units; logit slope).
    stage2: the optimisation loop (:class:`iss3d.infer.stage2.Stage2Config`; default: 200 steps of
        8 views at 64 px, Adam 5e-2 on the grid, random backgrounds + crops + perspective,
        no L_bg).
    """

    grid: int = 32
    init_radius: float = 0.3
    init_sharpness: float = 20.0
    stage2: Stage2Config = field(default_factory=_pure_clip_stage2)

    def __post_init__(self) -> None:
        if self.grid < 2:
            raise UserError(f"pure_clip config: 'grid' must be >= 2, got {self.grid}")
        if not 0 < self.init_radius < 0.5 or self.init_sharpness <= 0:
            raise UserError("pure_clip config: init_radius in (0, 0.5), init_sharpness > 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PureClipConfig:
        return config_lib.from_dict(cls, d, "pure_clip config")


# -- E_I + D ------------------------------------------------------------------------------------


# -- the registry -------------------------------------------------------------------------------


#: The command-line flag that provides each model a method may need.
MODEL_FLAGS = {
    "stage1": "--stage1 CKPT (or models/pretrained/stage1.ckpt)",
    "stage1_nobg": "--stage1-nobg CKPT (`iss3d fit stage1 ... loss.lambda_bg=0`)",
    "ei_d": "--ei-d CKPT (`iss3d fit eid`)",
    "clip": "--clip SPEC (or a stage-1 checkpoint that records its CLIP)",
}


@dataclass
class ShapeRequest:
    """One item to generate: the prompt, its sample index, seed and random generator (CPU),
    and whether the diversity perturbation is on."""

    prompt: str
    sample: int
    seed: int
    generator: torch.Generator
    perturb: bool


@dataclass
class GeneratedShape:
    """A method's result: ``field`` (occupancy + rgb) conditioned on ``latent`` (1, D) (None
    for an unconditional field); ``history`` the optimisation records (stage 2), ``info``
    extra facts for the report, ``warnings`` stage 2's
    (:attr:`iss3d.infer.stage2.Stage2Result.warnings`)."""

    field: Any
    latent: torch.Tensor | None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[str] = dataclasses.field(default_factory=list)


class MethodContext:
    """The models every method shares, loaded once.

    Args:
        stage2: the ISS stage-2 settings; pure_clip: the pure-CLIP baseline's.
        clip: the guidance CLIP (:class:`iss3d.models.clip.ClipModel`).
        stage1, stage1_nobg: :class:`iss3d.infer.stage1.Stage1Model` or None.
        ei_d: :class:`EIDModel` or None.
        ensemble: extra guidance CLIP models by spec (``stage2.guidance.ensemble``).
        padding: the renderer's cube padding (the voxel grid spans the padded cube).
    """

    def __init__(
        self,
        stage2: Stage2Config,
        pure_clip: PureClipConfig,
        clip,
        stage1=None,
        stage1_nobg=None,
        ei_d: EIDModel | None = None,
        ensemble: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
    ):
        self.stage2 = stage2
        self.pure_clip = pure_clip
        self.clip = clip
        self.stage1 = stage1
        self.stage1_nobg = stage1_nobg
        self.ei_d = ei_d
        self.ensemble = dict(ensemble or {})
        self.device = torch.device(device)

    def available(self, need: str) -> bool:
        return getattr(self, need) is not None

    def guide(self, prompt: str, guidance: GuidanceConfig) -> Guide:
        """The CLIP guide of ``prompt``: the guidance CLIP first, then ``guidance.ensemble``."""
        members, weights = [self.clip], [guidance.clip_weight]
        for member in guidance.ensemble:
            if member.spec not in self.ensemble:
                from iss3d.models.clip import load_clip

                self.ensemble[member.spec] = load_clip(member.spec, self.device)
            members.append(self.ensemble[member.spec])
            weights.append(member.weight)
        return Guide(members, weights, PromptSchedule(prompt, guidance), guidance)

    def text_input(self, prompt: str, request: ShapeRequest, tau: float) -> torch.Tensor:
        """(1, D) the guidance CLIP's unit text feature of ``prompt``, perturbed with ``tau``
        (from the request's generator) when the request perturbs."""
        f = self.clip.encode_text([prompt])[0].detach().float().cpu().reshape(1, -1)
        if request.perturb:
            f = perturb_feature(f, tau, request.generator)
        return f.to(self.device)


@dataclass(frozen=True)
class MethodSpec:
    """One method: ``name`` (CLI), ``title`` (the report's row), ``needs`` (model keys of
    :class:`MethodContext`), ``run(ctx, request) -> GeneratedShape``."""

    name: str
    title: str
    description: str
    needs: tuple[str, ...]
    run: Callable[[MethodContext, ShapeRequest], GeneratedShape]


def _without_bg(cfg: Stage2Config) -> Stage2Config:
    out = copy.deepcopy(cfg)
    out.guidance.lambda_bg = 0.0
    return out


def _iss(model_key: str, no_bg2: bool = False):
    def run(ctx: MethodContext, req: ShapeRequest) -> GeneratedShape:
        model = getattr(ctx, model_key)
        cfg = _without_bg(ctx.stage2) if no_bg2 else ctx.stage2
        guide = ctx.guide(req.prompt, cfg.guidance)
        result = run_stage2(
            model.mapper, model.decoder, guide, cfg, req.generator, perturb=req.perturb
        )
        return GeneratedShape(
            model.decoder,
            result.latent_after,
            result.history,
            {"latent_norm_before": float(result.latent_before.norm())},
            result.seconds,
            result.warnings,
        )

    return run


def _no_stage2(ctx: MethodContext, req: ShapeRequest) -> GeneratedShape:
    t0 = time.perf_counter()
    model = ctx.stage1
    f = ctx.text_input(req.prompt, req, ctx.stage2.diversity.tau_1)
    with torch.no_grad():
        c = model.mapper(f).detach()
    return GeneratedShape(model.decoder, c, [], {}, time.perf_counter() - t0)


def _no_stage1(ctx: MethodContext, req: ShapeRequest) -> GeneratedShape:
    model = ctx.stage1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(req.seed)
        fresh = model.mapper_config.build()
    fresh = fresh.to(ctx.device).eval()
    guide = ctx.guide(req.prompt, ctx.stage2.guidance)
    result = run_stage2(fresh, model.decoder, guide, ctx.stage2, req.generator, perturb=req.perturb)
    return GeneratedShape(
        model.decoder, result.latent_after, result.history, {}, result.seconds, result.warnings
    )


def _ei_d(ctx: MethodContext, req: ShapeRequest) -> GeneratedShape:
    t0 = time.perf_counter()
    c = ctx.text_input(req.prompt, req, ctx.stage2.diversity.tau_1)
    return GeneratedShape(ctx.ei_d.decoder, c, [], {}, time.perf_counter() - t0)


def _pure_clip(ctx: MethodContext, req: ShapeRequest) -> GeneratedShape:
    pc = ctx.pure_clip
    half = 0.5 + pc.stage2.march.padding / 2
    voxels = VoxelField(pc.grid, half)
    start = LatentParameter(voxels.initial_latent(pc.init_radius, pc.init_sharpness))
    guide = ctx.guide(req.prompt, pc.stage2.guidance)
    result = run_stage2(
        start.to(ctx.device), voxels, guide, pc.stage2, req.generator, perturb=req.perturb
    )
    return GeneratedShape(
        voxels,
        result.latent_after,
        result.history,
        {"grid": pc.grid},
        result.seconds,
        result.warnings,
    )


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in (
        MethodSpec(
            "full", "ISS (full)", "stage 2 from the stage-1 mapper", ("stage1",), _iss("stage1")
        ),
        MethodSpec(
            "no-stage2", "w/o stage 2", "the stage-1 mapper's M(f_T)", ("stage1",), _no_stage2
        ),
        MethodSpec(
            "no-stage1",
            "w/o stage 1",
            "stage 2 from an untrained mapper",
            ("stage1",),
            _no_stage1,
        ),
        MethodSpec(
            "ei-d",
            "E_I + D",
            "a decoder on CLIP image features, fed f_T",
            ("ei_d",),
            _ei_d,
        ),
        MethodSpec(
            "no-bg1",
            "w/o L_bg in stage 1",
            "stage 1 trained without the background loss",
            ("stage1_nobg",),
            _iss("stage1_nobg"),
        ),
        MethodSpec(
            "no-bg2",
            "w/o L_bg in stage 2",
            "stage 2 without the background loss",
            ("stage1",),
            _iss("stage1", no_bg2=True),
        ),
        MethodSpec(
            "no-bg",
            "w/o L_bg (both stages)",
            "no background loss in either stage",
            ("stage1_nobg",),
            _iss("stage1_nobg", no_bg2=True),
        ),
        MethodSpec(
            "pure-clip",
            "pure CLIP guidance",
            "a voxel grid optimised from scratch by CLIP with augmentations",
            ("clip",),
            _pure_clip,
        ),
    )
}
