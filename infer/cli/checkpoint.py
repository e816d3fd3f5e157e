"""Checkpoint conversions: ``iss3d slim`` (a training checkpoint reduced to what inference
needs, for shipping models) and ``iss3d import-iss`` (an official ISS stage-1 checkpoint as a
stage-1 file for ``generate``)."""

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

    p = commands.add_parser(
        "import-iss",
        help="convert an official ISS stage-1 checkpoint for `iss3d generate --stage1`",
        description=(
            "Keep the mapper (generator.*) and the decoder (decoder.*) of an ISS stage-1 "
            "checkpoint; the CLIP it used is named by --clip (its weights are not copied)."
        ),
    )
    p.add_argument("checkpoint", type=Path, help="the official ISS stage-1 .pth/.pt file")
    p.add_argument("--out", required=True, type=Path, help="the stage-1 file to write")
    p.add_argument(
        "--clip", default="ViT-B-32:openai", help="the CLIP it was trained with (ViT-B-32:openai)"
    )
    p.set_defaults(run=_import_iss)


def _slim(args: argparse.Namespace) -> int:
    from iss3d.models.checkpoints import slim_checkpoint
    from iss3d.models.loaders import check_checkpoint

    check_checkpoint(args.checkpoint)  # every tensor fits its module, before anything is written
    sizes = slim_checkpoint(args.checkpoint, args.out, half=args.half)
    print(
        f"{args.out}: {sizes['tensors']} tensors, {sizes['bytes_out'] / 1e6:.1f} MB "
        f"(from {sizes['bytes_in'] / 1e6:.1f} MB)"
    )
    return 0


def _import_iss(args: argparse.Namespace) -> int:
    from iss3d.models.loaders import import_iss_checkpoint

    model = import_iss_checkpoint(args.checkpoint, args.out, clip_spec=args.clip)
    m = model.mapper_config
    print(
        f"{args.out}: mapper {m.in_dim} -> {m.out_dim}, decoder h={model.decoder_config.hidden} "
        f"x {model.decoder_config.n_blocks} blocks, CLIP {model.clip_spec}"
    )
    return 0
