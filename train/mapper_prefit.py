"""Stage 1's mapper pre-fit: M regressed on cached (CLIP image feature, SVR latent) pairs.

L_M needs only f_I = CLIP(I) and c = E_S(I), and both networks are frozen in stage 1, so the
pairs of every training view can be computed once. A joint stage-1 step also renders the
decoder for L_D and L_bg, which makes each mapper update cost about a second on a CPU; on the
cache an epoch over every view costs about as much as one joint step. The pre-fit runs before
the first joint step (never on resume); the joint loop then goes on exactly as the paper's
stage 1. An addition of ours, off by default (``epochs: 0``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from iss3d.core.errors import UserError
from iss3d.data.datasets import ViewDataset
from iss3d.data.reader import MultiViewFile
from iss3d.models.losses import mapper_loss

__all__ = [
    "MapperPrefitConfig",
    "feature_pairs",
    "prefit_mapper",
    "prefit_pairs",
]


@dataclass
class MapperPrefitConfig:
    """YAML section ``prefit`` of a stage-1 config.

    Attributes:
        epochs: passes over the cached pairs of every training view (0: no pre-fit).
        batch_size: pairs per mapper update.
        lr: Adam learning rate of the pre-fit.
        encode_batch: views per CLIP / E_S forward when the cache is built.

    The pairs come from the training views of the data file and of the ``data.extra_data``
    files (:func:`prefit_pairs`): the mapper's fit to unseen objects grows with the objects it
    has seen (synthetic world, session 8: 1145 -> 2305 training objects raise mapper IoU / SVR
    IoU from 0.847 to 0.893; README, "The shipped models").
    """

    epochs: int = 0
    batch_size: int = 256
    lr: float = 1.0e-3
    encode_batch: int = 128

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise UserError(f"prefit config: 'epochs' must be >= 0, got {self.epochs}")
        for name in ("batch_size", "encode_batch"):
            if getattr(self, name) < 1:
                raise UserError(f"prefit config: {name!r} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"prefit config: 'lr' must be > 0, got {self.lr}")


@torch.no_grad()
def feature_pairs(
    targets: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    file: MultiViewFile,
    split: str | None,
    batch_size: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (f_I, c) pair of every view of ``split``.

    Args:
        targets: images (B, 3, H, W) in [0, 1] on ``device`` -> (c (B, c_dim), f (B, D)), e.g.
            :meth:`iss3d.train.stage1.Stage1System.targets`.
        file, split: the training views.
        batch_size: views per call of ``targets``.
        device: where ``targets`` runs.

    Returns:
        f (N, D) and c (N, c_dim) float32 on ``device``, N the number of views.
    """
    views = ViewDataset(file, split)
    if len(views) == 0:
        raise UserError(f"{file.path}: no views in split {split!r} to pre-fit the mapper on")
    fs, cs = [], []
    for batch in DataLoader(views, batch_size=batch_size, shuffle=False):
        c, f = targets(batch["image"].to(device))
        fs.append(f.float())
        cs.append(c.float())
    return torch.cat(fs), torch.cat(cs)


def prefit_pairs(
    targets: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    files: list[MultiViewFile],
    split: str | None,
    cfg: MapperPrefitConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs of every view of ``split`` of each of ``files``: f (N, D), c (N, c_dim), as
    :func:`feature_pairs`."""
    pairs = [feature_pairs(targets, file, split, cfg.encode_batch, device) for file in files]
    return torch.cat([f for f, _ in pairs]), torch.cat([c for _, c in pairs])


def prefit_mapper(
    mapper: nn.Module,
    f: torch.Tensor,
    c: torch.Tensor,
    cfg: MapperPrefitConfig,
    loss_kind: str,
    mapper_input: Callable[[torch.Tensor], torch.Tensor],
    seed: int = 0,
) -> dict[str, float]:
    """Fit ``mapper`` on the pairs for ``cfg.epochs`` epochs (its own Adam, shuffled batches).

    Args:
        mapper: M, trained in place.
        f: (N, D) CLIP image features; c: (N, c_dim) SVR latents.
        cfg: epochs, batch size, learning rate.
        loss_kind: stage 1's L_M ("l2" or "l1", :func:`iss3d.models.losses.mapper_loss`).
        mapper_input: f -> M's input (stage 1's noise mixing, or the identity).
        seed: seed of the shuffling.

    Returns:
        ``loss`` (mean L_M of the last epoch) and ``cos`` (mean cosine(M(f), c) over all pairs
        after the fit, clean inputs).
    """
    optimizer = torch.optim.Adam(mapper.parameters(), lr=cfg.lr)
    generator = torch.Generator().manual_seed(seed)
    n = f.shape[0]
    losses: list[float] = []
    for _ in range(cfg.epochs):
        losses = []
        for rows in torch.randperm(n, generator=generator).split(cfg.batch_size):
            rows = rows.to(f.device)
            loss = mapper_loss(mapper(mapper_input(f[rows])), c[rows], loss_kind)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    with torch.no_grad():
        cos = torch.cat(
            [
                F.cosine_similarity(mapper(fb), cb, dim=-1)
                for fb, cb in zip(f.split(1024), c.split(1024), strict=True)
            ]
        )
    return {"loss": sum(losses) / max(len(losses), 1), "cos": float(cos.mean())}
