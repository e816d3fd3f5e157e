"""ISS's CLIP2Shape mapper M: a CLIP feature -> a shape latent c of the SVR decoder.

Architecture (Liu et al., ICLR 2023; official ``generator`` module of ISS's stage 1): 12 Linear
layers, LeakyReLU(0.02) after every layer but the last, weights initialised N(0, 0.02), biases
0. The paper's widths for CLIP ViT-B/32 (512-d) and DVR's latent (c_dim 256) are
512 -> 512 (x8 layers of 512 outputs) -> 256 (x4 layers of 256 outputs), 2,429,952 parameters.

Here the widths are configurable (:class:`MapperConfig`): ``n_wide`` layers of ``hidden``
outputs, then ``n_narrow`` layers of ``narrow`` outputs, the last of which outputs ``out_dim``.
The layers are attributes ``linear_1`` ... ``linear_<n>``, the official module's names, so an
official state dict loads by the identity map on ``generator.linear_<n>.*`` (see
:func:`iss3d.models.checkpoints.load_iss_checkpoint` for the key map).

:func:`perturb_feature` is the feature perturbation of ISS (normalize(tau f + (1 - tau) z), z a
unit-norm Gaussian vector): the noisy mapper input of stage 1 and the diversity perturbation of
f_I and f_T.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from iss3d.core import config as config_lib
from iss3d.core.errors import UserError

__all__ = [
    "Mapper",
    "MapperConfig",
    "noisy_input",
    "perturb_feature",
    "unit_gaussian",
]

#: LeakyReLU slope and init std of the official mapper.
NEGATIVE_SLOPE = 0.02
INIT_STD = 0.02


class Mapper(nn.Module):
    """The CLIP2Shape mapper M: (B, in_dim) CLIP features -> (B, out_dim) shape latents.

    Args:
        widths: output features of each Linear layer, in order; the last is ``out_dim``.
        in_dim: input features (the CLIP embedding size).
        negative_slope: LeakyReLU slope after every layer but the last (ISS: 0.02).
        init_std: std of the N(0, std) weight init (ISS: 0.02); biases start at 0.

    Parameters: ``linear_<n>.weight`` (widths[n-1], fan_in), ``linear_<n>.bias``, n = 1..len.
    Build from a config with :meth:`MapperConfig.build`.
    """

    def __init__(
        self,
        widths: list[int] | tuple[int, ...],
        in_dim: int = 512,
        negative_slope: float = NEGATIVE_SLOPE,
        init_std: float = INIT_STD,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if in_dim < 1 or not widths or min(widths) < 1:
            raise ValueError(f"bad mapper sizes: in_dim={in_dim}, widths={widths}")
        self.in_dim = int(in_dim)
        self.out_dim = widths[-1]
        self.widths = widths
        self.negative_slope = float(negative_slope)
        fan_in = self.in_dim
        for n, width in enumerate(widths, start=1):
            layer = nn.Linear(fan_in, width)
            nn.init.normal_(layer.weight, mean=0.0, std=init_std)
            nn.init.zeros_(layer.bias)
            self.add_module(f"linear_{n}", layer)
            fan_in = width

    @property
    def layers(self) -> list[nn.Linear]:
        """The Linear layers in order (``linear_1`` first)."""
        return [getattr(self, f"linear_{n}") for n in range(1, len(self.widths) + 1)]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map CLIP features to shape latents.

        Args:
            features: (B, in_dim) CLIP features (ISS feeds L2-normalised ones).

        Returns:
            (B, out_dim) latents c for the decoder.
        """
        if features.dim() != 2 or features.shape[1] != self.in_dim:
            raise ValueError(
                f"mapper input must be (B, {self.in_dim}), got {tuple(features.shape)}"
            )
        x = features
        layers = self.layers
        for i, layer in enumerate(layers):
            x = layer(x)
            if i < len(layers) - 1:
                x = F.leaky_relu(x, self.negative_slope)
        return x


