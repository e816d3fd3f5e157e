"""Contrastive training of a small CLIP on (render, caption) pairs: ``iss3d fit clip``.

One training step (a batch of B views from :class:`iss3d.data.datasets.ViewDataset`; each item is a
random view with one of its object's captions at random):

1. images (B, 3, H, W) in [0, 1] -> optional random resized crop (+ flip; never colour jitter:
   colour is what the captions name) -> resize to the model's side, per-channel mean/std.
2. image and text features (B, embed_dim), L2-normalised.
3. ``loss_clip``: open_clip's ``ClipLoss`` (symmetric cross-entropy over the B x B similarity
   matrix, scaled by the learnable ``exp(logit_scale)``, clamped to at most 100 as open_clip
   does), weighted by ``loss.lambda_clip``.

AdamW (no weight decay on gains, biases, embeddings of positions and ``logit_scale``, as
open_clip), linear warmup then cosine decay over ``trainer.max_steps``.

Validation (and ``iss3d eval clip``): zero-shot classification of every view of the split among
one prompt per class, and text -> image retrieval. On the synthetic world the classes are every
(colour, category) pair of the world, prompted as its captions say them ("a red chair",
"an orange box"), and an object's class is its main colour and category; on another dataset the
classes are the distinct first captions of its objects. Metrics: ``top1`` (share of views whose
best prompt is their class), ``text_to_image_r1`` (share of the classes present whose best view
is one of theirs), and on the world ``colour_acc``, ``category_acc`` and ``top1_held_out``
(views of the held-out pairs that never occur in train).

At the end ``iss3d fit clip`` writes ``DIR/clip.pt``, a self-contained half-precision export
(:func:`iss3d.models.clip.export_checkpoint`) that ``iss3d.models.clip.load_clip`` reads.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from iss3d.core.config import StrictConfig
from iss3d.core.errors import UserError
from iss3d.data.reader import MultiViewFile
from iss3d.models.clip import (
    ClipModel,
    RandomResizedCrop,
    build_open_clip,
    clip_config,
    export_checkpoint,
)
from iss3d.models.clip import _simple_tokenizer as simple_tokenizer
from iss3d.train.datamodule import DataConfig
from iss3d.train.runs import RunConfig, TrainerConfig
from iss3d.train.system import DataSystem

__all__ = [
    "ClipAugmentConfig",
    "ClipConfig",
    "ClipLossConfig",
    "ClipOptimConfig",
    "ClipSystem",
    "ClipValConfig",
    "ZeroShotClasses",
    "check_captions",
    "fit_clip",
    "zero_shot_accuracy",
    "zero_shot_classes",
    "zero_shot_metrics",
]

#: Max of the learnable logit scale, exp(logit_scale) <= 100 (open_clip, OpenAI CLIP).
MAX_LOGIT_SCALE = math.log(100.0)


# -- config ---------------------------------------------------------------------------------


@dataclass
class ClipAugmentConfig:
    """Training augmentation (YAML section ``augment``): a random resized crop per image.

    Attributes:
        crop: apply the crop (False: the views as they are).
        scale: range of the crop area as a share of the image.
        ratio: range of the crop aspect ratio (width / height).
        flip: also flip horizontally at random (the world's shapes are mirror-symmetric).
    """

    crop: bool = True
    scale: tuple[float, float] = (0.7, 1.0)
    ratio: tuple[float, float] = (0.8, 1.25)
    flip: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise UserError(f"augment config: 'scale' must satisfy 0 < lo <= hi <= 1, got {lo, hi}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise UserError(f"augment config: 'ratio' must satisfy 0 < lo <= hi, got {self.ratio}")


@dataclass
class ClipLossConfig:
    """Loss weights (YAML section ``loss``). lambda_clip: weight of the contrastive loss."""

    lambda_clip: float = 1.0

    def __post_init__(self) -> None:
        if self.lambda_clip <= 0:
            raise UserError(f"loss config: 'lambda_clip' must be > 0, got {self.lambda_clip}")


@dataclass
class ClipOptimConfig:
    """AdamW with linear warmup and cosine decay (YAML section ``optim``).

    Attributes:
        lr: peak learning rate. weight_decay: AdamW decay of the weight matrices.
        betas, eps: AdamW (open_clip: 0.9, 0.98, 1e-6 for ViTs).
        warmup_steps: linear warmup from 0 to ``lr``.
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio`` at ``trainer.max_steps``.
    """

    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 200
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.eps <= 0:
            raise UserError("optim config: lr and eps must be > 0, weight_decay >= 0")
        if self.warmup_steps < 0:
            raise UserError(f"optim config: 'warmup_steps' must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UserError(
                f"optim config: 'min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}"
            )

    def lr_factor(self, step: int, max_steps: int) -> float:
        """The multiplier of ``lr`` at optimizer step ``step``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * cosine


@dataclass
class ClipValConfig:
    """Validation (YAML section ``val``).

    Attributes:
        batch_size: views per encoding batch at the end of validation.
    """

    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"val config: 'batch_size' must be >= 1, got {self.batch_size}")


