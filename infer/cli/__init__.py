"""The ``iss3d`` command line: subcommands, one-line errors, clean interrupts.

One file per command group: ``data`` (build, import, check datasets), ``fit`` (training),
``svr`` (``export``, ``eval svr``), ``clip`` (``eval clip``), ``stage1`` (``eval stage1``),
``generate``, ``stylize``, ``checkpoint`` (``slim``, ``import-iss``), ``gallery``,
``evaluate``. Each adds its commands with ``register(commands)``, and its ``iss3d eval``
subcommand with ``register_eval(eval_commands)``; a command's work is imported when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading

from iss3d.core.errors import UserError
from iss3d.infer.cli import (
    checkpoint,
    clip,
    data,
    evaluate,
    fit,
    gallery,
    generate,
    stage1,
    stylize,
    svr,
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``iss3d: error: <message> (see iss3d <command> -h)``,
    exit status 2 (sub-command parsers are made of the same class)."""

    def error(self, message: str):
        self.exit(2, f"iss3d: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="iss3d",
        description="Text to coloured 3D shapes the ISS way: train, generate, evaluate",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.register(commands)
    fit.register(commands)
    group = commands.add_parser("eval", help="evaluate a trained model")
    eval_commands = group.add_subparsers(dest="eval_command", required=True, metavar="MODEL")
    for module in (svr, clip, stage1):
        module.register_eval(eval_commands)
    svr.register(commands)
    generate.register(commands)
    stylize.register(commands)
    checkpoint.register(commands)
    gallery.register(commands)
    evaluate.register(commands)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, so that it unwinds like Ctrl-C: every output
    being written is removed (outputs are written to a temporary name, then renamed)."""


def _terminate(signum, frame) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_unwinds():
    """SIGTERM raises :class:`Terminated` while the command runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: OSErrors that only a path the user gave can cause (``Path.exists()`` and friends raise
#: them rather than answer False): reported like a UserError, naming the path.
PATH_ERRNOS = (errno.ENAMETOOLONG, errno.ELOOP)


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one line to stderr and return 2, Ctrl-C returns 130
    and SIGTERM 143, with nothing half-written left behind."""
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_unwinds():
            return int(args.run(args) or 0)
    except UserError as err:
        print(f"iss3d: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in PATH_ERRNOS or err.filename is None:
            raise
        print(f"iss3d: error: {os.fsdecode(err.filename)}: {err.strerror}", file=sys.stderr)
        return 2
    except Terminated:
        print("iss3d: terminated; no partial outputs were kept", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("iss3d: interrupted; no partial outputs were kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
