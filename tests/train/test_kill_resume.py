"""Kill -9 and resume gives the uninterrupted run's weights, bit for bit on the CPU: every
``iss3d fit`` stage, killed (SIGKILL, after a step whose checkpoint was never written) and
resumed with ``--resume``, ends with the same averaged and raw weights and optimizer state as a
run that was never interrupted. What makes it so: the checkpoint holds the random states
(:class:`iss3d.train.runs.RandomStates`) and the loader's place in its pass
(:class:`iss3d.train.datamodule.ResumableLoader`); validation draws nothing from training's
stream; items draw from ``(seed, epoch, index)`` only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iss3d.infer.cli import main
from tests.train.test_same_seed import _argv

ROOT = Path(__file__).resolve().parents[2]

#: 8 steps, a checkpoint every 2, validation every 3 (between a checkpoint and the kill), an
#: average of the weights; the tiny world's epochs are 2 to 5 steps long, so kills land both
#: inside a pass and right after one.
LONGER = [
    "trainer.max_steps=8",
    "trainer.checkpoint_every=2",
    "trainer.val_check_interval=3",
    "trainer.ema_decay=0.99",
]


@pytest.fixture
def one_thread():
    """The killed run's arithmetic: one torch thread (as :mod:`tests.train.killed_fit`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def killed(step: int, argv: list[str]) -> None:
    """Run ``iss3d argv`` in a new process that SIGKILLs itself after training step ``step``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    cmd = [sys.executable, "-m", "tests.train.killed_fit", str(step), *argv]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]


def training_state(run: Path) -> dict[str, torch.Tensor]:
    """Averaged weights, raw weights and optimizer moments of a run's last checkpoint."""
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 8
    state = {f"avg.{k}": v for k, v in ckpt["state_dict"].items()}
    state |= {f"raw.{k}": v for k, v in ckpt["current_model_state"].items()}
    for i, opt in enumerate(ckpt["optimizer_states"]):
        for p, moments in opt["state"].items():
            state |= {f"opt{i}.{p}.{k}": v for k, v in moments.items() if torch.is_tensor(v)}
    return state


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize(
    ("stage", "kills"),
    [("svr", [3, 6]), ("clip", [5]), ("stage1", [5]), ("eid", [3]), ("pointnet", [5])],
)
def test_kill_and_resume_gives_the_uninterrupted_weights(
    stage,
    kills,
    tiny_world,
    svr,
    tmp_path,
    one_thread,
):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*_argv(stage, tiny_world, whole, svr), *LONGER]) == 0
    argv = [*_argv(stage, tiny_world, cut, svr), *LONGER]
    killed(kills[0], argv)
    for step in kills[1:]:
        killed(step, [*argv, "--resume"])
    assert main([*argv, "--resume"]) == 0
    assert differing(training_state(whole), training_state(cut)) == []


def test_random_states_survive_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from iss3d.train.runs import capture_random_states, restore_random_states

    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    np.random.standard_normal()  # a cached Gaussian is part of numpy's state
    torch.save({"states": capture_random_states()}, tmp_path / "c.ckpt")
    first = (torch.rand(3), np.random.standard_normal(3), random.random())
    states = torch.load(tmp_path / "c.ckpt", weights_only=True)["states"]
    restore_random_states(states)
    again = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]


class Indices(torch.utils.data.Dataset):
    """Items are their own index (of the ``(index, epoch)`` the sampler gives)."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, item: tuple[int, int]) -> int:
        return item[0]


def test_loader_resumes_inside_a_pass_and_after_one():
    from iss3d.train.datamodule import epoch_loader

    items = Indices(10)
    ref = epoch_loader(items, 3, train=True, seed=0)
    epochs = [[b.tolist() for b in ref] for _ in range(2)]
    loader = epoch_loader(items, 3, train=True, seed=0)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    resumed = epoch_loader(items, 3, train=True, seed=0)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(0)
    assert [b.tolist() for b in resumed] == epochs[0][2:]
    ended = epoch_loader(items, 3, train=True, seed=0)
    ended.load_state_dict({"epoch": 0, "batches": 4})  # a checkpoint at the end of pass 0
    ended.sampler.set_epoch(1)  # Lightning goes on with the next epoch
    assert [b.tolist() for b in ended] == epochs[1]
