"""Image encoders E_S: an RGB image in [0, 1] -> a shape latent c.

``ResNet18Encoder`` is DVR's encoder (torchvision ResNet-18, fc replaced by Linear(512 -> c_dim),
ImageNet normalisation inside); its attribute names match DVR's checkpoint keys
(``encoder.features.*``, ``encoder.fc.*``). ``ConvEncoder`` is a small conv net for tiny CPU
configs and tests.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from iss3d.core import config as config_lib
from iss3d.core.errors import UserError
from iss3d.models.checkpoints import load_state_into, safe_load

__all__ = [
    "ENCODER_KINDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ConvEncoder",
    "EncoderConfig",
    "ResNet18Encoder",
    "check_images",
    "load_imagenet_weights",
    "make_encoder",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Smallest image side the encoders accept (ResNet-18 downsamples by 32; 16 px still gives a
#: 1 x 1 map at layer3/layer4).
MIN_IMAGE_SIZE = 16


def check_images(x: Any, name: str = "image", min_size: int = 1) -> None:
    """Cheap checks that ``x`` is a batch of RGB images: (B, 3, H, W) float.

    Only shape and dtype are checked (no value-range scan, which would sync the GPU).

    Args:
        x: expected (B, 3, H, W) float tensor, values in [0, 1].
        name: how the error names the input.
        min_size: smallest allowed H and W.

    Raises:
        UserError: not a tensor, wrong rank, not 3 channels in dim 1, non-float dtype, or an
            image side below ``min_size``.
    """
    if not isinstance(x, torch.Tensor):
        raise UserError(f"{name}: expected a (B, 3, H, W) float tensor, got {type(x).__name__}")
    shape = tuple(x.shape)
    if x.dim() != 4:
        raise UserError(f"{name}: expected shape (B, 3, H, W), got {shape} ({x.dim()} dims)")
    if shape[1] != 3:
        hint = " (channels last? use x.permute(0, 3, 1, 2))" if shape[-1] == 3 else ""
        raise UserError(f"{name}: expected 3 colour channels in dim 1, got shape {shape}{hint}")
    if not x.is_floating_point():
        raise UserError(
            f"{name}: expected a float tensor with values in [0, 1], got {x.dtype} "
            "(for uint8 images use x.float() / 255)"
        )
    if min(shape[2], shape[3]) < min_size:
        raise UserError(
            f"{name}: images of {shape[2]} x {shape[3]} px are too small "
            f"(at least {min_size} x {min_size} needed)"
        )


def load_imagenet_weights(features: nn.Module, path: str | os.PathLike) -> None:
    """Load a torchvision-style ResNet-18 state dict file into ``features`` (fc is skipped).

    Args:
        features: a torchvision ``resnet18`` whose ``fc`` is ``nn.Identity``.
        path: e.g. torchvision's ``resnet18-f37072fd.pth``: keys ``conv1.weight``,
            ``bn1.*``, ``layer1.0.conv1.weight``, ..., ``fc.weight`` (1000, 512), ``fc.bias``.

    Raises:
        UserError: missing/unreadable file, not a dict, or the first missing / unexpected key /
            shape mismatch (named with its torchvision key).
    """
    state = safe_load(path, "ResNet-18 weights")
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a ResNet-18 state dict, got {type(state).__name__}")
    state = {k: v for k, v in state.items() if k not in ("fc.weight", "fc.bias")}
    load_state_into(features, state, path)


class ResNet18Encoder(nn.Module):
    """DVR's image encoder: ResNet-18 features (512) -> Linear -> c_dim.

    State-dict keys: ``features.<torchvision resnet18 names, no fc>`` and ``fc.weight``
    (c_dim, 512), ``fc.bias`` (c_dim,), i.e. DVR's ``encoder.*`` keys without the prefix.

    Args:
        c_dim: latent size (256 in DVR/ISS).
        weights: optional local torchvision ResNet-18 state dict file (ImageNet); never
            downloaded. Without it the weights are random (torchvision's init).
    """

    def __init__(self, c_dim: int = 256, weights: str | Path | None = None) -> None:
        super().__init__()
        if c_dim < 1:
            raise ValueError(f"c_dim must be >= 1, got {c_dim}")
        self.c_dim = c_dim
        self.features = torchvision.models.resnet18(weights=None)
        self.features.fc = nn.Identity()
        self.fc = nn.Linear(512, c_dim)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        if weights is not None:
            load_imagenet_weights(self.features, weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            images: (B, 3, H, W) float RGB in [0, 1], H, W >= 16 (DVR uses 224 x 224).

        Returns:
            (B, c_dim) latent codes.
        """
        check_images(images, "encoder input", MIN_IMAGE_SIZE)
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        return self.fc(self.features(x))


class ConvEncoder(nn.Module):
    """A small conv encoder for tiny CPU configs.

    ``n_layers`` stages, each a stride-2 3x3 conv (and from the second stage on, a second 3x3
    conv), every conv followed by GroupNorm (batch-independent, so train and eval agree) and
    ReLU; then average pooling to a ``grid`` x ``grid`` map, flattened, and a Linear to c_dim.
    Keeping a coarse grid (rather than a global mean) keeps where things are in the image,
    which single-view reconstruction needs. Channels go width, 2 width, 4 width, 8 width,
    8 width, ...; inputs are mapped from [0, 1] to [-1, 1] inside.

    Args:
        c_dim: latent size.
        width: channels of the first conv (a multiple of ``GROUPS`` keeps all groups equal).
        n_layers: number of stride-2 stages.
        grid: side of the pooled map (1: global mean pooling).
    """

    #: GroupNorm groups (fewer when a layer has fewer channels).
    GROUPS = 8

    def __init__(self, c_dim: int = 64, width: int = 32, n_layers: int = 4, grid: int = 4) -> None:
        super().__init__()
        if min(c_dim, width, n_layers, grid) < 1:
            raise ValueError(
                f"c_dim, width, n_layers, grid must be >= 1: {c_dim}, {width}, {n_layers}, {grid}"
            )
        self.c_dim = c_dim
        layers: list[nn.Module] = []
        ch_in = 3
        for i in range(n_layers):
            ch_out = width * 2 ** min(i, 3)
            layers += self._conv(ch_in, ch_out, stride=2)
            if i > 0:
                layers += self._conv(ch_out, ch_out, stride=1)
            ch_in = ch_out
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.fc = nn.Linear(ch_in * grid * grid, c_dim)

    @classmethod
    def _conv(cls, ch_in: int, ch_out: int, stride: int) -> list[nn.Module]:
        groups = math.gcd(cls.GROUPS, ch_out)
        return [
            nn.Conv2d(ch_in, ch_out, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(groups, ch_out),
            nn.ReLU(inplace=True),
        ]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            images: (B, 3, H, W) float RGB in [0, 1], H, W >= 16.

        Returns:
            (B, c_dim) latent codes.
        """
        check_images(images, "encoder input", MIN_IMAGE_SIZE)
        x = self.pool(self.convs(images * 2.0 - 1.0))
        return self.fc(x.flatten(1))


ENCODER_KINDS: dict[str, type[nn.Module]] = {"resnet18": ResNet18Encoder, "conv": ConvEncoder}


def make_encoder(kind: str, c_dim: int, **kw: Any) -> nn.Module:
    """Build an encoder by name.

    Args:
        kind: ``"resnet18"`` (kwargs: ``weights``) or ``"conv"`` (kwargs: ``width``,
            ``n_layers``, ``grid``).
        c_dim: latent size.

    Returns:
        A module mapping (B, 3, H, W) float in [0, 1] -> (B, c_dim).

    Raises:
        UserError: unknown ``kind``.
    """
    if kind not in ENCODER_KINDS:
        known = ", ".join(repr(k) for k in ENCODER_KINDS)
        raise UserError(f"unknown encoder kind {kind!r} (choose from {known})")
    return ENCODER_KINDS[kind](c_dim=c_dim, **kw)


@dataclass
class EncoderConfig:
    """Encoder settings (YAML section ``encoder``).

    Attributes:
        kind: ``"resnet18"`` (DVR/ISS) or ``"conv"`` (tiny CPU configs).
        c_dim: latent size; must equal the decoder's c_dim.
        width: first-layer channels of the conv encoder (conv only).
        n_layers: stride-2 stages of the conv encoder (conv only).
        grid: side of the conv encoder's pooled feature map (conv only; 1 = global mean).
        weights: local torchvision ResNet-18 ImageNet weights file (resnet18 only), or None.
    """

    kind: str = "resnet18"
    c_dim: int = 256
    width: int = 32
    n_layers: int = 4
    grid: int = 4
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ENCODER_KINDS:
            known = ", ".join(repr(k) for k in ENCODER_KINDS)
            raise UserError(f"encoder config: unknown kind {self.kind!r} (choose from {known})")
        if self.c_dim < 1:
            raise UserError(f"encoder config: 'c_dim' must be >= 1, got {self.c_dim}")
        for name in ("width", "n_layers", "grid"):
            if getattr(self, name) < 1:
                raise UserError(f"encoder config: {name!r} must be >= 1, got {getattr(self, name)}")
        if self.weights is not None and self.kind != "resnet18":
            raise UserError(
                f"encoder config: 'weights' is only used by kind 'resnet18', not {self.kind!r}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> EncoderConfig:
        """Parse strictly (unknown keys, wrong types -> UserError)."""
        return config_lib.from_dict(cls, d, "encoder config")

    def build(self) -> nn.Module:
        """The encoder this config describes: (B, 3, H, W) in [0, 1] -> (B, c_dim)."""
        if self.kind == "resnet18":
            return make_encoder("resnet18", self.c_dim, weights=self.weights)
        return make_encoder(
            self.kind, self.c_dim, width=self.width, n_layers=self.n_layers, grid=self.grid
        )
