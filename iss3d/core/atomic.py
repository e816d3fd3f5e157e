"""Write outputs under a temporary name and rename them into place only when complete, and
write strict JSON (``null`` where a number is NaN or infinite, never ``NaN`` / ``Infinity``)."""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from iss3d.core.errors import UserError


def temporary_sibling(path: Path) -> Path:
    """A unique temporary path in the same folder as ``path`` (so a rename is atomic), named
    ``.<name>.tmp-<pid>-<random>``; leftovers of processes that no longer exist (killed with
    SIGKILL, a lost machine) are removed first."""
    remove_stale_temporaries(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_temporaries(path: Path) -> None:
    """Remove ``.<name>.tmp-<pid>-*`` siblings of ``path`` whose process is gone on this
    machine."""
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.tmp-*-*"):
        pid = leftover.name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if not pid.isdigit() or _process_alive(int(pid)):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                leftover.unlink()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


#: Bytes of a name the temporary sibling adds (".", ".tmp-<pid>-<8 hex>").
_TEMP_SUFFIX = 32


def check_output_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path, if an output can be written there: a name the file system takes
    (with room for the temporary sibling's suffix) in an existing, writable folder. For checking
    a command's outputs before its work.

    Raises:
        UserError: the name is too long, the folder does not exist, is not writable or
            refuses files.
    """
    final = Path(path)
    folder = final.parent
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX") if folder.is_dir() else 255
    except OSError:
        limit = 255
    size = len(os.fsencode(final.name))
    if size + _TEMP_SUFFIX > limit:
        raise UserError(
            f"{str(final)[:60]}...: file name too long ({size} bytes; at most "
            f"{limit - _TEMP_SUFFIX} here)"
        )
    if not folder.is_dir():
        raise UserError(f"{folder}: output folder does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{folder}: output folder is not writable")
    _probe(final)
    return final


def _probe(final: Path) -> None:
    """Create and remove a temporary sibling of ``final``: a folder that access() calls
    writable can still refuse files (/proc, /sys, a full or read-only file system), and that
    should stop a command before its work, not after."""
    probe = temporary_sibling(final)
    _created(probe.touch, final)
    with contextlib.suppress(OSError):
        probe.unlink()


def _created(make, final: Path) -> None:
    """Run ``make()`` (creating the temporary sibling); an OSError (a file system that refuses
    files, like /proc) is a UserError naming ``final``."""
    try:
        make()
    except OSError as err:
        raise UserError(f"{final}: cannot write here ({err.strerror or err})") from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it to ``path`` if the block succeeds.

    ``path`` may be an existing regular file (it is replaced), never a folder, FIFO or device.
    On any exception (including KeyboardInterrupt) the temporary file is removed and
    ``path`` is left untouched, so no half-written output ever appears under its name.
    """
    final = check_output_path(path)
    if final.is_dir():
        raise UserError(f"{final}: is a folder, expected a file path")
    if final.exists() and not final.is_file():
        raise UserError(
            f"{final}: exists and is not a regular file (a FIFO, socket or device); "
            "not replacing it"
        )
    tmp = temporary_sibling(final)
    _created(tmp.touch, final)
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
    final = check_output_path(path)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise UserError(f"{final}: already exists and is not an empty folder")
    tmp = temporary_sibling(final)
    _created(tmp.mkdir, final)
    try:
        yield tmp
        try:
            if final.exists():
                final.rmdir()
            os.replace(tmp, final)
        except OSError:
            raise UserError(
                f"{final}: another run wrote it while this one ran; that run's outputs are kept, "
                "this one's were discarded"
            ) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def json_ready(value: Any) -> Any:
    """``value`` as strict JSON can hold it: every non-finite float (NaN, +-inf) becomes None,
    numpy scalars and arrays become Python numbers and lists, tuples become lists, through
    nested dicts, lists and tuples; anything else is returned as it is."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, np.ndarray | np.generic):
        return json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(data: Any, **options: Any) -> str:
    """Strict JSON text of ``data`` (:func:`json_ready` first, so never ``NaN`` or
    ``Infinity``); ``options`` (indent, sort_keys, ...) go to :func:`json.dumps`."""
    return json.dumps(json_ready(data), allow_nan=False, **options)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` to ``path`` atomically as strict, indented UTF-8 JSON (:func:`json_text`)
    with a final newline."""
    text = json_text(data, indent=2, ensure_ascii=False) + "\n"
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_report(path: str | os.PathLike, result: dict) -> None:
    """Write ``result`` with :func:`write_json` and say so on stdout (the ``--out`` of the
    ``iss3d eval`` commands)."""
    write_json(path, result)
    print(f"wrote {path}")