@dataclass
class MapperConfig:
    """Mapper widths (YAML section ``mapper``); defaults are the paper's for ViT-B/32 + DVR.

    Attributes:
        in_dim: CLIP embedding size (512 for ViT-B/32; must match the CLIP model).
        out_dim: shape latent size (must match the SVR decoder's c_dim).
        hidden: outputs of each of the first ``n_wide`` layers (512).
        n_wide: layers of ``hidden`` outputs (8).
        narrow: outputs of each of the last ``n_narrow`` layers (None: ``out_dim``); the very
            last layer always outputs ``out_dim``.
        n_narrow: layers of ``narrow`` outputs (4). ``n_wide + n_narrow`` layers in all (12).
    """

    in_dim: int = 512
    out_dim: int = 256
    hidden: int = 512
    n_wide: int = 8
    narrow: int | None = None
    n_narrow: int = 4

    def __post_init__(self) -> None:
        for name in ("in_dim", "out_dim", "hidden"):
            if getattr(self, name) < 1:
                raise UserError(f"mapper config: {name!r} must be >= 1, got {getattr(self, name)}")
        if self.narrow is not None and self.narrow < 1:
            raise UserError(f"mapper config: 'narrow' must be >= 1 or null, got {self.narrow}")
        if self.n_wide < 0 or self.n_narrow < 0 or self.n_wide + self.n_narrow < 1:
            raise UserError(
                "mapper config: 'n_wide' and 'n_narrow' must be >= 0 with at least one layer, "
                f"got {self.n_wide} and {self.n_narrow}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> MapperConfig:
        """Parse strictly (unknown keys, wrong types -> UserError)."""
        return config_lib.from_dict(cls, d, "mapper config")

    def widths(self) -> list[int]:
        """Layer outputs: [hidden] * n_wide + [narrow] * n_narrow, the last one out_dim."""
        narrow = self.out_dim if self.narrow is None else self.narrow
        widths = [self.hidden] * self.n_wide + [narrow] * self.n_narrow
        widths[-1] = self.out_dim
        return widths

    def build(self) -> Mapper:
        """The mapper this config describes: (B, in_dim) -> (B, out_dim)."""
        return Mapper(self.widths(), in_dim=self.in_dim)

    @classmethod
    def from_widths(cls, in_dim: int, widths: list[int]) -> MapperConfig:
        """The config of a mapper with these layer widths (e.g. read off a checkpoint).

        Raises:
            UserError: the widths are not ``[hidden] * n_wide + [narrow] * k + [out_dim]``.
        """
        if not widths:
            raise UserError("mapper config: a mapper needs at least one layer")
        out_dim = widths[-1]
        body = widths[:-1]
        hidden = body[0] if body else out_dim
        n_wide = 0
        while n_wide < len(body) and body[n_wide] == hidden:
            n_wide += 1
        rest = body[n_wide:]
        narrow = rest[0] if rest else out_dim
        if any(w != narrow for w in rest):
            raise UserError(
                f"mapper config: layer widths {widths} are not n_wide x hidden, then n_narrow x "
                "narrow, then out_dim"
            )
        if not rest and n_wide == len(body):
            # every layer but the last has the same width: call them all wide
            cfg = cls(in_dim, out_dim, hidden, n_wide, None, 1)
        else:
            narrow_or_none = None if narrow == out_dim else narrow
            cfg = cls(in_dim, out_dim, hidden, n_wide, narrow_or_none, len(rest) + 1)
        if cfg.widths() != list(widths):
            raise UserError(f"mapper config: cannot express layer widths {widths}")
        return cfg


def unit_gaussian(
    shape: torch.Size | tuple[int, ...],
    like: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Gaussian vectors scaled to unit L2 norm along the last axis, on ``like``'s device/dtype."""
    z = torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
    return F.normalize(z, dim=-1)


def perturb_feature(
    f: torch.Tensor, tau: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """ISS's feature perturbation: normalize(tau * f + (1 - tau) * z), z unit-norm Gaussian.

    Stage 1 feeds M the noisy image feature (official code: tau = 0.25); diversity perturbs
    f_I (initialisation, tau_1) and f_T (target, tau_2) the same way. ``f`` is mixed as given:
    pass it L2-normalised for the formula as written (the official stage-1 code mixes the raw,
    un-normalised CLIP image feature, whose norm is well above 1, i.e. much less noise).

    Args:
        f: (B, D) features.
        tau: weight of the feature in [0, 1] (1: f unchanged up to normalisation).
        generator: torch RNG for z (on ``f``'s device); None: the global RNG.

    Returns:
        (B, D) unit-norm perturbed features (a graph to ``f`` when it has one).
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    z = unit_gaussian(f.shape, f, generator)
    return F.normalize(tau * f + (1.0 - tau) * z, dim=-1)


#: Stage 1's name for the same perturbation (its config calls tau ``noise_alpha``).
noisy_input = perturb_feature
