"""The ``iss3d`` command line: subcommands, one-line errors, clean interrupts."""

from __future__ import annotations

import argparse
import sys

from iss3d.core.errors import UserError
from iss3d.infer import (
    checkpoint_commands,
    clip_commands,
    data_commands,
    evaluate_commands,
    gallery,
    generate_commands,
    stage1_commands,
    stylize_commands,
    svr_commands,
)
from iss3d.train import commands as train_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iss3d",
        description="Text to coloured 3D shapes the ISS way: train, generate, evaluate",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_commands.register(commands)
    train_commands.register(commands)
    svr_commands.register(commands)
    clip_commands.register(commands)
    stage1_commands.register(commands)
    generate_commands.register(commands)
    stylize_commands.register(commands)
    checkpoint_commands.register(commands)
    gallery.register(commands)
    evaluate_commands.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one line to stderr and return 2, Ctrl-C returns 130."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as err:
        print(f"iss3d: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("iss3d: interrupted; no partial outputs were kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
