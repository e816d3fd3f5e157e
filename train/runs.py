"""Run conventions shared by every trainer: run configs, run folders, resume, Lightning.

A training command goes through these steps, in this order, so that a bad config or a bad data
file never leaves a run folder behind:

1. :func:`iss3d.core.config.load_config`: YAML (a path, or a name under ``configs/`` such as
   ``svr/tiny``) -> raw dict -> ``key.sub=value`` overrides -> strict dataclass.
2. The stage validates everything else it needs (opens the data file, builds its datasets).
3. :meth:`RunDir.prepare`: checks the folder (a fresh one, or ``--resume`` with the same config
   except ``trainer.max_steps``), then creates it and writes ``config.yaml`` and ``command.txt``.
4. :func:`make_trainer` + :func:`fit`: Lightning with a CSV logger (always), a W&B logger
   (only when ``run.wandb`` is set; offline by default), ``checkpoints/last.ckpt`` every
   ``trainer.checkpoint_every`` steps and at the end, and resume from ``last.ckpt``.

Run folder layout::

    DIR/config.yaml            resolved config (iss3d.core.config.to_dict)
    DIR/command.txt            the command line(s) that ran in this folder, one per line
    DIR/checkpoints/last.ckpt  Lightning checkpoint (weights, optimizer, step)
    DIR/csv/version_<n>/metrics.csv   one version per invocation (a resume adds one)
    DIR/wandb/                 only with run.wandb
    DIR/val/step_<k>.png       validation images (stage-specific)
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pytorch_lightning.callbacks import Callback, WeightAveraging

from iss3d.core.atomic import atomic_output, check_output_path
from iss3d.core.config import read_yaml
from iss3d.core.errors import UserError
from iss3d.core.paths import name_taken

#: Keys whose value may differ between a run and its resumption.
RESUMABLE_CHANGES = frozenset({"trainer.max_steps"})

__all__ = [
    "RESUMABLE_CHANGES",
    "RandomStates",
    "RunConfig",
    "RunDir",
    "TrainerConfig",
    "capture_random_states",
    "config_callbacks",
    "config_differences",
    "default_run_dir",
    "fit",
    "launch_rank",
    "make_trainer",
    "report",
    "resolve_precision",
    "restore_random_states",
    "run_folder",
    "seed_run",
]


# -- shared config sections ----------------------------------------------------------------


@dataclass
class TrainerConfig:
    """Lightning trainer settings (YAML section ``trainer``).

    Attributes:
        max_steps: optimizer steps to train for (a resumed run continues up to this).
        val_check_interval: validate every this many training steps (0: never).
        checkpoint_every: write ``checkpoints/last.ckpt`` every this many steps (and at the end).
        log_every: log training metrics every this many steps.
        limit_val_batches: validation batches per validation (an int), or a fraction (a float).
        precision: Lightning precision, e.g. ``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``,
            or ``"auto"``: ``"bf16-mixed"`` where the training device computes bfloat16
            natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX), else ``"32-true"``.
        accelerator: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"gpu"``, ...
        devices: Lightning ``devices`` per node (an int, ``"auto"``, or a list of indices).
        num_nodes: machines training together (each with ``devices`` processes).
        strategy: Lightning strategy: ``"auto"`` (one device: none; several: DDP), ``"ddp"``,
            ``"ddp_spawn"``, ``"fsdp"``, ... With several processes every ``fit`` stage writes
            its run folder, images, exports and prints from global rank 0 only, splits each
            epoch's items between the ranks, and reduces validation metrics over all of them.
        accumulate_grad_batches: sum the gradients of this many batches per optimizer step
            (an effective batch of ``data.batch_size x devices x num_nodes x`` this).
        sync_batchnorm: BatchNorm statistics over every rank's batch (the SVR's image encoder
            has BatchNorm) instead of each rank's own.
        gradient_clip_val: clip gradients to this norm (None: no clipping).
        ema_decay: keep an exponential moving average of the weights, with decay
            min(ema_decay, (1 + n) / (10 + n)) after n updates (:class:`WarmupEMA`: a short
            run's average holds little of the random initial weights; None: no average).
            Validation runs on the averaged
            weights, and checkpoints store them as ``state_dict`` (what every loader reads), the
            raw weights under ``current_model_state`` for resuming (a checkpoint written when
            training ends holds the average in both: Lightning copies it into the model).
        keep_checkpoints: besides ``checkpoints/last.ckpt``, keep the latest this many
            ``checkpoints/step_<n>.ckpt`` of the ones written every ``checkpoint_every`` steps
            (0: none; -1: all).
    """

    max_steps: int = 1000
    val_check_interval: int = 500
    checkpoint_every: int = 500
    log_every: int = 10
    limit_val_batches: int | float = 1.0
    precision: str = "32-true"
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    accumulate_grad_batches: int = 1
    sync_batchnorm: bool = False
    gradient_clip_val: float | None = None
    ema_decay: float | None = None
    keep_checkpoints: int = 0

    def __post_init__(self) -> None:
        for name in ("max_steps", "checkpoint_every", "log_every", "num_nodes"):
            if getattr(self, name) < 1:
                raise UserError(f"trainer config: {name!r} must be >= 1, got {getattr(self, name)}")
        if self.val_check_interval < 0:
            raise UserError(
                f"trainer config: 'val_check_interval' must be >= 0, got {self.val_check_interval}"
            )
        lv = self.limit_val_batches
        if (isinstance(lv, int) and lv < 0) or (isinstance(lv, float) and not 0.0 <= lv <= 1.0):
            raise UserError(
                "trainer config: 'limit_val_batches' must be a batch count >= 0 or a fraction "
                f"in [0, 1], got {lv!r}"
            )
        if self.gradient_clip_val is not None and self.gradient_clip_val <= 0:
            raise UserError(
                f"trainer config: 'gradient_clip_val' must be > 0 or null, "
                f"got {self.gradient_clip_val}"
            )
        if self.accumulate_grad_batches < 1:
            raise UserError(
                "trainer config: 'accumulate_grad_batches' must be >= 1, "
                f"got {self.accumulate_grad_batches}"
            )
        if self.keep_checkpoints < -1:
            raise UserError(
                f"trainer config: 'keep_checkpoints' must be >= -1, got {self.keep_checkpoints}"
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise UserError(
                f"trainer config: 'ema_decay' must be in (0, 1) or null, got {self.ema_decay}"
            )


@dataclass
class RunConfig:
    """Run bookkeeping (YAML section ``run``).

    Attributes:
        name: run name (default folder ``runs/<stage>-<name>-<timestamp>``, logger run name).
        seed: global seed (``pl.seed_everything``).
        wandb: W&B mode, or None for no W&B logger. ``"offline"`` (the usual choice: never
            touches the network; ``wandb sync`` later), ``"online"``, or ``"disabled"``. The
            environment variable ``WANDB_MODE=disabled`` always wins.
        wandb_project: W&B project name.
    """

    name: str = "run"
    seed: int = 0
    wandb: Literal["offline", "online", "disabled"] | None = None
    wandb_project: str = "iss3d"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise UserError(
                f"run config: 'name' must be letters, digits, '.', '_' or '-', got {self.name!r}"
            )
        if self.seed < 0:
            raise UserError(f"run config: 'seed' must be >= 0, got {self.seed}")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        if not d and prefix:
            out[prefix[:-1]] = {}
        return out
    return {prefix[:-1]: d}


def config_differences(
    saved: Mapping[str, Any], new: Mapping[str, Any], allowed: Iterable[str] = RESUMABLE_CHANGES
) -> list[str]:
    """Dotted keys whose values differ between two plain config dicts, except ``allowed``."""
    a, b = _flatten(saved), _flatten(new)
    skip = set(allowed)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in skip:
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va != vb and not (_is_number(va) and _is_number(vb) and math.isclose(va, vb)):
            diffs.append(key)
    return diffs


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# -- run folders --------------------------------------------------------------------------


def run_folder(stage: str, name: str, out: Path | None) -> RunDir:
    """The run folder of a ``fit`` command: ``--out`` (its parent must exist), or the default
    ``runs/<stage>-<name>-<time>`` (made with its parents)."""
    if out is not None:
        return RunDir(out)
    return RunDir(default_run_dir(stage, name), make_parents=True)


def default_run_dir(stage: str, name: str, root: str | os.PathLike = "runs") -> Path:
    """``runs/<stage>-<name>-<YYYYmmdd-HHMMSS>`` (with a ``-<n>`` suffix if that exists)."""
    base = Path(root) / f"{stage}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        path = base.with_name(f"{base.name}-{n}")
        n += 1
    return path


#: What a Lightning checkpoint needs to continue training (a slim one has none of them).
RESUME_KEYS = ("state_dict", "optimizer_states", "loops", "global_step")


def check_resumable(path: Path) -> None:
    """UserError unless ``path`` is a whole Lightning training checkpoint: readable (not empty,
    truncated, corrupt or holding code), a file, and with optimizer and loop state (``iss3d
    slim`` drops them). Read with ``weights_only=True``; checked before the run folder is
    touched."""
    from iss3d.models.checkpoints import safe_load

    ckpt = safe_load(path, what="training checkpoint")
    missing = [k for k in RESUME_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(
            f"--resume: {path} cannot continue training (no {', '.join(missing)}; a slim or "
            "foreign checkpoint); move it away to start again"
        )


def launch_rank() -> int:
    """This process's global rank as a distributed launcher put it in the environment, before
    Lightning sets anything up: ``RANK`` (torchrun), ``SLURM_PROCID`` (srun), or ``NODE_RANK``
    and ``LOCAL_RANK`` (Lightning's own launcher, which starts ranks 1... with them set; rank 0
    is the process the user started). 0 when no launcher is involved; the exact value only
    matters as zero or not."""
    env = os.environ
    for name in ("RANK", "SLURM_PROCID"):
        if env.get(name, "").isdigit():
            return int(env[name])
    node, local = env.get("NODE_RANK", "0"), env.get("LOCAL_RANK", "0")
    if node.isdigit() and local.isdigit():
        return int(node) + int(local)
    return 0


class RunDir:
    """One run's folder. Create with :meth:`prepare` after every other check has passed.

    With several training processes, global rank 0 checks and creates the folder; the other
    ranks (the same command, started by a launcher) only read its checkpoint to resume.

    Args:
        path: the folder (need not exist yet).
        rank: this process's global rank (default: :func:`launch_rank`).
    """

    CONFIG = "config.yaml"
    COMMAND = "command.txt"

    def __init__(
        self, path: str | os.PathLike, rank: int | None = None, make_parents: bool = False
    ):
        self.path = Path(path)
        self.rank = launch_rank() if rank is None else rank
        self.make_parents = make_parents  # a default folder (runs/...): its parents may be made
        self.created = False  # whether this invocation made the folder

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def check(self, config: Mapping[str, Any], resume: bool) -> Path | None:
        """Decide what this invocation does with the folder; creates nothing.

        Returns the checkpoint to resume from (None: train from scratch).

        Raises:
            UserError: the folder is not empty and ``resume`` is False; the saved config
                differs from ``config`` in more than ``trainer.max_steps``; the path is a file.
        """
        p = self.path
        if self.rank > 0:
            last = self.last_checkpoint
            return last if resume and last.is_file() else None
        if p.exists() and not p.is_dir():
            raise UserError(f"{p}: exists and is not a folder")
        if not resume:
            if not p.exists() and not self.make_parents:
                check_output_path(p)  # a name the file system takes, in an existing folder
            if p.is_dir() and any(p.iterdir()):
                raise UserError(
                    f"{p}: run folder exists and is not empty (add --resume to continue it, "
                    "or choose another --out)"
                )
            return None
        saved_path = p / self.CONFIG
        if saved_path.is_file():
            saved = read_yaml(saved_path)
            diffs = config_differences(saved, config)
            if diffs:
                flat_saved, flat_new = _flatten(saved), _flatten(config)
                k = diffs[0]
                more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
                was, now = flat_saved.get(k, "<absent>"), flat_new.get(k, "<absent>")
                raise UserError(
                    f"--resume: config differs from {saved_path} at {k!r}: saved {was!r}, "
                    f"now {now!r}{more}; only trainer.max_steps may change when resuming"
                )
        elif p.is_dir() and any(p.iterdir()):
            raise UserError(f"--resume: {p} has no {self.CONFIG}; is it a run folder?")
        last = self.last_checkpoint
        if not name_taken(last):
            return None
        check_resumable(last)
        return last

    def create(self, config: Mapping[str, Any], command: str) -> None:
        """Make the folder and write ``config.yaml`` and ``command.txt`` (atomically).

        ``command.txt`` keeps earlier lines (a resumed run appends its command). Only on
        global rank 0.
        """
        if self.rank > 0:
            return
        self.created = self.created or not self.path.exists()
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{self.path}: cannot create run folder ({err.strerror})") from None
        with atomic_output(self.path / self.CONFIG) as tmp:
            tmp.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        cmd_path = self.path / self.COMMAND
        previous = cmd_path.read_text() if cmd_path.is_file() else ""
        with atomic_output(cmd_path) as tmp:
            tmp.write_text(previous + command.rstrip("\n") + "\n")

    def prepare(self, config: Mapping[str, Any], command: str, resume: bool) -> Path | None:
        """:meth:`check`, then :meth:`create`; returns the checkpoint to resume from or None."""
        ckpt = self.check(config, resume)
        self.create(config, command)
        return ckpt

    def wandb_id(self) -> str:
        """A stable W&B run id for this folder (so a resumed run continues the same W&B run)."""
        digest = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:8]
        return re.sub(r"[^A-Za-z0-9_-]", "-", self.path.name)[:50] + "-" + digest


# -- Lightning ------------------------------------------------------------------------------


def warmup_ema_update(
    decay: float, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor
) -> torch.Tensor:
    """One EMA update with warm-up: d * averaged + (1 - d) * current, d = min(decay,
    (1 + n) / (10 + n)) for the n-th update (n = ``num_averaged``, the updates so far; the
    first one copies the weights). After 1000 updates the initial weights hold 0.999 ** 999 =
    37% of a plain EMA, 3.5e-21 of this one (whose window grows with the run: d = 0.991 at
    update 1000, ``decay`` from update 8991 on for 0.999)."""
    n = float(num_averaged)
    d = min(decay, (1.0 + n) / (10.0 + n))
    return averaged * d + current * (1.0 - d)


class WarmupEMA(WeightAveraging):
    """Lightning's weight averaging, updated after every training step by
    :func:`warmup_ema_update` with ``decay``."""

    def __init__(self, decay: float):
        super().__init__(use_buffers=True, avg_fn=functools.partial(warmup_ema_update, decay))

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None


def capture_random_states() -> dict[str, Any]:
    """The global random states training draws from (torch CPU and CUDA, numpy, Python), as
    tensors and numbers that a ``weights_only`` checkpoint load accepts."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, py_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "words": torch.tensor(words), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: Mapping[str, Any]) -> None:
    """Set the global random states :func:`capture_random_states` gave."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = states["python"]
    random.setstate((p["version"], tuple(int(w) for w in p["words"]), p["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RandomStates(Callback):
    """Random states in checkpoints, and validation that draws none from training's stream.

    A checkpoint holds the global random states as they were when it was written, and a resumed
    run starts from them, so its steps draw what the uninterrupted run's did (random ray points,
    crops, noise). Validation runs between the same steps in both, but only in the
    uninterrupted run after the checkpoint was written: the states are put back after it.
    """

    def __init__(self) -> None:
        self._held: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return capture_random_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restore_random_states(state_dict)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._held = capture_random_states()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._held is not None:
            restore_random_states(self._held)
            self._held = None


def config_callbacks(trainer_cfg: TrainerConfig) -> list[Any]:
    """The Lightning callbacks a trainer config asks for: the weight average of ``ema_decay``."""
    if trainer_cfg.ema_decay is None:
        return []
    return [WarmupEMA(trainer_cfg.ema_decay)]


def resolve_precision(precision: str, accelerator: str) -> str:
    """Lightning precision for a config's ``precision`` (``"auto"`` resolved for the device
    ``accelerator`` picks; anything else as given)."""
    if precision != "auto":
        return precision
    import torch

    from iss3d.models.precision import native_bfloat16

    cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    return "bf16-mixed" if native_bfloat16(device) else "32-true"


def seed_run(run_cfg: RunConfig) -> None:
    """Seed Python, numpy and torch (and the DataLoader workers) with ``run_cfg.seed``: the
    first step of every ``fit``, so that initial weights, random-weight CLIP specs, the data
    order and every step are the same for the same seed."""
    import pytorch_lightning as pl

    pl.seed_everything(run_cfg.seed, workers=True, verbose=False)


def make_trainer(
    run_dir: RunDir,
    trainer_cfg: TrainerConfig,
    run_cfg: RunConfig,
    stage: str,
    callbacks: Sequence[Any] = (),
    enable_progress_bar: bool = True,
):
    """A ``pl.Trainer`` following the run conventions (loggers, checkpoints, step-based val).
    Returns the trainer; the run was seeded by :func:`seed_run` before its models were built.
    """
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(save_dir=str(run_dir.path), name="csv")]
    if run_cfg.wandb is not None:
        from pytorch_lightning.loggers import WandbLogger

        mode = run_cfg.wandb
        if os.environ.get("WANDB_MODE", "").lower() == "disabled":
            mode = "disabled"
        loggers.append(
            WandbLogger(
                name=f"{stage}-{run_cfg.name}",
                save_dir=str(run_dir.path),
                project=run_cfg.wandb_project,
                id=run_dir.wandb_id(),
                mode=mode,
            )
        )
    t = trainer_cfg
    every = {
        "dirpath": str(run_dir.checkpoints),
        "every_n_train_steps": t.checkpoint_every,
        "enable_version_counter": False,
    }
    checkpoints = [ModelCheckpoint(save_last=True, save_top_k=0, **every)]
    if t.keep_checkpoints != 0:  # also the latest k as step_<n>.ckpt
        checkpoints.append(
            ModelCheckpoint(
                filename="step_{step}",
                auto_insert_metric_name=False,
                monitor="step",
                mode="max",
                save_top_k=t.keep_checkpoints,
                **every,
            )
        )
    val_every = t.val_check_interval
    return pl.Trainer(
        default_root_dir=str(run_dir.path),
        max_steps=t.max_steps,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        accumulate_grad_batches=t.accumulate_grad_batches,
        sync_batchnorm=t.sync_batchnorm,
        use_distributed_sampler=False,  # the loaders split each pass between ranks themselves
        precision=resolve_precision(t.precision, t.accelerator),
        logger=loggers,
        callbacks=[*checkpoints, RandomStates(), *callbacks, *config_callbacks(t)],
        log_every_n_steps=t.log_every,
        val_check_interval=val_every if val_every > 0 else None,
        check_val_every_n_epoch=None,
        limit_val_batches=t.limit_val_batches if val_every > 0 else 0,
        num_sanity_val_steps=0,
        gradient_clip_val=t.gradient_clip_val,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
    )


def fit(trainer, system, datamodule, ckpt_path: Path | None, run_dir: RunDir) -> None:
    """``trainer.fit`` from ``ckpt_path`` (None: from scratch). Lightning's own interrupt
    handling keeps what was written; the CLI reports an interrupt with its exit code. A run
    that fails (bad data found mid-way, Ctrl-C) before its first checkpoint leaves no folder
    behind when this invocation made it: there is nothing in it to resume."""
    import shutil

    ckpt = str(ckpt_path) if ckpt_path else None
    try:
        trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        if getattr(trainer, "interrupted", False):
            raise KeyboardInterrupt
    except BaseException:
        if run_dir.created and run_dir.rank == 0 and not run_dir.last_checkpoint.exists():
            shutil.rmtree(run_dir.path, ignore_errors=True)
        raise


def report(trainer, text: str) -> None:
    """Print ``text`` from global rank 0 only (every rank runs the command's code after fit)."""
    if trainer.is_global_zero:
        print(text)
