"""ISS stage 1: map CLIP image features into the SVR shape space; fine-tune the decoder.

``Stage1Config`` and the Lightning ``Stage1System``; ``iss3d fit stage1`` runs
:func:`fit_stage1` (through infer/cli/fit.py).

Models: the trained SVR model's encoder E_S (frozen, eval) and decoder D (fine-tuned), the CLIP
model (frozen, eval; kept out of the checkpoints) and the mapper M (trained from scratch).

One training step (a batch of B objects from :class:`iss3d.data.datasets.ObjectDataset`, K views
each, n sampled pixels per view; the input image I is view 0 of each object):

1. Without gradients: c = E_S(I) (B, c_dim) and f_I = CLIP(I) (B, embed_dim, unit norm).
2. ``loss_mapper``: L_M(M(f~_I), c) with f~_I = normalize(alpha s f_I + (1 - alpha) z) when
   ``loss.noise_alpha`` is set (z a unit-norm Gaussian vector, s = ``loss.noise_feature_norm``),
   else f~_I = f_I. "l2": mean over objects of the squared L2 distance (the paper);
   "l1": mean absolute difference over objects and channels (the official code, x2000).
3. The DVR losses of :func:`iss3d.train.svr.svr_losses` on D conditioned on c (``loss_rgb``, ...).
4. ``loss_bg``: the sampled rays the prediction misses (in the march of step 3) show the
   decoder's colour where the ray leaves the padded cube (the renderer's ``"field"``
   background); mean |1 - rgb| over them (:func:`iss3d.models.losses.background_ray_loss`).
5. total = sum of lambda_<name> * loss_<name>. c carries no graph, so L_D and L_bg reach D only
   and L_M reaches M only; one Adam with two parameter groups (M, D), as the official code.

Validation (the val split): ``val/cos`` mean cosine(M(f_I), E_S(I)); volumetric IoU at the
file's uniform occupancy samples of the shapes decoded from E_S(I) (``val/iou_svr``), M(f_I)
(``val/iou_mapper``) and M(f_T) for the object's first caption (``val/iou_text``; skipped for
objects without captions), ``val/iou_ratio`` = iou_mapper / iou_svr and ``val/iou_text_ratio``;
``val/bg_whiteness``: mean rgb over the background pixels of full renders (decoder-drawn
background); an image grid per validation, one row per object: GT view | render from E_S(I) |
from M(f_I) | from M(f_T).

Checkpoints (Lightning ``last.ckpt``): ``state_dict`` with ``mapper.*``, ``decoder.*`` (the
fine-tuned D) and ``encoder.*`` (E_S, unchanged); ``architecture``: the card (mapper, decoder
and encoder architectures, CLIP spec and feature size, view size); ``hyper_parameters``:
``config``, this stage's training recipe. With the CLIP model the card is everything stage 2
needs (:func:`iss3d.models.loaders.load_stage1`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from iss3d.core.config import StrictConfig
from iss3d.core.errors import UserError
from iss3d.models.loaders import ArchitectureCard
from iss3d.models.losses import background_ray_loss, mapper_loss
from iss3d.models.mapper import MapperConfig, perturb_feature
from iss3d.models.march import MarchConfig
from iss3d.models.metrics import mask_iou, occupancy_iou
from iss3d.models.renderer import Renderer
from iss3d.train.datamodule import DataConfig
from iss3d.train.mapper_prefit import MapperPrefitConfig, prefit_mapper, prefit_pairs
from iss3d.train.runs import RunConfig, TrainerConfig
from iss3d.train.svr import (
    AdamConfig,
    SVRLossConfig,
    SVRMarchConfig,
    SVRValConfig,
    check_ray_data,
    occupancy_targets,
    svr_losses,
    weighted_total,
)
from iss3d.train.system import DataSystem, Frozen

__all__ = [
    "Stage1Config",
    "Stage1LossConfig",
    "Stage1OptimConfig",
    "Stage1System",
    "fit_stage1",
]


@dataclass
class Stage1LossConfig(SVRLossConfig):
    """Loss settings (YAML section ``loss``): the DVR losses of :class:`SVRLossConfig` for the
    decoder, plus the mapper and background losses.

    Attributes:
        mapper_loss: "l2" (the paper: squared L2 distance, mean over objects) or "l1" (the
            official code: mean absolute difference over objects and channels, weight 2000).
        lambda_mapper: weight of L_M. Only M sees L_M and M sees nothing else, so with Adam
            this weight hardly matters (Adam is invariant to a loss scale, up to its eps).
        noise_alpha: weight of f_I in M's noisy input normalize(alpha s f_I + (1 - alpha) z);
            None: no noise (the paper), 0.25 in the official code.
        noise_feature_norm: s, the norm f_I is scaled to before mixing (f_I is unit-norm here).
            1 follows the formula as written; the official code mixes the raw CLIP ViT-B/32
            feature (norm well above 1), which is much less noise for the same alpha.
        lambda_bg: weight of L_bg (the official code: 30; 0 disables it, for ablations).
        Others: as :class:`iss3d.train.svr.SVRLossConfig` (lambda_rgb, lambda_depth, ...).
    """

    mapper_loss: Literal["l2", "l1"] = "l2"
    lambda_mapper: float = 1.0
    noise_alpha: float | None = None
    noise_feature_norm: float = 1.0
    lambda_bg: float = 30.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lambda_mapper < 0 or self.lambda_bg < 0:
            raise UserError("loss config: 'lambda_mapper' and 'lambda_bg' must be >= 0")
        if self.noise_alpha is not None and not 0.0 <= self.noise_alpha <= 1.0:
            raise UserError(
                f"loss config: 'noise_alpha' must be in [0, 1] or null, got {self.noise_alpha}"
            )
        if self.noise_feature_norm <= 0:
            raise UserError("loss config: 'noise_feature_norm' must be > 0")


@dataclass
class Stage1OptimConfig(AdamConfig):
    """Adam settings (YAML section ``optim``): ``lr`` for the mapper, ``decoder_lr`` for the
    decoder (None: ``lr``; the official code uses 1e-4 for both), betas, milestones, gamma as
    :class:`iss3d.train.svr.AdamConfig` (the schedule scales both groups)."""

    decoder_lr: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_rate("decoder_lr", self.decoder_lr)


@dataclass
class Stage1Config(StrictConfig):
    """Everything ``iss3d fit stage1`` reads (``configs/stage1/*.yaml``).

    Attributes:
        data: the multi-view file (mode "object", K >= 2 views, sampled pixels).
        svr: the trained SVR checkpoint (``iss3d fit svr``'s ``last.ckpt``; ``--svr``).
        clip: the CLIP spec for :func:`iss3d.models.clip.load_clip` (``--clip``).
        mapper: M's widths; ``in_dim`` must equal the CLIP embedding size and ``out_dim`` the
            SVR latent size (checked before a run starts).
        prefit: fit M on cached (f_I, E_S(I)) pairs of every training view before the joint
            loop (:mod:`iss3d.train.mapper_prefit`; off by default).
        march, loss, optim, val, trainer, run: as the SVR stage (see the dataclasses).
    """

    CONFIG_NAME: ClassVar[str] = "stage1 config"

    data: DataConfig
    svr: str | None = None
    clip: str | None = None
    mapper: MapperConfig = field(default_factory=MapperConfig)
    prefit: MapperPrefitConfig = field(default_factory=MapperPrefitConfig)
    march: SVRMarchConfig = field(default_factory=SVRMarchConfig)
    loss: Stage1LossConfig = field(default_factory=Stage1LossConfig)
    optim: Stage1OptimConfig = field(default_factory=Stage1OptimConfig)
    val: SVRValConfig = field(default_factory=SVRValConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="stage1"))

    def __post_init__(self) -> None:
        check_ray_data(self.data, self.loss.lambda_occupancy3d, "stage1 config")


# -- the Lightning system -------------------------------------------------------------------------


class Stage1System(DataSystem):
    """ISS stage 1: train M on CLIP image features -> SVR latents, fine-tune D with L_D + L_bg.

    Args:
        config: a :class:`Stage1Config` or its plain-dict form.
        svr: the trained SVR model (:class:`iss3d.models.loaders.SVRModel`); None: load
            ``config.svr``.
        clip: the CLIP model (``iss3d.models.clip.ClipModel``); None: load ``config.clip``.
        image_dir: where validation image grids go (``step_<k>.png``); None: not saved.

    State-dict keys: ``mapper.*``, ``decoder.*``, ``encoder.*`` (CLIP is not saved).
    """

    def __init__(
        self,
        config: Stage1Config | Mapping[str, Any],
        svr=None,
        clip=None,
        image_dir: str | Path | None = None,
    ):
        super().__init__()
        cfg = config if isinstance(config, Stage1Config) else Stage1Config.from_dict(config)
        self.cfg = cfg
        if svr is None:
            from iss3d.models.loaders import load_svr

            if not cfg.svr:
                raise UserError("no SVR checkpoint: give --svr CKPT (or svr in the config)")
            svr = load_svr(cfg.svr)
        if clip is None:
            from iss3d.models.clip import load_clip

            if not cfg.clip:
                raise UserError("no CLIP model: give --clip SPEC (or clip in the config)")
            clip = load_clip(cfg.clip)
        check_dimensions(cfg, svr, clip)
        self._clip = Frozen(clip.eval().requires_grad_(False))
        self.encoder = svr.encoder.eval().requires_grad_(False)
        self.decoder = svr.decoder.train().requires_grad_(True)
        self.mapper = cfg.mapper.build()
        self.save_hyperparameters({"config": cfg.to_dict()})
        self.card = ArchitectureCard(
            kind="stage1",
            decoder=svr.card.decoder,
            encoder=svr.card.encoder,
            mapper=cfg.mapper,
            clip_spec=cfg.clip,
            clip_embed_dim=int(clip.embed_dim),
            image_size=svr.image_size,
        )
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self._val: dict[str, list] = {}

    # -- frozen parts ---------------------------------------------------------------------------
    @property
    def clip(self):
        """The frozen CLIP model (moved to this module's device on use)."""
        model = self._clip.module
        if model.device != self.device:
            model.to(self.device)
        return model

    def train(self, mode: bool = True):
        """Like ``nn.Module.train``, but E_S stays in eval mode (frozen, BatchNorm included)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def architecture(self) -> ArchitectureCard:
        return self.card

    def on_fit_start(self) -> None:
        if self.card.image_size is None:
            self.card = dataclasses.replace(
                self.card, image_size=(self.file.height, self.file.width)
            )

    def on_train_start(self) -> None:
        # here, unlike in on_fit_start, a resumed run's step is already restored
        if self.cfg.prefit.epochs > 0 and self.global_step == 0:
            self.prefit_mapper()

    def prefit_mapper(self) -> None:
        """Fit M on the cached (f_I, E_S(I)) pairs of every training view (of the data file and
        the ``data.extra_data`` files); logs ``prefit/loss``, ``prefit/cos``, ``prefit/views``."""
        pre, split = self.cfg.prefit, self.cfg.data.train_split
        files = [self.file, *self.extra_files]
        f, c = prefit_pairs(self.targets, files, split, pre, self.device)
        stats = prefit_mapper(
            self.mapper, f, c, pre, self.cfg.loss.mapper_loss, self.mapper_input, self.cfg.run.seed
        )
        stats["views"] = float(f.shape[0])
        # every rank fitted the same pairs from the same seed; rank 0's result is broadcast so
        # that float differences between devices cannot leave the ranks' mappers apart
        state = self.trainer.strategy.broadcast(self.mapper.state_dict(), src=0)
        self.mapper.load_state_dict(state)
        for logger in self.loggers:
            logger.log_metrics({f"prefit/{k}": v for k, v in stats.items()}, step=0)
        if self.trainer.is_global_zero:
            print(
                f"mapper pre-fit: {pre.epochs} epochs on {f.shape[0]} views, "
                f"loss {stats['loss']:.4g}, cos {stats['cos']:.3f}"
            )

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) in [0, 1] -> (c = E_S(I) (B, c_dim), f_I = CLIP(I) (B, embed_dim))."""
        return self.encoder(images), self.clip.encode_image(images).float()

    def mapper_input(self, f: torch.Tensor) -> torch.Tensor:
        """M's training input: f_I, or its noisy version when ``loss.noise_alpha`` is set."""
        lc = self.cfg.loss
        if lc.noise_alpha is None:
            return f
        return perturb_feature(f * lc.noise_feature_norm, lc.noise_alpha)

    # -- training ---------------------------------------------------------------------------------
    def stage1_losses(
        self, batch: Mapping[str, Any], march_cfg: MarchConfig
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Unweighted ``loss_<name>`` (mapper, DVR losses, bg) and stats for one batch."""
        lc = self.cfg.loss
        c, f = self.targets(batch["image"][:, 0])
        pred = self.mapper(self.mapper_input(f))
        losses = {"loss_mapper": mapper_loss(pred, c, lc.mapper_loss)}
        dvr, stats, hits = svr_losses(self.decoder, c, batch, lc, march_cfg)
        losses.update(dvr)
        if lc.lambda_bg > 0:
            losses["loss_bg"], stats["bg_rays"] = background_ray_loss(self.decoder, c, hits)
        with torch.no_grad():
            stats["cos"] = F.cosine_similarity(pred, c, dim=-1).mean()
        return losses, stats

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        march_cfg = self.cfg.march.march_config(self.global_step)
        losses, stats = self.stage1_losses(batch, march_cfg)
        total = weighted_total(losses, self.cfg.loss)
        b = batch["image"].shape[0]
        self.log_training(losses, stats, total, b, march_cfg.n_steps)
        return total

    def configure_optimizers(self):
        o = self.cfg.optim
        return o.optimizers(
            [
                {"params": list(self.mapper.parameters()), "lr": o.lr},
                {"params": list(self.decoder.parameters()), "lr": o.decoder_lr or o.lr},
            ],
            self.cfg.trainer.max_steps,
        )

    # -- validation -------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = {
            k: [] for k in ("cos", "iou_svr", "iou_mapper", "iou_text", "iou_svr_text", "rows")
        }
        self._val["bg_sum"], self._val["bg_count"] = [], []
        self._val["mask_iou_svr"], self._val["mask_iou_mapper"] = [], []

    def first_captions(self, objects: list[int]) -> list[str | None]:
        """Each object's first caption (None when it has none)."""
        captions = self.file.captions
        return [str(captions[o][0]) if len(captions[o]) else None for o in objects]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        c_svr, f_img = self.targets(images[:, 0])
        c_map = self.mapper(f_img)
        self._val["cos"].append(F.cosine_similarity(c_map, c_svr, dim=-1).cpu())
        objects = [int(o) for o in batch["object_index"]]
        captions = self.first_captions(objects)
        with_text = [i for i, t in enumerate(captions) if t is not None]
        c_txt = None
        if with_text:
            f_txt = self.clip.encode_text([captions[i] for i in with_text]).float()
            c_txt = self.mapper(f_txt.to(self.device))
        targets = occupancy_targets(self.file, objects, self.device)
        chunk = self.cfg.march.chunk
        if targets is not None:
            self._val["iou_svr"].append(occupancy_iou(self.decoder, c_svr, *targets, chunk).cpu())
            self._val["iou_mapper"].append(
                occupancy_iou(self.decoder, c_map, *targets, chunk).cpu()
            )
            if c_txt is not None:
                points, inside = targets
                sel = torch.tensor(with_text, device=points.device)
                self._val["iou_text"].append(
                    occupancy_iou(self.decoder, c_txt, points[sel], inside[sel], chunk).cpu()
                )
                self._val["iou_svr_text"].append(self._val["iou_svr"][-1][sel.cpu()])
        self._render_rows(batch, c_svr, c_map, c_txt, with_text)

    def _render_rows(self, batch, c_svr, c_map, c_txt, with_text: list[int]) -> None:
        """Full renders of the first ``val.render_objects`` objects: whiteness and grid rows."""
        want = self.cfg.val.render_objects - len(self._val["rows"])
        if want <= 0:
            return
        images = batch["image"]
        m = min(want, images.shape[0])
        k = 1 if images.shape[1] > 1 else 0
        renderer = Renderer(
            MarchConfig(
                n_steps=self.cfg.val.n_steps,
                n_secant=self.cfg.march.n_secant,
                padding=self.cfg.march.padding,
                chunk=self.cfg.march.chunk,
            )
        )
        h, w = images.shape[-2:]

        def render(c: torch.Tensor, rows: slice | list[int]) -> dict[str, torch.Tensor]:
            return renderer.render_images(
                self.decoder,
                c,
                batch["world_mat"][rows, k],
                batch["camera_mat"][rows, k],
                batch["scale_mat"][rows, k],
                h,
                w,
                pixel_convention=self.file.pixel_convention,
                background="field",
            )

        outs = [render(c_svr[:m], slice(0, m)), render(c_map[:m], slice(0, m))]
        text_rows = [i for i in with_text if i < m]
        text_render = None
        if c_txt is not None and text_rows:
            text_render = render(c_txt[: len(text_rows)], text_rows)
            outs.append(text_render)
        if "mask" in batch:  # view k is not the input view when objects have two or more
            truth = batch["mask"][:m, k]
            self._val["mask_iou_svr"].append(mask_iou(outs[0]["mask"], truth).cpu())
            self._val["mask_iou_mapper"].append(mask_iou(outs[1]["mask"], truth).cpu())
        for out in outs:
            background = (out["mask"] < 0.5).expand_as(out["rgb"])
            self._val["bg_sum"].append(out["rgb"][background].sum().cpu())
            self._val["bg_count"].append(torch.tensor(int(background.sum())))
        blank = torch.full((3, h, w), 0.5)
        for i in range(m):
            text_image = blank
            if text_render is not None and i in text_rows:
                text_image = text_render["rgb"][text_rows.index(i)].clamp(0, 1).cpu()
            self._val["rows"].append(
                [
                    images[i, k].cpu(),
                    outs[0]["rgb"][i].clamp(0, 1).cpu(),
                    outs[1]["rgb"][i].clamp(0, 1).cpu(),
                    text_image,
                ]
            )

    def on_validation_epoch_end(self) -> None:
        v = self.gather_validation(self._val)

        def mean(key: str) -> float | None:
            return torch.cat(v[key]).mean().item() if v.get(key) else None

        logged = {
            "val/cos": mean("cos"),
            "val/iou_svr": mean("iou_svr"),
            "val/iou_mapper": mean("iou_mapper"),
            "val/iou_text": mean("iou_text"),
            "val/mask_iou_svr": mean("mask_iou_svr"),
            "val/mask_iou_mapper": mean("mask_iou_mapper"),
        }
        iou_svr, iou_map = logged["val/iou_svr"], logged["val/iou_mapper"]
        if iou_svr is not None and iou_map is not None:
            logged["val/iou_ratio"] = iou_map / iou_svr if iou_svr > 0 else math.nan
        iou_svr_text = mean("iou_svr_text")
        if logged["val/iou_text"] is not None and iou_svr_text is not None:
            logged["val/iou_text_ratio"] = (
                logged["val/iou_text"] / iou_svr_text if iou_svr_text > 0 else math.nan
            )
        count = sum(int(x) for x in v.get("bg_count", []))
        if count:
            logged["val/bg_whiteness"] = sum(float(x) for x in v["bg_sum"]) / count
        for name, value in logged.items():
            if value is not None:
                self.log_gathered(name, value, prog_bar=name == "val/iou_mapper")
        rows = v.get("rows", [])[: self.cfg.val.image_objects]
        if rows and not self.trainer.sanity_checking:
            self.save_grid(rows)


def check_dimensions(cfg: Stage1Config, svr, clip) -> None:
    """Raise a one-line UserError unless CLIP, mapper and SVR sizes fit together."""
    m = cfg.mapper
    if int(clip.embed_dim) != m.in_dim:
        raise UserError(
            f"CLIP {cfg.clip!r} gives {clip.embed_dim}-d features but mapper.in_dim is "
            f"{m.in_dim} (set mapper.in_dim={clip.embed_dim})"
        )
    c_dim = svr.card.decoder.c_dim
    if c_dim != m.out_dim:
        raise UserError(
            f"SVR checkpoint {cfg.svr} has latent size c_dim {c_dim} but mapper.out_dim is "
            f"{m.out_dim} (set mapper.out_dim={c_dim})"
        )


# -- entry point ------------------------------------------------------------------------------


def fit_stage1(
    cfg: Stage1Config,
    out: Path | None,
    command: str,
    resume: bool = False,
    progress: bool = True,
) -> int:
    """Validate the SVR checkpoint, the CLIP model, their sizes and the data; prepare the run
    folder and train. Nothing is created before every check has passed. Returns 0."""
    from iss3d.models.clip import load_clip
    from iss3d.models.loaders import load_svr
    from iss3d.train import runs
    from iss3d.train.datamodule import MultiViewDataModule

    runs.seed_run(cfg.run)  # before any weights (models, CLIP specs) are built
    if not cfg.svr:
        raise UserError("no SVR checkpoint: give --svr CKPT (or svr in the config)")
    if not cfg.clip:
        raise UserError("no CLIP model: give --clip SPEC (or clip in the config)")
    svr = load_svr(cfg.svr)
    clip = load_clip(cfg.clip)
    check_dimensions(cfg, svr, clip)
    datamodule = MultiViewDataModule(cfg.data)
    datamodule.setup("fit")  # opens the file, builds the datasets: errors before any folder
    file = datamodule.file
    if svr.image_size is not None and tuple(svr.image_size) != (file.height, file.width):
        h, w = svr.image_size
        raise UserError(
            f"{cfg.data.path}: views are {file.width}x{file.height} pixels but the SVR model "
            f"{cfg.svr} was trained on {w}x{h}"
        )
    val_split = cfg.data.val_split
    if cfg.trainer.val_check_interval > 0:
        val_objects = datamodule.dataset(val_split).objects
        if len(val_objects) == 0:
            raise UserError(
                f"{cfg.data.path}: no objects in the validation split {val_split!r} "
                "(set trainer.val_check_interval=0 to train without validation)"
            )
        if runs.launch_rank() == 0 and not any(len(file.captions[int(o)]) for o in val_objects):
            print(
                f"iss3d: note: {cfg.data.path} has no captions in split {val_split!r}; "
                "validation skips the text IoU (val/iou_text)",
                file=sys.stderr,
            )
    run_dir = runs.run_folder("stage1", cfg.run.name, out)
    config_dict = cfg.to_dict()
    ckpt = run_dir.check(config_dict, resume)
    cfg.march.note_unreached(cfg.trainer.max_steps)
    system = Stage1System(cfg, svr=svr, clip=clip, image_dir=run_dir.path / "val")
    run_dir.create(config_dict, command)
    trainer = runs.make_trainer(
        run_dir, cfg.trainer, cfg.run, "stage1", enable_progress_bar=progress
    )
    runs.fit(trainer, system, datamodule, ckpt, run_dir)
    runs.report(trainer, f"run folder: {run_dir.path} (step {trainer.global_step})")
    return 0
