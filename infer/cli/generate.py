"""``iss3d generate``: the argument parser (light to import; the work is in infer/generate.py)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

PRESETS = ("tiny", "paper")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "generate",
        help="text -> coloured 3D shape (ISS stage 2): mesh, turntable, report",
        description=(
            "Fine-tune the stage-1 mapper on a prompt by CLIP consistency of rendered views "
            "(ISS stage 2) and export the shape: mesh.glb / mesh.ply with vertex colours, "
            "turntable.gif, views.png (before | after stage 2), report.json, config.yaml. "
            "Models: --stage1 / --clip, else models/pretrained/stage1.ckpt and clip.pt. "
            "Config overrides (KEY=VALUE) go right after the prompt."
        ),
        usage="iss3d generate PROMPT [KEY=VALUE ...] [options]",
    )
    p.add_argument("prompt", help='the text, e.g. "a red chair"')
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides right after the prompt, e.g. stage2.guidance.loss=inner "
        "stage2.lr=3e-4",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder, new or empty (default: generated/<prompt>-seed<S>)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--steps", type=int, default=None, help="stage-2 steps (default: the preset's)")
    p.add_argument("--views", type=int, default=None, help="views rendered per step (preset's)")
    p.add_argument("--res", type=int, default=None, help="render side in pixels (preset's)")
    p.add_argument("--samples", type=int, default=1, help="K different shapes (default 1)")
    p.add_argument(
        "--preset",
        default="tiny",
        help="tiny (CPU, the default), paper (the official settings, GPU), or a YAML file",
    )
    p.add_argument(
        "--stage1", type=Path, default=None, help="stage-1 checkpoint (`iss3d fit stage1`)"
    )
    p.add_argument(
        "--clip",
        default=None,
        help="CLIP spec (default: clip.pt beside the stage-1 checkpoint, else the one it "
        "was trained with)",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=generate_command)


def typed_command(head: list[str], args: argparse.Namespace, flags: tuple[str, ...]) -> str:
    """``head`` + the given ``--flag value`` options that are set + ``--device``,
    ``--no-progress`` and the overrides: the command as typed (for command.txt and reports)."""
    parts = list(head)
    for flag in flags:
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag}", str(value)]
    parts += ["--device", args.device]
    if args.no_progress:
        parts.append("--no-progress")
    return shlex.join(parts + list(args.overrides))


#: Upper bounds of the loop flags: --res 1024 (a 4-view step at 1024 px marches 4M rays),
#: --views 256, --steps 100000, --samples 1000.
LOOP_LIMITS = {"res": 1024, "views": 256, "steps": 100_000, "samples": 1000}


def check_loop_flags(args: argparse.Namespace, positive: tuple[str, ...]) -> None:
    """The numbers of a generate / stylize command line: each of ``positive`` that is set is
    > 0 and at most its :data:`LOOP_LIMITS` bound (what a CPU's memory and a run's time can
    hold), ``--res`` >= 8, ``--seed`` >= 0, ``--device`` known. Raises UserError."""
    from iss3d.core.device import check_device_name
    from iss3d.core.errors import UserError

    for name in positive:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name} must be positive, got {value}")
        limit = LOOP_LIMITS.get(name)
        if value is not None and limit is not None and value > limit:
            raise UserError(f"--{name} must be at most {limit}, got {value}")
    if args.res is not None and args.res < 8:
        raise UserError(f"--res must be at least 8 pixels, got {args.res}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    check_device_name(args.device)


def flag_overrides(args: argparse.Namespace, keys: dict[str, str]) -> list[str | tuple[str, Any]]:
    """The ``key=value`` overrides, then ``(config key, value)`` for each flag of ``keys``
    ({flag: config key}) that is set: flags win over overrides."""
    overrides: list[str | tuple[str, Any]] = list(args.overrides)
    for flag, key in keys.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append((key, value))
    return overrides


def command_line(args: argparse.Namespace) -> str:
    """The generate command as typed."""
    flags = ("out", "seed", "steps", "views", "res", "samples", "preset", "stage1", "clip")
    return typed_command(["iss3d", "generate", args.prompt], args, flags)


def generate_command(args: argparse.Namespace) -> int:
    """Check the cheap things (numbers, prompt, config) first, then run
    :func:`iss3d.infer.generate.generate`."""
    check_loop_flags(args, ("steps", "views", "res", "samples"))

    from iss3d.infer.generate import check_generation_prompt, default_out, generate
    from iss3d.infer.generator import load_generate_config

    prompt = check_generation_prompt(args.prompt)
    keys = {"steps": "stage2.steps", "views": "stage2.views", "res": "stage2.resolution"}
    cfg = load_generate_config(args.preset, flag_overrides(args, keys))
    out = args.out if args.out is not None else default_out(prompt, args.seed)
    return generate(
        prompt,
        cfg,
        out,
        seed=args.seed,
        samples=args.samples,
        stage1=args.stage1,
        clip=args.clip,
        device=args.device,
        progress=not args.no_progress,
        command=command_line(args),
        preset=args.preset,
        check_prompt=False,
        make_parent=args.out is None,
    )
