"""``iss3d fit all``: from a dataset file to a text-to-3D model in one resumable command.

Steps, each a run folder under ``--out`` with the usual conventions (``--resume`` continues the
unfinished one and skips the finished ones):

1. ``data.h5``: the file's visual hull (``iss3d data carve``) when it has no 3D ground truth;
   the file itself otherwise.
2. ``svr/``: ``iss3d fit svr --config svr/tiny``.
3. ``clip/``: ``iss3d fit clip --config clip/tiny`` when no ``--clip`` is given and the
   training split has captions (the stand-in CLIP learns the set's words); else ``--clip``,
   or the shipped CLIP with a note that it knows only the synthetic world's words.
4. ``stage1/``: ``iss3d fit stage1 --config stage1/tiny`` on the two.
5. ``summary.json``: the plan, ``eval svr``, ``eval stage1`` (and ``eval clip`` of a trained
   stand-in) on the test split, and the ``iss3d generate`` command that uses the result.

``--steps N`` trains every stage N steps instead (the same run on any machine). The budget
(``--budget`` minutes) is shared out (SVR 50%, CLIP 20%, stage 1 30%; the SVR takes
the CLIP's share when none is trained). Each stage's step count is its share divided by its
seconds per step, measured before training by two short probe runs (2 and 6 steps; the
difference removes start-up costs); probes and carving come out of the budget too. The plan
(``plan.json``) is fixed when the command first runs, so a resumed run trains the same steps.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from iss3d.core.errors import UserError

SHARES = {"svr": 0.5, "clip": 0.2, "stage1": 0.3}
PROBE_STEPS = (2, 6)
MIN_STEPS = 20
#: The architecture ``configs/clip/tiny.yaml`` trains, with random weights (a stand-in for the
#: CLIP ``fit all`` is about to train, when probing stage 1's speed).
PROBE_CLIP = "clip/tiny-64"
PLAN = "plan.json"
SUMMARY = "summary.json"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``all`` to the ``iss3d fit`` group."""
    p = sub.add_parser(
        "all",
        help="train SVR, (CLIP,) stage 1 and evaluate, within a time budget",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--data", required=True, type=Path, help="dataset .h5")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--clip", default=None, help="CLIP spec (default: train one on the captions)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--budget", type=float, default=30.0, help="minutes in all (default 30)")
    size.add_argument(
        "--steps", type=int, default=None, help="train every stage this many steps (no budget)"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run_all)


def run_all(args: argparse.Namespace) -> int:
    from iss3d.core.atomic import json_text, write_json
    from iss3d.core.paths import read_json

    start = time.perf_counter()
    out: Path = args.out
    if args.steps is None and not 1.0 <= args.budget <= 7 * 24 * 60:
        raise UserError(f"--budget {args.budget}: give minutes between 1 and {7 * 24 * 60}")
    if args.steps is not None and not 1 <= args.steps <= 10**7:
        raise UserError(f"--steps {args.steps}: give a count between 1 and {10**7}")
    plan_path = out / PLAN
    if args.resume:
        if not plan_path.is_file():
            raise UserError(f"--resume: {out} has no {PLAN}; is it an `iss3d fit all` folder?")
        plan = read_json(plan_path, f"the {PLAN} of an `iss3d fit all` run")
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UserError(f"{out}: exists and is not empty (add --resume, or another --out)")
        created = not out.exists()
        try:
            plan = make_plan(args, start)
            write_json(plan_path, plan)
        except BaseException:
            if created:  # nothing half-prepared is left behind
                shutil.rmtree(out, ignore_errors=True)
            raise
    progress = not args.no_progress
    for stage in ("svr", "clip", "stage1"):
        if plan["steps"].get(stage):
            train_stage(stage, plan, out, progress)
    summary = {"plan": plan, **evaluate(plan, out)}
    write_json(out / SUMMARY, summary)
    print(json_text(summary["evaluation"], indent=2))
    print(f"minutes: {(time.perf_counter() - start) / 60:.1f} (this invocation)")
    print(f"summary: {out / SUMMARY}\nnext: {summary['generate']}")
    return 0


# -- the plan -------------------------------------------------------------------------------