@dataclass
class ClipConfig(StrictConfig):
    """Everything ``iss3d fit clip`` reads (``configs/clip/*.yaml``).

    Attributes:
        model: an open_clip model config of ours (``tiny-64`` -> ``configs/clip/tiny-64.json``)
            or a path to such a JSON file; trained from random weights.
        export_half: store the final ``clip.pt`` in half precision (half the size).
    """

    CONFIG_NAME: ClassVar[str] = "clip config"

    data: DataConfig
    model: str = "tiny-64"
    augment: ClipAugmentConfig = field(default_factory=ClipAugmentConfig)
    loss: ClipLossConfig = field(default_factory=ClipLossConfig)
    optim: ClipOptimConfig = field(default_factory=ClipOptimConfig)
    val: ClipValConfig = field(default_factory=ClipValConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(name="clip"))
    export_half: bool = True

    def __post_init__(self) -> None:
        if self.data.mode != "view":
            raise UserError(f"clip config: data.mode must be 'view', got {self.data.mode!r}")
        if self.data.pixels is not None:
            raise UserError("clip config: data.pixels must be null (whole views are used)")


# -- zero-shot evaluation --------------------------------------------------------------------


@dataclass
class ZeroShotClasses:
    """The classes of a zero-shot evaluation.

    Attributes:
        prompts: one prompt per class, (C,).
        labels: (O,) int64 class of each object of the file, -1 where it has none.
        kind: ``"world"`` (colour x category of the synthetic world) or ``"captions"``.
        held_out: (O,) bool, objects of the world's held-out (category, colour) pairs.
        colours, categories: (C,) str per class (world only; else empty).
    """

    prompts: list[str]
    labels: np.ndarray
    kind: str
    held_out: np.ndarray
    colours: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)


