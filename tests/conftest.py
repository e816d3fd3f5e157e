"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from iss3d.data.synth.build import SynthConfig, synthesize

TINY_WORLD = SynthConfig(
    objects=12, views=6, res=32, surface_points=2048, occ_uniform=256, occ_near=256, seed=0
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need CUDA: skipped (with the reason) where there is none."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marker gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist every worker gets one torch thread: the workers already fill the
    cores, and oversubscribed threads make small-tensor work several times slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic multi-view HDF5 file (12 objects x 6 views at 32 px, with depth).

    Built once per test session (per xdist worker); treat it as read-only.
    """
    path = tmp_path_factory.mktemp("tiny_world") / "world.h5"
    return synthesize(path, TINY_WORLD, workers=1, progress=False)
