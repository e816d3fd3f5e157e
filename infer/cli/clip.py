"""``iss3d eval clip``: zero-shot accuracy and text -> image retrieval of a CLIP model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register_eval(sub: argparse._SubParsersAction) -> None:
    """Add ``clip`` to the ``iss3d eval`` group."""
    p = sub.add_parser(
        "clip",
        help="zero-shot top-1 and text->image R@1 of a CLIP model on a dataset split",
        description=(
            "Classify every view of a split among one prompt per class (on the synthetic world: "
            "every colour x category pair, 'a red chair') and retrieve views from the prompts."
        ),
    )
    p.add_argument(
        "checkpoint",
        help="a CLIP spec: DIR/clip.pt or last.ckpt of `iss3d fit clip`, 'ViT-B-32:<tag or "
        "weights file>', or 'clip/<config>' (random weights)",
    )
    p.add_argument("--data", required=True, type=Path, help="multi-view HDF5 with captions")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--views", type=int, default=None, help="views per object (default all)")
    p.add_argument("--max-objects", type=int, default=None, help="only the first N objects")
    p.add_argument("--batch-size", type=int, default=256, help="views per batch (default 256)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.set_defaults(run=_eval_clip)


def _eval_clip(args) -> int:
    from iss3d.core.atomic import check_output_path, write_json_report
    from iss3d.core.device import resolve_device
    from iss3d.core.errors import UserError
    from iss3d.data.reader import MultiViewFile
    from iss3d.models.clip import load_clip
    from iss3d.train.clip import zero_shot_accuracy

    if args.out:
        check_output_path(args.out)  # before the work, not after it
    for name in ("views", "max_objects", "batch_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
    device, note = resolve_device(args.device)
    clip = load_clip(args.checkpoint, device)
    with MultiViewFile(args.data) as mv:
        if note:
            print(f"iss3d: {note}", file=sys.stderr)
        result = zero_shot_accuracy(
            clip, mv, args.split, args.views, args.batch_size, args.max_objects
        )
    result = {"checkpoint": str(args.checkpoint), "data": str(args.data), **result}
    result["trained"] = clip.trained
    result["info"] = {k: v for k, v in clip.info.items() if isinstance(v, str | int | float)}
    print(f"{'split':>18}: {result['split']} ({result['objects']} objects, {result['n']} views)")
    example = result["prompts_example"][0]
    print(f"{'classes':>18}: {result['classes']} ({result['kind']}, e.g. {example!r})")
    for key in ("top1", "text_to_image_r1", "colour_acc", "category_acc", "top1_held_out"):
        if key in result:
            print(f"{key:>18}: {result[key]:.4f}")
    for category, value in result["top1_per_category"].items():
        print(f"{'top1 ' + category:>18}: {value:.4f}")
    if not clip.trained:
        print("note: random weights (an untrained config), expect chance level")
    if args.out:
        write_json_report(args.out, result)
    return 0