def make_plan(args: argparse.Namespace, start: float) -> dict[str, Any]:
    """Data, CLIP and steps of every stage, measured on this machine."""
    from iss3d.core.paths import input_file
    from iss3d.data.carve import CarveConfig, carve_file, ground_truth_source
    from iss3d.data.reader import MultiViewFile
    from iss3d.models.clip import load_clip

    # a bad spec fails now, not after the SVR has trained; its feature size sizes the mapper
    clip_dim = int(load_clip(args.clip).embed_dim) if args.clip is not None else None
    source = input_file(args.data, "a dataset file (.h5)")
    with MultiViewFile(source) as f:
        train = f.objects_in("train")
        if len(train) < 2 or len(f.objects_in("test")) == 0:
            raise UserError(f"{source}: needs 2+ objects in split 'train' and 1+ in 'test'")
        truth = ground_truth_source(f)
        validate = len(f.objects_in("val")) > 0
        captions = sum(1 for o in train if any(str(c).strip() for c in f.captions[o]))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out}: cannot create the run folder ({err.strerror or err})") from None
    data = source
    if truth is None:
        data = carve_file(source, out / "data.h5", CarveConfig(), progress=not args.no_progress)
    clip, train_clip = args.clip, False
    if clip is None and captions == len(train):
        clip, train_clip = str(out / "clip" / "clip.pt"), True
        clip_dim = int(load_clip(PROBE_CLIP).embed_dim)  # clip/tiny's architecture
    elif clip is None:
        from iss3d.infer.session import DEFAULT_CLIP, warn

        clip = str(DEFAULT_CLIP)
        clip_dim = int(load_clip(clip).embed_dim)
        warn(
            f"{source}: not every training object has a caption, so no CLIP is trained; "
            "stage 1 uses the shipped CLIP, which knows the synthetic world's words only"
        )
    plan: dict[str, Any] = {
        "source": str(source),
        "data": str(data),
        "ground_truth": truth or "visual_hull",
        "clip": clip,
        "clip_dim": clip_dim,
        "train_clip": train_clip,
        "validate": validate,
        "budget_minutes": args.budget,
        "steps": {},
        "seconds_per_step": {},
    }
    stages = ["svr", "clip", "stage1"] if train_clip else ["svr", "stage1"]
    shares = dict(SHARES)
    if not train_clip:
        shares["svr"] += shares.pop("clip")
    if args.steps is not None:
        plan["steps"] = dict.fromkeys(stages, args.steps)
        plan["budget_minutes"] = None
        return plan
    probes = out / "probes"
    for stage in stages:
        plan["seconds_per_step"][stage] = seconds_per_step(stage, plan, probes)
    shutil.rmtree(probes, ignore_errors=True)
    left = args.budget * 60 - (time.perf_counter() - start)
    if left <= 0:
        raise UserError(f"--budget {args.budget}: spent on preparing the data; give more")
    for stage in stages:
        steps = int(shares[stage] * left / plan["seconds_per_step"][stage])
        plan["steps"][stage] = max(MIN_STEPS, steps)
    return plan


