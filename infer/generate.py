"""``iss3d generate``: text -> coloured 3D shape(s) with ISS stage 2, and the files around it.

For each of K samples (``--samples``): stage 2 (:func:`iss3d.infer.stage2.run_stage2`) from the
stage-1 model, then a mesh (:func:`iss3d.models.mesh.extract_mesh`, vertex colours from the
decoder), a turntable and before/after views. Outputs, in ``OUT/`` (or ``OUT/sample_<k>/``
when K > 1):

- ``mesh.glb``, ``mesh.ply``: the surface with vertex colours (skipped, with a warning, when
  the shape is empty).
- ``turntable.gif`` (and the ``turntable.png`` strip): views around the object.
- ``views.png``: one row per evaluation view, the shape before stage 2 (left) and after it
  (right).
- ``report.json`` (strict JSON: ``null`` for a number that is not finite): the prompt, the
  seed, the resolved config, the CLIP score per step and before / after on the evaluation
  views, time per phase, device and versions, warnings (stage-2 steps skipped for non-finite
  numbers among them); at the top level also the diversity of the K shapes (mean pairwise
  volumetric IoU and Chamfer distance).
- ``latent.pt``: the final latent c with the stage-1 checkpoint and CLIP model used
  (:func:`iss3d.infer.stylize.save_latent`), for ``iss3d stylize``.
- ``config.yaml`` (the resolved config) and ``command.txt``, at the top level.

Everything is written into a temporary sibling folder renamed to ``OUT`` at the end, so an
error or Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import filecmp
import itertools
import platform
import re
import sys
import time
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from iss3d.core.config import StrictConfig, load_preset
from iss3d.core.device import resolve_device
from iss3d.core.errors import UserError
from iss3d.core.resources import pretrained_dir
from iss3d.infer.stage2 import Stage2Config

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_STAGE1",
    "PRETRAINED_DIR",
    "ExportConfig",
    "GenerateConfig",
    "diversity",
    "generate",
    "load_generate_config",
]

#: Where ``iss3d generate`` looks for models when --stage1 / --clip are not given.
PRETRAINED_DIR = pretrained_dir()
DEFAULT_STAGE1 = PRETRAINED_DIR / "stage1.ckpt"
DEFAULT_CLIP = PRETRAINED_DIR / "clip.pt"

#: A prompt this long (characters) is cut in folder names.
_SLUG_CHARS = 48


@dataclass
class ExportConfig:
    """What is made of each sample after stage 2 (YAML section ``export``).

    Attributes:
        mesh_resolution0, mesh_upsampling_steps: the coarse-to-fine occupancy grid of the mesh
            (resolution0 x 2^steps cells per side; DVR: 32 and 3, i.e. 256^3).
        march_steps: ray samples of the turntable and views renders (None: stage 2's).
        turntable_views, turntable_resolution: frames and their side in pixels.
        elevation: degrees, of the turntable and the evaluation views.
        distance: camera distance of both (None: the middle of stage 2's distance range).
        eval_views: evaluation views (evenly spaced azimuths from 0, the front) for
            ``views.png`` and the CLIP scores before / after; when ``turntable_views`` is a
            multiple of it the "after" images are turntable frames.
    """

    mesh_resolution0: int = 32
    mesh_upsampling_steps: int = 3
    march_steps: int | None = None
    turntable_views: int = 12
    turntable_resolution: int = 128
    elevation: float = 20.0
    distance: float | None = None
    eval_views: int = 4

    def __post_init__(self) -> None:
        if self.mesh_resolution0 < 4 or self.mesh_upsampling_steps < 0:
            raise UserError("export config: mesh_resolution0 >= 4, mesh_upsampling_steps >= 0")
        if self.march_steps is not None and self.march_steps < 2:
            raise UserError("export config: 'march_steps' must be >= 2 or null")
        if self.turntable_views < 1 or self.eval_views < 1 or self.turntable_resolution < 8:
            raise UserError(
                "export config: turntable_views and eval_views >= 1, turntable_resolution >= 8"
            )
        if self.distance is not None and self.distance <= 0.9:
            raise UserError("export config: 'distance' must exceed 0.9 or be null")


@dataclass
class GenerateConfig(StrictConfig):
    """A ``configs/generate/*.yaml`` preset: stage 2 and the export of its results."""

    CONFIG_NAME: ClassVar[str] = "generate config"

    stage2: Stage2Config = field(default_factory=Stage2Config)
    export: ExportConfig = field(default_factory=ExportConfig)


def load_generate_config(
    preset: str, overrides: list[str | tuple[str, Any]] | tuple = ()
) -> GenerateConfig:
    """A preset name (``configs/generate/<name>.yaml``) or a YAML path, plus ``key=value``
    overrides, parsed strictly (UserError for unknown keys, bad types or values)."""
    return load_preset(GenerateConfig, "generate", preset, overrides)


# -- checks ------------------------------------------------------------------------------


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"iss3d: warning: {' '.join(str(message).split())}", file=sys.stderr)


def check_generation_prompt(prompt: str) -> str:
    """The prompt, checked: not empty, no control characters (UserError); warns when it is
    mostly not Latin script (the CLIP models here learnt English captions)."""
    from iss3d.models.clip import check_prompt

    check_prompt(prompt)
    letters = [ch for ch in prompt if ch.isalpha()]
    latin = [ch for ch in letters if "LATIN" in unicodedata.name(ch, "")]
    if not letters:
        warn(f"the prompt {prompt[:40]!r} has no letters; CLIP may not match it to anything")
    elif len(latin) < len(letters) / 2:
        warn(
            f"the prompt {prompt[:40]!r} is mostly non-Latin text; CLIP models trained on "
            "English captions match it poorly"
        )
    return prompt


def default_out(prompt: str, seed: int) -> Path:
    """``generated/<prompt as a file name>-seed<S>``."""
    words = re.findall(r"\w+", unicodedata.normalize("NFKC", prompt).lower())
    slug = "-".join(words)[:_SLUG_CHARS].strip("-") or "prompt"
    return Path("generated") / f"{slug}-seed{seed}"


def resolve_models(stage1: Path | None, clip: str | None, device: torch.device):
    """Load the stage-1 model and the CLIP model that goes with it.

    The stage-1 checkpoint: ``stage1``, else ``models/pretrained/stage1.ckpt``. The CLIP
    model: ``clip``; else ``clip.pt`` beside the checkpoint; else the spec the checkpoint
    records. A CLIP whose feature size is not the mapper's input size is an error; a
    different spec of the right size a warning.

    Returns (stage-1 model, its path, CLIP model, CLIP spec).
    """
    from iss3d.models.clip import load_clip
    from iss3d.models.loaders import load_stage1

    if stage1 is None:
        if not DEFAULT_STAGE1.is_file():
            raise UserError(
                f"no stage-1 model: {DEFAULT_STAGE1} does not exist; train one with `iss3d fit "
                "stage1` (see README) and pass --stage1 CKPT (and --clip SPEC), or put "
                "stage1.ckpt and clip.pt in that folder"
            )
        stage1 = DEFAULT_STAGE1
    model = load_stage1(stage1, device)
    recorded = model.clip_spec
    if clip is None:
        sibling = Path(stage1).parent / "clip.pt"
        candidates = ([str(sibling)] if sibling.is_file() else []) + (
            [recorded] if recorded else []
        )
        if not candidates:
            raise UserError(f"{stage1}: records no CLIP model; pass --clip SPEC")
        errors = []
        clip_model = None
        for spec in candidates:
            try:
                clip_model = load_clip(spec, device)
                clip = spec
                break
            except UserError as err:
                errors.append(str(err))
        if clip_model is None:
            raise UserError(
                f"{stage1}: its CLIP model is not available here ({errors[-1]}); pass --clip SPEC"
            )
    else:
        clip_model = load_clip(clip, device)
        same_size = clip_model.embed_dim == model.clip_embed_dim
        if recorded and same_size and not _same_spec(clip, recorded):
            warn(
                f"CLIP {clip!r} is not the one {stage1} was trained with ({recorded!r}); "
                "the feature sizes match, but the shapes may not fit the text"
            )
    if clip_model.embed_dim != model.clip_embed_dim:
        raise UserError(
            f"CLIP {clip!r} gives {clip_model.embed_dim}-d features but the stage-1 checkpoint "
            f"{stage1} was trained with {recorded!r} ({model.clip_embed_dim}-d); pass that CLIP "
            "with --clip"
        )
    return model, Path(stage1), clip_model, str(clip)


def _same_spec(a: str, b: str) -> bool:
    """The same spec, the same file, or two files with the same bytes (a copied checkpoint)."""
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.is_file() and pb.is_file() and filecmp.cmp(pa, pb, shallow=False)


# -- diversity ------------------------------------------------------------------------------------


@torch.no_grad()
def diversity(
    decoder: torch.nn.Module,
    latents: list[torch.Tensor],
    vertices: list[np.ndarray],
    grid: int = 32,
    points: int = 2048,
    seed: int = 0,
) -> dict[str, Any]:
    """How different K shapes are.

    mean_pairwise_iou: mean over pairs of the volumetric IoU of the occupied cells of a
        (grid+1)^3 lattice over the unit cube (decoder logit > 0); 1 for identical shapes, and
        for two empty ones. Lower is more diverse.
    mean_pairwise_chamfer: mean over pairs of the symmetric Chamfer distance (mean nearest
        L2 distance, both ways, averaged) between up to ``points`` mesh vertices of each
        (object units); None when fewer than two shapes have a mesh.
    """
    from iss3d.models.march import occupancy_in_chunks

    axis = torch.linspace(-0.5, 0.5, grid + 1)
    lattice = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)
    occupied = []
    for c in latents:
        logits = occupancy_in_chunks(decoder, c, lattice.to(c.device), 65536)[0]
        occupied.append((logits > 0).cpu())
    ious = []
    for a, b in itertools.combinations(occupied, 2):
        union = (a | b).sum().item()
        ious.append(1.0 if union == 0 else (a & b).sum().item() / union)
    g = torch.Generator().manual_seed(seed)
    clouds = []
    for v in vertices:
        if len(v) == 0:
            continue
        pts = torch.from_numpy(np.asarray(v, dtype=np.float32))
        if len(pts) > points:
            pts = pts[torch.randperm(len(pts), generator=g)[:points]]
        clouds.append(pts)
    chamfers = []
    for a, b in itertools.combinations(clouds, 2):
        d = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
        chamfers.append(0.5 * (d.min(1).values.mean() + d.min(0).values.mean()).item())
    return {
        "mean_pairwise_iou": float(np.mean(ious)) if ious else None,
        "mean_pairwise_chamfer": float(np.mean(chamfers)) if chamfers else None,
        "pairs": len(ious),
        "iou_grid": grid + 1,
        "chamfer_points": points,
    }


# -- the run --------------------------------------------------------------------------------------


def sample_seed(seed: int, sample: int) -> int:
    """Seed of sample ``k`` of a run with ``seed`` (independent streams per sample)."""
    return int(np.random.SeedSequence([seed, sample]).generate_state(1, dtype=np.uint64)[0] >> 1)


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("iss3d", "torch", "open_clip_torch", "numpy", "trimesh", "scikit-image"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["name"] = torch.cuda.get_device_name(device)
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def views_sheet(before: np.ndarray, after: np.ndarray, gap: int = 4) -> np.ndarray:
    """(V, H, W, 3) before and after frames -> one image, a row per view: before | after."""
    v, h, w, _ = before.shape
    sheet = np.full((v * h, 2 * w + gap, 3), 255, dtype=np.uint8)
    for i in range(v):
        sheet[i * h : (i + 1) * h, :w] = before[i]
        sheet[i * h : (i + 1) * h, w + gap :] = after[i]
    return sheet


class _Progress:
    """A tqdm bar over stage-2 steps showing the current CLIP score (nothing when disabled)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=True, unit="step")

    def __call__(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(clip=f"{record['clip_score']:.4f}", loss=f"{record['loss']:.4f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def generate(
    prompt: str,
    cfg: GenerateConfig,
    out: str | Path,
    *,
    seed: int = 0,
    samples: int = 1,
    stage1: Path | None = None,
    clip: str | None = None,
    device: str = "auto",
    progress: bool = True,
    command: str | None = None,
    preset: str | None = None,
    check_prompt: bool = True,
    make_parent: bool = False,
) -> int:
    """Run stage 2 for ``samples`` shapes of ``prompt`` and write every output to ``out``.

    Same prompt, config and seed on the CPU -> identical files (timings in the reports aside).
    ``make_parent``: create ``out``'s parent folder if missing (the default ``generated/``),
    and remove it again if the run fails and it is empty.

    Raises:
        UserError: bad prompt, output folder, models or config (before any work is done).
    """
    t_start = time.perf_counter()
    if check_prompt:
        check_generation_prompt(prompt)
    out = Path(out)
    made_parent = make_parent and not out.parent.exists()
    if made_parent:
        try:
            out.parent.mkdir(parents=True)
        except OSError as err:
            raise UserError(f"{out.parent}: cannot create the output folder ({err})") from None
    try:
        return _generate(
            prompt,
            cfg,
            out,
            seed,
            samples,
            stage1,
            clip,
            device,
            progress,
            command,
            preset,
            t_start,
        )
    except BaseException:
        if made_parent:  # leave no empty folder behind
            with contextlib.suppress(OSError):
                out.parent.rmdir()
        raise


def _generate(
    prompt: str,
    cfg: GenerateConfig,
    out: Path,
    seed: int,
    samples: int,
    stage1: Path | None,
    clip: str | None,
    device: str,
    progress: bool,
    command: str | None,
    preset: str | None,
    t_start: float,
) -> int:
    import yaml
    from PIL import Image

    from iss3d.core.atomic import atomic_directory, write_json
    from iss3d.infer.export import render_turntable, save_mesh, save_turntable
    from iss3d.infer.guidance import Guide, PromptSchedule
    from iss3d.infer.stage2 import run_stage2
    from iss3d.infer.stylize import LATENT_FILE, save_latent
    from iss3d.models.clip import load_clip
    from iss3d.models.mesh import MeshConfig, extract_mesh
    from iss3d.models.renderer import Renderer

    s2, ex = cfg.stage2, cfg.export
    timings: dict[str, float] = {}
    warnings_seen: list[str] = []
    with atomic_directory(out) as folder:
        t0 = time.perf_counter()
        dev, note = resolve_device(device)
        torch.manual_seed(seed)  # random-weight CLIP specs (clip/<name>) draw from it
        model, stage1_path, clip_model, clip_spec = resolve_models(stage1, clip, dev)
        if note:
            print(f"iss3d: {note}", file=sys.stderr)
        members, weights = [clip_model], [s2.guidance.clip_weight]
        for member in s2.guidance.ensemble:
            members.append(load_clip(member.spec, dev))
            weights.append(member.weight)
        timings["load_models_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            schedule = PromptSchedule(prompt, s2.guidance)
            # the stage-1 CLIP first: its text feature is M's input and the score's reference
            base_guide = Guide(members, weights, schedule, s2.guidance)
        for w in caught:
            text = " ".join(str(w.message).split())
            if text not in warnings_seen:
                warnings_seen.append(text)
                warn(text)
        timings["encode_text_s"] = time.perf_counter() - t0

        march = dataclasses.replace(s2.march, n_steps=ex.march_steps or s2.march.n_steps)
        view_renderer = Renderer(march)
        distance = ex.distance if ex.distance is not None else s2.cameras.mean_distance
        perturb = s2.diversity.active(samples)
        mesh_cfg = MeshConfig(
            resolution0=ex.mesh_resolution0,
            upsampling_steps=ex.mesh_upsampling_steps,
            padding=s2.march.padding,
            chunk=s2.march.chunk,
        )
        results: list[dict[str, Any]] = []
        latents: list[torch.Tensor] = []
        vertices: list[np.ndarray] = []
        for k in range(samples):
            target = folder if samples == 1 else folder / f"sample_{k}"
            target.mkdir(exist_ok=True)
            times: dict[str, float] = {}
            guide = base_guide.copy()
            generator = torch.Generator().manual_seed(sample_seed(seed, k))
            bar = _Progress(
                s2.steps, f"sample {k + 1}/{samples}" if samples > 1 else "stage 2", progress
            )
            try:
                result = run_stage2(
                    model.mapper,
                    model.decoder,
                    guide,
                    s2,
                    generator,
                    perturb=perturb,
                    callback=bar,
                )
            finally:
                bar.close()
            times["stage2_s"] = result.seconds
            sample_label = f"sample {k}: " if samples > 1 else ""
            warnings_seen += [sample_label + w for w in result.warnings]
            c_after = result.latent_after
            save_latent(
                target / LATENT_FILE,
                c_after,
                prompt=prompt,
                stage1=stage1_path,
                clip=clip_spec,
                decoder=model.decoder,
                latent_before=result.latent_before,
            )

            t0 = time.perf_counter()
            mesh = extract_mesh(model.decoder, c_after, mesh_cfg)
            times["mesh_s"] = time.perf_counter() - t0
            mesh_info: dict[str, Any] = {
                "vertices": len(mesh.vertices),
                "faces": len(mesh.faces),
                "written": len(mesh.faces) > 0,
                "resolution": mesh_cfg.resolution,
            }
            if len(mesh.faces):
                for suffix in ("glb", "ply"):
                    save_mesh(mesh, target / f"mesh.{suffix}")
            else:
                warn(f"{sample_label}the shape is empty (no surface); no mesh written")
            times["mesh_write_s"] = time.perf_counter() - t0 - times["mesh_s"]

            t0 = time.perf_counter()
            frames = render_turntable(
                model.decoder,
                c_after,
                view_renderer,
                ex.turntable_views,
                ex.turntable_resolution,
                ex.elevation,
                distance,
            )
            save_turntable(frames, target)
            times["turntable_s"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            before = render_turntable(
                model.decoder,
                result.latent_before,
                view_renderer,
                ex.eval_views,
                ex.turntable_resolution,
                ex.elevation,
                distance,
            )
            if ex.turntable_views % ex.eval_views == 0:
                after = frames[:: ex.turntable_views // ex.eval_views]
            else:
                after = render_turntable(
                    model.decoder,
                    c_after,
                    view_renderer,
                    ex.eval_views,
                    ex.turntable_resolution,
                    ex.elevation,
                    distance,
                )
            Image.fromarray(views_sheet(before, after)).save(target / "views.png")
            score_before = _score(clip_model, before, guide.prompt_feature)
            score_after = _score(clip_model, after, guide.prompt_feature)
            times["views_s"] = time.perf_counter() - t0

            entry = {
                "sample": k,
                "seed": sample_seed(seed, k),
                "folder": "." if samples == 1 else f"sample_{k}",
                "perturbed": result.perturbed,
                "clip_score_before": score_before,
                "clip_score_after": score_after,
                "clip_score_per_step": [h["clip_score"] for h in result.history],
                "history": result.history,
                "warnings": result.warnings,
                "mesh": mesh_info,
                "latent_norm": float(c_after.norm()),
                "timings": times,
            }
            results.append(entry)
            latents.append(c_after)
            vertices.append(mesh.vertices)
            if samples > 1:
                write_json(target / "report.json", {"prompt": prompt, **entry})

        div = None
        if samples > 1:
            t0 = time.perf_counter()
            div = diversity(model.decoder, latents, vertices, seed=seed)
            timings["diversity_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        report = {
            "prompt": prompt,
            "seed": seed,
            "samples": samples,
            "preset": preset,
            "command": command,
            "stage1": str(stage1_path),
            "clip": clip_spec,
            "clip_trained": bool(clip_model.trained),
            "ensemble": [m.spec for m in s2.guidance.ensemble],
            "prompts": schedule.texts,
            "config": cfg.to_dict(),
            "device": device_info(dev),
            "versions": versions(),
            "warnings": warnings_seen,
            "diversity": div,
            "results": results,
            "timings": timings,
        }
        write_json(folder / "report.json", report)
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if command:
            (folder / "command.txt").write_text(command + "\n")
    _summary(out, results, div)
    return 0


def _score(clip_model, frames: np.ndarray, text: torch.Tensor) -> float:
    from iss3d.infer.guidance import clip_score

    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255.0)
    return clip_score(clip_model, images, text)


def warning_suffix(warnings: list[str]) -> str:
    """``warnings`` for the end of a summary line: "; warning: <text>" each ("" for none)."""
    return "".join(f"; warning: {w}" for w in warnings)


def _summary(out: Path, results: list[dict[str, Any]], div: dict[str, Any] | None) -> None:
    for r in results:
        where = out if r["folder"] == "." else out / r["folder"]
        files = "mesh.glb/.ply, " if r["mesh"]["written"] else ""
        print(
            f"wrote {where} ({files}turntable.gif, views.png, report.json): CLIP score "
            f"{r['clip_score_before']:.4f} -> {r['clip_score_after']:.4f}"
            f"{warning_suffix(r['warnings'])}"
        )
    if div is not None:
        chamfer = div["mean_pairwise_chamfer"]
        chamfer_text = "n/a" if chamfer is None else f"{chamfer:.4f}"
        print(
            f"diversity of {len(results)} samples: mean pairwise IoU "
            f"{div['mean_pairwise_iou']:.3f}, Chamfer {chamfer_text}"
        )
