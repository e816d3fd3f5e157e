"""``iss3d fit pointnet``: train TreeGAN's PointNet classifier on a dataset's surface points.

The classifier is :class:`iss3d.models.pointnet.PointNetCls` (TreeGAN's layout, k = the dataset's
category count unless ``k`` is set), trained as fxia22's ``pointnet.pytorch`` trains it: Adam
1e-3, cross-entropy on the category, one random subset of ``data.points`` surface points per
object and step, centred and scaled to the unit sphere, randomly rotated about the up axis and
jittered. Its features then serve the Frechet PointNet Distance of ``iss3d evaluate``.

Data: any multi-view file with categories (at least two) and surface points (``eval/
surface_points``: the synthetic world has them). The run folder follows the conventions of the
other trainers (config.yaml, command.txt, checkpoints/last.ckpt, --resume, overrides) and ends
with ``DIR/pointnet.pt`` (:func:`iss3d.models.pointnet.export_pointnet`: TreeGAN key names, the
category names, the point count), which ``iss3d evaluate --pointnet`` reads.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from iss3d.core.config import StrictConfig
from iss3d.core.errors import UserError
from iss3d.models.pointnet import PointNetCls, normalize_clouds
from iss3d.train.datamodule import epoch_loader
from iss3d.train.runs import RunConfig, TrainerConfig
from iss3d.train.svr import AdamConfig

__all__ = [
    "PointNetConfig",
    "PointNetDataConfig",
    "PointNetSystem",
    "SurfaceClouds",
    "fit_pointnet",
]


#: Points per cloud at most (TreeGAN's FPD uses 2,048; a batch holds batch_size x this).
MAX_POINTS = 65536


@dataclass
class PointNetDataConfig:
    """The data of ``fit pointnet`` (YAML section ``data``).

    path: the multi-view HDF5 file (``--data``). points: points per cloud (FPD: 2,048).
    batch_size: clouds per step (BatchNorm needs >= 2). train_split, val_split: split names
    (val None: no validation). rotate: random rotation about the up (y) axis;
    jitter: std of Gaussian noise on the normalised points (0: none). num_workers: loaders.
    seed: base seed of the order, the point subsets, rotations and jitter (per epoch and object).
    """

    path: str | None = None
    points: int = 2048
    batch_size: int = 32
    train_split: str | None = "train"
    val_split: str | None = "val"
    rotate: bool = True
    jitter: float = 0.02
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 16 <= self.points <= MAX_POINTS:
            raise UserError(
                f"data config: 'points' must be in [16, {MAX_POINTS}], got {self.points}"
            )
        if self.batch_size < 2:
            raise UserError("data config: 'batch_size' must be >= 2 (BatchNorm)")
        if self.jitter < 0 or self.num_workers < 0 or self.seed < 0:
            raise UserError("data config: 'jitter', 'num_workers' and 'seed' must be >= 0")


@dataclass
class PointNetConfig(StrictConfig):
    """Everything ``iss3d fit pointnet`` reads (``configs/pointnet/*.yaml``).

    k: classifier outputs (None: the dataset's category count; TreeGAN's ShapeNet one: 16).
    """

    CONFIG_NAME: ClassVar[str] = "pointnet config"

    data: PointNetDataConfig = field(default_factory=PointNetDataConfig)
    k: int | None = None
    optim: AdamConfig = field(default_factory=lambda: AdamConfig(lr=1e-3))
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="pointnet"))

    def __post_init__(self) -> None:
        if self.k is not None and self.k < 2:
            raise UserError(f"pointnet config: 'k' must be >= 2 or null, got {self.k}")


class SurfaceClouds(Dataset):
    """(cloud (points, 3) float32 normalised and augmented, category label) per object of a
    split; every object's surface points are read into memory once."""

    def __init__(
        self, file, split: str | None, categories: list[str], cfg: PointNetDataConfig, train: bool
    ):
        self.objects = [int(o) for o in file.objects_in(split)]
        index = {c: i for i, c in enumerate(categories)}
        self.labels = [index[str(file.categories[o])] for o in self.objects]
        self.clouds = [np.asarray(file.read_surface(o).points, np.float32) for o in self.objects]
        self.cfg = cfg
        self.train = train

    def __len__(self) -> int:
        return len(self.objects)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        """``(index, epoch)`` (what :class:`iss3d.data.datasets.EpochSampler` yields) -> (cloud
        (points, 3), label). Training draws from ``(seed, epoch, index)`` only; validation takes
        the same first points every time."""
        i, epoch = item
        cloud = self.clouds[i]
        n = self.cfg.points
        if not self.train:
            return normalize_clouds(
                torch.from_numpy(cloud[np.arange(n) % len(cloud)])
            ), self.labels[i]
        rng = np.random.default_rng([self.cfg.seed, epoch, i])
        if len(cloud) >= n:
            pick = rng.permutation(len(cloud))[:n]
        else:
            pick = rng.integers(0, len(cloud), n)
        x = normalize_clouds(torch.from_numpy(cloud[pick]))
        if self.cfg.rotate:
            a = float(rng.uniform(0.0, 2 * math.pi))
            ca, sa = math.cos(a), math.sin(a)
            rot = torch.tensor([[ca, 0.0, sa], [0.0, 1.0, 0.0], [-sa, 0.0, ca]])
            x = x @ rot.T
        if self.cfg.jitter > 0:
            noise = rng.standard_normal(x.shape).astype(np.float32)
            x = x + self.cfg.jitter * torch.from_numpy(noise)
        return x, self.labels[i]


class PointNetSystem(pl.LightningModule):
    """Lightning wrapper: ``model`` (:class:`PointNetCls`), cross-entropy, accuracy.

    State-dict keys ``model.<TreeGAN name>``; hyper-parameters ``config``, ``categories``, ``k``.
    """

    def __init__(self, config: PointNetConfig | Mapping[str, Any], categories: list[str], k: int):
        super().__init__()
        cfg = config if isinstance(config, PointNetConfig) else PointNetConfig.from_dict(config)
        self.cfg = cfg
        self.save_hyperparameters(
            {"config": cfg.to_dict(), "categories": list(categories), "k": int(k)}
        )
        self.model = PointNetCls(k=k)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.model(x).logits
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        val = stage == "val"  # averaged over every rank's share of the validation objects
        log = functools.partial(self.log, batch_size=len(y), sync_dist=val)
        log(f"{stage}/loss", loss.detach(), prog_bar=not val)
        log(f"{stage}/acc", acc, prog_bar=val)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self):
        return self.cfg.optim.optimizers(
            [{"params": list(self.model.parameters())}], self.cfg.trainer.max_steps
        )


class _Data(pl.LightningDataModule):
    def __init__(self, train: SurfaceClouds, val: SurfaceClouds | None, cfg: PointNetDataConfig):
        super().__init__()
        self.train, self.val, self.cfg = train, val, cfg

    def train_dataloader(self) -> DataLoader:
        batch = min(self.cfg.batch_size, len(self.train))
        return epoch_loader(
            self.train, batch, True, self.cfg.seed, self.cfg.num_workers, self.trainer, True
        )

    def val_dataloader(self) -> DataLoader:
        return epoch_loader(
            self.val, self.cfg.batch_size, False, self.cfg.seed, self.cfg.num_workers, self.trainer
        )


def fit_pointnet(
    cfg: PointNetConfig, out: Path | None, command: str, resume: bool = False, progress: bool = True
) -> int:
    """Check the data, prepare the run folder, train, export ``DIR/pointnet.pt``. Returns 0."""
    from iss3d.data.reader import MultiViewFile
    from iss3d.models.pointnet import export_pointnet
    from iss3d.train import runs

    runs.seed_run(cfg.run)  # before any weights (models, CLIP specs) are built
    d = cfg.data
    file = MultiViewFile(d.path)
    if not file.has_surface:
        raise UserError(
            f"{d.path}: has no surface points (eval/surface_points), which PointNet trains on"
        )
    categories = file.category_names
    if len(categories) < 2:
        raise UserError(f"{d.path}: needs at least 2 categories to train a classifier")
    k = cfg.k if cfg.k is not None else len(categories)
    if k < len(categories):
        raise UserError(f"pointnet config: k={k} but {d.path} has {len(categories)} categories")
    train = SurfaceClouds(file, d.train_split, categories, d, train=True)
    if len(train) < 2:
        raise UserError(f"{d.path}: fewer than 2 objects in the train split {d.train_split!r}")
    val = None
    if cfg.trainer.val_check_interval > 0:
        val = SurfaceClouds(file, d.val_split, categories, d, train=False)
        if len(val) == 0:
            raise UserError(
                f"{d.path}: no objects in the validation split {d.val_split!r} "
                "(set trainer.val_check_interval=0 to train without validation)"
            )
    run_dir = runs.run_folder("pointnet", cfg.run.name, out)
    config_dict = cfg.to_dict()
    ckpt = run_dir.check(config_dict, resume)
    system = PointNetSystem(cfg, categories, k)
    run_dir.create(config_dict, command)
    trainer = runs.make_trainer(
        run_dir, cfg.trainer, cfg.run, "pointnet", enable_progress_bar=progress
    )
    runs.fit(trainer, system, _Data(train, val, d), ckpt, run_dir)
    if not trainer.is_global_zero:
        return 0
    path = export_pointnet(
        run_dir.path / "pointnet.pt",
        system.model,
        categories + [f"unused_{i}" for i in range(k - len(categories))],
        d.points,
        {"data": str(d.path), "step": int(trainer.global_step)},
    )
    print(f"run folder: {run_dir.path} (step {trainer.global_step}); PointNet: {path}")
    return 0