def stage_config(stage: str, plan: dict[str, Any], out: Path, steps: int, probe: bool):
    """The stage's tiny config on the plan's data for ``steps`` steps, validating 4 times when
    the file has a val split (a probe: no validation, a one-epoch mapper pre-fit)."""
    from iss3d.core.config import load_config

    every = max(steps // 4, 1)
    sets: list[tuple[str, Any]] = [
        ("data.path", plan["data"]),
        ("trainer.max_steps", steps),
        ("trainer.val_check_interval", every if plan["validate"] and not probe else 0),
        ("trainer.checkpoint_every", every),
    ]
    if stage == "svr":
        from iss3d.train.svr import SVRConfig as cls
    elif stage == "clip":
        from iss3d.train.clip import ClipConfig as cls

        sets.append(("optim.warmup_steps", min(200, max(steps // 10, 1))))
    else:
        from iss3d.train.stage1 import Stage1Config as cls

        # probing before the CLIP is trained: a random one of its architecture costs the same
        clip = PROBE_CLIP if probe and plan["train_clip"] else plan["clip"]
        sets += [("svr", str(svr_checkpoint(plan, out))), ("clip", clip)]
        sets.append(("mapper.in_dim", plan["clip_dim"]))
        if probe:
            sets.append(("prefit.epochs", 1))
    return load_config(cls, f"{stage}/tiny", sets)


def svr_checkpoint(plan: dict[str, Any], out: Path) -> Path:
    """The SVR stage 1 starts from: the trained one, or (probing) a 2-step probe's."""
    trained = out / "svr" / "checkpoints" / "last.ckpt"
    return trained if trained.is_file() else out / "probes" / "svr-2" / "checkpoints" / "last.ckpt"


def seconds_per_step(stage: str, plan: dict[str, Any], probes: Path) -> float:
    """Seconds per training step of ``stage`` here: (time of a 6-step run - a 2-step one) / 4."""
    times = []
    probes.mkdir(parents=True, exist_ok=True)
    for steps in PROBE_STEPS:
        cfg = stage_config(stage, plan, probes.parent, steps, probe=True)
        run = probes / f"{stage}-{steps}"
        tic = time.perf_counter()
        fit_stage(stage, cfg, run, f"probe {stage}", False, quiet=True)
        times.append(time.perf_counter() - tic)
    return max((times[1] - times[0]) / (PROBE_STEPS[1] - PROBE_STEPS[0]), 1e-3)


# -- training -------------------------------------------------------------------------------


def fit_stage(stage: str, cfg, run: Path, command: str, resume: bool, quiet: bool) -> None:
    """``fit_<stage>`` of the training package (stdout silenced for probes)."""
    import contextlib
    import importlib
    import io

    fit = getattr(importlib.import_module(f"iss3d.train.{stage}"), f"fit_{stage}")
    sink = io.StringIO() if quiet else None
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        fit(cfg, run, command, resume, not quiet)


def finished(run: Path, steps: int) -> bool:
    """Whether ``run`` trained to ``steps`` (its last checkpoint says so)."""
    import torch

    last = run / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return False
    return int(torch.load(last, weights_only=True, map_location="cpu")["global_step"]) >= steps


def train_stage(stage: str, plan: dict[str, Any], out: Path, progress: bool) -> None:
    run, steps = out / stage, plan["steps"][stage]
    if finished(run, steps) and (stage != "clip" or (run / "clip.pt").is_file()):
        print(f"{stage}: done ({steps} steps)")
        return
    cfg = stage_config(stage, plan, out, steps, probe=False)
    command = shlex.join(["iss3d", "fit", "all", f"({stage}, {steps} steps)"])
    rate = plan["seconds_per_step"].get(stage)
    print(f"{stage}: {steps} steps" + (f" (~{steps * rate / 60:.1f} min)" if rate else ""))
    sys.stdout.flush()
    fit_stage(stage, cfg, run, command, run.exists(), quiet=not progress)


# -- the summary ----------------------------------------------------------------------------


def evaluate(plan: dict[str, Any], out: Path) -> dict[str, Any]:
    """``eval svr`` and ``eval stage1`` on the test split, and the command to generate."""
    from iss3d.data.reader import MultiViewFile
    from iss3d.infer.stage1_eval import evaluate_stage1
    from iss3d.infer.svr import evaluate_svr
    from iss3d.models.loaders import load_svr

    stage1 = out / "stage1" / "checkpoints" / "last.ckpt"
    with MultiViewFile(plan["data"]) as f:
        svr = evaluate_svr(load_svr(out / "svr" / "checkpoints" / "last.ckpt"), f, "test")
        test = f.objects_in("test")
        prompt = next((str(f.captions[o][0]) for o in test if len(f.captions[o])), None)
        prompt = prompt or f"a {f.categories[test[0]]}"
    s1 = evaluate_stage1(stage1, plan["data"], "test", plan["clip"], render_objects=4)
    generate = ["iss3d", "generate", prompt, "--stage1", str(stage1), "--clip", plan["clip"]]
    evaluation = {"ground_truth": svr["ground_truth"], "svr": svr["means"], "stage1": s1["means"]}
    if plan["train_clip"]:
        evaluation["clip"] = clip_figures(plan)
    return {"evaluation": evaluation, "generate": shlex.join(generate)}


def clip_figures(plan: dict[str, Any]) -> dict[str, float]:
    """``eval clip`` of the trained stand-in on the test split, the captions as classes (or
    the synthetic world's colour x category prompts on a world file)."""
    from iss3d.models.clip import load_clip
    from iss3d.train.clip import zero_shot_accuracy

    result = zero_shot_accuracy(load_clip(plan["clip"]), plan["data"], "test")
    keys = ("top1", "text_to_image_r1", "colour_acc", "category_acc")
    return {"classes": result["classes"], **{k: result[k] for k in keys if k in result}}
