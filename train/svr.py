"""Single-view reconstruction (DVR) training: ``SVRConfig`` and the Lightning ``SVRSystem``.

One training step (batch of B objects from :class:`iss3d.data.datasets.ObjectDataset`, K views each,
n sampled pixels per view):

1. c = E_S(view 0 of each object): (B, c_dim).
2. Rays through the sampled pixels of all K views, in the object frame: (B, K * n, 3).
3. :func:`iss3d.models.renderer.trace_surface` with the scheduled number of march steps (no
   gradients in the march; implicit depth gradient at the hits).
4. DVR's losses (:mod:`iss3d.models.losses`), each returned as ``loss_<name>`` and weighted by
   ``loss.lambda_<name>``: rgb (hit & GT mask), depth (hit & GT mask & finite GT depth),
   freespace (rays off the GT mask: the predicted surface point where the ray hits, else a
   random point of the ray's padded-cube interval, as DVR), occupancy (GT-mask rays the
   prediction missed: the GT depth point where finite, else a random point), normal
   (smoothness at the hits). A loss whose lambda is 0 is not computed.

Validation: volumetric IoU of ``occupancy > 0`` at the file's uniform occupancy samples, with c
from view 0 of each validation item (``val/iou``); full renders of view 1 of the first few
objects (``val/mask_iou``, ``val/depth_l1``) and an image grid input | GT | prediction.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from iss3d.core.config import StrictConfig
from iss3d.core.errors import UserError
from iss3d.data.cameras import rays
from iss3d.data.reader import MultiViewFile
from iss3d.models import losses as L
from iss3d.models.decoder import DecoderConfig
from iss3d.models.encoder import EncoderConfig
from iss3d.models.loaders import ArchitectureCard
from iss3d.models.march import MarchConfig, cube_interval
from iss3d.models.metrics import depth_l1, mask_iou, occupancy_iou
from iss3d.models.renderer import RayHits, Renderer, trace_surface
from iss3d.train.datamodule import DataConfig
from iss3d.train.runs import RunConfig, TrainerConfig
from iss3d.train.system import DataSystem

__all__ = [
    "LOSS_NAMES",
    "AdamConfig",
    "SVRConfig",
    "SVRLossConfig",
    "SVRMarchConfig",
    "SVROptimConfig",
    "SVRSystem",
    "SVRValConfig",
    "check_ray_data",
    "fit_svr",
    "occupancy_targets",
    "ray_batch",
    "svr_losses",
]

LOSS_NAMES = ("rgb", "depth", "freespace", "occupancy", "normal", "occupancy3d")


@dataclass
class SVRMarchConfig:
    """Ray marching during training (YAML section ``march``).

    Attributes:
        n_steps: schedule of dense samples per ray, ``[[step, n_steps], ...]``: from training
            step ``step`` on, march with ``n_steps``. Must start at step 0 with increasing steps.
            DVR: 16, doubled at 50k, 100k and 250k iterations.
        n_secant: secant refinement steps (DVR: 8).
        padding: the unit cube is padded by this (DVR: 0.1).
        chunk: decoder points per call in the march.
        outside_cube, depth_range: rays that miss the padded cube (``skip``, or ``march`` over
            ``depth_range`` as DVR): :class:`models.march.MarchConfig`.
    """

    n_steps: list[tuple[int, int]] = field(
        default_factory=lambda: [(0, 16), (50000, 32), (100000, 64), (250000, 128)]
    )
    n_secant: int = 8
    padding: float = 0.1
    chunk: int = 65536
    outside_cube: str = "skip"
    depth_range: tuple[float, float] = (0.0, 2.4)

    def __post_init__(self) -> None:
        sched = self.n_steps
        if not sched:
            raise UserError("march config: 'n_steps' needs at least one [step, n_steps] pair")
        if sched[0][0] != 0:
            raise UserError(f"march config: 'n_steps' must start at step 0, got {sched[0][0]}")
        for (s0, _), (s1, _) in itertools.pairwise(sched):
            if s1 <= s0:
                raise UserError("march config: 'n_steps' steps must increase")
        for _, n in sched:
            if n < 2:
                raise UserError(f"march config: n_steps must be >= 2, got {n}")
        if self.n_secant < 0 or self.padding < 0 or self.chunk < 1:
            raise UserError("march config: n_secant, padding must be >= 0 and chunk >= 1")
        self.march_config(0)  # outside_cube and depth_range are checked there

    def note_unreached(self, max_steps: int) -> None:
        """Say on stderr (global rank 0) when a run of ``max_steps`` never reaches a step of
        the schedule (DVR's 50k, 100k, 250k in a short run): it marches with fewer samples
        than the schedule names throughout."""
        from iss3d.train.runs import launch_rank

        late = [start for start, _ in self.n_steps if start >= max_steps]
        if late and launch_rank() == 0:
            print(
                f"iss3d: note: march.n_steps changes at step {late[0]}, after the last step of "
                f"this run (trainer.max_steps={max_steps}): it marches with "
                f"{self.n_steps_at(max_steps - 1)} samples per ray to the end",
                file=sys.stderr,
            )

    def n_steps_at(self, step: int) -> int:
        """The scheduled number of march steps at training step ``step``."""
        current = self.n_steps[0][1]
        for start, n in self.n_steps:
            if step >= start:
                current = n
        return current

    def march_config(self, step: int) -> MarchConfig:
        return MarchConfig(
            n_steps=self.n_steps_at(step),
            n_secant=self.n_secant,
            padding=self.padding,
            chunk=self.chunk,
            outside_cube=self.outside_cube,
            depth_range=self.depth_range,
        )


@dataclass
class SVRLossConfig:
    """Loss weights (YAML section ``loss``); the losses are sums over rays / batch size, as DVR.

    Attributes:
        lambda_rgb, lambda_depth, lambda_freespace, lambda_occupancy, lambda_normal: weights
            (0 skips the loss). DVR: 1, 10 (its combined model; 0 without depth), 1, 1, 0.05.
        normal_sigma: std of the neighbour offset of the normal loss (object units). DVR
            jitters uniformly in +-0.0005 (std ~0.0003).
        lambda_occupancy3d: weight of an optional 3D loss that DVR does not have: BCE of the
            occupancy at ground-truth samples (needs ``data.occupancy_points`` and a file with
            occupancy samples, e.g. the synthetic world). 0 (default) trains from images only.
        rgb_moves_surface: let the rgb loss move the surface (its gradient reaches the
            geometry through the implicit depth, as in DVR). False: the rgb loss trains colour
            only (the surface points are detached), and shape comes from masks and depth.
    """

    lambda_rgb: float = 1.0
    lambda_depth: float = 10.0
    lambda_freespace: float = 1.0
    lambda_occupancy: float = 1.0
    lambda_normal: float = 0.05
    lambda_occupancy3d: float = 0.0
    normal_sigma: float = 0.01
    rgb_moves_surface: bool = True

    def __post_init__(self) -> None:
        for name in LOSS_NAMES:
            if getattr(self, f"lambda_{name}") < 0:
                raise UserError(f"loss config: 'lambda_{name}' must be >= 0")
        if self.normal_sigma <= 0:
            raise UserError("loss config: 'normal_sigma' must be > 0")

    def weight(self, name: str) -> float:
        return getattr(self, f"lambda_{name}")


@dataclass
class AdamConfig:
    """Adam with an optional step schedule (YAML section ``optim``; stages add per-group rates).

    Attributes:
        lr: learning rate (DVR: 1e-4). betas: Adam betas.
        milestones: when every group's rate is multiplied by ``gamma``, as fractions of the
            run (``trainer.max_steps``), so a shorter or longer run keeps its schedule: 0.825
            of 8000 steps is step 6600, of 3000 steps step 2475.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    milestones: list[float] = field(default_factory=list)
    gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise UserError(f"optim config: 'lr' must be > 0, got {self.lr}")
        if sorted(self.milestones) != list(self.milestones):
            raise UserError("optim config: 'milestones' must be increasing")
        if any(not 0 < m < 1 for m in self.milestones):
            raise UserError(
                "optim config: 'milestones' are fractions of trainer.max_steps, each in (0, 1), "
                f"got {list(self.milestones)}"
            )
        if not 0 < self.gamma <= 1:
            raise UserError(f"optim config: 'gamma' must be in (0, 1], got {self.gamma}")

    @staticmethod
    def check_rate(name: str, value: float | None) -> None:
        """UserError unless ``value`` (a per-group rate; None = ``lr``) is positive."""
        if value is not None and value <= 0:
            raise UserError(f"optim config: {name!r} must be > 0, got {value}")

    def milestone_steps(self, max_steps: int) -> list[int]:
        """The steps of the milestones in a run of ``max_steps`` (round(fraction x steps))."""
        return [round(m * max_steps) for m in self.milestones]

    def optimizers(self, groups: list[dict[str, Any]], max_steps: int) -> Any:
        """Lightning's ``configure_optimizers`` result for Adam over ``groups`` (each a dict
        with ``params`` and optionally ``lr``), with the step schedule of a run of
        ``max_steps`` when there is one."""
        opt = torch.optim.Adam(groups, lr=self.lr, betas=tuple(self.betas))
        if not self.milestones:
            return opt
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=self.milestone_steps(max_steps), gamma=self.gamma
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@dataclass
class SVROptimConfig(AdamConfig):
    """Adam for the SVR stage: ``lr`` for the decoder, ``encoder_lr`` for the encoder (None:
    ``lr``, as DVR). A conv encoder with a wide final Linear moves the latent far per step at
    the decoder's rate, which destabilises the rendering losses; a lower encoder rate avoids
    it (svr/tiny)."""

    encoder_lr: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_rate("encoder_lr", self.encoder_lr)


@dataclass
class SVRValConfig:
    """Validation (YAML section ``val``).

    Attributes:
        n_steps: march steps of the full validation renders (DVR tests with 128).
        render_objects: validation objects whose view 1 is rendered in full (mask IoU, depth).
        image_objects: rows of the saved image grid (at most ``render_objects``).
    """

    n_steps: int = 128
    render_objects: int = 4
    image_objects: int = 4

    def __post_init__(self) -> None:
        if self.n_steps < 2 or self.render_objects < 0 or self.image_objects < 0:
            raise UserError("val config: n_steps >= 2, render_objects, image_objects >= 0")


def check_ray_data(d: DataConfig, lambda_occupancy3d: float, what: str) -> None:
    """The data section every stage trained with DVR's losses needs: objects with K >= 2 views
    (view 0 the input, all K supervising), sampled pixels, and occupancy samples when the 3D
    loss is on. Raises UserError naming ``what``."""
    if d.mode != "object":
        raise UserError(f"{what}: data.mode must be 'object', got {d.mode!r}")
    if d.views_per_object is None or d.views_per_object < 2:
        raise UserError(
            f"{what}: data.views_per_object must be >= 2 (view 0 is the input, all K views "
            f"supervise), got {d.views_per_object!r}"
        )
    if d.pixels is None:
        raise UserError(f"{what}: data.pixels (pixels sampled per view) must be set")
    if lambda_occupancy3d > 0 and d.occupancy_points is None:
        raise UserError(f"{what}: loss.lambda_occupancy3d > 0 needs data.occupancy_points")


@dataclass
class SVRConfig(StrictConfig):
    """Everything ``iss3d fit svr`` reads (``configs/svr/*.yaml``)."""

    CONFIG_NAME: ClassVar[str] = "svr config"

    data: DataConfig
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    march: SVRMarchConfig = field(default_factory=SVRMarchConfig)
    loss: SVRLossConfig = field(default_factory=SVRLossConfig)
    optim: SVROptimConfig = field(default_factory=SVROptimConfig)
    val: SVRValConfig = field(default_factory=SVRValConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="svr"))

    def __post_init__(self) -> None:
        if self.encoder.c_dim != self.decoder.c_dim:
            raise UserError(
                f"svr config: encoder.c_dim ({self.encoder.c_dim}) must equal decoder.c_dim "
                f"({self.decoder.c_dim})"
            )
        check_ray_data(self.data, self.loss.lambda_occupancy3d, "svr config")


