"""Strict dataclass configs (``iss3d.core.config``): parsing from plain dicts, YAML config
names, ``key=value`` overrides checked against the dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from iss3d.core import config as config_lib
from iss3d.core.config import CONFIG_DIR, apply_overrides, find_config, parse_override
from iss3d.core.errors import UserError
from iss3d.train.svr import SVRConfig


@dataclass
class _Inner:
    rate: float = 1.0


@dataclass
class _Outer:
    name: str
    mode: Literal["a", "b"] = "a"
    sizes: list[int] = field(default_factory=list)
    pair: tuple[int, float] = (1, 2.0)
    root: Path | None = None
    inner: _Inner = field(default_factory=_Inner)
    extras: dict[str, int] = field(default_factory=dict)


def test_generic_from_dict():
    cfg = config_lib.from_dict(
        _Outer,
        {
            "name": "x",
            "mode": "b",
            "sizes": [1, 2],
            "pair": [3, 4],
            "root": "out",
            "inner": {"rate": 2},
            "extras": {"k": 1},
        },
        "test config",
    )
    assert cfg == _Outer("x", "b", [1, 2], (3, 4.0), Path("out"), _Inner(2.0), {"k": 1})
    assert isinstance(cfg.inner.rate, float) and isinstance(cfg.pair[1], float)
    assert config_lib.to_dict(cfg)["root"] == "out"
    assert config_lib.from_dict(_Outer, config_lib.to_dict(cfg), "again") == cfg

    cases = [
        ({}, "^missing key 'name' in test config$"),
        ({"name": "x", "mode": "c"}, "'mode' must be one of 'a', 'b', got str 'c'"),
        ({"name": "x", "sizes": [1, "2"]}, "'sizes\\[1\\]' must be an int, got str"),
        ({"name": "x", "sizes": 3}, "'sizes' must be a list, got int 3"),
        ({"name": "x", "pair": [1]}, "'pair' must be a list of 2 values, got 1"),
        ({"name": "x", "inner": {"speed": 1}}, "unknown key 'speed' in test config section"),
        ({"name": "x", "inner": {"rate": "fast"}}, "'rate' must be a number, got str"),
        ({"name": "x", "extras": {"k": None}}, "'extras.k' must be an int, got null"),
        ({"name": None}, "'name' must be a string, got null None"),
    ]
    for d, match in cases:
        with pytest.raises(UserError, match=match) as info:
            config_lib.from_dict(_Outer, d, "test config")
        assert "\n" not in str(info.value)


def test_config_names_and_overrides():
    assert find_config("svr/tiny") == CONFIG_DIR / "svr" / "tiny.yaml"
    assert find_config("svr/paper.yaml") == CONFIG_DIR / "svr" / "paper.yaml"
    assert parse_override("optim.lr=1e-4") == ("optim.lr", 1e-4)
    assert parse_override("run.wandb=") == ("run.wandb", None)
    raw = apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr=2", "run.name=x"], SVRConfig)
    assert raw == {"optim": {"lr": 2}, "run": {"name": "x"}}
    with pytest.raises(UserError, match=r"unknown config key 'loss\.lambda_x'"):
        apply_overrides({}, ["loss.lambda_x=1"], SVRConfig)


def test_an_override_into_a_section_that_is_a_value_is_an_error():
    """``trainer: 5`` in a YAML file with ``trainer.max_steps=2`` on the command line: the 5
    was silently replaced by a fresh section (the broken file ran on defaults)."""
    with pytest.raises(UserError, match=r"'trainer\.max_steps': 'trainer' is int 5 in the config"):
        apply_overrides({"trainer": 5}, ["trainer.max_steps=2"], SVRConfig)
    with pytest.raises(UserError, match=r"'optim' is list \[1, 2\]"):
        apply_overrides({"optim": [1, 2]}, [("optim.lr", 1.0)], SVRConfig)
    raw = apply_overrides({"trainer": None}, ["trainer.max_steps=2"], SVRConfig)
    assert raw == {"trainer": {"max_steps": 2}}  # a null section is an empty one
