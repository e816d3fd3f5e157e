"""``iss3d slim``: a training checkpoint reduced to what inference needs (for shipping models)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``slim`` command to the ``iss3d`` parser."""
    p = commands.add_parser(
        "slim",
        help="drop the optimizer state of a training checkpoint (optionally store float16)",
        description=(
            "Write the weights and hyperparameters of a checkpoint from `iss3d fit svr` or "
            "`iss3d fit stage1`; the result loads for export and generation, not for --resume."
        ),
    )
    p.add_argument("checkpoint", type=Path, help="a .ckpt written by an `iss3d fit` command")
    p.add_argument("--out", required=True, type=Path, help="the output file")
    p.add_argument("--half", action="store_true", help="store floating-point weights as float16")
    p.set_defaults(run=_slim)


def _slim(args: argparse.Namespace) -> int:
    from models.checkpoints import slim_checkpoint

    sizes = slim_checkpoint(args.checkpoint, args.out, half=args.half)
    print(
        f"{args.out}: {sizes['tensors']} tensors, {sizes['bytes_out'] / 1e6:.1f} MB "
        f"(from {sizes['bytes_in'] / 1e6:.1f} MB)"
    )
    return 0
