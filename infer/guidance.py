"""CLIP guidance for stage 2: augmentations, the prompt schedule and CLIP ensembles; the loss
L_C itself is :func:`iss3d.models.losses.clip_loss`.

The knobs cover ISS and the CLIP-guided systems of the same family (see DESIGN.md, "Other
systems"):

- loss kind (:func:`iss3d.models.losses.view_losses`): ``"cosine"``, 1 - cos(e_v, t) (ISS),
  or ``"inner"``, -<e_v, t> with e_v the *unnormalised* CLIP image embedding and t the unit
  text feature (SimplifiedCLIP's inner-product loss; its scale follows the embedding norm).
- aggregation (:func:`iss3d.models.losses.clip_loss`): ``"mean"`` of the per-view losses,
  their ``"sum"`` (ISS's official code sums over the views), or ``"mean_embedding"``: the
  loss of the mean image embedding of the views (SimplifiedCLIP). For the inner-product loss
  the mean embedding gives exactly the mean of the per-view losses (the loss is linear in e).
- prompts (:class:`PromptSchedule`): the main prompt with a weight, extra prompts with
  weights and optional azimuth ranges (ClipMatrix: each prompt its own cameras), and
  per-view prompts "front / side / back / overhead view of <prompt>" chosen by each view's
  azimuth and elevation.
- augmentations (:class:`Augmenter`): background colour (the decoder-drawn "field"
  background, a random solid colour per view, or per-pixel noise), a random resized crop,
  a random perspective warp.
- ensembles: several CLIP models with weights; each encodes the same augmented renders and
  compares them with its own text features (:class:`Guide`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from iss3d.core.errors import UserError
from iss3d.models.clip import ClipModel, RandomResizedCrop
from iss3d.models.losses import Aggregation, LossKind, clip_loss
from iss3d.models.mapper import perturb_feature

__all__ = [
    "AugmentConfig",
    "Augmenter",
    "ClipMember",
    "GuidanceConfig",
    "Guide",
    "PromptConfig",
    "PromptSchedule",
    "RandomPerspective",
    "clip_score",
    "image_embeddings",
    "view_label",
]

# -- configs ----------------------------------------------------------------------------------


@dataclass
class PromptConfig:
    """An extra prompt (YAML list ``stage2.guidance.prompts``).

    text: the prompt; ``{prompt}`` in it is replaced by the main prompt.
    weight: its weight against the other prompts that apply to a view (> 0).
    azimuth: [lo, hi] degrees: the prompt applies only to views whose azimuth lies in the
        range (wrapping at 360, so [315, 45] is the front); None: every view.
    """

    text: str
    weight: float = 1.0
    azimuth: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise UserError(f"guidance config: prompt weight must be > 0, got {self.weight}")


@dataclass
class ClipMember:
    """An extra CLIP model of the ensemble: a ``iss3d.models.clip.load_clip`` spec and a weight."""

    spec: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise UserError(f"guidance config: ensemble weight must be > 0, got {self.weight}")


@dataclass
class AugmentConfig:
    """Augmentations of the renders before CLIP (YAML section ``stage2.guidance.augment``).

    background: ``"field"``: the colour the decoder draws where a ray leaves the cube (stage 1
        trains it white; ISS); ``"random"``: one random solid colour per view; ``"noise"``:
        uniform per-pixel noise. L_bg is computed on the field colour whatever this is
        (set ``lambda_bg: 0`` to switch it off).
    crop: a random resized crop per view, area share in ``crop_scale``.
    perspective: distortion scale of a random perspective warp in [0, 1) (0: off): each
        image corner moves by up to this share of half the image side.
    """

    background: Literal["field", "random", "noise"] = "field"
    crop: bool = False
    crop_scale: tuple[float, float] = (0.6, 1.0)
    perspective: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise UserError(f"augment config: bad 'crop_scale' {list(self.crop_scale)}")
        if not 0.0 <= self.perspective < 1.0:
            raise UserError(
                f"augment config: 'perspective' must be in [0, 1), got {self.perspective}"
            )

    @property
    def active(self) -> bool:
        return self.background != "field" or self.crop or self.perspective > 0


@dataclass
class GuidanceConfig:
    """The CLIP guidance of stage 2 (YAML section ``stage2.guidance``).

    Attributes:
        loss: ``"cosine"`` (1 - cos) or ``"inner"`` (-<unnormalised image embedding, t>).
        aggregation: ``"mean"`` / ``"sum"`` of per-view losses, or ``"mean_embedding"``.
            L_bg is reduced over the views the same way (sum for "sum", else mean).
        lambda_clip: weight of L_C (official code: 4).
        lambda_bg: weight of L_bg, mean |1 - rgb| over each view's background pixels with the
            decoder-drawn background (official code: 3; 0 turns it off).
        prompt_weight: weight of the main prompt (0: only the extra prompts guide).
        prompts: extra prompts (:class:`PromptConfig`).
        view_prompts: replace the main prompt by ``view_template`` per view, with ``{view}``
            one of front / side / back / overhead (from the view's azimuth and elevation).
        view_template: the per-view prompt, ``{view}`` and ``{prompt}`` substituted.
        overhead_elevation: views at or above this elevation (degrees) are "overhead".
        clip_weight: weight of the stage-1 CLIP model in the ensemble.
        ensemble: extra CLIP models with weights (:class:`ClipMember`); their features need
            not have the stage-1 CLIP's size (each compares with its own text features).
        augment: :class:`AugmentConfig`.
    """

    loss: LossKind = "cosine"
    aggregation: Aggregation = "mean"
    lambda_clip: float = 1.0
    lambda_bg: float = 0.75
    prompt_weight: float = 1.0
    prompts: list[PromptConfig] = field(default_factory=list)
    view_prompts: bool = False
    view_template: str = "{view} view of {prompt}"
    overhead_elevation: float = 60.0
    clip_weight: float = 1.0
    ensemble: list[ClipMember] = field(default_factory=list)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.lambda_clip < 0 or self.lambda_bg < 0:
            raise UserError("guidance config: 'lambda_clip' and 'lambda_bg' must be >= 0")
        if self.prompt_weight < 0:
            raise UserError("guidance config: 'prompt_weight' must be >= 0")
        if self.prompt_weight == 0 and not self.prompts:
            raise UserError("guidance config: 'prompt_weight' is 0 and there are no other prompts")
        if self.clip_weight < 0:
            raise UserError("guidance config: 'clip_weight' must be >= 0")
        if self.clip_weight == 0 and not self.ensemble:
            raise UserError("guidance config: 'clip_weight' is 0 and the ensemble is empty")
        if "{view}" not in self.view_template or "{prompt}" not in self.view_template:
            raise UserError("guidance config: 'view_template' needs {view} and {prompt}")


# -- CLIP embeddings --------------------------------------------------------------------------


def image_embeddings(clip: ClipModel, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """CLIP image embeddings of (V, 3, H, W) [0, 1] images, differentiable -> (V, D) float32.

    ``normalize``: unit length (``ClipModel.encode_image``); False: the raw embedding (for the
    inner-product loss).
    """
    if normalize:
        return clip.encode_image(images)
    x = clip.preprocess(images).to(clip.dtype)
    return clip.model.encode_image(x).float()


@torch.no_grad()
def clip_score(clip: ClipModel, images: torch.Tensor, text: torch.Tensor) -> float:
    """Mean cosine between the CLIP embeddings of (V, 3, H, W) images and one (D,) text feature."""
    emb = clip.encode_image(images.to(clip.device))
    return float((emb @ text.to(emb.device).reshape(-1)).mean())


# -- prompts ----------------------------------------------------------------------------------


def view_label(azimuth: float, elevation: float, overhead_elevation: float = 60.0) -> str:
    """ "front" (azimuth within 45 degrees of 0), "back" (within 45 of 180), "side", or
    "overhead" (elevation >= overhead_elevation). Azimuth 0 is the object's front (+z)."""
    if elevation >= overhead_elevation:
        return "overhead"
    a = float(np.mod(azimuth, 360.0))
    if a <= 45.0 or a >= 315.0:
        return "front"
    if 135.0 <= a <= 225.0:
        return "back"
    return "side"


VIEW_LABELS = ("front", "side", "back", "overhead")


def _in_range(azimuth: float, lo: float, hi: float) -> bool:
    """Whether ``azimuth`` lies in [lo, hi] degrees, wrapping at 360 ([315, 45] is the front)."""
    if hi - lo >= 360.0:
        return True
    a, lo, hi = np.mod(azimuth, 360.0), np.mod(lo, 360.0), np.mod(hi, 360.0)
    return bool(lo <= a <= hi) if lo <= hi else bool(a >= lo or a <= hi)


class PromptSchedule:
    """Which prompts guide which view, and how much.

    ``texts`` lists every distinct prompt string (encode them once); :meth:`weights` gives the
    (V, P) weights for views at given azimuths and elevations. The main prompt (or, with
    ``view_prompts``, its per-view variant) has weight ``prompt_weight``; each extra prompt its
    own weight where its azimuth range holds the view. Rows are normalised to sum to 1.
    """

    def __init__(self, prompt: str, cfg: GuidanceConfig):
        self.prompt = prompt
        self.cfg = cfg
        texts: list[str] = []
        if cfg.prompt_weight > 0:
            if cfg.view_prompts:
                texts += [self.view_prompt(label) for label in VIEW_LABELS]
            else:
                texts.append(prompt)
        for extra in cfg.prompts:
            texts.append(extra.text.replace("{prompt}", prompt))
        self.texts = list(dict.fromkeys(texts))

    def view_prompt(self, label: str) -> str:
        return self.cfg.view_template.replace("{view}", label).replace("{prompt}", self.prompt)

    def weights(self, azimuth: Sequence[float], elevation: Sequence[float]) -> torch.Tensor:
        """(V, P) float32 weights, rows summing to 1 (0 for a view no prompt applies to)."""
        cfg = self.cfg
        index = {t: i for i, t in enumerate(self.texts)}
        w = torch.zeros(len(azimuth), len(self.texts))
        for v, (az, el) in enumerate(zip(azimuth, elevation, strict=True)):
            if cfg.prompt_weight > 0:
                text = (
                    self.view_prompt(view_label(az, el, cfg.overhead_elevation))
                    if cfg.view_prompts
                    else self.prompt
                )
                w[v, index[text]] += cfg.prompt_weight
            for extra in cfg.prompts:
                if extra.azimuth is None or _in_range(az, *extra.azimuth):
                    w[v, index[extra.text.replace("{prompt}", self.prompt)]] += extra.weight
        total = w.sum(-1, keepdim=True)
        return torch.where(total > 0, w / total.clamp(min=1e-12), w)

    def labels(self, azimuth: Sequence[float], elevation: Sequence[float]) -> list[str]:
        """The main prompt's text per view (what ``view_prompts`` picks)."""
        if not self.cfg.view_prompts:
            return [self.prompt] * len(azimuth)
        return [
            self.view_prompt(view_label(a, e, self.cfg.overhead_elevation))
            for a, e in zip(azimuth, elevation, strict=True)
        ]


# -- augmentations ----------------------------------------------------------------------------


def _homography(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """(B, 4, 2) point pairs -> (B, 3, 3) homographies H with H @ [src, 1] ~ [dst, 1]."""
    b = src.shape[0]
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    zeros, ones = torch.zeros_like(x), torch.ones_like(x)
    rows_u = torch.stack([x, y, ones, zeros, zeros, zeros, -u * x, -u * y], -1)
    rows_v = torch.stack([zeros, zeros, zeros, x, y, ones, -v * x, -v * y], -1)
    a = torch.cat([rows_u, rows_v], dim=1)  # (B, 8, 8)
    rhs = torch.cat([u, v], dim=1).unsqueeze(-1)
    h = torch.linalg.solve(a, rhs).squeeze(-1)
    return torch.cat([h, torch.ones(b, 1, dtype=h.dtype, device=h.device)], -1).reshape(b, 3, 3)


class RandomPerspective:
    """A batched, differentiable random perspective warp, one per image.

    Each output corner samples the input at its corner moved inwards/outwards by up to
    ``distortion`` x half the side; the rest follows the homography (bilinear, border
    padding). (B, 3, H, W) -> (B, 3, H, W).
    """

    def __init__(self, distortion: float, generator: torch.Generator | None = None):
        self.distortion = float(distortion)
        self.generator = generator

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        corners = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
        jitter = torch.rand(b, 4, 2, generator=self.generator, dtype=torch.float64).float()
        src = corners + self.distortion * (2 * jitter - 1)
        hom = _homography(corners.expand(b, 4, 2).double(), src.double()).float()
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        grid = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, -1, 3)
        mapped = grid @ hom.transpose(1, 2)  # (B, HW, 3)
        mapped = mapped[..., :2] / mapped[..., 2:].clamp(min=1e-6)
        mapped = mapped.reshape(b, h, w, 2).to(images.device, images.dtype)
        return F.grid_sample(
            images, mapped, mode="bilinear", padding_mode="border", align_corners=True
        )


class Augmenter:
    """Applies :class:`AugmentConfig` to one step's renders.

    Args:
        cfg: the augmentations.
        generator: CPU torch generator (background colours, perspective).
        device_generator: generator on the renders' device (the crop), or None on the CPU.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        generator: torch.Generator,
        device_generator: torch.Generator | None = None,
    ):
        self.cfg = cfg
        self.generator = generator
        self.crop = (
            RandomResizedCrop(scale=tuple(cfg.crop_scale), generator=device_generator or generator)
            if cfg.crop
            else None
        )
        self.perspective = (
            RandomPerspective(cfg.perspective, generator) if cfg.perspective else None
        )

    def background(self, rgb: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
        """Replace the background of (V, 3, H, W) renders ((V, 1, H, W) foreground mask)."""
        kind = self.cfg.background
        if kind == "field":
            return rgb
        v, _, h, w = rgb.shape
        if kind == "random":
            fill = torch.rand(v, 3, 1, 1, generator=self.generator).expand(v, 3, h, w)
        elif kind == "noise":
            fill = torch.rand(v, 3, h, w, generator=self.generator)
        else:  # pragma: no cover - the config refuses others
            raise ValueError(kind)
        return torch.where(foreground > 0.5, rgb, fill.to(rgb.device, rgb.dtype))

    def __call__(self, rgb: torch.Tensor, foreground: torch.Tensor) -> torch.Tensor:
        out = self.background(rgb, foreground)
        if self.crop is not None:
            out = self.crop(out)
        if self.perspective is not None:
            out = self.perspective(out)
        return out


# -- the guide: prompts x CLIP models ----------------------------------------------------------


class Guide:
    """L_C for one prompt with an ensemble of CLIP models.

    Args:
        clips: the CLIP models, the stage-1 one first (its text feature of the main prompt is
            the mapper's input and the reference of the CLIP score).
        weights: their weights (>= 0, normalised to sum 1; a model of weight 0 is not run in
            the loss).
        schedule: the prompts.
        cfg: loss kind and aggregation.

    Attributes:
        text: per model, the plain (P, D_m) unit text features of ``schedule.texts``.
        targets: per model, the (P, D_m) targets: ``text``, or perturbed copies
            (:meth:`perturb_targets`).
        prompt_feature: (D_0,) the stage-1 CLIP's feature of the main prompt.
    """

    def __init__(
        self,
        clips: Sequence[ClipModel],
        weights: Sequence[float],
        schedule: PromptSchedule,
        cfg: GuidanceConfig,
    ):
        if len(clips) != len(weights) or not clips:
            raise ValueError("one weight per CLIP model")
        total = float(sum(weights))
        if total <= 0 or min(weights) < 0:
            raise ValueError(f"CLIP weights must be >= 0 with a positive sum, got {weights}")
        self.clips = list(clips)
        self.weights = [float(w) / total for w in weights]
        self.schedule = schedule
        self.cfg = cfg
        self.text = [clip.encode_text(schedule.texts) for clip in self.clips]
        self.targets = [t.clone() for t in self.text]
        self.prompt_feature = clips[0].encode_text([schedule.prompt])[0]

    def copy(self) -> Guide:
        """A guide sharing the models and text features, with unperturbed targets."""
        other = copy.copy(self)
        other.targets = [t.clone() for t in self.text]
        return other

    def perturb_targets(self, tau: float, generator: torch.Generator) -> None:
        """f~_T = normalize(tau f_T + (1 - tau) z) for every target (z from the CPU generator)."""
        self.targets = [perturb_feature(t.cpu(), tau, generator).to(t.device) for t in self.text]

    def loss(
        self, images: torch.Tensor, azimuth: Sequence[float], elevation: Sequence[float]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
        """L_C of (V, 3, H, W) [0, 1] (augmented) renders; views at the given azimuths and
        elevations (degrees) pick their prompts.

        Returns:
            (loss, per-view losses (V,) detached, per model its unit embeddings (V, D_m)
            detached, None for a model of weight 0).
        """
        w = self.schedule.weights(azimuth, elevation).to(images.device)
        total = images.new_zeros(())
        per_view = images.new_zeros(images.shape[0])
        embeddings: list[torch.Tensor | None] = []
        normalize = self.cfg.loss == "cosine"
        for clip, weight, target in zip(self.clips, self.weights, self.targets, strict=True):
            if weight == 0:
                embeddings.append(None)
                continue
            emb = image_embeddings(clip, images.to(clip.device), normalize)
            loss, views = clip_loss(
                emb, target, w.to(emb.device), self.cfg.loss, self.cfg.aggregation
            )
            total = total + weight * loss.to(images.device)
            per_view = per_view + weight * views.to(images.device)
            embeddings.append(F.normalize(emb.detach(), dim=-1))
        return total, per_view, embeddings
