"""``iss3d evaluate``: the argument parser (light to import; the work: infer/evaluation/run.py)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate",
        help="compare methods (ISS and its ablations) on a prompt set: FID, FPD, R@1, IoU",
        description=(
            "Generate every (method, prompt, sample) (resumable; --shard / --workers split "
            "the work), render each shape from a fixed camera set, and write results.json, "
            "results.csv, report.md (ISS's Table 1 layout) and plots/ in --out. Methods: "
            "full, no-stage2, no-stage1, ei-d, no-bg1, no-bg2, no-bg, pure-clip, or all "
            "(the default: methods whose models are missing are reported as skipped; a "
            "method named in the list whose model is missing is an error). Config overrides "
            "are KEY=VALUE pairs, e.g. stage2.steps=30 render.views=12."
        ),
    )
    p.add_argument("--texts", type=Path, required=True, help="prompt file, one per line")
    p.add_argument(
        "--ref-data", type=Path, required=True, help="reference dataset .h5 (FID, FPD, IoU)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (reused to resume)")
    p.add_argument("--methods", default="all", help="comma-separated methods, or all")
    p.add_argument("--samples", type=int, default=1, help="shapes per (method, prompt)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--config", default="tiny", help="evaluate preset (configs/evaluate/) or a YAML file"
    )
    p.add_argument("--stage1", type=Path, default=None, help="stage-1 checkpoint")
    p.add_argument(
        "--clip",
        default=None,
        help="guidance CLIP (default: clip.pt beside the stage-1 checkpoint, else its spec)",
    )
    p.add_argument(
        "--stage1-nobg",
        type=Path,
        default=None,
        help="stage-1 checkpoint trained with loss.lambda_bg=0 (no-bg1, no-bg)",
    )
    p.add_argument("--ei-d", type=Path, default=None, help="E_I + D checkpoint (iss3d fit eid)")
    p.add_argument(
        "--judge",
        default=None,
        help="judge CLIP spec for R-precision (default models/pretrained/clip-judge.pt); "
        "must not be the guidance model",
    )
    p.add_argument(
        "--pointnet",
        type=Path,
        default=None,
        help="PointNet for FPD: iss3d fit pointnet's pointnet.pt or TreeGAN's classifier "
        "(default models/pretrained/pointnet.pt)",
    )
    p.add_argument(
        "--fid-features",
        default="auto",
        help="FID features: auto (Inception if on disk, else the judge), inception[:PATH], "
        "clip:SPEC, judge, torchscript:PATH, none",
    )
    p.add_argument("--shard", default=None, help="i/n: generate items i mod n only, then stop")
    p.add_argument(
        "--workers", type=int, default=1, help="processes, one shard each (GPUs round-robin)"
    )
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(run=evaluate_command)


def command_line(args: argparse.Namespace) -> str:
    parts = ["iss3d", "evaluate"]
    for flag in (
        "texts",
        "ref_data",
        "out",
        "methods",
        "samples",
        "seed",
        "config",
        "stage1",
        "clip",
        "stage1_nobg",
        "ei_d",
        "judge",
        "pointnet",
        "fid_features",
        "shard",
        "workers",
        "device",
    ):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    return shlex.join(parts + list(args.overrides))


def evaluate_command(args: argparse.Namespace) -> int:
    from iss3d.infer.evaluation.run import EvaluateOptions, evaluate

    return evaluate(
        EvaluateOptions(
            texts=args.texts,
            ref_data=args.ref_data,
            out=args.out,
            methods=args.methods,
            samples=args.samples,
            seed=args.seed,
            config=args.config,
            overrides=list(args.overrides),
            stage1=args.stage1,
            clip=args.clip,
            stage1_nobg=args.stage1_nobg,
            ei_d=args.ei_d,
            judge=args.judge,
            pointnet=args.pointnet,
            fid_features=args.fid_features,
            shard=args.shard,
            workers=args.workers,
            device=args.device,
            progress=not args.no_progress,
            command=command_line(args),
        )
    )
