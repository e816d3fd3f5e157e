"""The files a command reads, checked before anything opens them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from iss3d.core.errors import UserError

__all__ = ["input_file"]


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
