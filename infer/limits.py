"""Bounds of the numeric flags that size work: past them a command would exhaust the machine's
memory or run for days instead of failing, so they are refused up front, naming the flag."""

from __future__ import annotations

from iss3d.core.errors import UserError

#: Ray samples of a render (DVR tests at 128).
MARCH_STEPS = 1024
#: Side of a rendered image in pixels.
RESOLUTION = 1024
#: Turntable frames of one export (a frame per degree).
TURNTABLE_VIEWS = 360
#: Shapes per (method, prompt) of ``iss3d evaluate``.
SAMPLES = 1000
#: Worker processes of ``iss3d evaluate`` (each loads every model).
WORKERS = 64


def check_range(flag: str, value: int | None, low: int, high: int | None = None) -> None:
    """UserError unless ``value`` (None: not given) lies in [low, high] (no upper bound when
    ``high`` is None)."""
    if value is None:
        return
    if value < low:
        raise UserError(f"{flag} must be at least {low}, got {value}")
    if high is not None and value > high:
        raise UserError(f"{flag} must be at most {high}, got {value}")
