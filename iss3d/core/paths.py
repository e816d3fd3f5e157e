"""The files a command reads, checked before anything opens them."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from iss3d.core.errors import UserError

__all__ = ["input_file", "name_taken", "read_json"]


def input_file(path: str | os.PathLike, what: str = "a file") -> Path:
    """``path`` as a Path, if it is a regular file a command may open (``what``: how errors
    name the file expected, with its article: "an HDF5 file").

    A FIFO, socket or device would block the reader or never end, so they are refused like a
    folder or a missing file.

    Raises:
        UserError: ``<path>: no such file``, ``is a folder, expected <what>``, or ``is not a
            regular file (a FIFO, socket or device); expected <what>``.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise UserError(f"{p}: no such file") from None
    except OSError as err:
        raise UserError(f"{p}: cannot read ({err.strerror or err})") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{p}: is a folder, expected {what}")
    if not stat.S_ISREG(mode):
        raise UserError(f"{p}: is not a regular file (a FIFO, socket or device); expected {what}")
    return p


def name_taken(path: str | os.PathLike) -> bool:
    """Whether anything has the name ``path``: a file, a folder, a FIFO, a broken link
    (``Path.exists()`` alone says False for a broken link)."""
    p = Path(path)
    return p.exists() or p.is_symlink()


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON of ``path`` (``what``: what it should be, for the error when it cannot
    be read); UserError naming the file when it is missing, not a file, not UTF-8 or not JSON."""
    path = input_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to be {what}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read ({' '.join(str(err).split())})") from None
