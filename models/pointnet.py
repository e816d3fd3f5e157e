"""PointNet classifier in TreeGAN's layout, the feature network of the Frechet PointNet Distance.

The layout is TreeGAN's ``evaluation/pointnet.py`` (itself fxia22's ``pointnet.pytorch``), so
that its published FPD classifier (``PointNetCls(k=16)`` trained on 16 ShapeNet categories)
loads by the identity key map:

- ``feat.stn``: the 3x3 input transform: ``conv1`` 3 -> 64, ``conv2`` 64 -> 128, ``conv3``
  128 -> 1024 (1x1 Conv1d, BatchNorm ``bn1..bn3``, ReLU), max over points, ``fc1`` 1024 -> 512,
  ``fc2`` 512 -> 256 (BatchNorm ``bn4``, ``bn5``, ReLU), ``fc3`` 256 -> 9, plus the identity.
- ``feat``: ``conv1`` 3 -> 64, ``conv2`` 64 -> 128 (BatchNorm + ReLU), ``conv3`` 128 -> 1024 with
  BatchNorm ``bn3`` and no ReLU, max over points: the 1024-d global feature.
- head: ``fc1`` 1024 -> 512, ``fc2`` 512 -> 256 (BatchNorm ``bn1``, ``bn2``, ReLU), ``fc3``
  256 -> k logits.

The FPD feature of a cloud is the concatenation [global 1024 | 512 | 256 | k logits]
(1,808-d for k = 16), as TreeGAN's classifier returns it. Clouds go in as (B, N, 3) (TreeGAN
transposes them to (B, 3, N) before the network; :class:`PointNetCls` does that itself),
centred on their mean and scaled to a largest norm of 1 (:func:`normalize_clouds`).

Key map of :func:`iss3d.models.loaders.load_pointnet` (checkpoint -> model):

=====================================  ====================================================
checkpoint key                          model key
=====================================  ====================================================
``module.<k>`` (DataParallel)           ``<k>``
``model.<k>`` (``iss3d fit pointnet``'s  ``<k>``
Lightning ``state_dict``)
``feat.stn.{conv,fc}<i>.*``,            the same (identity)
``feat.stn.bn<i>.*``, ``feat.conv<i>.*``,
``feat.bn<i>.*``, ``fc<i>.*``, ``bn<i>.*``
``*.num_batches_tracked``               optional (PyTorch < 0.4.1 checkpoints lack them)
=====================================  ====================================================

k is read from ``fc3.weight``. Files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "PointNetCls",
    "PointNetFeat",
    "PointNetInfo",
    "STN3d",
    "export_pointnet",
    "feature_dim",
    "map_pointnet_key",
    "normalize_clouds",
]

#: The ``format`` entry of an exported PointNet (``iss3d fit pointnet`` writes DIR/pointnet.pt).
CHECKPOINT_FORMAT = "iss3d-pointnet"

GLOBAL_DIM = 1024


def feature_dim(k: int) -> int:
    """Size of the FPD feature of a k-class PointNet: 1024 + 512 + 256 + k (1,808 for k=16)."""
    return GLOBAL_DIM + 512 + 256 + k


class STN3d(nn.Module):
    """The input transform: (B, 3, N) -> (B, 3, 3), identity plus a learnt offset."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(3, 64, 1)
        self.conv2 = nn.Conv1d(64, 128, 1)
        self.conv3 = nn.Conv1d(128, 1024, 1)
        self.fc1 = nn.Linear(1024, 512)
        self.fc2 = nn.Linear(512, 256)
        self.fc3 = nn.Linear(256, 9)
        self.bn1 = nn.BatchNorm1d(64)
        self.bn2 = nn.BatchNorm1d(128)
        self.bn3 = nn.BatchNorm1d(1024)
        self.bn4 = nn.BatchNorm1d(512)
        self.bn5 = nn.BatchNorm1d(256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = x.amax(dim=2)
        x = F.relu(self.bn4(self.fc1(x)))
        x = F.relu(self.bn5(self.fc2(x)))
        x = self.fc3(x)
        identity = torch.eye(3, dtype=x.dtype, device=x.device).reshape(1, 9)
        return (x + identity).reshape(-1, 3, 3)


class PointNetFeat(nn.Module):
    """(B, 3, N) points -> ((B, 1024) global feature after BatchNorm, before any ReLU;
    (B, 3, 3) input transform)."""

    def __init__(self) -> None:
        super().__init__()
        self.stn = STN3d()
        self.conv1 = nn.Conv1d(3, 64, 1)
        self.conv2 = nn.Conv1d(64, 128, 1)
        self.conv3 = nn.Conv1d(128, 1024, 1)
        self.bn1 = nn.BatchNorm1d(64)
        self.bn2 = nn.BatchNorm1d(128)
        self.bn3 = nn.BatchNorm1d(1024)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trans = self.stn(x)
        x = torch.bmm(x.transpose(2, 1), trans).transpose(2, 1)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return x.amax(dim=2), trans


@dataclass
class PointNetOutput:
    """logits: (B, k); features: (B, 1024 + 512 + 256 + k) the FPD feature; transform (B, 3, 3)."""

    logits: torch.Tensor
    features: torch.Tensor
    transform: torch.Tensor


class PointNetCls(nn.Module):
    """TreeGAN's PointNet classifier with k classes.

    Call with clouds (B, N, 3) (N >= 1; B >= 2 in training mode, for BatchNorm) ->
    :class:`PointNetOutput`. The clouds should be normalised (:func:`normalize_clouds`).
    """

    def __init__(self, k: int = 16) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"PointNetCls needs k >= 1 classes, got {k}")
        self.k = int(k)
        self.feat = PointNetFeat()
        self.fc1 = nn.Linear(1024, 512)
        self.fc2 = nn.Linear(512, 256)
        self.fc3 = nn.Linear(256, k)
        self.bn1 = nn.BatchNorm1d(512)
        self.bn2 = nn.BatchNorm1d(256)

    @property
    def feature_dim(self) -> int:
        return feature_dim(self.k)

    def forward(self, points: torch.Tensor) -> PointNetOutput:
        if points.dim() != 3 or points.shape[-1] != 3:
            raise ValueError(f"PointNetCls: points must be (B, N, 3), got {tuple(points.shape)}")
        x1, trans = self.feat(points.transpose(1, 2))
        x2 = F.relu(self.bn1(self.fc1(x1)))
        x3 = F.relu(self.bn2(self.fc2(x2)))
        x4 = self.fc3(x3)
        return PointNetOutput(x4, torch.cat([x1, x2, x3, x4], dim=1), trans)


