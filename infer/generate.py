"""``iss3d generate``: text -> coloured 3D shape(s) with ISS stage 2, and the files around it.

For each of K samples (``--samples``) a :class:`iss3d.infer.generator.Generator` call: stage 2
(:func:`iss3d.infer.stage2.run_stage2`) from the stage-1 model, then a mesh
(:func:`iss3d.models.mesh.extract_mesh`, vertex colours from the decoder), a turntable and
before/after views (:mod:`iss3d.infer.shape_files`). Outputs, in ``OUT/`` (or
``OUT/sample_<k>/`` when K > 1):

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
  (:func:`iss3d.infer.shape_files.save_latent`), for ``iss3d stylize``.
- ``config.yaml`` (the resolved config) and ``command.txt``, at the top level.

Everything is written into a temporary sibling folder renamed to ``OUT`` at the end, so an
error or Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iss3d.core.errors import UserError
from iss3d.infer.generator import GenerateConfig, Generator, Shape
from iss3d.infer.session import warn, warning_suffix

__all__ = ["check_generation_prompt", "default_out", "diversity", "generate"]

#: A prompt this long (characters) is cut in folder names.
_SLUG_CHARS = 48


# -- checks ------------------------------------------------------------------------------


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
    from iss3d.core.atomic import atomic_directory, write_json
    from iss3d.infer.shape_files import write_run_files

    timings: dict[str, float] = {}
    with atomic_directory(out) as folder:
        torch.manual_seed(seed)  # random-weight CLIP specs (clip/<name>) draw from it
        gen = Generator(stage1, clip, device, preset=preset, config=cfg)
        timings["load_models_s"] = gen.load_seconds
        t0 = time.perf_counter()
        gen.guide(prompt)
        timings["encode_text_s"] = time.perf_counter() - t0
        perturb = cfg.stage2.diversity.active(samples)
        shapes: list[Shape] = []
        for k in range(samples):
            target = folder if samples == 1 else folder / f"sample_{k}"
            target.mkdir(exist_ok=True)
            label = f"sample {k + 1}/{samples}" if samples > 1 else "stage 2"
            shape = gen(prompt, seed, sample=k, perturb=perturb, progress=progress, label=label)
            shape.write_files(target, samples)
            if samples > 1:
                write_json(target / "report.json", {"prompt": prompt, **shape.entry(samples)})
            shapes.append(shape)
        div = None
        if samples > 1:
            t0 = time.perf_counter()
            vertices = [s.render.mesh.vertices for s in shapes]
            div = diversity(gen.model.decoder, [s.latent for s in shapes], vertices, seed=seed)
            timings["diversity_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        report = gen.report(prompt, seed, shapes, command=command, diversity=div, timings=timings)
        write_run_files(folder, report, cfg.to_dict(), command)
    _summary(out, report["results"], div)
    return 0


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
