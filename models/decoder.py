"""DVR's decoder D: (point p, latent c) -> (occupancy logit, RGB logits), and its branched split.

Architecture (Niemeyer et al. 2020, im2mesh ``dvr`` decoder): ``fc_p`` Linear(3 -> h); before
each of ``n_blocks`` pre-activation ResNet-FC blocks, ``fc_c[n](c)`` (c_dim -> h) is added;
``fc_out`` Linear(h -> 4) after a ReLU. Output channel 0 is the occupancy logit (surface at 0,
i.e. probability 0.5), channels 1:4 are RGB logits (colours through a sigmoid). Attribute names
match DVR's checkpoint keys (``decoder.fc_p``, ``decoder.fc_c.<n>``, ``decoder.blocks.<n>.fc_0``,
``.fc_1``, ``decoder.fc_out``).

Points are in the object frame (the unit cube, DVR's ShapeNet normalisation).

An option DVR does not have: ``n_frequencies`` F > 0 feeds ``fc_p`` the Fourier features
[p, sin(2^k pi p), cos(2^k pi p)] for k < F (3 + 6F inputs instead of 3). Plain-xyz ReLU nets
learn sharp occupancy boundaries (thin legs, handles, hollow mugs) slowly; with F = 4 the tiny
CPU config learns them in far fewer steps. F = 0 is DVR's architecture and loads its checkpoints.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from iss3d.core import config as config_lib
from iss3d.core.errors import UserError

__all__ = [
    "BranchedDecoder",
    "Decoder",
    "DecoderConfig",
    "ResnetBlockFC",
    "ResnetFCNet",
    "split_branches",
]


class ResnetBlockFC(nn.Module):
    """Pre-activation fully connected ResNet block: x_s + fc_1(relu(fc_0(relu(x)))).

    ``x_s`` is x when size_in == size_out, else ``shortcut(x)`` (Linear without bias).
    ``fc_1`` starts at zero (weight as in DVR/ONet, and bias too, so that a fresh block with
    matching sizes is exactly the identity).

    Args:
        size_in: input features; size_out: output features (default size_in);
        size_h: hidden features (default min(size_in, size_out)).

    Shapes: (..., size_in) -> (..., size_out).
    """

    def __init__(self, size_in: int, size_out: int | None = None, size_h: int | None = None):
        super().__init__()
        size_out = size_in if size_out is None else size_out
        size_h = min(size_in, size_out) if size_h is None else size_h
        self.size_in, self.size_h, self.size_out = size_in, size_h, size_out
        self.fc_0 = nn.Linear(size_in, size_h)
        self.fc_1 = nn.Linear(size_h, size_out)
        self.shortcut = None if size_in == size_out else nn.Linear(size_in, size_out, bias=False)
        nn.init.zeros_(self.fc_1.weight)
        nn.init.zeros_(self.fc_1.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., size_in) -> (..., size_out)."""
        dx = self.fc_1(F.relu(self.fc_0(F.relu(x))))
        x_s = x if self.shortcut is None else self.shortcut(x)
        return x_s + dx


