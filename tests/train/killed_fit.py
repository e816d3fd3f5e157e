"""``python -m tests.train.killed_fit STEP ARGV...``: ``iss3d ARGV`` (a ``fit`` command) that
SIGKILLs itself right after training step STEP, before that step's checkpoint is written: the
interruption nothing can clean up after (power loss, the OOM killer, a pre-empted node)."""

from __future__ import annotations

import os
import signal
import sys

import torch
from pytorch_lightning.callbacks import Callback

from iss3d.infer.cli import main
from iss3d.train import runs


class KillAt(Callback):
    """SIGKILL this process at the end of training step ``step`` (its ``on_train_batch_end``
    runs before the checkpoint callback's, which Lightning keeps last)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def run(step: int, argv: list[str]) -> int:
    """``iss3d argv`` with a :class:`KillAt` among the trainer's callbacks."""
    torch.set_num_threads(1)  # as the test process under pytest-xdist: same arithmetic
    plain = runs.config_callbacks
    runs.config_callbacks = lambda cfg: [*plain(cfg), KillAt(step)]
    return main(argv)


if __name__ == "__main__":
    sys.exit(run(int(sys.argv[1]), sys.argv[2:]))
