"""The stage-2 and training benchmarks at their quick sizes: they run with the shipped models and
give finite figures (written to bench/results/tmp/, which git ignores); result files are strict
JSON whatever the figures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import bench_stage2, bench_train, common
from tests.fixtures.nonfinite import strict_json


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


def test_result_files_are_strict_json_with_non_finite_figures(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "QUICK_RESULTS_DIR", tmp_path)
    nan = float("nan")
    figures = {"step_s": nan, "rate": np.float32("inf"), "ok": np.float64(2.5)}
    config = {"lr": (1e-3, nan)}
    common.write_result(
        "strict", figures, config, quick=True, targets={"step_s": common.target(nan, 1.0)}
    )
    result = strict_json((tmp_path / "strict.json").read_text())
    assert result["figures"] == {"step_s": None, "rate": None, "ok": 2.5}
    assert result["config"] == {"lr": [1e-3, None]}
    assert result["targets"]["step_s"]["ratio"] is None
    assert "step_s" in capsys.readouterr().out
