"""``iss3d evaluate``: generate every (method, prompt, sample), render it, measure, report.

The run, in order:

1. Check everything the user gave (:func:`prepare`): the prompt file (no empty lines, no
   duplicates, no control characters), the methods, the config, the reference dataset, the
   models, the judge CLIP (which must not be a guidance model) and the metric networks. A
   mistake is one UserError line with nothing written.
2. Generate the items (:func:`generate_items`): each (method, prompt, sample) is produced by
   :mod:`iss3d.infer.evaluation.methods`, rendered from a fixed camera set
   (:func:`describe_shape`) and saved as its own small ``.npz`` (renders, coloured surface
   points, an occupancy lattice, facts; :mod:`iss3d.infer.evaluation.items`) under
   ``OUT/items/``, written atomically. Finished items are skipped, so an interrupted run
   continues where it stopped. ``--shard i/n`` does the items whose index is i mod n (several
   processes or GPUs; ``--workers N`` starts them), then stops; a run without ``--shard``
   generates whatever is missing and goes on to
3. the metrics and the report (:mod:`iss3d.infer.evaluation.report`): ``results.json``,
   ``results.csv``, ``report.md`` (a table like ISS's Table 1), ``plots/<metric>.png`` and
   ``plots/gallery.png`` (prompts x methods).

``OUT/run.json`` records the settings that shape the items (config, models, seed, samples);
a rerun with other settings in the same folder is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from iss3d.core.atomic import write_json
from iss3d.core.config import StrictConfig, load_preset
from iss3d.core.device import resolve_device
from iss3d.core.errors import UserError
from iss3d.core.resources import pretrained_dir
from iss3d.infer import limits
from iss3d.infer.evaluation.items import Item, item_seed, plan_items, save_item
from iss3d.infer.evaluation.methods import (
    METHODS,
    MODEL_FLAGS,
    MethodContext,
    PureClipConfig,
    ShapeRequest,
)
from iss3d.infer.evaluation.metrics import image_feature_network
from iss3d.infer.evaluation.report import compute_results, write_report
from iss3d.infer.limits import check_range
from iss3d.infer.stage2 import Stage2Config

__all__ = [
    "DEFAULT_JUDGE",
    "DEFAULT_POINTNET",
    "EvaluateConfig",
    "EvaluateOptions",
    "ReferenceConfig",
    "RenderConfig",
    "ShapeConfig",
    "describe_shape",
    "evaluate",
    "load_evaluate_config",
    "parse_shard",
    "read_texts",
    "resolve_methods",
    "world_test_prompts",
]

RUN_FORMAT = "iss3d-evaluate"
RUN_VERSION = 1

_PRETRAINED = pretrained_dir()
#: Used when --judge / --pointnet are not given (``make models`` writes the judge).
DEFAULT_JUDGE = _PRETRAINED / "clip-judge.pt"
DEFAULT_POINTNET = _PRETRAINED / "pointnet.pt"


# -- config -------------------------------------------------------------------------------------


@dataclass
class RenderConfig:
    """The fixed camera set every shape is rendered from (YAML section ``render``).

    views: cameras evenly spaced in azimuth from the front, at ``elevation`` degrees and
        ``distance`` (None: the middle of ``stage2.cameras.distance``), focal as stage 2's.
    resolution: render side in pixels. march_steps: ray samples (None: stage 2's); the other
        march settings (method, secant steps, padding) are ``stage2.march``'s.
    background: ``white`` (a solid white background where rays miss the surface, as a mesh
        renderer shows the shape) or ``field`` (the colour the field draws there).
    """

    views: int = 8
    resolution: int = 64
    elevation: float = 20.0
    distance: float | None = None
    march_steps: int | None = None
    background: Literal["white", "field"] = "white"

    def __post_init__(self) -> None:
        if self.views < 1 or self.resolution < 8:
            raise UserError("render config: views >= 1 and resolution >= 8")
        if self.distance is not None and self.distance <= 0.9:
            raise UserError("render config: 'distance' must exceed 0.9 or be null")
        if self.march_steps is not None and self.march_steps < 2:
            raise UserError("render config: 'march_steps' must be >= 2 or null")


@dataclass
class ShapeConfig:
    """What is kept of each shape (YAML section ``shape``).

    mesh_resolution0, mesh_upsampling_steps: the mesh grid (surface points are sampled on it).
    points: surface points kept, uniform by area (the FPD's N; TreeGAN/ISS: 2,048).
    iou_grid: cells per side of the occupancy lattice kept for IoU ((iou_grid + 1)^3 logits).
    """

    mesh_resolution0: int = 32
    mesh_upsampling_steps: int = 2
    points: int = 2048
    iou_grid: int = 32

    def __post_init__(self) -> None:
        if self.mesh_resolution0 < 4 or self.mesh_upsampling_steps < 0:
            raise UserError("shape config: mesh_resolution0 >= 4, mesh_upsampling_steps >= 0")
        if self.points < 16 or self.iou_grid < 4:
            raise UserError("shape config: points >= 16 and iou_grid >= 4")


@dataclass
class ReferenceConfig:
    """The reference set from ``--ref-data`` (YAML section ``reference``).

    split: objects of this split (None: all). max_images: reference views for FID, spread
    evenly over the split's views (ISS: 2,600 ShapeNet images). max_objects: reference clouds
    for FPD (None: every object of the split).
    """

    split: str | None = "test"
    max_images: int = 2600
    max_objects: int | None = None

    def __post_init__(self) -> None:
        if self.split not in (None, "train", "val", "test"):
            raise UserError(f"reference config: unknown split {self.split!r}")
        if self.max_images < 2 or (self.max_objects is not None and self.max_objects < 2):
            raise UserError("reference config: max_images and max_objects must be >= 2")


@dataclass
class EvaluateConfig(StrictConfig):
    """A ``configs/evaluate/*.yaml`` preset: how items are generated, kept and measured."""

    CONFIG_NAME: ClassVar[str] = "evaluate config"

    stage2: Stage2Config = field(default_factory=Stage2Config)
    pure_clip: PureClipConfig = field(default_factory=PureClipConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    shape: ShapeConfig = field(default_factory=ShapeConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    batch: int = 64

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise UserError("evaluate config: 'batch' must be >= 1")


def load_evaluate_config(preset: str, overrides: list | tuple = ()) -> EvaluateConfig:
    """A preset name (``configs/evaluate/<name>.yaml``) or a YAML path, plus ``key=value``
    overrides, parsed strictly."""
    return load_preset(EvaluateConfig, "evaluate", preset, overrides)


# -- inputs -------------------------------------------------------------------------------------


def read_texts(path: str | os.PathLike) -> list[str]:
    """The prompts of a text file, one per line; lines starting with ``#`` are comments.

    Raises:
        UserError: a missing / unreadable file, an empty (or blank) line, a duplicate prompt
            (compared case- and space-insensitively, as CLIP reads them), a control
            character, or no prompt at all; the message names the file and line.
    """
    from iss3d.models.clip import check_prompt

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (--texts)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read as UTF-8 text ({err})") from None
    prompts: list[str] = []
    seen: dict[str, int] = {}
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r")
        if line.lstrip().startswith("#"):
            continue
        if not line.strip():
            raise UserError(f"{path}:{number}: empty line (one prompt per line, no blank lines)")
        prompt = " ".join(line.split())
        try:
            check_prompt(prompt)
        except UserError as err:
            raise UserError(f"{path}:{number}: {err}") from None
        key = unicodedata.normalize("NFKC", prompt).casefold()
        if key in seen:
            raise UserError(
                f"{path}:{number}: duplicate prompt {prompt!r} (first on line {seen[key]})"
            )
        seen[key] = number
        prompts.append(prompt)
    if not prompts:
        raise UserError(f"{path}: no prompts")
    return prompts


def resolve_methods(spec: str) -> tuple[list[str], bool]:
    """``all`` or a comma-separated list -> (method names in the registry's order for ``all``,
    as given otherwise; whether they were named explicitly).

    Raises:
        UserError: an unknown or repeated method name, or an empty list.
    """
    if spec.strip() == "all":
        return list(METHODS), False
    names = [n.strip() for n in spec.split(",")]
    if not names or any(not n for n in names):
        raise UserError(f"--methods {spec!r}: empty method name (comma-separated list or all)")
    for name in names:
        if name not in METHODS:
            raise UserError(
                f"--methods: unknown method {name!r} (known: {', '.join(METHODS)}, or all)"
            )
    if len(set(names)) != len(names):
        raise UserError(f"--methods {spec!r}: a method is listed twice")
    return names, True


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"i/n"`` -> (i, n) with 0 <= i < n; None for None."""
    if spec is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", spec)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise UserError(f"--shard {spec!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return int(m.group(1)), int(m.group(2))


def world_test_prompts(objects: int = 500, seed: int = 0) -> list[str]:
    """The synthetic world's evaluation prompts: the first caption ("a red chair") of every
    test-split object of ``iss3d data synth --objects <objects> --seed <seed>`` (what ``make
    models`` builds), plus every held-out (category, colour) pair, deduplicated, sorted.
    ``configs/texts/synth_test.txt`` is this list."""
    from iss3d.data.synth import world
    from iss3d.data.synth.build import SynthConfig, plan_objects

    plans = plan_objects(SynthConfig(objects=objects, seed=seed))
    prompts = {world.captions(p.spec)[0] for p in plans if p.split == "test"}
    for category, colour in world.HELD_OUT:
        prompts.add(f"{world._a(colour)} {category}")
    return sorted(prompts)


# -- one shape -> what the metrics need -----------------------------------------------------------


@torch.no_grad()
def describe_shape(shape, cfg: EvaluateConfig, seed: int) -> tuple[dict[str, np.ndarray], dict]:
    """Render a generated shape from the fixed views and keep what the metrics need.

    Returns:
        arrays: ``renders`` (V, H, W, 3) uint8; ``points`` (N, 3) float32 surface points
        uniform by area (0 rows for an empty shape); ``colors`` (N, 3) uint8 the field's colour
        there; ``grid`` (G+1)^3 float16 occupancy logits over the padded cube (``half`` =
        0.5 + padding / 2), and facts: ``empty``, mesh sizes, ``half``.
    """
    import trimesh

    from iss3d.infer.view_sampling import fixed_views
    from iss3d.models.mesh import MeshConfig, extract_mesh, occupancy_grid
    from iss3d.models.renderer import Renderer

    s2, r, sh = cfg.stage2, cfg.render, cfg.shape
    field_, c = shape.field, shape.latent
    device = c.device if c is not None else torch.device("cpu")
    m = s2.march
    renderer = Renderer(dataclasses.replace(m, n_steps=r.march_steps or m.n_steps))
    distance = r.distance if r.distance is not None else s2.cameras.mean_distance
    views = fixed_views(r.views, r.elevation, distance, s2.cameras.focal).to(device)
    frames = []
    for v in range(len(views)):
        out = renderer.render_images(
            field_,
            c,
            views.world_mat[v : v + 1],
            views.camera_mat[v : v + 1],
            views.scale_mat[v : v + 1],
            r.resolution,
            r.resolution,
            pixel_convention=s2.pixel_convention,
            background=1.0 if r.background == "white" else "field",
        )
        rgb = out["rgb"][0].permute(1, 2, 0).clamp(0, 1)
        frames.append((rgb * 255 + 0.5).to(torch.uint8).cpu().numpy())
    grid = occupancy_grid(
        field_, c, MeshConfig(resolution0=sh.iou_grid, upsampling_steps=0, padding=m.padding)
    ).values
    mesh = extract_mesh(
        field_,
        c,
        MeshConfig(
            resolution0=sh.mesh_resolution0,
            upsampling_steps=sh.mesh_upsampling_steps,
            padding=m.padding,
            chunk=m.chunk,
        ),
        colors=False,
    )
    empty = len(mesh.faces) == 0
    points = np.zeros((0, 3), np.float32)
    colors = np.zeros((0, 3), np.uint8)
    if not empty:
        tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
        points = np.asarray(trimesh.sample.sample_surface(tm, sh.points, seed=seed)[0], np.float32)
        pts = torch.from_numpy(points).to(device)[None]
        rgb = field_.rgb(pts, c)[0].clamp(0, 1)
        colors = (rgb * 255 + 0.5).to(torch.uint8).cpu().numpy()
    arrays = {
        "renders": np.stack(frames),
        "points": points,
        "colors": colors,
        "grid": grid.float().cpu().numpy().astype(np.float16),
    }
    facts = {
        "empty": bool(empty),
        "mesh_vertices": len(mesh.vertices),
        "mesh_faces": len(mesh.faces),
        "half": 0.5 + m.padding / 2,
    }
    return arrays, facts


# -- options and preparation -----------------------------------------------------------------------


@dataclass
class EvaluateOptions:
    """What ``iss3d evaluate`` was given (see infer/cli/evaluate.py for the flags)."""

    texts: Path
    ref_data: Path
    out: Path
    methods: str = "all"
    samples: int = 1
    seed: int = 0
    config: str = "tiny"
    overrides: list[str] = field(default_factory=list)
    stage1: Path | None = None
    clip: str | None = None
    stage1_nobg: Path | None = None
    ei_d: Path | None = None
    judge: str | None = None
    pointnet: Path | None = None
    fid_features: str = "auto"
    shard: str | None = None
    workers: int = 1
    device: str = "auto"
    progress: bool = True
    command: str | None = None


@dataclass
class Prepared:
    """Everything checked and loaded before anything is written."""

    options: EvaluateOptions
    cfg: EvaluateConfig
    texts: list[str]
    methods: list[str]
    skipped: dict[str, str]
    ctx: MethodContext
    device: torch.device
    reference: Any
    judge: Any
    judge_reason: str | None
    pointnet: Any
    pointnet_info: Any
    pointnet_reason: str | None
    fid_network: Any
    fid_reason: str | None
    models: dict[str, str | None]
    shard: tuple[int, int] | None


def _same_clip(a, b) -> bool:
    """Whether two loaded CLIP models are the same model (spec, file or weights)."""
    if a.spec == b.spec:
        return True
    pa, pb = Path(str(a.spec)), Path(str(b.spec))
    if pa.is_file() and pb.is_file() and pa.resolve() == pb.resolve():
        return True
    sa, sb = a.model.state_dict(), b.model.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def check_judge(judge, judge_spec: str, clip, cfg: EvaluateConfig) -> None:
    """UserError if the judge is the guidance CLIP or a member of a guidance ensemble (the
    same spec, the same file, or the same weights)."""
    from iss3d.models.clip import load_clip

    def refuse(what: str) -> None:
        raise UserError(
            f"--judge {judge_spec!r} is {what}; CLIP R-precision needs a judge other than the "
            "model that guided the shapes"
        )

    if clip is not None and _same_clip(judge, clip):
        refuse(f"the guidance CLIP ({clip.spec!r})")
    specs = [m.spec for m in cfg.stage2.guidance.ensemble]
    specs += [m.spec for m in cfg.pure_clip.stage2.guidance.ensemble]
    for spec in dict.fromkeys(specs):
        if spec == judge.spec or _same_clip(judge, load_clip(spec, judge.device)):
            refuse(f"the guidance ensemble member {spec!r}")


def _check_counts(o: EvaluateOptions) -> tuple[int, int] | None:
    """Check --samples, --seed, --workers and --shard; the shard, None without one."""
    check_range("--samples", o.samples, 1, limits.SAMPLES)
    if o.seed < 0:
        raise UserError(f"--seed must be >= 0, got {o.seed}")
    check_range("--workers", o.workers, 1, limits.WORKERS)
    shard = parse_shard(o.shard)
    if shard is not None and o.workers > 1:
        raise UserError("--shard and --workers exclude each other (workers start the shards)")
    return shard


def _open_reference(o: EvaluateOptions, split: str | None):
    """The reference dataset (``--ref-data``), with at least 2 objects in ``split``, whose
    ground truth is finite (checked now: the metrics read it after every item is made)."""
    from iss3d.data.reader import MultiViewFile

    if not Path(o.ref_data).exists():
        raise UserError(f"{o.ref_data}: no such file (--ref-data, the reference dataset)")
    reference = MultiViewFile(o.ref_data)
    if len(reference.objects_in(split)) < 2:
        raise UserError(
            f"{o.ref_data}: fewer than 2 objects in split {split!r} (reference.split); "
            "the reference set needs at least 2"
        )
    reference.check_ground_truth(reference.objects_in(split))
    return reference


def _check_model_files(o: EvaluateOptions) -> None:
    """UserError for a model file given on the command line that does not exist."""
    for path, flag in (
        (o.stage1, "--stage1"),
        (o.stage1_nobg, "--stage1-nobg"),
        (o.ei_d, "--ei-d"),
    ):
        if path is not None and not Path(path).is_file():
            raise UserError(f"{path}: no such file ({flag})")


def _load_stage1_and_clip(o: EvaluateOptions, methods: list[str], device: torch.device):
    """(stage1, its path, the guidance CLIP, its spec), each None when not available.

    The stage-1 model is loaded for the methods that need it, and as the source of the
    guidance CLIP (when ``--clip`` is not given)."""
    from iss3d.infer.session import resolve_models
    from iss3d.models.clip import load_clip

    needs = {n for m in methods for n in METHODS[m].needs}
    stage1 = stage1_path = clip = None
    clip_spec = o.clip
    if needs & {"stage1", "stage1_nobg"} or o.stage1 is not None or o.clip is None:
        from iss3d.infer.session import DEFAULT_STAGE1

        if o.stage1 is not None or DEFAULT_STAGE1.is_file():
            torch.manual_seed(o.seed)  # random-weight CLIP specs draw from it
            stage1, stage1_path, clip, clip_spec = resolve_models(o.stage1, o.clip, device)
    if clip is None and clip_spec is not None:
        torch.manual_seed(o.seed)
        clip = load_clip(clip_spec, device)
    return stage1, stage1_path, clip, clip_spec


def _load_stage1_nobg(o: EvaluateOptions, clip, device: torch.device):
    """The stage-1 model trained without L_bg (``--stage1-nobg``), or None."""
    if o.stage1_nobg is None:
        return None
    from iss3d.models.loaders import load_stage1

    stage1_nobg = load_stage1(o.stage1_nobg, device)
    if clip is not None and stage1_nobg.clip_embed_dim != clip.embed_dim:
        raise UserError(
            f"{o.stage1_nobg}: trained with {stage1_nobg.clip_embed_dim}-d CLIP features, "
            f"the guidance CLIP gives {clip.embed_dim}-d"
        )
    return stage1_nobg


def _load_eid(o: EvaluateOptions, clip, clip_spec: str | None, device: torch.device):
    """The E_I + D baseline (``--ei-d``), or None; a warning when it was trained with
    another CLIP than the guidance one."""
    if o.ei_d is None:
        return None
    from iss3d.models.loaders import load_eid

    ei_d = load_eid(o.ei_d, device)
    if clip is not None and ei_d.clip_spec and ei_d.clip_spec != clip_spec:
        from iss3d.infer.session import warn

        warn(
            f"{o.ei_d} was trained with CLIP {ei_d.clip_spec!r}, not the guidance CLIP "
            f"{clip_spec!r} whose text features ei-d is fed"
        )
    if clip is not None and ei_d.clip_embed_dim != clip.embed_dim:
        raise UserError(
            f"{o.ei_d}: trained with {ei_d.clip_embed_dim}-d CLIP features, the guidance "
            f"CLIP gives {clip.embed_dim}-d"
        )
    return ei_d


def _choose_methods(
    methods: list[str], explicit: bool, loaded: Mapping[str, Any]
) -> tuple[list[str], dict[str, str]]:
    """(the methods whose models are loaded, {skipped method: reason}); ``loaded`` maps each
    model of :data:`MODEL_FLAGS` to the model or None.

    Raises:
        UserError: a method named explicitly lacks a model, or no method can run.
    """
    clip = loaded["clip"]
    available = {k for k, v in loaded.items() if v is not None}
    if clip is None:  # every method guides or reads text through CLIP
        available.clear()
    chosen, skipped = [], {}
    for name in methods:
        missing = [n for n in METHODS[name].needs if n not in available]
        if clip is None and "clip" not in missing:
            missing.append("clip")
        if missing:
            reason = "needs " + "; ".join(MODEL_FLAGS[n] for n in missing)
            if explicit:
                raise UserError(f"method {name!r} {reason}")
            skipped[name] = reason
        else:
            chosen.append(name)
    if not chosen:
        raise UserError("no method can run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return chosen, skipped


def _load_judge(o: EvaluateOptions, clip, cfg: EvaluateConfig, device: torch.device):
    """(the judge CLIP, None) or (None, why there is none); the judge is never a guidance
    model (:func:`check_judge`)."""
    from iss3d.models.clip import load_clip

    judge_spec = (
        o.judge
        if o.judge is not None
        else (str(DEFAULT_JUDGE) if DEFAULT_JUDGE.is_file() else None)
    )
    if judge_spec is None:
        return None, f"no judge CLIP (give --judge SPEC; default {DEFAULT_JUDGE} is missing)"
    torch.manual_seed(o.seed + 1)
    judge = load_clip(judge_spec, device)
    check_judge(judge, judge_spec, clip, cfg)
    return judge, None


def _load_pointnet(o: EvaluateOptions, reference, device: torch.device):
    """(PointNet, its info, why FPD cannot be computed or None); the network is None when
    there is none to load."""
    from iss3d.models.loaders import load_pointnet

    pn_path = (
        o.pointnet
        if o.pointnet is not None
        else (DEFAULT_POINTNET if DEFAULT_POINTNET.is_file() else None)
    )
    if pn_path is None:
        reason = (
            f"no PointNet (give --pointnet CKPT: `iss3d fit pointnet` or TreeGAN's classifier; "
            f"default {DEFAULT_POINTNET} is missing)"
        )
        return None, None, reason
    pointnet, pointnet_info = load_pointnet(pn_path, device)
    reason = None if reference.has_surface else f"{o.ref_data} has no surface points"
    return pointnet, pointnet_info, reason


def prepare(options: EvaluateOptions) -> Prepared:
    """Check and load everything; UserError on the first problem. Writes nothing."""
    o = options
    shard = _check_counts(o)
    texts = read_texts(o.texts)
    methods, explicit = resolve_methods(o.methods)
    cfg = load_evaluate_config(o.config, o.overrides)
    reference = _open_reference(o, cfg.reference.split)
    _check_model_files(o)
    device, note = resolve_device(o.device)

    stage1, stage1_path, clip, clip_spec = _load_stage1_and_clip(o, methods, device)
    stage1_nobg = _load_stage1_nobg(o, clip, device)
    ei_d = _load_eid(o, clip, clip_spec, device)
    loaded = {"stage1": stage1, "stage1_nobg": stage1_nobg, "ei_d": ei_d, "clip": clip}
    chosen, skipped = _choose_methods(methods, explicit, loaded)
    ctx = MethodContext(cfg.stage2, cfg.pure_clip, clip, stage1, stage1_nobg, ei_d, device=device)

    judge, judge_reason = _load_judge(o, clip, cfg, device)
    pointnet, pointnet_info, pointnet_reason = _load_pointnet(o, reference, device)
    fid_network, fid_reason = image_feature_network(o.fid_features, device, judge)
    if note:
        print(f"iss3d: {note}", file=sys.stderr)
    models = {
        "stage1": str(stage1_path) if stage1_path else None,
        "clip": clip_spec,
        "stage1_nobg": str(o.stage1_nobg) if o.stage1_nobg else None,
        "ei_d": str(o.ei_d) if o.ei_d else None,
    }
    return Prepared(
        o,
        cfg,
        texts,
        chosen,
        skipped,
        ctx,
        device,
        reference,
        judge,
        judge_reason,
        pointnet,
        pointnet_info,
        pointnet_reason,
        fid_network,
        fid_reason,
        models,
        shard,
    )


# -- the output folder ----------------------------------------------------------------------------


def run_settings(p: Prepared) -> dict[str, Any]:
    """What shapes the items: an output folder is only reused with the same settings."""
    return {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "config": p.cfg.to_dict(),
        "samples": p.options.samples,
        "seed": p.options.seed,
        "models": p.models,
    }


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            d = _first_difference(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else prefix.rstrip(".")


def open_out(out: Path, settings: dict[str, Any]) -> None:
    """Create ``out`` (and ``run.json``), or check that an existing one matches ``settings``.

    Raises:
        UserError: ``out`` is a file, a non-empty folder that is not an evaluation, or one made
            with other settings.
    """
    run = out / "run.json"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder (--out)")
    if run.is_file():
        try:
            saved = json.loads(run.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"{run}: unreadable ({err})") from None
        diff = _first_difference(saved, settings)
        if diff:
            raise UserError(
                f"{out}: made with other settings (they differ at {diff!r}); use another --out "
                "or the same config, models, --seed and --samples"
            )
        return
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out}: exists, is not empty and holds no run.json (--out)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{out}: cannot create the output folder ({err.strerror})") from None
    write_json(run, settings)


# -- generation --------------------------------------------------------------------------------


def generate_items(p: Prepared, items: list[Item]) -> tuple[int, int]:
    """Produce and save every item of ``items`` not already on disk (a warning line for each of
    an item's stage-2 warnings). Returns (made, skipped)."""
    from iss3d.infer.session import warn

    out = p.options.out
    todo = [it for it in items if not (out / it.relpath).is_file()]
    skipped = len(items) - len(todo)
    bar = None
    if p.options.progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="evaluate items", file=sys.stderr, unit="item")
    perturb = p.cfg.stage2.diversity.active(p.options.samples)
    made = 0
    try:
        for it in todo:
            seed = item_seed(p.options.seed, it.prompt, it.sample)
            request = ShapeRequest(
                it.prompt, it.sample, seed, torch.Generator().manual_seed(seed), perturb
            )
            t0 = time.perf_counter()
            shape = METHODS[it.method].run(p.ctx, request)
            t1 = time.perf_counter()
            for text in shape.warnings:
                warn(f"{it.relpath}: {text}")
            arrays, facts = describe_shape(shape, p.cfg, seed)
            meta = {
                "method": it.method,
                "prompt": it.prompt,
                "sample": it.sample,
                "seed": seed,
                **facts,
                "clip_score_per_step": [h["clip_score"] for h in shape.history],
                "warnings": shape.warnings,
                "info": shape.info,
                "generate_s": t1 - t0,
                "describe_s": time.perf_counter() - t1,
                "device": p.device.type,
            }
            save_item(out / it.relpath, arrays, meta)
            made += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return made, skipped


def _worker_command(o: EvaluateOptions, shard: str) -> list[str]:
    argv = [sys.executable, "-m", "iss3d", "evaluate"]
    argv += ["--texts", str(o.texts), "--ref-data", str(o.ref_data), "--out", str(o.out)]
    argv += ["--methods", o.methods, "--samples", str(o.samples), "--seed", str(o.seed)]
    argv += ["--config", o.config, "--fid-features", o.fid_features, "--device", o.device]
    for flag, value in (
        ("--stage1", o.stage1),
        ("--clip", o.clip),
        ("--stage1-nobg", o.stage1_nobg),
        ("--ei-d", o.ei_d),
        ("--judge", o.judge),
        ("--pointnet", o.pointnet),
    ):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--shard", shard, "--no-progress", *o.overrides]
    return argv


def worker_environment(
    index: int, workers: int, gpus: int, environ: Mapping[str, str], cpus: int
) -> dict[str, str]:
    """The environment of worker ``index``: with several GPUs its own one (round-robin); on
    a CPU an equal share of the cores (``OMP_NUM_THREADS``, unless already set), since
    workers that each start one thread per core slow each other down several times over."""
    env = dict(environ)
    if gpus > 1:
        env["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    if gpus == 0 and "OMP_NUM_THREADS" not in environ:
        env["OMP_NUM_THREADS"] = str(max(1, cpus // workers))
    return env


def run_workers(p: Prepared) -> None:
    """Generate with ``--workers`` processes, one shard each (GPUs round-robin when there are
    several CUDA devices); raise UserError if one fails."""
    o = p.options
    gpus = torch.cuda.device_count() if p.device.type == "cuda" else 0
    procs = []
    for i in range(o.workers):
        env = worker_environment(i, o.workers, gpus, os.environ, os.cpu_count() or 1)
        procs.append(subprocess.Popen(_worker_command(o, f"{i}/{o.workers}"), env=env))
    failed = []
    try:
        for i, proc in enumerate(procs):
            if proc.wait() != 0:
                failed.append(f"worker {i} (exit {proc.returncode})")
    except BaseException:
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.terminate()
        raise
    if failed:
        raise UserError(f"{', '.join(failed)} failed; finished items are kept, rerun to continue")


# -- the command ---------------------------------------------------------------------------------


def evaluate(options: EvaluateOptions) -> int:
    """``iss3d evaluate``: check, generate (resumable, sharded), measure and report.

    Returns 0, or 130 after Ctrl-C (finished items are kept).

    Raises:
        UserError: bad input (nothing written), or a failed worker.
    """
    p = prepare(options)
    out = options.out
    open_out(out, run_settings(p))
    items = plan_items(p.methods, p.texts, options.samples)
    try:
        if options.workers > 1:
            run_workers(p)
        else:
            mine = items
            if p.shard is not None:
                i, n = p.shard
                mine = [it for k, it in enumerate(items) if k % n == i]
            made, skipped = generate_items(p, mine)
            if p.shard is not None:
                print(
                    f"shard {p.shard[0]}/{p.shard[1]}: {made} items made, {skipped} already "
                    f"there, in {out}/items (the metrics come from a run without --shard)"
                )
                return 0
    except KeyboardInterrupt:
        print(
            "iss3d: interrupted; finished items are kept in "
            f"{out}/items, rerun the same command to continue",
            file=sys.stderr,
        )
        return 130
    missing = [it for it in items if not (out / it.relpath).is_file()]
    if missing:
        raise UserError(f"{len(missing)} items are missing in {out}/items (a worker stopped?)")
    results = compute_results(p, items)
    written = write_report(out, results, p)
    print(f"wrote {', '.join(str(w) for w in written)}")
    return 0
