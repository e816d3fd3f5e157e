"""``iss3d fit svr | clip | stage1``: the training commands, one pattern for every stage.

Each stage names its config class and its ``fit_<stage>(cfg, out, command, resume, progress)``
function (imported only when the command runs); stage-specific flags set config keys. The
command builds the config (YAML, then the flags, then ``key.sub=value`` overrides), checks it,
and hands over; the stage validates its data and models before its run folder is created, so a
mistake leaves nothing behind. Errors are one-line UserErrors.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from iss3d.core.errors import UserError
from iss3d.infer.cli import fit_all


@dataclass(frozen=True)
class StageFlag:
    """A command-line flag that sets a config key (e.g. ``--svr`` -> ``svr``)."""

    flag: str
    key: str
    help: str


@dataclass(frozen=True)
class FitStage:
    """One ``iss3d fit`` subcommand: ``module`` holds ``config_class`` and ``fit_<name>``."""

    name: str
    help: str
    description: str
    module: str
    config_class: str
    flags: tuple[StageFlag, ...] = field(default_factory=tuple)


STAGES = (
    FitStage(
        "svr",
        "train the single-view reconstruction model (DVR) on a multi-view dataset",
        "Train DVR's encoder + decoder.",
        "iss3d.train.svr",
        "SVRConfig",
    ),
    FitStage(
        "clip",
        "train a small CLIP contrastively on (view, caption) pairs of a multi-view dataset",
        "Train a small open_clip model (configs/clip/*.json) on the views and captions of a "
        "dataset; validates zero-shot top-1 and text->image R@1, and writes DIR/clip.pt.",
        "iss3d.train.clip",
        "ClipConfig",
    ),
    FitStage(
        "stage1",
        "ISS stage 1: map CLIP image features to SVR latents, fine-tune the decoder",
        "Train the CLIP2Shape mapper on a trained SVR model (encoder frozen, decoder "
        "fine-tuned with the DVR and background losses).",
        "iss3d.train.stage1",
        "Stage1Config",
        (
            StageFlag("--svr", "svr", "SVR checkpoint of iss3d fit svr (sets svr)"),
            StageFlag(
                "--clip",
                "clip",
                "CLIP spec (sets clip): clip/tiny-64, a trained CLIP checkpoint, ViT-B-32:openai",
            ),
        ),
    ),
    FitStage(
        "pointnet",
        "train TreeGAN's PointNet classifier on surface points (the FPD feature network)",
        "Train a PointNet classifier (TreeGAN's layout) on the categories of a dataset with "
        "surface points; writes DIR/pointnet.pt for iss3d evaluate --pointnet.",
        "iss3d.train.pointnet",
        "PointNetConfig",
    ),
    FitStage(
        "eid",
        "ISS's E_I + D baseline: a decoder trained on frozen CLIP image features",
        "Train a decoder conditioned directly on CLIP image features (no SVR encoder, no "
        "mapper) with the DVR and background losses; iss3d evaluate --ei-d feeds it f_T.",
        "iss3d.train.eid",
        "EIDConfig",
        (StageFlag("--clip", "clip", "CLIP spec (sets clip); decoder.c_dim = its feature size"),),
    ),
)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``fit`` command group to the ``iss3d`` parser."""
    fit = commands.add_parser("fit", help="train a model: SVR, CLIP, stage 1")
    sub = fit.add_subparsers(dest="fit_command", required=True, metavar="STAGE")
    for stage in STAGES:
        p = sub.add_parser(
            stage.name,
            help=stage.help,
            description=stage.description
            + " Overrides are key.sub=value pairs, e.g. optim.lr=3e-4 trainer.max_steps=2000.",
        )
        p.add_argument(
            "--config",
            required=True,
            help=f"YAML config: a path or a name such as {stage.name}/tiny",
        )
        for extra in stage.flags:
            p.add_argument(extra.flag, dest=extra.key, default=None, help=extra.help)
        p.add_argument("--data", type=Path, default=None, help="dataset .h5 (sets data.path)")
        p.add_argument(
            "--out",
            type=Path,
            default=None,
            help=f"run folder (default runs/{stage.name}-<name>-<time>)",
        )
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue the run in --out from checkpoints/last.ckpt (same config; "
            "only trainer.max_steps may change)",
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bar (logs, CI)")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
        p.set_defaults(run=lambda args, stage=stage: run_fit(stage, args))
    fit_all.register(sub)


def command_line(stage: FitStage, args: argparse.Namespace) -> str:
    """The command as typed (normalised), for the run folder's command.txt."""
    parts = ["iss3d", "fit", stage.name, "--config", str(args.config)]
    for extra in stage.flags:
        if getattr(args, extra.key) is not None:
            parts += [extra.flag, str(getattr(args, extra.key))]
    for flag, value in (("--data", args.data), ("--out", args.out)):
        if value is not None:
            parts += [flag, str(value)]
    parts += ["--resume"] * args.resume + ["--no-progress"] * args.no_progress
    return shlex.join(parts + list(args.overrides))


def run_fit(stage: FitStage, args: argparse.Namespace) -> int:
    """Config from YAML + flags + overrides, checked; then the stage's ``fit_<name>``."""
    from iss3d.core.config import apply_overrides, find_config, read_yaml

    module = importlib.import_module(stage.module)
    config_class = getattr(module, stage.config_class)
    overrides: list = list(args.overrides)
    for extra in stage.flags:
        if getattr(args, extra.key) is not None:
            overrides.append((extra.key, str(getattr(args, extra.key))))
    if args.data is not None:
        overrides.append(("data.path", str(args.data)))
    raw = apply_overrides(read_yaml(find_config(args.config)), overrides, config_class)
    if not isinstance(raw.get("data"), dict) or raw["data"].get("path") in (None, ""):
        raise UserError("no dataset: give --data FILE (or data.path in the config)")
    cfg = config_class.from_dict(raw)
    if args.resume and args.out is None:
        raise UserError("--resume needs --out (the run folder to continue)")
    fit = getattr(module, f"fit_{stage.name}")
    return fit(cfg, args.out, command_line(stage, args), args.resume, not args.no_progress)
