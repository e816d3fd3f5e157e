"""Files installed with the package: the YAML presets and the shipped weights.

Read through the package (``importlib.resources``), so they are found the same way from an
editable install of the checkout and from an installed wheel.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["config_dir", "pretrained_dir"]


def config_dir() -> Path:
    """The ``configs/`` folder (``iss3d.configs``): one sub-folder of YAML presets per stage."""
    return Path(str(files("iss3d.configs")))


def pretrained_dir() -> Path:
    """The shipped weights' folder, ``models/pretrained/`` (stage1.ckpt, clip.pt, ...)."""
    return Path(str(files("iss3d.models") / "pretrained"))
