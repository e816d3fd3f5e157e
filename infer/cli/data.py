"""``iss3d data ...``: build, import, check, describe and look at multi-view datasets."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="build, import, check and inspect datasets")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = sub.add_parser("synth", help="build a synthetic shape world dataset")
    p.add_argument("--out", required=True, type=Path, help="output .h5 file")
    p.add_argument("--objects", type=int, default=100, help="number of objects (default 100)")
    p.add_argument("--views", type=int, default=24, help="views per object (default 24)")
    p.add_argument("--res", type=int, default=64, help="image size in pixels (default 64)")
    p.add_argument(
        "--seed", type=int, default=0, help="random seed; same seed, same file (default 0)"
    )
    p.add_argument("--distance", type=float, default=1.8, help="camera distance (default 1.8)")
    p.add_argument(
        "--surface-points", type=int, default=4096, help="ground-truth surface points per object"
    )
    p.add_argument(
        "--occ-points",
        type=int,
        default=8192,
        help="uniform (and as many near-surface) occupancy samples",
    )
    p.add_argument("--workers", type=int, default=0, help="processes (default: one per core)")
    p.set_defaults(run=_synth)

    p = sub.add_parser("check", help="validate a dataset file (exit 0 when valid)")
    p.add_argument("file", type=Path)
    p.set_defaults(run=_check)

    p = sub.add_parser("info", help="summarise a dataset file")
    p.add_argument("file", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=_info)

    p = sub.add_parser("sheet", help="contact sheet PNG of views with captions")
    p.add_argument("file", type=Path)
    p.add_argument("-o", "--out", required=True, type=Path, help="output image (.png or .jpg)")
    p.add_argument("--objects", type=int, default=12, help="rows (default 12)")
    p.add_argument("--views", type=int, default=6, help="columns (default 6)")
    p.add_argument(
        "--split", choices=["train", "val", "test"], default=None, help="only this split"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_sheet)

    p = sub.add_parser("import-dvr", help="import DVR's ShapeNet render layout")
    p.add_argument(
        "root", type=Path, help="folder with <synset>/<model>/{image,mask,depth,cameras.npz}"
    )
    p.add_argument("--out", required=True, type=Path, help="output .h5 file")
    p.add_argument(
        "--categories", default=None, help="comma-separated synset ids to import (default all)"
    )
    p.add_argument(
        "--input-views", action="store_true", help="also import img_choy2016 input views"
    )
    p.add_argument(
        "--occ-points",
        type=int,
        default=16384,
        help="occupancy points kept per object from ONet's points.npz (default 16384; 0: none)",
    )
    p.add_argument(
        "--surface-points",
        type=int,
        default=4096,
        help="surface points kept per object from pointcloud.npz (default 4096; 0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of those subsets (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_import_dvr)

    p = sub.add_parser(
        "import-folder",
        help="import a folder of images with masks (or alpha) and a cameras.json",
        description="Import images, masks and a cameras.json (layout and camera conventions: "
        "docs/FORMAT.md, 'Importing your own renders').",
    )
    p.add_argument("root", type=Path, help="the folder holding cameras.json")
    p.add_argument("--out", required=True, type=Path, help="output .h5 file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_import_folder)

    p = sub.add_parser(
        "export-folder",
        help="write a dataset file as the folder layout import-folder reads",
        description="Write FILE's views as RGBA PNGs (alpha: the mask) with a cameras.json "
        "(OpenCV cameras, pixel intrinsics, categories, splits, captions) into a new folder.",
    )
    p.add_argument("file", type=Path, help="a dataset file (.h5)")
    p.add_argument("--out", required=True, type=Path, help="a new (or empty) folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_export_folder)

    p = sub.add_parser(
        "carve",
        help="add 3D ground truth carved from the masks (a visual hull) to a file without it",
    )
    p.add_argument("file", type=Path, help="a dataset file (.h5)")
    p.add_argument("--out", type=Path, default=None, help="write a carved copy (default: FILE)")
    p.add_argument("--views", type=int, default=None, help="carve with the first K views")
    p.add_argument("--grid", type=int, default=96, help="surface lattice size (default 96)")
    p.add_argument(
        "--occ-points", type=int, default=8192, help="occupancy points per object and kind"
    )
    p.add_argument("--surface-points", type=int, default=4096, help="surface points per object")
    p.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_carve)

    p = sub.add_parser("import-blender", help="import NeRF 'Blender' scenes (transforms_*.json)")
    p.add_argument(
        "root",
        type=Path,
        help="a scene folder, a folder of scene folders, or of category folders of them",
    )
    p.add_argument("--out", required=True, type=Path, help="output .h5 file")
    p.add_argument(
        "--splits",
        default=None,
        help="transforms files to read, e.g. train,test (default: every "
        "transforms_{train,val,test}.json a scene has)",
    )
    p.add_argument(
        "--object-split",
        default="train",
        choices=["train", "val", "test"],
        help="split of scenes no train/val/test.lst file lists (default train)",
    )
    p.add_argument(
        "--bound", type=float, default=1.5, help="scene half-size in world units (default 1.5)"
    )
    p.add_argument(
        "--category",
        default=None,
        help="category of every scene (default: its category folder, else its own name)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_import_blender)


def _synth(args) -> int:
    from iss3d.data.synth.build import SynthConfig, synthesize

    cfg = SynthConfig(
        objects=args.objects,
        views=args.views,
        res=args.res,
        seed=args.seed,
        distance=args.distance,
        surface_points=args.surface_points,
        occ_uniform=args.occ_points,
        occ_near=args.occ_points,
    )
    out = synthesize(args.out, cfg, workers=args.workers or None)
    print(f"wrote {out} ({cfg.objects} objects x {cfg.views} views at {cfg.res} px)")
    return 0


def _check(args) -> int:
    from iss3d.data.validate import check_file

    summary = check_file(args.file)
    print(f"{args.file}: ok ({summary['objects']} objects, {summary['views']} views)")
    return 0


def _info(args) -> int:
    from iss3d.core.atomic import json_text
    from iss3d.data.info import format_summary, summarize
    from iss3d.data.reader import MultiViewFile

    with MultiViewFile(args.file) as mv:
        summary = summarize(mv)
    print(json_text(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _sheet(args) -> int:
    from PIL import Image

    from iss3d.core.atomic import atomic_output
    from iss3d.core.errors import UserError
    from iss3d.data.reader import MultiViewFile
    from iss3d.data.sheet import contact_sheet, pick_objects

    image_format = Image.registered_extensions().get(args.out.suffix.lower())
    if image_format is None:
        raise UserError(
            f"{args.out}: unknown image extension {args.out.suffix!r} (use .png or .jpg)"
        )
    if args.objects <= 0 or args.views <= 0:
        raise UserError("--objects and --views must be positive")
    if args.objects > 1000 or args.views > 100:
        raise UserError("--objects (up to 1000) and --views (up to 100) too large for one sheet")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    with MultiViewFile(args.file) as mv:
        objects = pick_objects(mv, args.objects, args.split, args.seed)
        if len(objects) == 0:
            raise UserError(f"{args.file}: no objects in split {args.split!r}")
        sheet = contact_sheet(mv, objects, views=args.views)
    with atomic_output(args.out) as tmp:
        sheet.save(tmp, format=image_format)
    print(f"wrote {args.out} ({len(objects)} objects)")
    return 0


def _import_dvr(args) -> int:
    from iss3d.data.importers.dvr import import_dvr
    from iss3d.data.importers.onet import OnetConfig
    from iss3d.infer.limits import check_range

    check_range("--occ-points", args.occ_points, 0, 10**6)
    check_range("--surface-points", args.surface_points, 0, 10**6)
    check_range("--seed", args.seed, 0)
    categories = args.categories.split(",") if args.categories else None
    out, summary = import_dvr(
        args.root,
        args.out,
        categories=categories,
        input_views=args.input_views,
        ground_truth=OnetConfig(args.occ_points, args.surface_points, args.seed),
        progress=False if args.no_progress else None,
    )
    print(f"wrote {out}: {summary}")
    return 0


def _import_folder(args) -> int:
    from iss3d.data.importers.folder import import_folder

    out, summary = import_folder(args.root, args.out, False if args.no_progress else None)
    print(f"wrote {out}: {summary}")
    return 0


def _export_folder(args) -> int:
    from iss3d.core.paths import input_file
    from iss3d.data.export_folder import export_folder

    src = input_file(args.file, "a dataset file (.h5)")
    out, summary = export_folder(src, args.out, False if args.no_progress else None)
    print(f"wrote {out}: {summary}")
    return 0


def _carve(args) -> int:
    from iss3d.core.paths import input_file
    from iss3d.data.carve import CarveConfig, carve_file
    from iss3d.infer.limits import check_range

    check_range("--grid", args.grid, 16, 256)
    check_range("--occ-points", args.occ_points, 1, 10**6)
    check_range("--surface-points", args.surface_points, 1, 10**6)
    check_range("--seed", args.seed, 0)
    cfg = CarveConfig(
        grid=args.grid,
        occ_uniform=args.occ_points,
        occ_near=args.occ_points,
        surface_points=args.surface_points,
        views=args.views,
        seed=args.seed,
    )
    src = input_file(args.file, "a dataset file (.h5)")
    out = carve_file(src, args.out or src, cfg, progress=False if args.no_progress else None)
    print(f"wrote {out} (visual hull of every object's masks in eval/)")
    return 0


def _import_blender(args) -> int:
    from iss3d.data.importers.blender import import_blender

    splits = tuple(s for s in args.splits.split(",") if s) if args.splits is not None else None
    out, summary = import_blender(
        args.root,
        args.out,
        splits=splits,
        object_split=args.object_split,
        bound=args.bound,
        category=args.category,
        progress=False if args.no_progress else None,
    )
    print(f"wrote {out}: {summary}")
    return 0
