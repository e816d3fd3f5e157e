"""The stage-2 and training benchmarks at their quick sizes: they run with the shipped models and
give finite figures (written to bench/results/tmp/, which git ignores)."""

from __future__ import annotations

import math

import pytest

from bench import bench_stage2, bench_train


@pytest.mark.slow
@pytest.mark.parametrize("module", [bench_stage2, bench_train], ids=["stage2", "train"])
def test_quick_run_gives_finite_figures(module) -> None:
    result = module.main(quick=True)
    assert result["name"] == module.NAME
    assert result["quick"] is True
    assert result["figures"]
    for key, value in result["figures"].items():
        assert math.isfinite(value), key
        # a memory increase may be 0 (the step reuses pages it already holds); times are not
        assert value >= 0 if key.endswith("_mb") else value > 0, key
