"""The torch device a command runs on: ``--device auto|cpu|cuda`` resolved in one place.

``auto`` takes CUDA when it is available, else the CPU; ``cuda`` without CUDA falls back to the
CPU. Either fallback comes with a note for the command to print, so a run on the CPU never
happens unannounced. Any other name is a one-line UserError that names the flag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iss3d.core.errors import UserError

if TYPE_CHECKING:
    import torch

#: The names ``--device`` accepts.
DEVICE_NAMES = ("auto", "cpu", "cuda")

__all__ = ["DEVICE_NAMES", "check_device_name", "resolve_device"]


def check_device_name(name: str, flag: str = "--device") -> None:
    """Raise UserError (naming ``flag``) unless ``name`` is one of :data:`DEVICE_NAMES`.

    Cheap (imports no torch): for checking a command line before anything is loaded.
    """
    if name not in DEVICE_NAMES:
        raise UserError(f"{flag} must be cpu, cuda or auto, got {name!r}")


def resolve_device(name: str, flag: str = "--device") -> tuple[torch.device, str | None]:
    """``cpu``, ``cuda`` or ``auto`` -> (the device, a note to print when it runs on the CPU
    though CUDA was asked for or ``auto`` found none; None otherwise).

    The caller prints the note (``iss3d: <note>`` on stderr) once its inputs have loaded, so
    that a failing command still prints a single error line.

    Raises:
        UserError: another name (``--device must be cpu, cuda or auto, got 'tpu'``).
    """
    import torch

    check_device_name(name, flag)
    if name == "cpu":
        return torch.device("cpu"), None
    if torch.cuda.is_available():
        return torch.device("cuda"), None
    if name == "cuda":
        return torch.device("cpu"), "CUDA is not available, running on the CPU"
    return torch.device("cpu"), "no CUDA device found, running on the CPU"
