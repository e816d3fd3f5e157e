"""Write outputs under a temporary name and rename them into place only when complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from data.errors import UserError


def temporary_sibling(path: Path) -> Path:
    """A unique temporary path in the same folder as ``path`` (so a rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def _check_output_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise UserError(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{folder}: output folder is not writable")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it to ``path`` if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary file is removed and
    ``path`` is left untouched, so no half-written output ever appears under its name.
    """
    final = Path(path)
    if final.is_dir():
        raise UserError(f"{final}: is a folder, expected a file path")
    _check_output_folder(final.parent)
    tmp = temporary_sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder to fill; it becomes ``path`` only if the block succeeds.

    ``path`` must not exist, or be an empty folder. On any exception the temporary folder and
    everything in it are removed, so a half-finished set of outputs never appears.
    """
    final = Path(path)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise UserError(f"{final}: already exists and is not an empty folder")
    _check_output_folder(final.parent)
    tmp = temporary_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            final.rmdir()
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_json_report(path: str | os.PathLike, result: dict) -> None:
    """Write ``result`` as indented JSON to ``path`` atomically and say so on stdout (the
    ``--out`` of the ``iss3d eval`` commands)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
