"""``iss3d fit clip``: the command-line side of CLIP training (the work is in train/clip.py).

Registered from train/commands.py; nothing heavy is imported until the command runs.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from data.errors import UserError


def register_fit(sub: argparse._SubParsersAction) -> None:
    """Add ``clip`` to the ``iss3d fit`` subcommands."""
    p = sub.add_parser(
        "clip",
        help="train a small CLIP contrastively on (view, caption) pairs of a multi-view dataset",
        description=(
            "Train a small open_clip model (configs/clip/*.json) on the views and captions of a "
            "dataset; validates zero-shot top-1 and text->image R@1, and writes DIR/clip.pt. "
            "Overrides are key.sub=value pairs, e.g. optim.lr=5e-4 trainer.max_steps=2000."
        ),
    )
    p.add_argument(
        "--config", required=True, help="YAML config: a path or a name such as clip/tiny"
    )
    p.add_argument("--data", type=Path, default=None, help="dataset .h5 with captions (data.path)")
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (default runs/clip-<name>-<time>)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from checkpoints/last.ckpt (same config; "
        "only trainer.max_steps may change)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and CI)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(run=_fit_clip)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["iss3d", "fit", "clip", "--config", str(args.config)]
    if args.data is not None:
        parts += ["--data", str(args.data)]
    if args.out is not None:
        parts += ["--out", str(args.out)]
    if args.resume:
        parts.append("--resume")
    if args.no_progress:
        parts.append("--no-progress")
    return shlex.join(parts + list(args.overrides))


def _fit_clip(args: argparse.Namespace) -> int:
    from train import runs
    from train.clip import ClipConfig, fit_clip

    overrides: list = list(args.overrides)
    if args.data is not None:
        overrides.append(("data.path", str(args.data)))
    raw = runs.apply_overrides(runs.read_yaml(runs.find_config(args.config)), overrides, ClipConfig)
    if not isinstance(raw.get("data"), dict) or raw["data"].get("path") in (None, ""):
        raise UserError("no dataset: give --data FILE (or data.path in the config)")
    cfg = ClipConfig.from_dict(raw)
    if args.resume and args.out is None:
        raise UserError("--resume needs --out (the run folder to continue)")
    return fit_clip(cfg, args.out, _command_line(args), args.resume, not args.no_progress)