def _article(word: str) -> str:
    """As the world's captions say it (data.synth.world): "an orange", "a red"."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def zero_shot_classes(file: MultiViewFile) -> ZeroShotClasses:
    """Classes and object labels for :func:`zero_shot_accuracy` (see the module docstring)."""
    from iss3d.data.synth import world

    n = file.num_objects
    metas = [file.meta(i) for i in range(n)]
    info = file.info if isinstance(file.info, Mapping) else {}
    colours = list(info.get("colors") or world.COLORS)
    categories = list(info.get("categories") or world.CATEGORIES)
    is_world = n > 0 and all(
        m.get("main_color") in colours and str(c) in categories
        for m, c in zip(metas, file.categories, strict=True)
    )
    held_out = np.array([bool(m.get("held_out", False)) for m in metas], dtype=bool)
    if is_world:
        pairs = [(colour, cat) for cat in categories for colour in colours]
        index = {pair: i for i, pair in enumerate(pairs)}
        labels = np.array(
            [index[(m["main_color"], str(c))] for m, c in zip(metas, file.categories, strict=True)],
            dtype=np.int64,
        )
        return ZeroShotClasses(
            prompts=[f"{_article(colour)} {cat}" for colour, cat in pairs],
            labels=labels,
            kind="world",
            held_out=held_out,
            colours=[p[0] for p in pairs],
            categories=[p[1] for p in pairs],
        )
    firsts = [str(c[0]).strip() if c else "" for c in file.captions]
    prompts = sorted({f for f in firsts if f})
    if not prompts:
        raise UserError(f"{file.path}: no captions, so no zero-shot classes")
    index = {p: i for i, p in enumerate(prompts)}
    labels = np.array([index.get(f, -1) for f in firsts], dtype=np.int64)
    return ZeroShotClasses(prompts=prompts, labels=labels, kind="captions", held_out=held_out)


def zero_shot_metrics(
    image_features: torch.Tensor,
    view_labels: torch.Tensor,
    text_features: torch.Tensor,
    classes: ZeroShotClasses | None = None,
    view_held_out: torch.Tensor | None = None,
) -> dict[str, float]:
    """Zero-shot top-1 and text -> image R@1 from features.

    Args:
        image_features: (N, D) L2-normalised, one per view.
        view_labels: (N,) int64 class of each view (in [0, C)).
        text_features: (C, D) L2-normalised, one per class prompt.
        classes: when of kind ``"world"``, colour and category accuracies are added.
        view_held_out: (N,) bool, views of held-out pairs (adds ``top1_held_out``).

    Returns:
        ``top1``, ``text_to_image_r1``, ``n`` (views), ``n_classes`` (classes present), and
        ``colour_acc``, ``category_acc``, ``top1_held_out`` where they apply.
    """
    sims = image_features.float() @ text_features.float().T  # (N, C)
    labels = view_labels.to(sims.device)
    pred = sims.argmax(dim=1)
    out: dict[str, float] = {"top1": (pred == labels).float().mean().item(), "n": len(labels)}
    present = torch.unique(labels)
    best_view = sims[:, present].argmax(dim=0)  # (P,)
    out["text_to_image_r1"] = (labels[best_view] == present).float().mean().item()
    out["n_classes"] = len(present)
    if classes is not None and classes.kind == "world":
        colours = np.array(classes.colours)
        cats = np.array(classes.categories)
        p, t = pred.cpu().numpy(), labels.cpu().numpy()
        out["colour_acc"] = float((colours[p] == colours[t]).mean())
        out["category_acc"] = float((cats[p] == cats[t]).mean())
    if view_held_out is not None and bool(view_held_out.any()):
        mask = view_held_out.to(pred.device)
        out["top1_held_out"] = (pred[mask] == labels[mask]).float().mean().item()
        out["n_held_out"] = int(mask.sum())
    return out


@torch.no_grad()
def zero_shot_accuracy(
    clip: ClipModel,
    file: MultiViewFile | str | os.PathLike,
    split: str | None = "test",
    views_per_object: int | None = None,
    batch_size: int = 256,
    max_objects: int | None = None,
) -> dict[str, Any]:
    """Zero-shot classification and text -> image retrieval on the views of a split.

    Args:
        clip: a :class:`iss3d.models.clip.ClipModel` (anything with ``encode_image`` /
            ``encode_text`` and a ``device``).
        file: a multi-view HDF5 path or an open :class:`MultiViewFile`.
        split: "train", "val", "test", or None for every object.
        views_per_object: use this many views per object, evenly spaced (None: all).
        batch_size: views per encoding batch.
        max_objects: only the split's first N objects.

    Returns:
        The :func:`zero_shot_metrics` dict (``top1``, ``text_to_image_r1``, ``n``, ...) plus
        ``kind``, ``split``, ``objects``, ``classes`` (C prompts) and ``top1_per_category``.

    Raises:
        UserError: no objects with a class in the split, no captions.
    """
    mv = file if isinstance(file, MultiViewFile) else MultiViewFile(file)
    classes = zero_shot_classes(mv)
    objects = [int(o) for o in mv.objects_in(split) if classes.labels[o] >= 0]
    if max_objects is not None:
        objects = objects[:max_objects]
    if not objects:
        raise UserError(f"{mv.path}: no objects with a class in split {split!r}")
    rows: list[int] = []
    for obj in objects:
        views = mv.views_of(obj)
        if views_per_object is not None and views_per_object < len(views):
            pick = np.linspace(0, len(views), views_per_object, endpoint=False).astype(int)
            views = views[pick]
        rows.extend(int(v) for v in views)
    view_obj = mv.view_object[rows].astype(np.int64)
    device = clip.device
    feats = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        rgb = np.stack([mv.read_rgb(r) for r in chunk])
        images = torch.from_numpy(rgb).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        feats.append(clip.encode_image(images))
    image_features = torch.cat(feats)
    text_features = clip.encode_text(classes.prompts)
    labels = torch.from_numpy(classes.labels[view_obj])
    held = torch.from_numpy(classes.held_out[view_obj])
    result: dict[str, Any] = zero_shot_metrics(image_features, labels, text_features, classes, held)
    pred = (image_features @ text_features.T).argmax(dim=1).cpu()
    correct = (pred == labels).numpy()
    cats = mv.categories[view_obj]
    result["top1_per_category"] = {
        str(c): float(correct[cats == c].mean()) for c in sorted(set(cats.tolist()))
    }
    result.update(
        kind=classes.kind,
        split=split,
        objects=len(objects),
        classes=len(classes.prompts),
        prompts_example=classes.prompts[:3],
    )
    return result


# -- data checks ------------------------------------------------------------------------------


def check_captions(file: MultiViewFile, split: str | None) -> None:
    """Raise UserError unless every object of ``split`` has at least one non-empty caption."""
    objects = file.objects_in(split)
    if len(objects) == 0:
        raise UserError(f"{file.path}: no objects in split {split!r}")
    missing = [int(o) for o in objects if not any(str(c).strip() for c in file.captions[o])]
    if len(missing) == len(objects):
        raise UserError(
            f"{file.path}: no captions in split {split!r}; CLIP training needs (view, caption) "
            "pairs (the synthetic world has them: iss3d data synth)"
        )
    if missing:
        raise UserError(
            f"{file.path}: {len(missing)} of {len(objects)} objects in split {split!r} have no "
            f"caption (first: {file.object_ids[missing[0]]})"
        )


# -- the Lightning system ------------------------------------------------------------------------


class ClipSystem(DataSystem):
    """A small open_clip model trained contrastively on (view, caption) pairs.

    Args:
        config: a :class:`ClipConfig` or its plain-dict form (what checkpoints store).
        model_config: the open_clip model config (default: read from ``config.model``);
            checkpoints store it, so they load without ``configs/clip/``.

    State-dict keys: ``model.*`` (the open_clip CLIP's own keys under ``model.``).
    """

    def __init__(
        self,
        config: ClipConfig | Mapping[str, Any],
        model_config: Mapping[str, Any] | None = None,
        **_ignored: Any,
    ):
        super().__init__()
        cfg = config if isinstance(config, ClipConfig) else ClipConfig.from_dict(config)
        self.cfg = cfg
        model_config = dict(model_config) if model_config is not None else clip_config(cfg.model)
        self.model_config = model_config
        self.save_hyperparameters(
            {
                "config": cfg.to_dict(),
                "model_config": model_config,
                "trained_on": str(cfg.data.path),
            }
        )
        self.model = build_open_clip(model_config)
        self.context_length = int(self.model.context_length)
        self.tokenizer = simple_tokenizer(self.context_length)
        self.loss_fn = ClipLoss()
        a = cfg.augment
        self.augment = RandomResizedCrop(a.scale, a.ratio, a.flip) if a.crop else None
        self._tokens: dict[str, torch.Tensor] = {}
        self._classes: ZeroShotClasses | None = None
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    # -- helpers ----------------------------------------------------------------------------
    def clip_view(self) -> ClipModel:
        """The model being trained as a (not frozen) :class:`ClipModel`, for evaluation."""
        # Kept in __dict__ so that nn.Module does not register the shared model twice.
        view = self.__dict__.get("_clip_view")
        if view is None or view.device != self.device:
            view = ClipModel(
                self.model, self.tokenizer, spec=f"fit clip ({self.cfg.model})", freeze=False
            ).to(self.device)
            self.__dict__["_clip_view"] = view
        view.info["step"] = int(self.global_step)
        return view

    def tokens(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, context_length) tokens of captions (cached per caption)."""
        todo = [c for c in dict.fromkeys(captions) if c not in self._tokens]
        if todo:
            for c, t in zip(todo, self.tokenizer(todo), strict=True):
                self._tokens[c] = t
        return torch.stack([self._tokens[c] for c in captions]).to(self.device)

    def setup(self, stage: str) -> None:
        """With several ranks, the loss contrasts each image with every rank's captions (and
        each caption with every rank's images): open_clip's feature gathering."""
        if self.trainer.world_size > 1:
            self.loss_fn = ClipLoss(
                rank=self.trainer.global_rank, world_size=self.trainer.world_size
            )

    # -- training -----------------------------------------------------------------------------
    def features(
        self, images: torch.Tensor, tokens: torch.Tensor, augment: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised image (B, D) and text (B, D) features of a batch."""
        view = self.clip_view()
        if augment and self.augment is not None:
            images = self.augment(images)
        image_features = F.normalize(self.model.encode_image(view.preprocess(images)), dim=-1)
        text_features = F.normalize(self.model.encode_text(tokens), dim=-1)
        return image_features, text_features

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = batch["image"]
        image_features, text_features = self.features(
            images, self.tokens(batch["caption"]), augment=True
        )
        scale = self.model.logit_scale.exp()
        loss = self.loss_fn(image_features, text_features, scale)
        total = self.cfg.loss.lambda_clip * loss
        b = images.shape[0]
        with torch.no_grad():
            logits = image_features @ text_features.T
            same = [c == d for c in batch["caption"] for d in batch["caption"]]
            same = torch.tensor(same, device=logits.device).view(b, b)
            # an image counts as right when its best caption is its own text (or an equal one)
            acc = same[torch.arange(b, device=logits.device), logits.argmax(1)].float().mean()
        self.log("train/loss_clip", loss.detach(), batch_size=b)
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=b)
        self.log("train/logit_scale", scale.detach(), batch_size=b)
        self.log("train/batch_acc", acc, batch_size=b)
        return total

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

    def configure_optimizers(self):
        o = self.cfg.optim
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            exclude = (
                p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name
            ) or "logit_scale" in name
            (no_decay if exclude else decay).append(p)
        opt = torch.optim.AdamW(
            [
                {"params": no_decay, "weight_decay": 0.0},
                {"params": decay, "weight_decay": o.weight_decay},
            ],
            lr=o.lr,
            betas=tuple(o.betas),
            eps=o.eps,
            # one fused kernel: 4x faster than the per-tensor loop on CPU (this model's 3 M-row
            # token embedding makes the optimizer step a fifth of a CPU training step otherwise)
            fused=all(p.device.type in ("cpu", "cuda") for p in self.model.parameters()),
        )
        max_steps = self.cfg.trainer.max_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: o.lr_factor(step, max_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- validation -----------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val = []
        if self._classes is None:
            self._classes = zero_shot_classes(self.file)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        view = self.clip_view()
        feats = view.encode_image(batch["image"])
        objects = torch.as_tensor(batch["object_index"]).cpu()
        self._val.append((feats.cpu(), objects))

    def on_validation_epoch_end(self) -> None:
        parts = self.gather_validation({"val": self._val}).get("val", [])
        if not parts or self._classes is None:
            return
        classes = self._classes
        feats = torch.cat([f for f, _ in parts])
        objects = torch.cat([o for _, o in parts]).numpy()
        labels = classes.labels[objects]
        keep = labels >= 0
        if not keep.any():
            return
        view = self.clip_view()
        view.clear_cache()  # the weights changed since the last validation
        text = view.encode_text(classes.prompts).cpu()
        m = zero_shot_metrics(
            feats[torch.from_numpy(keep)],
            torch.from_numpy(labels[keep]),
            text,
            classes,
            torch.from_numpy(classes.held_out[objects][keep]),
        )
        self.log_gathered("val/top1", m["top1"], prog_bar=True)
        self.log_gathered("val/text_to_image_r1", m["text_to_image_r1"])
        for key in ("colour_acc", "category_acc", "top1_held_out"):
            if key in m:
                self.log_gathered(f"val/{key}", m[key])
        self._val = []


# -- the command --------------------------------------------------------------------------------


def fit_clip(
    cfg: ClipConfig,
    out: Path | None,
    command: str,
    resume: bool = False,
    progress: bool = True,
) -> int:
    """Validate the data, prepare the run folder, train, export ``DIR/clip.pt``. Returns 0."""
    from iss3d.train import runs
    from iss3d.train.datamodule import MultiViewDataModule

    runs.seed_run(cfg.run)  # before any weights (models, CLIP specs) are built
    datamodule = MultiViewDataModule(cfg.data)
    datamodule.setup("fit")  # opens the file, builds the datasets: errors before any folder
    check_captions(datamodule.file, cfg.data.train_split)
    if cfg.trainer.val_check_interval > 0:
        if len(datamodule.dataset(cfg.data.val_split)) == 0:
            raise UserError(
                f"{cfg.data.path}: no objects in the validation split {cfg.data.val_split!r} "
                "(set trainer.val_check_interval=0 to train without validation)"
            )
        zero_shot_classes(datamodule.file)  # a dataset without classes fails here
    run_dir = runs.run_folder("clip", cfg.run.name, out)
    config_dict = cfg.to_dict()
    ckpt = run_dir.check(config_dict, resume)
    system = ClipSystem(cfg)
    run_dir.create(config_dict, command)
    trainer = runs.make_trainer(run_dir, cfg.trainer, cfg.run, "clip", enable_progress_bar=progress)
    runs.fit(trainer, system, datamodule, ckpt, run_dir)
    if not trainer.is_global_zero:
        return 0
    exported = export_checkpoint(
        run_dir.path / "clip.pt",
        system.model,
        system.model_config,
        half=cfg.export_half,
        trained_on=str(cfg.data.path),
        step=int(trainer.global_step),
        model_name=cfg.model,
    )
    size_mb = exported.stat().st_size / 1e6
    step = trainer.global_step
    print(f"run folder: {run_dir.path} (step {step}); CLIP: {exported} ({size_mb:.1f} MB)")
    return 0