# -- losses -------------------------------------------------------------------------------


def ray_batch(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rays and ground truth of an ObjectDataset batch with sampled pixels, flattened per object.

    Args:
        batch: ``pixel_xy`` (B, K, n, 2), ``pixel_rgb`` (B, K, n, 3), ``pixel_mask`` (B, K, n),
            optional ``pixel_depth`` (B, K, n), ``world_mat``, ``camera_mat``, ``scale_mat``
            (B, K, 4, 4).

    Returns:
        ``origins``, ``dirs`` (B, R, 3) object frame (ray parameter = camera depth), ``rgb``
        (B, R, 3), ``mask`` (B, R) bool, ``depth`` (B, R) (only if given); R = K * n.
    """
    xy = batch["pixel_xy"]
    b, k, n = xy.shape[:3]
    origins, dirs = rays(xy, batch["world_mat"], batch["camera_mat"], batch["scale_mat"])
    out = {
        "origins": origins.reshape(b, k * n, 3),
        "dirs": dirs.reshape(b, k * n, 3),
        "rgb": batch["pixel_rgb"].reshape(b, k * n, 3),
        "mask": batch["pixel_mask"].reshape(b, k * n) > 0.5,
    }
    if "pixel_depth" in batch:
        out["depth"] = batch["pixel_depth"].reshape(b, k * n)
    return out


def svr_losses(
    decoder,
    c: torch.Tensor | None,
    batch: Mapping[str, Any],
    loss_cfg: SVRLossConfig,
    march_cfg: MarchConfig,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], RayHits]:
    """DVR's losses for one batch (unweighted), skipping those whose lambda is 0.

    Args:
        decoder: an implicit field (``occupancy``, ``rgb``), e.g.
            :class:`iss3d.models.decoder.Decoder`.
        c: (B, c_dim) latents.
        batch: an ObjectDataset batch with sampled pixels (see :func:`ray_batch`).
        loss_cfg: which losses (lambda > 0) and the normal-loss jitter.
        march_cfg: the march settings for this step.

    Returns:
        ``({"loss_<name>": scalar}, stats, hits)``; stats: ``hit_rate`` (share of rays
        hitting), ``mask_accuracy`` (share of rays whose predicted silhouette matches the GT
        mask); hits: the march of the batch's (B, K * n) rays (:func:`ray_batch` order), for
        losses of later stages on the same rays.
    """
    r = ray_batch(batch)
    origins, dirs, gt_mask = r["origins"], r["dirs"], r["mask"]
    hits = trace_surface(decoder, c, origins, dirs, march_cfg)
    out: dict[str, torch.Tensor] = {}
    if loss_cfg.lambda_rgb > 0:
        points = hits.points if loss_cfg.rgb_moves_surface else hits.points.detach()
        rgb = decoder.rgb(points, c)
        out["loss_rgb"] = L.rgb_loss(rgb, r["rgb"], hits.hit & gt_mask)
    if loss_cfg.lambda_depth > 0 and "depth" in r:
        gt_depth = r["depth"]
        m = hits.hit & gt_mask & torch.isfinite(gt_depth)
        out["loss_depth"] = L.depth_loss(hits.depth, gt_depth, m)
    need_interval = loss_cfg.lambda_freespace > 0 or loss_cfg.lambda_occupancy > 0
    if need_interval:
        t_near, t_far = cube_interval(origins, dirs, 0.5 + march_cfg.padding / 2)
        in_cube = t_far > t_near
    if loss_cfg.lambda_freespace > 0:
        p = L.random_ray_points(origins, dirs, t_near, t_far)
        # DVR: where the prediction hits a ray the GT says is empty, push at the hit itself.
        p = torch.where(hits.hit.unsqueeze(-1), hits.points.detach(), p)
        out["loss_freespace"] = L.freespace_loss(decoder, c, p, ~gt_mask & in_cube)
    if loss_cfg.lambda_occupancy > 0:
        p = L.random_ray_points(origins, dirs, t_near, t_far)
        if "depth" in r:
            finite = torch.isfinite(r["depth"])
            at_depth = origins + torch.where(finite, r["depth"], 0.0).unsqueeze(-1) * dirs
            p = torch.where(finite.unsqueeze(-1), at_depth, p)
        out["loss_occupancy"] = L.occupancy_loss(decoder, c, p, gt_mask & ~hits.hit & in_cube)
    if loss_cfg.lambda_normal > 0:
        out["loss_normal"] = L.normal_loss(
            decoder, c, hits.points, hits.hit, sigma=loss_cfg.normal_sigma
        )
    if loss_cfg.lambda_occupancy3d > 0:
        out["loss_occupancy3d"] = L.occupancy_samples_loss(
            decoder, c, batch["occ_points"], batch["occ_inside"]
        )
    with torch.no_grad():
        pred_mask = hits.mask
        stats = {
            "hit_rate": hits.hit.float().mean(),
            "mask_accuracy": (pred_mask == gt_mask).float().mean(),
        }
    return out, stats, hits


def weighted_total(losses: Mapping[str, torch.Tensor], loss_cfg: SVRLossConfig) -> torch.Tensor:
    """sum of lambda_<name> * loss_<name> over the given losses."""
    terms = [loss_cfg.weight(k.removeprefix("loss_")) * v for k, v in losses.items()]
    return torch.stack(terms).sum()


def occupancy_targets(
    file: MultiViewFile, objects: list[int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The uniform occupancy samples of file objects, for validation IoU.

    Returns:
        points (B, P, 3) float32 object frame and inside (B, P) bool, P = the file's uniform
        sample count; None when the file has no occupancy samples.
    """
    if not file.has_occupancy:
        return None
    samples = [file.read_occupancy(int(o)) for o in objects]
    n = samples[0].n_uniform or len(samples[0].points)
    points = torch.from_numpy(np.stack([s.points[:n] for s in samples])).to(device)
    inside = torch.from_numpy(np.stack([s.inside[:n] for s in samples])).to(device)
    return points.float(), inside.bool()


# -- the Lightning system -------------------------------------------------------------------


class SVRSystem(DataSystem):
    """DVR single-view reconstruction: encoder E_S + decoder D trained from multi-view images.

    Args:
        config: an :class:`SVRConfig` or its plain-dict form (what checkpoints store as the
            ``config`` hyperparameter, so ``SVRSystem.load_from_checkpoint(path)`` works).
        image_dir: where validation image grids go (``step_<k>.png``); None: not saved.

    State-dict keys: ``encoder.*`` and ``decoder.*``, DVR's layout.
    """

    def __init__(self, config: SVRConfig | Mapping[str, Any], image_dir: str | Path | None = None):
        super().__init__()
        cfg = config if isinstance(config, SVRConfig) else SVRConfig.from_dict(config)
        self.cfg = cfg
        self.save_hyperparameters({"config": cfg.to_dict()})
        self.encoder = cfg.encoder.build()
        self.decoder = cfg.decoder.build()
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self._val: dict[str, list] = {}

    # -- data access ------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        # Saved with every checkpoint: the view size the encoder was trained on (used to check
        # the size of input images given to `iss3d export --image`).
        self.hparams["image_size"] = [self.file.height, self.file.width]

    def architecture(self) -> ArchitectureCard:
        size = self.hparams.get("image_size")
        return ArchitectureCard(
            kind="svr",
            encoder=self.cfg.encoder,
            decoder=self.cfg.decoder,
            image_size=tuple(size) if size else None,
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, c_dim)."""
        return self.encoder(images)

    # -- training -----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        march_cfg = self.cfg.march.march_config(self.global_step)
        c = self.encode(batch["image"][:, 0])
        losses, stats, _ = svr_losses(self.decoder, c, batch, self.cfg.loss, march_cfg)
        total = weighted_total(losses, self.cfg.loss)
        b = c.shape[0]
        self.log_training(losses, stats, total, b, march_cfg.n_steps)
        return total

    def configure_optimizers(self):
        o = self.cfg.optim
        return o.optimizers(
            [
                {"params": list(self.encoder.parameters()), "lr": o.encoder_lr or o.lr},
                {"params": list(self.decoder.parameters()), "lr": o.lr},
            ],
            self.cfg.trainer.max_steps,
        )

    # -- validation -----------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = {"iou": [], "mask_iou": [], "depth_l1": [], "rows": []}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        c = self.encode(images[:, 0])
        objects = [int(o) for o in batch["object_index"]]
        targets = occupancy_targets(self.file, objects, self.device)
        if targets is not None:
            self._val["iou"].append(
                occupancy_iou(self.decoder, c, *targets, chunk=self.cfg.march.chunk).cpu()
            )
        want = self.cfg.val.render_objects - sum(len(x) for x in self._val["mask_iou"])
        if want <= 0 or images.shape[1] < 2:
            return
        m = min(want, images.shape[0])
        f = self.file
        renderer = Renderer(
            MarchConfig(
                n_steps=self.cfg.val.n_steps,
                n_secant=self.cfg.march.n_secant,
                padding=self.cfg.march.padding,
                chunk=self.cfg.march.chunk,
            )
        )
        out = renderer.render_images(
            self.decoder,
            c[:m],
            batch["world_mat"][:m, 1],
            batch["camera_mat"][:m, 1],
            batch["scale_mat"][:m, 1],
            images.shape[-2],
            images.shape[-1],
            pixel_convention=f.pixel_convention,
            background=1.0,
        )
        self._val["mask_iou"].append(mask_iou(out["mask"], batch["mask"][:m, 1]).cpu())
        if "depth" in batch:
            self._val["depth_l1"].append(depth_l1(out["depth"], batch["depth"][:m, 1]).cpu())
        for i in range(m):
            self._val["rows"].append(
                [images[i, 0].cpu(), images[i, 1].cpu(), out["rgb"][i].clamp(0, 1).cpu()]
            )

    def on_validation_epoch_end(self) -> None:
        v = self.gather_validation(self._val)
        if v.get("iou"):
            self.log_gathered("val/iou", torch.cat(v["iou"]).mean().item(), prog_bar=True)
        if v.get("mask_iou"):
            self.log_gathered("val/mask_iou", torch.cat(v["mask_iou"]).mean().item())
        if v.get("depth_l1"):
            d = torch.cat(v["depth_l1"])
            d = d[torch.isfinite(d)]
            self.log_gathered("val/depth_l1", d.mean().item() if len(d) else math.nan)
        rows = v.get("rows", [])[: self.cfg.val.image_objects]
        if rows and not self.trainer.sanity_checking:
            self.save_grid(rows)


# -- entry point ------------------------------------------------------------------------------


def fit_svr(
    cfg: SVRConfig, out: Path | None, command: str, resume: bool = False, progress: bool = True
) -> int:
    """Validate the data, prepare the run folder and train. Returns 0."""
    from iss3d.train import runs
    from iss3d.train.datamodule import MultiViewDataModule

    runs.seed_run(cfg.run)  # before any weights (models, CLIP specs) are built
    datamodule = MultiViewDataModule(cfg.data)
    datamodule.setup("fit")  # opens the file, builds the datasets: errors before any folder
    if len(datamodule.dataset(cfg.data.val_split)) == 0 and cfg.trainer.val_check_interval > 0:
        raise UserError(
            f"{cfg.data.path}: no objects in the validation split {cfg.data.val_split!r} "
            "(set trainer.val_check_interval=0 to train without validation)"
        )
    run_dir = runs.run_folder("svr", cfg.run.name, out)
    config_dict = cfg.to_dict()
    ckpt = run_dir.check(config_dict, resume)
    cfg.march.note_unreached(cfg.trainer.max_steps)
    system = SVRSystem(cfg, image_dir=run_dir.path / "val")
    run_dir.create(config_dict, command)
    trainer = runs.make_trainer(run_dir, cfg.trainer, cfg.run, "svr", enable_progress_bar=progress)
    runs.fit(trainer, system, datamodule, ckpt, run_dir)
    runs.report(trainer, f"run folder: {run_dir.path} (step {trainer.global_step})")
    return 0
