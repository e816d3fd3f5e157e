"""Two ranks on the CPU (Lightning's DDP over gloo, its own launcher re-running the command):
every ``iss3d fit`` stage runs to the end, writes its run folder, exports and prints once (from
global rank 0), and validates over every rank's share of the validation objects."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.test_same_seed import _argv

ROOT = Path(__file__).resolve().parents[2]

TWO_RANKS = [
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.strategy=ddp",
    "trainer.max_steps=4",
    "trainer.checkpoint_every=2",
    "trainer.val_check_interval=4",
]


def fit_two_ranks(argv: list[str]) -> subprocess.CompletedProcess:
    """``iss3d ARGV TWO_RANKS`` through the installed command (the launcher re-runs it)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "iss3d", *argv, *TWO_RANKS]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def logged(run: Path, name: str) -> list[float]:
    """The values of metric ``name`` in a run's CSV log."""
    (metrics,) = (run / "csv").glob("version_*/metrics.csv")
    with open(metrics) as f:
        return [float(row[name]) for row in csv.DictReader(f) if row.get(name)]


@pytest.mark.parametrize("stage", ["svr", "clip", "stage1", "eid", "pointnet"])
def test_two_ranks_train_and_write_once(stage, tiny_world, svr, tmp_path):
    out = tmp_path / "run"
    done = fit_two_ranks(_argv(stage, tiny_world, out, svr))
    assert done.stdout.count("run folder: ") == 1, done.stdout
    assert done.stdout.count("mapper pre-fit") == (1 if stage == "stage1" else 0)
    assert len((out / "command.txt").read_text().splitlines()) == 1
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert "not empty" not in done.stderr and "sync_dist" not in done.stderr
    if stage in ("clip", "pointnet"):
        assert (out / f"{stage}.pt").is_file()
    (value,) = logged(out, VAL_METRIC[stage])
    if stage == "svr":
        assert math.isclose(validate_alone(out), value, rel_tol=1e-5)


#: A validation metric of each stage (logged once: validation at the last step).
VAL_METRIC = {
    "svr": "val/iou",
    "clip": "val/top1",
    "stage1": "val/cos",
    "eid": "val/iou_image",
    "pointnet": "val/acc",
}


def validate_alone(run: Path) -> float:
    """The validation IoU of an SVR run's last weights, validated by one process: what the two
    ranks logged, when each validated its share and the shares were gathered (nothing missed,
    nothing counted twice)."""
    import pytorch_lightning as pl

    from iss3d.train.datamodule import DataConfig, MultiViewDataModule
    from iss3d.train.svr import SVRSystem

    system = SVRSystem.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True)
    data = MultiViewDataModule(DataConfig.from_dict(system.hparams["config"]["data"]))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    (metrics,) = trainer.validate(system, datamodule=data, verbose=False)
    return metrics["val/iou"]
