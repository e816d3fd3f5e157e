"""``iss3d stylize``: the argument parser (light to import; the work is in infer/stylize.py)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "stylize",
        help="restyle a generated shape with a text: colours only, or shape and colours",
        description=(
            "Fine-tune the decoder of an `iss3d generate` result so that it looks like STYLE "
            "(ISS stylization): --mode texture tunes only the colour branch (the shape stays "
            "exactly the same), --mode shape+texture the whole decoder with a 3D prior loss "
            "towards the initial shape. Writes mesh.glb / mesh.ply, turntable.gif, views.png "
            "(before | after), stylized.pt, report.json (IoU to the initial shape, CLIP "
            "scores), config.yaml into RUN_DIR/style-<style> or --out. Config overrides "
            "(KEY=VALUE) go right after the style."
        ),
        usage="iss3d stylize RUN_DIR STYLE [KEY=VALUE ...] [options]",
    )
    p.add_argument("run_dir", type=Path, help="an `iss3d generate` output folder (or sample_<k>)")
    p.add_argument("style", help='the style text, e.g. "wooden"')
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides right after the style, e.g. stylize.lr=3e-4 stylize.lambda_prior=10",
    )
    p.add_argument(
        "--mode",
        default=None,
        help="texture (colour branch only) or shape+texture (whole decoder + 3D prior loss); "
        "default: the preset's (texture)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder, new or empty (default: RUN_DIR/style-<style>, -shape appended in "
        "shape+texture mode)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--steps", type=int, default=None, help="steps (default: the preset's)")
    p.add_argument("--views", type=int, default=None, help="views rendered per step (preset's)")
    p.add_argument("--res", type=int, default=None, help="render side in pixels (preset's)")
    p.add_argument(
        "--preset",
        default="tiny",
        help="tiny (CPU, the default), paper (GPU), or a YAML file (configs/stylize/)",
    )
    p.add_argument(
        "--stage1",
        type=Path,
        default=None,
        help="stage-1 checkpoint (default: the one RUN_DIR/latent.pt records)",
    )
    p.add_argument(
        "--clip", default=None, help="CLIP spec (default: the one RUN_DIR/latent.pt records)"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=stylize_command)


def command_line(args: argparse.Namespace) -> str:
    """The stylize command as typed."""
    from iss3d.infer.cli.generate import typed_command

    flags = ("mode", "out", "seed", "steps", "views", "res", "preset", "stage1", "clip")
    return typed_command(["iss3d", "stylize", str(args.run_dir), args.style], args, flags)


def stylize_command(args: argparse.Namespace) -> int:
    """Check the cheap things (numbers, mode, style, config, run folder) first, then run
    :func:`iss3d.infer.stylize.stylize`."""
    from iss3d.core.errors import UserError
    from iss3d.infer.cli.generate import check_loop_flags, flag_overrides

    check_loop_flags(args, ("steps", "views", "res"))

    from iss3d.infer.stylize import MODES, check_style, load_stylize_config, stylize

    if args.mode is not None and args.mode not in MODES:
        raise UserError(f"--mode must be texture or shape+texture, got {args.mode!r}")
    check_style(args.style)
    keys = {
        "steps": "stylize.steps",
        "views": "stylize.views",
        "res": "stylize.resolution",
        "mode": "stylize.mode",
    }
    cfg = load_stylize_config(args.preset, flag_overrides(args, keys))
    return stylize(
        args.run_dir,
        args.style,
        cfg,
        args.out,
        seed=args.seed,
        stage1=args.stage1,
        clip=args.clip,
        device=args.device,
        progress=not args.no_progress,
        command=command_line(args),
        preset=args.preset,
        check_text=False,
    )
