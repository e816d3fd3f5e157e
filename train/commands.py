"""``iss3d fit ...``: training entry points (``iss3d fit svr`` for now).

Everything is validated (config, overrides, data file, datasets, run folder) before the run
folder is created, so a mistake leaves nothing behind; errors are one-line UserErrors.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from data.errors import UserError
from train import clip_commands


def register(commands: argparse._SubParsersAction) -> None:
    """Add the ``fit`` command group to the ``iss3d`` parser."""
    fit = commands.add_parser("fit", help="train a model (SVR; later stage 1, CLIP)")
    sub = fit.add_subparsers(dest="fit_command", required=True, metavar="STAGE")

    p = sub.add_parser(
        "svr",
        help="train the single-view reconstruction model (DVR) on a multi-view dataset",
        description=(
            "Train DVR's encoder + decoder. Overrides are key.sub=value pairs applied to the "
            "config, e.g. optim.lr=3e-4 trainer.max_steps=2000."
        ),
    )
    p.add_argument("--config", required=True, help="YAML config: a path or a name such as svr/tiny")
    p.add_argument("--data", type=Path, default=None, help="dataset .h5 (sets data.path)")
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (default runs/svr-<name>-<time>)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from checkpoints/last.ckpt (same config; "
        "only trainer.max_steps may change)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and CI)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(run=_fit_svr)

    p = sub.add_parser(
        "stage1",
        help="ISS stage 1: map CLIP image features to SVR latents, fine-tune the decoder",
        description=(
            "Train the CLIP2Shape mapper on a trained SVR model (encoder frozen, decoder "
            "fine-tuned with the DVR and background losses). Overrides are key.sub=value pairs, "
            "e.g. loss.lambda_bg=0 trainer.max_steps=2000."
        ),
    )
    p.add_argument("--config", required=True, help="YAML config: a path or a name: stage1/tiny")
    p.add_argument("--svr", default=None, help="SVR checkpoint of iss3d fit svr (sets svr)")
    p.add_argument(
        "--clip",
        default=None,
        help="CLIP spec (sets clip): clip/tiny-64, a trained CLIP checkpoint, ViT-B-32:openai",
    )
    p.add_argument("--data", type=Path, default=None, help="dataset .h5 (sets data.path)")
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (default runs/stage1-<name>-<time>)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from checkpoints/last.ckpt (same config; "
        "only trainer.max_steps may change)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and CI)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(run=_fit_stage1)
    clip_commands.register_fit(sub)


def _command_line(args: argparse.Namespace) -> str:
    parts = ["iss3d", "fit", "svr", "--config", str(args.config)]
    if args.data is not None:
        parts += ["--data", str(args.data)]
    if args.out is not None:
        parts += ["--out", str(args.out)]
    if args.resume:
        parts.append("--resume")
    if args.no_progress:
        parts.append("--no-progress")
    return shlex.join(parts + list(args.overrides))


def _fit_svr(args: argparse.Namespace) -> int:
    from train import runs
    from train.svr import SVRConfig

    overrides: list = list(args.overrides)
    if args.data is not None:
        overrides.append(("data.path", str(args.data)))
    raw = runs.apply_overrides(runs.read_yaml(runs.find_config(args.config)), overrides, SVRConfig)
    if not isinstance(raw.get("data"), dict) or raw["data"].get("path") in (None, ""):
        raise UserError("no dataset: give --data FILE (or data.path in the config)")
    cfg = SVRConfig.from_dict(raw)
    if args.resume and args.out is None:
        raise UserError("--resume needs --out (the run folder to continue)")
    return fit_svr(cfg, args.out, _command_line(args), args.resume, not args.no_progress)


def _fit_stage1(args: argparse.Namespace) -> int:
    from train.stage1 import fit_stage1_command

    return fit_stage1_command(args)


def fit_svr(
    cfg, out: Path | None, command: str, resume: bool = False, progress: bool = True
) -> int:
    """Validate the data, prepare the run folder and train. Returns 0."""
    from data.datamodule import MultiViewDataModule
    from train import runs
    from train.svr import SVRSystem

    datamodule = MultiViewDataModule(cfg.data)
    datamodule.setup("fit")  # opens the file, builds the datasets: errors before any folder
    if len(datamodule.dataset(cfg.data.val_split)) == 0 and cfg.trainer.val_check_interval > 0:
        raise UserError(
            f"{cfg.data.path}: no objects in the validation split {cfg.data.val_split!r} "
            "(set trainer.val_check_interval=0 to train without validation)"
        )
    run_dir = runs.RunDir(out if out is not None else runs.default_run_dir("svr", cfg.run.name))
    config_dict = cfg.to_dict()
    ckpt = run_dir.check(config_dict, resume)
    system = SVRSystem(cfg, image_dir=run_dir.path / "val")
    run_dir.create(config_dict, command)
    trainer = runs.make_trainer(run_dir, cfg.trainer, cfg.run, "svr", enable_progress_bar=progress)
    runs.fit(trainer, system, datamodule, ckpt)
    print(f"run folder: {run_dir.path} (step {trainer.global_step})")
    return 0