def normalize_clouds(points: torch.Tensor) -> torch.Tensor:
    """Centre each cloud on its mean and scale it so its farthest point has norm 1.

    Args:
        points: (B, N, 3) or (N, 3).

    Returns:
        The same shape; a cloud of identical points stays at the origin.
    """
    centred = points - points.mean(dim=-2, keepdim=True)
    radius = centred.norm(dim=-1).amax(dim=-1, keepdim=True)[..., None]
    return centred / radius.clamp(min=1e-12)


# -- checkpoints ----------------------------------------------------------------------------


@dataclass
class PointNetInfo:
    """What a PointNet file says about itself (empty for a bare TreeGAN state dict).

    k: classes; categories: their names in label order (None when unknown); num_points: the
    cloud size it was trained on; source: where the weights came from (a description).
    """

    k: int
    categories: list[str] | None = None
    num_points: int | None = None
    source: str = "state dict"
    extra: dict[str, Any] = field(default_factory=dict)


def map_pointnet_key(key: str) -> str:
    """A checkpoint key -> the :class:`PointNetCls` key (see the module's key map)."""
    while key.startswith("module."):
        key = key[len("module.") :]
    if key.startswith("model."):
        key = key[len("model.") :]
    return key


def export_pointnet(
    path: str | os.PathLike,
    model: PointNetCls,
    categories: list[str] | None = None,
    num_points: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` as ``{"format": "iss3d-pointnet", "k", "categories", "num_points",
    "state_dict"}`` (TreeGAN key names inside), written atomically."""
    from iss3d.core.atomic import atomic_output

    path = Path(path)
    blob = {
        "format": CHECKPOINT_FORMAT,
        "k": model.k,
        "categories": list(categories) if categories is not None else None,
        "num_points": num_points,
        "extra": dict(extra or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_output(path) as tmp:
        torch.save(blob, tmp)
    return path
