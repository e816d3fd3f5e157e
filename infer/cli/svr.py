"""``iss3d eval svr`` and ``iss3d export``: measure and use a trained SVR model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iss3d.infer import limits
from iss3d.infer.limits import check_range


def register_eval(sub: argparse._SubParsersAction) -> None:
    """Add ``svr`` to the ``iss3d eval`` group."""
    p = sub.add_parser("svr", help="single-view IoU, mask IoU and depth error of an SVR checkpoint")
    p.add_argument("checkpoint", type=Path, help="a .ckpt written by `iss3d fit svr`")
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="multi-view HDF5 (volumetric IoU where it has occupancy, exact or carved)",
    )
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--input-views", type=int, default=1, help="input views per object (default 1)")
    p.add_argument(
        "--n-steps", type=int, default=128, help="ray samples when rendering (default 128)"
    )
    p.add_argument("--max-objects", type=int, default=None, help="only the first N objects")
    p.add_argument("--out", type=Path, default=None, help="write the full results as JSON here")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.set_defaults(run=_eval_svr)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``export`` command to the ``iss3d`` parser."""
    p = commands.add_parser(
        "export", help="reconstruct one object with an SVR model: mesh + turntable"
    )
    p.add_argument("checkpoint", type=Path, help="a .ckpt written by `iss3d fit svr`")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="an input image (RGB/RGBA, the training size)")
    source.add_argument("--object", help="an object id in --data")
    p.add_argument("--data", type=Path, help="multi-view HDF5 holding --object")
    p.add_argument("--view", type=int, default=0, help="which view of --object is the input")
    p.add_argument(
        "--out", required=True, type=Path, help="output folder (must not exist or be empty)"
    )
    p.add_argument("--resolution", type=int, default=128, help="turntable image size (default 128)")
    p.add_argument("--turntable-views", type=int, default=12)
    p.add_argument("--mesh-resolution", type=int, default=256, choices=[64, 128, 256, 512])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.set_defaults(run=_export)


def _eval_svr(args) -> int:
    from iss3d.core.atomic import check_output_path, write_json_report
    from iss3d.core.device import resolve_device
    from iss3d.data.carve import GROUND_TRUTH_NAMES
    from iss3d.data.reader import MultiViewFile
    from iss3d.infer.svr import evaluate_svr
    from iss3d.models.loaders import load_svr

    check_range("--input-views", args.input_views, 1)
    check_range("--n-steps", args.n_steps, 2, limits.MARCH_STEPS)
    check_range("--max-objects", args.max_objects, 1)
    if args.out:
        check_output_path(args.out)  # before the work, not after it
    device, note = resolve_device(args.device)
    model = load_svr(args.checkpoint, device)
    with MultiViewFile(args.data) as mv:
        if note:
            print(f"iss3d: {note}", file=sys.stderr)
        result = evaluate_svr(
            model, mv, args.split, args.input_views, args.n_steps, device, args.max_objects
        )
    result["checkpoint"] = str(args.checkpoint)
    result["data"] = str(args.data)
    means = result["means"]
    views = result["input_views"]
    print(f"{'split':>10}: {result['split']} ({result['objects']} objects x {views} input views)")
    for key, value in means.items():
        print(f"{key:>10}: {value:.4f}")
    print(f"{'truth':>10}: {GROUND_TRUTH_NAMES[result['ground_truth']]}")
    main = "iou" if "iou_per_category" in result else "mask_iou"
    for category, value in result[f"{main}_per_category"].items():
        print(f"{main + ' ' + category:>18}: {value:.4f}")
    if args.out:
        write_json_report(args.out, result)
    return 0


def _export(args) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from iss3d.core.atomic import atomic_directory, check_output_path, write_json
    from iss3d.core.device import resolve_device
    from iss3d.core.errors import UserError
    from iss3d.data.reader import MultiViewFile
    from iss3d.infer.export import render_turntable, save_turntable
    from iss3d.infer.shape_files import write_mesh
    from iss3d.infer.svr import image_tensor
    from iss3d.models.loaders import load_svr
    from iss3d.models.march import MarchConfig
    from iss3d.models.mesh import MeshConfig, extract_mesh
    from iss3d.models.renderer import Renderer

    check_range("--resolution", args.resolution, 8, limits.RESOLUTION)
    check_range("--turntable-views", args.turntable_views, 1, limits.TURNTABLE_VIEWS)
    out = check_output_path(args.out)  # before minutes of meshing, not after
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not an empty folder")
    device, note = resolve_device(args.device)
    model = load_svr(args.checkpoint, device)
    if args.image is not None:
        image = image_tensor(args.image, model)
        source = str(args.image)
    else:
        if args.data is None:
            raise UserError("--object needs --data FILE")
        with MultiViewFile(args.data) as mv:
            matches = np.flatnonzero(mv.object_ids == args.object)
            if len(matches) == 0:
                raise UserError(f"{args.data}: no object with id {args.object!r}")
            views = mv.views_of(int(matches[0]))
            if not 0 <= args.view < len(views):
                raise UserError(f"--view must be in [0, {len(views) - 1}] for {args.object}")
            rgb = mv.read_rgb(int(views[args.view]))
        image = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0)[None]
        source = f"{args.data}:{args.object}:view {args.view}"
    if note:
        print(f"iss3d: {note}", file=sys.stderr)
    c = model.encode(image.to(device))
    mesh = extract_mesh(
        model.decoder,
        c,
        MeshConfig(resolution0=32, upsampling_steps=int(np.log2(args.mesh_resolution // 32))),
    )
    frames = render_turntable(
        model.decoder,
        c,
        Renderer(MarchConfig(n_steps=128, method="grid")),
        args.turntable_views,
        args.resolution,
    )
    with atomic_directory(args.out) as folder:
        write_mesh(mesh, folder, ("ply", "obj", "glb"))
        save_turntable(frames, folder)
        Image.fromarray((image[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)).save(
            folder / "input.png"
        )
        info = {
            "checkpoint": str(args.checkpoint),
            "source": source,
            "vertices": len(mesh.vertices),
            "faces": len(mesh.faces),
        }
        write_json(folder / "info.json", info)
    print(f"wrote {args.out} (mesh.ply/.obj/.glb, turntable.png/.gif, {len(mesh.faces)} faces)")
    return 0
