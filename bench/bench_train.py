"""Training speed of each stage: optimisation steps per second of SVR, CLIP and stage 1.

Each stage trains from its tiny config (``configs/<stage>/tiny.yaml``, batch sizes and all) with
a Lightning ``Trainer`` as ``iss3d fit`` runs it (with the config's weight average, if any), but
with logging, checkpoints and validation off, on a small synthetic world built in a temporary
folder by the project's generator (24 objects x 4 views at 64 px, the view size the tiny configs
are made for). SVR and CLIP start
from random weights; stage 1 from the shipped SVR model and CLIP (``models/pretrained/svr.pt``,
``clip.pt``), as ``make models`` trains it.

A step is timed from the end of the previous training step to the end of this one: loading the
batch, forward, backward, optimiser step and Lightning's own work. Only steps with a full batch
(the config's ``data.batch_size``) are timed, after a warm-up one: the world's training split
does not fill a whole number of batches, and its short last batch would flatter the rate.

Run: ``python -m bench.bench_train [--quick]`` (or through ``python -m bench.run``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from bench.common import write_result
from iss3d.core.config import load_config
from iss3d.data.synth.build import SynthConfig, synthesize
from iss3d.infer.session import PRETRAINED_DIR
from iss3d.train import runs
from iss3d.train.clip import ClipConfig, ClipSystem
from iss3d.train.datamodule import MultiViewDataModule
from iss3d.train.stage1 import Stage1Config, Stage1System
from iss3d.train.svr import SVRConfig, SVRSystem

NAME = "train"
STAGES = ("svr", "clip", "stage1")
WORLD = SynthConfig(
    objects=24, views=4, res=64, occ_uniform=2048, occ_near=2048, surface_points=2048, seed=0
)


class StepTimer(pl.Callback):
    """Times training steps with a full batch; stops the run after ``warmup + steps`` of them.

    Args:
        batch_size: the items (objects or views) of a full batch, the first axis of
            ``batch["image"]``.
        warmup: full-batch steps run before the timed ones.
        steps: full-batch steps timed.

    Attributes:
        seconds: wall seconds of each timed step, from the end of the step before it.
    """

    def __init__(self, batch_size: int, warmup: int, steps: int):
        self.batch_size = batch_size
        self.warmup = warmup
        self.steps = steps
        self.full = 0
        self.seconds: list[float] = []
        self.last = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx
    ) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        if len(batch["image"]) == self.batch_size:
            self.full += 1
            if self.full > self.warmup:
                self.seconds.append(now - self.last)
            if self.full == self.warmup + self.steps:
                trainer.should_stop = True
        self.last = now


def build_stage(stage: str, world: Path) -> tuple[pl.LightningModule, object]:
    """The Lightning system of ``stage`` and its tiny config, reading ``world``.

    Returns (system, config): an SVRSystem, ClipSystem or Stage1System and its config.
    """
    data = [("data.path", str(world))]
    if stage == "svr":
        cfg = load_config(SVRConfig, "svr/tiny", data)
        return SVRSystem(cfg), cfg
    if stage == "clip":
        cfg = load_config(ClipConfig, "clip/tiny", data)
        return ClipSystem(cfg), cfg
    shipped = [("svr", str(PRETRAINED_DIR / "svr.pt")), ("clip", str(PRETRAINED_DIR / "clip.pt"))]
    cfg = load_config(Stage1Config, "stage1/tiny", [*data, *shipped])
    return Stage1System(cfg), cfg


def step_seconds(stage: str, world: Path, root: Path, warmup: int, steps: int) -> list[float]:
    """Train ``stage`` on ``world`` until ``steps`` full-batch steps after ``warmup`` are
    timed; their wall seconds. ``root``: Lightning's folder (nothing is written there)."""
    system, cfg = build_stage(stage, world)
    timer = StepTimer(cfg.data.batch_size, warmup, steps)
    t = cfg.trainer
    pl.seed_everything(cfg.run.seed, verbose=False)
    trainer = pl.Trainer(
        default_root_dir=str(root),
        max_steps=t.max_steps,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=1,
        precision=runs.resolve_precision(t.precision, t.accelerator),
        logger=False,
        enable_checkpointing=False,
        callbacks=[timer, *runs.config_callbacks(t)],
        log_every_n_steps=t.log_every,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=t.gradient_clip_val,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(system, datamodule=MultiViewDataModule(cfg.data))
    return timer.seconds


def main(quick: bool = False) -> dict:
    warmup, steps = 1, 2 if quick else 10
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="iss3d-bench-train-") as tmp:
        world = synthesize(Path(tmp) / "world.h5", WORLD, workers=1, progress=False)
        for stage in STAGES:
            seconds = step_seconds(stage, world, Path(tmp) / stage, warmup, steps)
            figures[f"{stage}_steps_per_s"] = len(seconds) / sum(seconds)
            figures[f"{stage}_s_per_step"] = sum(seconds) / len(seconds)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "configs": {stage: f"{stage}/tiny" for stage in STAGES},
        "world": {k: getattr(WORLD, k) for k in ("objects", "views", "res", "seed")},
        "warmup_steps": warmup,
        "timed_steps": steps,
    }
    notes = [
        "a step: from the end of the previous training step to the end of this one (batch"
        " loading, forward, backward, optimiser step, Lightning); full batches only, after"
        f" {warmup} warm-up step; Lightning Trainer with logging, checkpoints, validation off",
        "svr and clip from random weights; stage1 from models/pretrained/svr.pt and clip.pt",
    ]
    return write_result(NAME, figures, config, quick, notes=notes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