class ResnetFCNet(nn.Module):
    """The decoder network with an ``out_dim``-wide head: the shared body of both decoders.

    Args:
        c_dim: latent size (0: unconditional, no ``fc_c``).
        hidden: width h of every block.
        n_blocks: number of ResNet-FC blocks.
        out_dim: channels of ``fc_out``.
        dim: point dimension (3).
        n_frequencies: Fourier octaves F of the point encoding (0: plain coordinates, DVR).
    """

    def __init__(
        self,
        c_dim: int,
        hidden: int,
        n_blocks: int,
        out_dim: int,
        dim: int = 3,
        n_frequencies: int = 0,
    ):
        super().__init__()
        if c_dim < 0 or hidden < 1 or n_blocks < 0 or out_dim < 1 or n_frequencies < 0:
            raise ValueError(
                f"bad decoder sizes: c_dim={c_dim}, hidden={hidden}, n_blocks={n_blocks}, "
                f"out_dim={out_dim}, n_frequencies={n_frequencies}"
            )
        self.c_dim, self.hidden, self.n_blocks, self.out_dim, self.dim = (
            c_dim,
            hidden,
            n_blocks,
            out_dim,
            dim,
        )
        self.n_frequencies = n_frequencies
        self.register_buffer(
            "frequencies", torch.pi * 2.0 ** torch.arange(n_frequencies), persistent=False
        )
        self.fc_p = nn.Linear(dim * (1 + 2 * n_frequencies), hidden)
        self.fc_c = nn.ModuleList(
            [nn.Linear(c_dim, hidden) for _ in range(n_blocks)] if c_dim > 0 else []
        )
        self.blocks = nn.ModuleList([ResnetBlockFC(hidden) for _ in range(n_blocks)])
        self.fc_out = nn.Linear(hidden, out_dim)

    def _check(self, points: torch.Tensor, c: torch.Tensor | None) -> None:
        if points.dim() != 3 or points.shape[-1] != self.dim:
            raise ValueError(f"points must be (B, N, {self.dim}), got {tuple(points.shape)}")
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"decoder has c_dim={self.c_dim} but no latent c was given")
            if c.dim() != 2 or c.shape[1] != self.c_dim or c.shape[0] not in (1, points.shape[0]):
                raise ValueError(
                    f"c must be (B, {self.c_dim}) or (1, {self.c_dim}) for points "
                    f"{tuple(points.shape)}, got {tuple(c.shape)}"
                )

    def encode_points(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) -> (B, N, dim * (1 + 2F)): the points and their Fourier features
        [p, sin(f_k p), cos(f_k p)] (sines and cosines grouped per coordinate); the points
        themselves when F = 0."""
        if self.n_frequencies == 0:
            return points
        angles = (points[..., None] * self.frequencies.to(points.dtype)).flatten(-2)
        return torch.cat([points, torch.sin(angles), torch.cos(angles)], -1)

    def features(self, points: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's output, before the final ReLU and ``fc_out``.

        Args:
            points: (B, N, 3) object-frame coordinates.
            c: (B, c_dim) latents (or (1, c_dim), broadcast); None only when c_dim == 0.

        Returns:
            (B, N, hidden).
        """
        self._check(points, c)
        if not torch.is_grad_enabled() and (c is None or c.shape[0] == 1):
            return self._features_one_latent(points, c)
        net = self.fc_p(self.encode_points(points))
        for n, block in enumerate(self.blocks):
            if self.c_dim > 0:
                net = net + self.fc_c[n](c).unsqueeze(1)
            net = block(net)
        return net

    def _features_one_latent(self, points: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """:meth:`features` without autograd for one latent (1, c_dim) or none, with fewer
        passes over the (B * N, hidden) activations (meshing and marching decode millions of
        points): each ``fc_c[n](c)`` is folded into the bias of the layer before block n, each
        residual add into its matrix product, and the inner ReLU works in place."""
        shifts = [fc(c)[0] for fc in self.fc_c] if self.c_dim > 0 else []
        shifts += [None] * (self.n_blocks + 1 - len(shifts))  # shifts[n] goes before block n
        x = self.encode_points(points).flatten(0, 1)  # (B * N, in)
        net = F.linear(x, self.fc_p.weight, _shifted(self.fc_p.bias, shifts[0]))
        for block, shift in zip(self.blocks, shifts[1:], strict=True):
            h = F.relu(F.linear(F.relu(net), block.fc_0.weight, block.fc_0.bias), inplace=True)
            net = torch.addmm(net, h, block.fc_1.weight.t()).add_(_shifted(block.fc_1.bias, shift))
        return net.unflatten(0, points.shape[:2])

    def forward(self, points: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, 3) points, (B, c_dim) latents -> (B, N, out_dim) raw head outputs."""
        return self.fc_out(F.relu(self.features(points, c)))


def _shifted(bias: torch.Tensor, shift: torch.Tensor | None) -> torch.Tensor:
    """(h,) bias plus (h,) shift (None: no shift)."""
    return bias if shift is None else bias + shift


class Decoder(ResnetFCNet):
    """DVR's decoder: occupancy logit and RGB logits per point.

    Args:
        c_dim: latent size (256 in DVR/ISS; 0 for an unconditional decoder, then c is None).
        hidden: block width h (512 in DVR's ShapeNet model, 128 in its rgb variant).
        n_blocks: ResNet-FC blocks (5).
        out_rgb: True: ``fc_out`` has 4 channels (occupancy + RGB); False: 1 (occupancy only).
        n_frequencies: Fourier octaves of the point encoding (0, DVR's, by default).
    """

    def __init__(
        self,
        c_dim: int = 256,
        hidden: int = 512,
        n_blocks: int = 5,
        out_rgb: bool = True,
        n_frequencies: int = 0,
    ) -> None:
        super().__init__(
            c_dim, hidden, n_blocks, out_dim=4 if out_rgb else 1, n_frequencies=n_frequencies
        )
        self.out_rgb = out_rgb

    def forward(self, points: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """Decode points.

        Args:
            points: (B, N, 3) object-frame coordinates.
            c: (B, c_dim) latents ((1, c_dim) broadcasts); None iff c_dim == 0.

        Returns:
            (B, N, 4): [..., 0] occupancy logit (inside > 0), [..., 1:4] RGB logits
            ((B, N, 1) when ``out_rgb`` is False).
        """
        return super().forward(points, c)

    def occupancy(self, points: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, 3), (B, c_dim) -> (B, N) occupancy logits (surface at 0)."""
        h = F.relu(self.features(points, c))
        return F.linear(h, self.fc_out.weight[:1], self.fc_out.bias[:1]).squeeze(-1)

    def rgb(self, points: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, 3), (B, c_dim) -> (B, N, 3) colours in [0, 1] (sigmoid of the RGB logits)."""
        if not self.out_rgb:
            raise ValueError("this decoder was built with out_rgb=False and has no colour output")
        h = F.relu(self.features(points, c))
        return torch.sigmoid(F.linear(h, self.fc_out.weight[1:4], self.fc_out.bias[1:4]))

    def occupancy_and_rgb(
        self, points: torch.Tensor, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, 3), (B, c_dim) -> (B, N) occupancy logits and (B, N, 3) colours, one pass."""
        if not self.out_rgb:
            raise ValueError("this decoder was built with out_rgb=False and has no colour output")
        out = self(points, c)
        return out[..., 0], torch.sigmoid(out[..., 1:4])


class BranchedDecoder(nn.Module):
    """A decoder split into an occupancy branch D_o and a colour branch D_c (stylization).

    Both branches have the full decoder architecture (own ``fc_p``, ``fc_c``, ``blocks``);
    ``occupancy_branch.fc_out`` has 1 channel, ``color_branch.fc_out`` 3. Same interface as
    :class:`Decoder` (forward / occupancy / rgb), so the renderer can take either. Made by
    :func:`split_branches`.

    Args:
        occupancy_branch: a ResnetFCNet with out_dim 1.
        color_branch: a ResnetFCNet with out_dim 3, same c_dim.
    """

    def __init__(self, occupancy_branch: ResnetFCNet, color_branch: ResnetFCNet) -> None:
        super().__init__()
        if occupancy_branch.out_dim != 1 or color_branch.out_dim != 3:
            raise ValueError("occupancy branch needs out_dim 1 and colour branch out_dim 3")
        if occupancy_branch.c_dim != color_branch.c_dim:
            raise ValueError("both branches must have the same c_dim")
        self.occupancy_branch = occupancy_branch
        self.color_branch = color_branch
        self.c_dim = occupancy_branch.c_dim
        self.hidden = occupancy_branch.hidden
        self.n_blocks = occupancy_branch.n_blocks
        self.n_frequencies = occupancy_branch.n_frequencies
        self.out_rgb = True

    def forward(self, points: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, 3), (B, c_dim) -> (B, N, 4): [..., 0] occupancy logit, [..., 1:4] RGB logits."""
        return torch.cat([self.occupancy_branch(points, c), self.color_branch(points, c)], -1)

    def occupancy(self, points: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, 3), (B, c_dim) -> (B, N) occupancy logits, from the occupancy branch only."""
        return self.occupancy_branch(points, c).squeeze(-1)

    def rgb(self, points: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, 3), (B, c_dim) -> (B, N, 3) colours in [0, 1], from the colour branch only."""
        return torch.sigmoid(self.color_branch(points, c))

    def occupancy_and_rgb(
        self, points: torch.Tensor, c: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, 3), (B, c_dim) -> (B, N) occupancy logits and (B, N, 3) colours."""
        return self.occupancy(points, c), self.rgb(points, c)

    def occupancy_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of D_o (disjoint from :meth:`color_parameters`)."""
        return self.occupancy_branch.parameters()

    def color_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of D_c: fine-tuning only these never changes the occupancy output."""
        return self.color_branch.parameters()


def _branch(decoder: ResnetFCNet, rows: slice) -> ResnetFCNet:
    """A network with deep copies of ``decoder``'s trunk and ``fc_out`` rows ``rows`` as head."""
    old = decoder.fc_out
    weight = old.weight[rows]
    branch = ResnetFCNet(
        decoder.c_dim,
        decoder.hidden,
        decoder.n_blocks,
        out_dim=weight.shape[0],
        dim=decoder.dim,
        n_frequencies=decoder.n_frequencies,
    )
    branch.fc_p = copy.deepcopy(decoder.fc_p)
    branch.fc_c = copy.deepcopy(decoder.fc_c)
    branch.blocks = copy.deepcopy(decoder.blocks)
    head = nn.Linear(old.in_features, weight.shape[0], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(old.bias[rows])
    head.weight.requires_grad_(old.weight.requires_grad)
    head.bias.requires_grad_(old.bias.requires_grad)
    branch.fc_out = head
    return branch.train(decoder.training)


def split_branches(decoder: Decoder) -> BranchedDecoder:
    """Split a decoder into independent occupancy and colour branches.

    Each branch is a deep copy of the trunk (fc_p, fc_c, blocks); the occupancy head is
    ``fc_out`` row 0 and the colour head rows 1:4, so right after the split the outputs equal
    ``decoder``'s exactly. Device, dtype, train/eval mode and requires_grad are kept; the
    original decoder is not modified.

    Args:
        decoder: a :class:`Decoder` with ``out_rgb=True``.

    Returns:
        A :class:`BranchedDecoder`: forward (B, N, 3), (B, c_dim) -> (B, N, 4).
    """
    if not getattr(decoder, "out_rgb", False) or decoder.out_dim != 4:
        raise ValueError("split_branches needs a decoder with 4 outputs (occupancy + RGB)")
    branched = BranchedDecoder(_branch(decoder, slice(0, 1)), _branch(decoder, slice(1, 4)))
    return branched.train(decoder.training)


@dataclass
class DecoderConfig:
    """Decoder settings (YAML section ``decoder``); defaults are DVR's ShapeNet model.

    Attributes:
        c_dim: latent size (must equal the encoder's; 0: unconditional).
        hidden: block width h.
        n_blocks: number of ResNet-FC blocks.
        n_frequencies: Fourier octaves of the point encoding (0: DVR's plain coordinates, the
            only setting an official DVR/ISS checkpoint has).
    """

    c_dim: int = 256
    hidden: int = 512
    n_blocks: int = 5
    n_frequencies: int = 0

    def __post_init__(self) -> None:
        if self.c_dim < 0:
            raise UserError(f"decoder config: 'c_dim' must be >= 0, got {self.c_dim}")
        if self.hidden < 1:
            raise UserError(f"decoder config: 'hidden' must be >= 1, got {self.hidden}")
        if self.n_blocks < 0:
            raise UserError(f"decoder config: 'n_blocks' must be >= 0, got {self.n_blocks}")
        if not 0 <= self.n_frequencies <= 16:
            raise UserError(
                f"decoder config: 'n_frequencies' must be in [0, 16], got {self.n_frequencies}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> DecoderConfig:
        """Parse strictly (unknown keys, wrong types -> UserError)."""
        return config_lib.from_dict(cls, d, "decoder config")

    def build(self) -> Decoder:
        """The decoder this config describes: (B, N, 3), (B, c_dim) -> (B, N, 4)."""
        return Decoder(
            c_dim=self.c_dim,
            hidden=self.hidden,
            n_blocks=self.n_blocks,
            n_frequencies=self.n_frequencies,
        )
