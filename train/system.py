"""What every iss3d Lightning system shares: its training file and its validation image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from iss3d.core.atomic import atomic_output
from iss3d.data.reader import MultiViewFile
from iss3d.models.loaders import ArchitectureCard
from iss3d.train.datamodule import open_extra_files

__all__ = ["DataSystem", "Frozen"]


class Frozen:
    """Holds a module outside a LightningModule's tree: not saved, not moved by Lightning (a
    frozen CLIP model the checkpoint names by spec instead)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module


class DataSystem(pl.LightningModule):
    """A LightningModule trained on one multi-view file (``self.cfg.data.path``).

    Subclasses set ``self.cfg`` (with a ``data`` section), may set ``self.image_dir`` (where
    :meth:`save_grid` writes ``step_<k>.png``; None: not written) and define
    :meth:`architecture`, the card their checkpoints carry (``ckpt["architecture"]``).
    """

    _file: MultiViewFile | None = None
    image_dir: Path | None = None

    def architecture(self) -> ArchitectureCard | None:
        """The architecture card every checkpoint of this system carries (None: no card)."""
        return None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        card = self.architecture()
        if card is not None:
            checkpoint["architecture"] = card.to_checkpoint()

    @property
    def file(self) -> MultiViewFile:
        """The training file (the datamodule's when there is one, else opened once)."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "file"):
            return dm.file
        if self._file is None:
            self._file = MultiViewFile(self.cfg.data.path)
        return self._file

    @property
    def extra_files(self) -> list[MultiViewFile]:
        """The ``data.extra_data`` files (the datamodule's, already opened, when there is one)."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "extra_files"):
            return dm.extra_files
        return open_extra_files(self.cfg.data.extra_data, self.file)

    def gather_validation(self, values: dict[str, list]) -> dict[str, list]:
        """Every rank's validation values: each list of ``values`` (this rank's share of the
        validation items, picklable) extended with the other ranks' lists, in rank order. One
        process: ``values`` itself. Every rank must call it (it is a collective)."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return values
        import torch.distributed as dist

        parts: list[dict[str, list] | None] = [None] * world
        dist.all_gather_object(parts, values)
        merged: dict[str, list] = {}
        for part in parts:
            for key, items in (part or {}).items():
                merged.setdefault(key, []).extend(items)
        return merged

    def log_gathered(self, name: str, value: float, prog_bar: bool = False) -> None:
        """Log a value computed from :meth:`gather_validation`'s lists: the same on every rank
        (the max-reduce across ranks changes nothing; it tells Lightning the value is global)."""
        self.log(name, value, prog_bar=prog_bar, sync_dist=True, reduce_fx="max")

    def log_training(
        self,
        losses: dict[str, torch.Tensor],
        stats: dict[str, torch.Tensor],
        total: torch.Tensor,
        batch_size: int,
        n_steps: int,
    ) -> None:
        """Log a ray-trained step: ``train/<loss name>``, ``train/loss`` (the weighted total,
        on the progress bar), ``train/n_steps`` (march samples per ray) and ``train/<stat>``."""
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=batch_size)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=batch_size)
        self.log("train/n_steps", float(n_steps), batch_size=batch_size)
        for name, value in stats.items():
            self.log(f"train/{name}", value, batch_size=batch_size)

    def save_grid(self, rows: list[list[torch.Tensor]]) -> None:
        """Write an image grid, one row per item, to ``image_dir`` and to image-aware loggers
        (from global rank 0 only).

        Args:
            rows: each a list of (3, H, W) float images in [0, 1], the same count per row.
        """
        if self._trainer is not None and not self.trainer.is_global_zero:
            return
        grid = torch.cat([torch.cat(r, dim=-1) for r in rows], dim=-2)  # (3, rows*H, cols*W)
        array = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        step = int(self.global_step)
        if self.image_dir is not None:
            from PIL import Image

            self.image_dir.mkdir(parents=True, exist_ok=True)
            with atomic_output(self.image_dir / f"step_{step}.png") as tmp:
                Image.fromarray(array).save(tmp, format="PNG")
        for logger in self.loggers:
            log_image = getattr(logger, "log_image", None)
            if callable(log_image):
                log_image(key="val/images", images=[array], step=step)
