"""Lightning DataModule over one multi-view HDF5 file, with a strictly parsed config."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from data.config import StrictConfig
from data.datasets import EpochSampler, ObjectDataset, ViewDataset
from data.errors import UserError
from data.reader import MultiViewFile
from data.records import SPLITS

MODES = ("view", "object")


@dataclass
class DataConfig(StrictConfig):
    """What the trainers read.

    path: the multi-view HDF5 file.
    mode: "view" (batches of views, :class:`data.datasets.ViewDataset`) or "object" (batches of
        objects with ``views_per_object`` views each, :class:`data.datasets.ObjectDataset`).
    batch_size: items per batch (views, or objects); num_workers: DataLoader processes.
    pixels: pixels sampled per view (None: none); inside_fraction: share on the object
        (None: uniform over the image).
    views_per_object: views per object in "object" mode (None: all).
    occupancy_points: ground-truth occupancy samples per object in "object" mode (None: none),
        for trainers that add 3D supervision where the file has it.
    train_split, val_split, test_split: split names (None: every object).
    seed: base seed of shuffling, pixel samples and caption choice.
    """

    CONFIG_NAME: ClassVar[str] = "data config"

    path: str
    mode: str = "view"
    batch_size: int = 64
    num_workers: int = 0
    pixels: int | None = None
    inside_fraction: float | None = 0.5
    views_per_object: int | None = None
    occupancy_points: int | None = None
    train_split: str | None = "train"
    val_split: str | None = "val"
    test_split: str | None = "test"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.path, os.PathLike):
            self.path = os.fspath(self.path)
        self.check()

    def check(self) -> None:
        """Raise UserError naming the first bad value."""
        if not isinstance(self.path, str) or not self.path:
            raise UserError(f"data config: path must be a non-empty string, got {self.path!r}")
        if self.mode not in MODES:
            raise UserError(f"data config: mode must be one of {MODES}, got {self.mode!r}")
        for name, least in (("batch_size", 1), ("num_workers", 0), ("seed", 0)):
            value = getattr(self, name)
            if not _is_int(value) or value < least:
                raise UserError(f"data config: {name} must be an integer >= {least}, got {value!r}")
        for name in ("pixels", "views_per_object", "occupancy_points"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise UserError(
                    f"data config: {name} must be a positive integer or null, got {value!r}"
                )
        frac = self.inside_fraction
        if frac is not None and (
            isinstance(frac, bool) or not isinstance(frac, int | float) or not 0 <= frac <= 1
        ):
            raise UserError(f"data config: inside_fraction must be in [0, 1] or null, got {frac!r}")
        for name in ("train_split", "val_split", "test_split"):
            value = getattr(self, name)
            if value is not None and value not in SPLITS:
                raise UserError(
                    f"data config: {name} must be one of {SPLITS} or null, got {value!r}"
                )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class MultiViewDataModule(pl.LightningDataModule):
    """Train / val / test loaders over one file.

    Training shuffles with a fresh permutation per epoch and fresh pixel samples / captions;
    validation and test run in file order with the same samples every time (epoch 0). All of it
    derives from ``config.seed`` (see :class:`data.datasets.EpochSampler`).

    Batches are dicts as the datasets' items, stacked along a new first axis B (captions: a list
    of B strings).
    """

    def __init__(self, config: DataConfig):
        super().__init__()
        self.config = config
        self._file: MultiViewFile | None = None
        self._datasets: dict[str, ViewDataset | ObjectDataset] = {}

    @property
    def file(self) -> MultiViewFile:
        """The file's tables (read once; images are read lazily in each worker)."""
        if self._file is None:
            self._file = MultiViewFile(self.config.path)
        return self._file

    @property
    def category_names(self) -> list[str]:
        return self.file.category_names

    def dataset(self, split: str | None) -> ViewDataset | ObjectDataset:
        """The dataset of ``split`` (None: all objects), built on first use."""
        key = "*" if split is None else split
        if key not in self._datasets:
            cfg = self.config
            common = {
                "pixels": cfg.pixels,
                "inside_fraction": cfg.inside_fraction,
                "seed": cfg.seed,
            }
            if cfg.mode == "view":
                self._datasets[key] = ViewDataset(self.file, split, **common)
            else:
                self._datasets[key] = ObjectDataset(
                    self.file,
                    split,
                    cfg.views_per_object,
                    occupancy_points=cfg.occupancy_points,
                    **common,
                )
        return self._datasets[key]

    def setup(self, stage: str | None = None) -> None:
        cfg = self.config
        if stage in (None, "fit"):
            if len(self.dataset(cfg.train_split)) == 0:
                raise UserError(f"{cfg.path}: no objects in split {cfg.train_split!r}")
            self.dataset(cfg.val_split)
        if stage in (None, "validate"):
            self.dataset(cfg.val_split)
        if stage in (None, "test"):
            self.dataset(cfg.test_split)

    def _loader(self, split: str | None, train: bool) -> DataLoader:
        cfg = self.config
        dataset = self.dataset(split)
        sampler = EpochSampler(len(dataset), shuffle=train, seed=cfg.seed, advance=train)
        return DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=sampler,
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.config.train_split, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.config.val_split, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.config.test_split, train=False)
