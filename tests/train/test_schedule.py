"""Learning-rate milestones are fractions of the run: a shorter or longer run keeps its
schedule, and an absolute step count is a one-line error."""

from __future__ import annotations

import pytest
import torch

from iss3d.core.config import load_config
from iss3d.core.errors import UserError
from iss3d.train.svr import AdamConfig, SVRConfig


def test_milestones_scale_with_max_steps():
    cfg = load_config(SVRConfig, "svr/tiny", [("data.path", "w.h5")])
    assert cfg.optim.milestone_steps(cfg.trainer.max_steps) == [6600]
    assert cfg.optim.milestone_steps(3000) == [2475]  # an absolute 6600 never came
    short = load_config(SVRConfig, "svr/tiny", [("data.path", "w.h5"), ("trainer.max_steps", 40)])
    out = AdamConfig(lr=1.0, milestones=[0.5], gamma=0.1).optimizers(
        [{"params": [torch.nn.Parameter(torch.zeros(1))]}], short.trainer.max_steps
    )
    sched = out["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(40):
        rates.append(sched.get_last_lr()[0])
        out["optimizer"].step()
        sched.step()
    assert rates[19] == 1.0 and rates[20] == pytest.approx(0.1)


@pytest.mark.parametrize("milestones", [[6600], [0.5, 0.2], [0.0], [1.0]])
def test_milestones_outside_the_run_are_an_error(milestones):
    with pytest.raises(UserError, match="milestones") as info:
        AdamConfig(milestones=milestones)
    assert "\n" not in str(info.value)
