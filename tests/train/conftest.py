"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from iss3d.infer.cli import main
from tests.train.test_same_seed import _argv


@pytest.fixture(scope="session")
def svr(tiny_world, tmp_path_factory) -> Path:
    """A 2-step tiny SVR checkpoint (what ``fit stage1`` starts from), built once per worker."""
    out = tmp_path_factory.mktemp("svr") / "run"
    assert main(_argv("svr", tiny_world, out, None)) == 0
    return out / "checkpoints" / "last.ckpt"
