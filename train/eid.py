"""``iss3d fit eid``: the E_I + D baseline of ISS's ablation: a decoder on CLIP image features.

No SVR encoder and no mapper: the frozen CLIP image encoder E_I gives the latent c = f_I of
view 0 of each object directly (unit norm, clip_embed_dim wide), and a fresh decoder D (its
``c_dim`` must be the CLIP feature size) is trained with the DVR losses of
:func:`iss3d.train.svr.svr_losses` plus ISS's background loss (``loss.lambda_bg``) on the
decoder-drawn background. At test time ``iss3d evaluate`` feeds D the text feature f_T in place
of f_I (method ``ei-d``); the gap between the two is what the ablation measures.

Validation: volumetric IoU at the file's uniform occupancy samples of D(f_I) (``val/iou_image``)
and of D(f_T) for each object's first caption (``val/iou_text``).

Checkpoints (``checkpoints/last.ckpt``): ``state_dict`` with ``decoder.*``; hyper-parameters
``kind: ei-d``, ``config``, ``clip_spec``, ``clip_embed_dim`` (read by
:func:`iss3d.models.loaders.load_eid`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from iss3d.core.config import StrictConfig
from iss3d.core.errors import UserError
from iss3d.models.decoder import DecoderConfig
from iss3d.models.loaders import ArchitectureCard
from iss3d.models.losses import background_ray_loss
from iss3d.models.metrics import occupancy_iou
from iss3d.train.datamodule import DataConfig
from iss3d.train.runs import RunConfig, TrainerConfig
from iss3d.train.svr import (
    AdamConfig,
    SVRLossConfig,
    SVRMarchConfig,
    check_ray_data,
    occupancy_targets,
    svr_losses,
    weighted_total,
)
from iss3d.train.system import DataSystem, Frozen

__all__ = ["EIDConfig", "EIDLossConfig", "EIDSystem", "fit_eid"]


@dataclass
class EIDLossConfig(SVRLossConfig):
    """The DVR losses of :class:`iss3d.train.svr.SVRLossConfig` plus ``lambda_bg``, the weight of
    ISS's background loss (30 in the official stage 1; 0 disables it)."""

    lambda_bg: float = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_bg < 0:
            raise UserError("loss config: 'lambda_bg' must be >= 0")


@dataclass
class EIDConfig(StrictConfig):
    """Everything ``iss3d fit eid`` reads (``configs/eid/*.yaml``).

    clip: the CLIP spec (``--clip``); decoder.c_dim must equal its feature size.
    """

    CONFIG_NAME: ClassVar[str] = "eid config"

    data: DataConfig
    clip: str | None = None
    decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig(c_dim=512))
    march: SVRMarchConfig = field(default_factory=SVRMarchConfig)
    loss: EIDLossConfig = field(default_factory=EIDLossConfig)
    optim: AdamConfig = field(default_factory=AdamConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="eid"))

    def __post_init__(self) -> None:
        check_ray_data(self.data, self.loss.lambda_occupancy3d, "eid config")


