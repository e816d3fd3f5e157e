"""``iss3d eval stage1``: the mapper's fit and the text shapes of a stage-1 checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iss3d.infer import limits
from iss3d.infer.limits import check_range


def register_eval(sub: argparse._SubParsersAction) -> None:
    """Add ``stage1`` to the ``iss3d eval`` group."""
    p = sub.add_parser(
        "stage1",
        help="mapper fit (cos, IoU ratio), text IoU and background whiteness on a split",
        description=(
            "Stage-1 validation over a whole split: cosine(M(f_I), E_S(I)), IoU of the shapes "
            "from E_S(I), M(f_I) and M(f_T) of each object's first caption, and the whiteness "
            "of rendered backgrounds."
        ),
    )
    p.add_argument("checkpoint", type=Path, help="a .ckpt written by `iss3d fit stage1`")
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="multi-view HDF5 (volumetric IoU where it has occupancy, exact or carved)",
    )
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--clip", default=None, help="CLIP spec (default: the checkpoint's)")
    p.add_argument("--n-steps", type=int, default=64, help="march steps of the renders")
    p.add_argument("--render-objects", type=int, default=8, help="objects rendered in full")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.set_defaults(run=_eval_stage1)


def _eval_stage1(args) -> int:
    from iss3d.core.atomic import check_output_path, write_json_report
    from iss3d.core.device import resolve_device
    from iss3d.core.paths import input_file
    from iss3d.data.carve import GROUND_TRUTH_NAMES
    from iss3d.infer.stage1_eval import evaluate_stage1

    check_range("--n-steps", args.n_steps, 2, limits.MARCH_STEPS)
    check_range("--render-objects", args.render_objects, 0)
    if args.out:
        check_output_path(args.out)  # before the work, not after it
    input_file(args.checkpoint, "a stage-1 checkpoint")  # (a name too long for is_file())
    device, note = resolve_device(args.device)
    result = evaluate_stage1(
        args.checkpoint,
        args.data,
        args.split,
        args.clip,
        args.n_steps,
        args.render_objects,
        device,
    )
    if note:  # with the results: evaluate_stage1 checks its inputs as it goes, and a failed
        # command prints a single line
        print(f"iss3d: {note}", file=sys.stderr)
    print(f"{'split':>15}: {result['split']} ({result['objects']} objects)")
    print(f"{'truth':>15}: {GROUND_TRUTH_NAMES[result['ground_truth']]}")
    for key, value in result["means"].items():
        print(f"{key:>15}: {value:.4f}")
    if args.out:
        write_json_report(args.out, result)
    return 0
