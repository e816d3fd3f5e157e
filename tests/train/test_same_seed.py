"""Same config and seed, same weights: every ``iss3d fit`` stage twice, bit for bit on the CPU
(the initial weights, the data order, stage 1's mapper pre-fit and the training steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from iss3d.infer.cli import main
from tests.train import test_clip, test_stage1, test_svr

CLIP = "clip/tiny-64"


def _argv(stage: str, world: Path, out: Path, svr: Path | None) -> list[str]:
    """``iss3d fit <stage>`` at CPU-test size, 2 steps, no validation."""
    head = ["fit", stage, "--config", f"{stage}/tiny", "--data", str(world), "--out", str(out)]
    head.append("--no-progress")
    short = ["trainer.max_steps=2", "trainer.val_check_interval=0"]
    if stage == "svr":
        return [*head, *test_svr.TINY, *short]
    if stage == "clip":
        return [*head, *test_clip.TINY, *short]
    if stage == "stage1":
        head += ["--svr", str(svr), "--clip", CLIP]
        return [*head, *test_stage1.TINY, *short, "prefit.epochs=2"]
    if stage == "eid":
        head += ["--clip", CLIP]
        head += ["data.batch_size=2", "data.pixels=8", "data.occupancy_points=64"]
        return [*head, "decoder.hidden=32", "decoder.n_blocks=1", "march.n_steps=[[0, 8]]", *short]
    return [*head, "data.points=128", "data.batch_size=4", *short]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]


@pytest.mark.parametrize("stage", ["svr", "clip", "stage1", "eid", "pointnet"])
def test_two_runs_with_one_seed_give_the_same_weights(stage, tiny_world, svr, tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert main(_argv(stage, tiny_world, run, svr)) == 0
    a, b = (_weights(run) for run in runs)
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert differing == []
    other = tmp_path / "other-seed"
    assert main([*_argv(stage, tiny_world, other, svr), "run.seed=1"]) == 0
    c = _weights(other)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
