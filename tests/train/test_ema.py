"""The weight average with warm-up (trainer.ema_decay): its formula by hand, how fast the
random initial weights fade, and the trainer config that turns it on."""

from __future__ import annotations

import pytest
import torch

from iss3d.train.runs import TrainerConfig, WarmupEMA, config_callbacks, warmup_ema_update


def test_update_formula_by_hand():
    avg, cur = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0])
    # update n = 1: d = min(0.999, 2 / 11)
    d = 2 / 11
    torch.testing.assert_close(
        warmup_ema_update(0.999, avg, cur, torch.tensor(1)), avg * d + cur * (1 - d)
    )
    # late updates: the configured decay
    out = warmup_ema_update(0.999, avg, cur, torch.tensor(100_000))
    torch.testing.assert_close(out, avg * 0.999 + cur * 0.001)
    # the switch: (1 + n) / (10 + n) reaches 0.9 at n = 80
    assert warmup_ema_update(0.9, avg, cur, torch.tensor(80))[0].item() == pytest.approx(0.9)
    assert warmup_ema_update(0.9, avg, cur, torch.tensor(79))[0].item() == pytest.approx(80 / 89)


def test_initial_weights_fade_in_a_short_run():
    """1000 updates of weights that are 0 after an initial 1: a plain EMA keeps 37% of the
    initial value, the warm-up EMA nothing measurable."""
    a = torch.tensor(1.0, dtype=torch.float64)
    for n in range(1, 1000):
        a = warmup_ema_update(0.999, a, torch.zeros((), dtype=torch.float64), torch.tensor(n))
    assert a.item() < 1e-20 and 0.999**999 > 0.36


def test_the_trainer_config_uses_it():
    (callback,) = config_callbacks(TrainerConfig(ema_decay=0.99))
    assert isinstance(callback, WarmupEMA) and callback.should_update(step_idx=0)
    assert config_callbacks(TrainerConfig(ema_decay=None)) == []
