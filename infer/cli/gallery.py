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
        UserError: not a generate output (no report.json / turntable.png), a report that is
            not a JSON object, a turntable strip that is not an image of square frames.
    """
    from PIL import Image

    from iss3d.data.images import read_image

    report, strip = run / "report.json", run / "turntable.png"
    if not report.is_file() or not strip.is_file():
        raise UserError(f"{run}: not an `iss3d generate` output (no report.json / turntable.png)")
    prompt = report_prompt(report, default=run.name)
    image = Image.fromarray(read_image(strip))
    side = image.height
    count = image.width // side
    if count == 0:
        raise UserError(f"{strip}: {image.width}x{side} pixels is not a strip of square frames")
    picks = sorted({round(i * count / frames) % count for i in range(frames)})
    return prompt, [image.crop((k * side, 0, (k + 1) * side, side)) for k in picks]


def report_prompt(report: Path, default: str) -> str:
    """The ``prompt`` of a generate ``report.json`` (``default`` when it has none).

    Raises:
        UserError: the file is not UTF-8 JSON holding an object.
    """
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise UserError(f"{report}: not a readable JSON report ({reason[:80]})") from None
    except OSError as err:
        raise UserError(f"{report}: cannot read ({err.strerror or err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{report}: not an `iss3d generate` report (expected a JSON object)")
    return str(data.get("prompt", default))


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