class EIDSystem(DataSystem):
    """E_I + D: a decoder conditioned on frozen CLIP image features. State: ``decoder.*``."""

    def __init__(self, config: EIDConfig | Mapping[str, Any], clip):
        super().__init__()
        cfg = config if isinstance(config, EIDConfig) else EIDConfig.from_dict(config)
        self.cfg = cfg
        self._clip = Frozen(clip.eval().requires_grad_(False))
        self.decoder = cfg.decoder.build()
        self.save_hyperparameters(
            {
                "kind": "ei-d",
                "config": cfg.to_dict(),
                "clip_spec": cfg.clip,
                "clip_embed_dim": int(clip.embed_dim),
            }
        )
        self._val: dict[str, list] = {}

    def architecture(self) -> ArchitectureCard:
        return ArchitectureCard(
            kind="ei-d",
            decoder=self.cfg.decoder,
            clip_spec=self.hparams["clip_spec"],
            clip_embed_dim=self.hparams["clip_embed_dim"],
        )

    @property
    def clip(self):
        model = self._clip.module
        if model.device != self.device:
            model.to(self.device)
        return model

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        lc = self.cfg.loss
        march_cfg = self.cfg.march.march_config(self.global_step)
        with torch.no_grad():
            c = self.clip.encode_image(batch["image"][:, 0]).float()
        losses, stats, hits = svr_losses(self.decoder, c, batch, lc, march_cfg)
        if lc.lambda_bg > 0:
            losses["loss_bg"], stats["bg_rays"] = background_ray_loss(self.decoder, c, hits)
        total = weighted_total(losses, lc)
        self.log_training(losses, stats, total, c.shape[0], march_cfg.n_steps)
        return total

    def configure_optimizers(self):
        return self.cfg.optim.optimizers(
            [{"params": list(self.decoder.parameters())}], self.cfg.trainer.max_steps
        )

    def on_validation_epoch_start(self) -> None:
        self._val = {"iou_image": [], "iou_text": []}

    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        objects = [int(o) for o in batch["object_index"]]
        targets = occupancy_targets(self.file, objects, self.device)
        if targets is None:
            return
        chunk = self.cfg.march.chunk
        c = self.clip.encode_image(batch["image"][:, 0]).float()
        self._val["iou_image"].append(occupancy_iou(self.decoder, c, *targets, chunk).cpu())
        rows = [i for i, o in enumerate(objects) if len(self.file.captions[o])]
        if rows:
            texts = [str(self.file.captions[objects[i]][0]) for i in rows]
            t = self.clip.encode_text(texts).float().to(self.device)
            sel = torch.tensor(rows, device=self.device)
            points, inside = targets
            self._val["iou_text"].append(
                occupancy_iou(self.decoder, t, points[sel], inside[sel], chunk).cpu()
            )

    def on_validation_epoch_end(self) -> None:
        for key, values in self.gather_validation(self._val).items():
            if values:
                self.log_gathered(f"val/{key}", torch.cat(values).mean().item(), prog_bar=True)


def fit_eid(
    cfg: EIDConfig, out: Path | None, command: str, resume: bool = False, progress: bool = True
) -> int:
    """Check the CLIP model, the decoder size and the data; prepare the run folder; train."""
    from iss3d.models.clip import load_clip
    from iss3d.train import runs
    from iss3d.train.datamodule import MultiViewDataModule

    runs.seed_run(cfg.run)  # before any weights (models, CLIP specs) are built
    if not cfg.clip:
        raise UserError("no CLIP model: give --clip SPEC (or clip in the config)")
    clip = load_clip(cfg.clip)
    if cfg.decoder.c_dim != clip.embed_dim:
        raise UserError(
            f"CLIP {cfg.clip!r} gives {clip.embed_dim}-d features but decoder.c_dim is "
            f"{cfg.decoder.c_dim} (set decoder.c_dim={clip.embed_dim})"
        )
    datamodule = MultiViewDataModule(cfg.data)
    datamodule.setup("fit")
    if cfg.trainer.val_check_interval > 0 and len(datamodule.dataset(cfg.data.val_split)) == 0:
        raise UserError(
            f"{cfg.data.path}: no objects in the validation split {cfg.data.val_split!r} "
            "(set trainer.val_check_interval=0 to train without validation)"
        )
    run_dir = runs.run_folder("eid", cfg.run.name, out)
    config_dict = cfg.to_dict()
    ckpt = run_dir.check(config_dict, resume)
    cfg.march.note_unreached(cfg.trainer.max_steps)
    system = EIDSystem(cfg, clip)
    run_dir.create(config_dict, command)
    trainer = runs.make_trainer(run_dir, cfg.trainer, cfg.run, "eid", enable_progress_bar=progress)
    runs.fit(trainer, system, datamodule, ckpt, run_dir)
    runs.report(trainer, f"run folder: {run_dir.path} (step {trainer.global_step})")
    return 0
