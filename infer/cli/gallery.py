"""``iss3d gallery``: one picture of several ``iss3d generate`` outputs (prompt + turntable)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from iss3d.core.errors import UserError


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``gallery`` command to the ``iss3d`` parser."""
    p = commands.add_parser(
        "gallery",
        help="tile the turntables of generate outputs into one PNG, one row per prompt",
    )
    p.add_argument("runs", nargs="+", type=Path, help="output folders of `iss3d generate`")
    p.add_argument("--out", required=True, type=Path, help="the PNG to write")
    p.add_argument("--frames", type=int, default=6, help="turntable frames per row (default 6)")
    p.set_defaults(run=_gallery)


def turntable_row(run: Path, frames: int) -> tuple[str, list]:
    """(prompt, up to ``frames`` evenly spread frames) of one generate output folder.

    Raises:
        UserError: not a generate output (no report.json / turntable.png).
    """
    from PIL import Image

    report, strip = run / "report.json", run / "turntable.png"
    if not report.is_file() or not strip.is_file():
        raise UserError(f"{run}: not an `iss3d generate` output (no report.json / turntable.png)")
    prompt = str(json.loads(report.read_text()).get("prompt", run.name))
    image = Image.open(strip)
    side = image.height
    count = image.width // side
    picks = sorted({round(i * count / frames) % count for i in range(frames)})
    return prompt, [image.crop((k * side, 0, (k + 1) * side, side)) for k in picks]


def _gallery(args: argparse.Namespace) -> int:
    from iss3d.core.atomic import atomic_output
    from iss3d.data.images import labelled_grid

    if not 1 <= args.frames <= 360:
        raise UserError(f"--frames must be between 1 and 360, got {args.frames}")
    rows = [turntable_row(run, args.frames) for run in args.runs]
    sheet = labelled_grid(rows, cell=96)
    with atomic_output(args.out) as tmp:
        sheet.save(tmp, format="PNG")
    print(f"wrote {args.out} ({len(rows)} prompts)")
    return 0
