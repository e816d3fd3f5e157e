"""Text to 3D in Python: ``iss3d.Generator``, the shapes it makes and its config.

::

    import iss3d
    gen = iss3d.Generator()                 # shipped models, or stage1=..., clip=..., device=...
    shape = gen("a red chair", seed=0)      # .mesh, .latent, .views, .scores
    shape.save("chair/")                    # the same files as `iss3d generate`

A :class:`Generator` loads its models once; each call runs stage 2 (the ``stage2`` section of
a ``configs/generate/`` preset) and makes the mesh and pictures, so calling it again costs only
those. ``iss3d generate`` runs through it: the same prompt, preset and seed give the same files
from either (timings aside).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from iss3d.core.config import StrictConfig, load_preset
from iss3d.core.device import resolve_device
from iss3d.infer.session import (
    Progress,
    build_guide,
    device_info,
    load_ensemble,
    resolve_models,
    versions,
    warn,
)
from iss3d.infer.shape_files import (
    LATENT_FILE,
    ExportConfig,
    ShapeRender,
    decoder_fingerprint,
    frames_score,
    render_shape,
    save_latent,
    write_run_files,
    write_shape,
)
from iss3d.infer.stage2 import Stage2Config

__all__ = ["GenerateConfig", "Generator", "Shape", "load_generate_config", "sample_seed"]


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


def sample_seed(seed: int, sample: int) -> int:
    """Seed of sample ``k`` of a run with ``seed`` (independent streams per sample)."""
    return int(np.random.SeedSequence([seed, sample]).generate_state(1, dtype=np.uint64)[0] >> 1)


class Generator:
    """Text -> coloured 3D shape with ISS stage 2, models loaded once.

    Args:
        stage1: a stage-1 checkpoint (default: the shipped ``models/pretrained/stage1.ckpt``).
        clip: a CLIP spec (default: ``clip.pt`` beside the checkpoint, else the spec it records).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        preset: a ``configs/generate/`` preset name or YAML path (default ``tiny``); reports
            record it.
        overrides: ``key=value`` overrides of the preset (e.g. ``"stage2.steps=10"``).
        config: a ready :class:`GenerateConfig` instead of preset and overrides (``preset``
            then only names where it came from; None: not said).

    Random-weight CLIP specs (``clip/<name>``) draw from torch's global generator while the
    models load; everything a call draws comes from its own seed.

    Raises:
        UserError: a bad preset, override, checkpoint, CLIP spec or device.
    """

    def __init__(
        self,
        stage1: str | Path | None = None,
        clip: str | None = None,
        device: str = "auto",
        preset: str | None = None,
        overrides: list[str] | tuple = (),
        config: GenerateConfig | None = None,
    ):
        t0 = time.perf_counter()
        if config is None:
            preset = preset or "tiny"
            config = load_generate_config(preset, overrides)
        self.config, self.preset = config, preset
        self.device, note = resolve_device(device)
        stage1 = Path(stage1) if stage1 is not None else None
        self.model, self.stage1, self.clip, self.clip_spec = resolve_models(
            stage1, clip, self.device
        )
        if note:
            print(f"iss3d: {note}", file=sys.stderr)
        guidance = self.config.stage2.guidance
        self.members, self.weights = load_ensemble(self.clip, guidance, self.device)
        self.decoder_sha256 = decoder_fingerprint(self.model.decoder)
        self.load_seconds = time.perf_counter() - t0
        self._guides: dict[str, tuple[Any, Any, list[str]]] = {}

    def guide(self, prompt: str):
        """(guide, prompt schedule, warnings) of ``prompt``, its text encoded once per
        Generator; the warnings are those encoding it raised (e.g. a prompt cut to CLIP's
        context), printed when they arose."""
        if prompt not in self._guides:
            seen: list[str] = []
            guide, schedule = build_guide(
                self.members, self.weights, prompt, self.config.stage2.guidance, seen
            )
            self._guides[prompt] = (guide, schedule, seen)
        return self._guides[prompt]

    def __call__(
        self,
        prompt: str,
        seed: int = 0,
        *,
        sample: int = 0,
        perturb: bool = False,
        progress: bool = False,
        label: str = "stage 2",
    ) -> Shape:
        """One shape of ``prompt``: stage 2 from M(f_T), then its mesh and pictures.

        ``sample`` k draws from :func:`sample_seed` (seed, k) (sample 0 of a seed is the shape
        ``iss3d generate --seed`` writes); ``perturb`` turns on the diversity perturbation
        of the preset's ``stage2.diversity`` (``iss3d generate --samples K`` with K > 1).
        ``progress``: a bar over the steps on stderr, titled ``label``.
        """
        from iss3d.infer.stage2 import run_stage2

        s2, ex = self.config.stage2, self.config.export
        base_guide = self.guide(prompt)[0]
        guide = base_guide.copy()
        generator = torch.Generator().manual_seed(sample_seed(seed, sample))
        bar = Progress(s2.steps, label, progress)
        try:
            result = run_stage2(
                self.model.mapper,
                self.model.decoder,
                guide,
                s2,
                generator,
                perturb=perturb,
                callback=bar,
            )
        finally:
            bar.close()
        decoder = self.model.decoder
        render = render_shape(
            decoder,
            result.latent_after,
            (decoder, result.latent_before),
            ex,
            s2.march,
            s2.cameras.mean_distance,
        )
        scores = {
            "before": frames_score(self.clip, render.before, guide.prompt_feature),
            "after": frames_score(self.clip, render.after, guide.prompt_feature),
            "per_step": [h["clip_score"] for h in result.history],
        }
        return Shape(self, prompt, seed, sample, result, render, scores)

    def report(
        self,
        prompt: str,
        seed: int,
        shapes: list[Shape],
        *,
        command: str | None = None,
        diversity: dict[str, Any] | None = None,
        timings: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """The ``report.json`` of a run that made ``shapes`` of ``prompt`` (see
        :mod:`iss3d.infer.generate`)."""
        _, schedule, seen = self.guide(prompt)
        return {
            "prompt": prompt,
            "seed": seed,
            "samples": len(shapes),
            "preset": self.preset,
            "command": command,
            "stage1": str(self.stage1),
            "clip": self.clip_spec,
            "clip_trained": bool(self.clip.trained),
            "ensemble": [m.spec for m in self.config.stage2.guidance.ensemble],
            "prompts": schedule.texts,
            "config": self.config.to_dict(),
            "device": device_info(self.device),
            "versions": versions(),
            "warnings": seen + [w for s in shapes for w in s.labelled_warnings(len(shapes))],
            "diversity": diversity,
            "results": [s.entry(len(shapes)) for s in shapes],
            "timings": timings if timings is not None else {"load_models_s": self.load_seconds},
        }


@dataclass
class Shape:
    """A generated shape and what was measured of it.

    Attributes:
        prompt, seed, sample: what made it.
        latent: (1, c_dim) the latent after stage 2; latent_before: M(f_T), before it.
        views: (eval_views, H, W, 3) uint8 renders of the shape (the export's evaluation
            views); views_before: the same views of the shape before stage 2.
        frames: (turntable_views, H, W, 3) uint8 turntable.
        scores: ``before`` / ``after`` (CLIP score of the prompt on the evaluation views)
            and ``per_step`` (stage 2's score at each step).
        warnings: stage-2 steps skipped for non-finite numbers, an unchanged shape.
        history: stage 2's record of each step.
    """

    generator: Generator = field(repr=False)
    prompt: str
    seed: int
    sample: int
    result: Any = field(repr=False)
    render: ShapeRender = field(repr=False)
    scores: dict[str, Any]

    @property
    def latent(self) -> torch.Tensor:
        return self.result.latent_after

    @property
    def latent_before(self) -> torch.Tensor:
        return self.result.latent_before

    @property
    def views(self) -> np.ndarray:
        return self.render.after

    @property
    def views_before(self) -> np.ndarray:
        return self.render.before

    @property
    def frames(self) -> np.ndarray:
        return self.render.frames

    @property
    def warnings(self) -> list[str]:
        return list(self.result.warnings)

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.result.history

    @property
    def mesh(self):
        """The surface as a ``trimesh.Trimesh`` with vertex colours (no faces when empty)."""
        from iss3d.infer.export import to_trimesh

        return to_trimesh(self.render.mesh)

    def labelled_warnings(self, samples: int) -> list[str]:
        """The warnings, prefixed ``sample k: `` in a run of several samples."""
        label = f"sample {self.sample}: " if samples > 1 else ""
        return [label + w for w in self.result.warnings]

    def entry(self, samples: int = 1) -> dict[str, Any]:
        """This shape's item of ``report.json``'s ``results``."""
        result, render = self.result, self.render
        return {
            "sample": self.sample,
            "seed": sample_seed(self.seed, self.sample),
            "folder": "." if samples == 1 else f"sample_{self.sample}",
            "perturbed": result.perturbed,
            "clip_score_before": self.scores["before"],
            "clip_score_after": self.scores["after"],
            "clip_score_per_step": self.scores["per_step"],
            "history": result.history,
            "warnings": result.warnings,
            "mesh": render.mesh_info,
            "latent_norm": float(result.latent_after.norm()),
            "timings": {"stage2_s": result.seconds, **render.times},
        }

    def write_files(self, folder: Path, samples: int = 1) -> None:
        """The shape's own files into ``folder``: ``latent.pt``, the mesh, the turntable and
        ``views.png`` (:func:`iss3d.infer.shape_files.write_shape`); a shape without a surface
        gets a warning instead of a mesh (``samples``: of the run, for the warning's label)."""
        gen = self.generator
        save_latent(
            folder / LATENT_FILE,
            self.latent,
            prompt=self.prompt,
            stage1=gen.stage1,
            clip=gen.clip_spec,
            decoder_sha256=gen.decoder_sha256,
            latent_before=self.latent_before,
        )
        if not self.render.mesh_info["written"]:
            label = f"sample {self.sample}: " if samples > 1 else ""
            warn(f"{label}the shape is empty (no surface); no mesh written")
        write_shape(self.render, folder)

    def save(self, out: str | Path, command: str | None = None) -> Path:
        """Write the files ``iss3d generate`` writes for one shape into the folder ``out``
        (created; an existing one is an error), atomically: a temporary sibling renamed at the
        end."""
        from iss3d.core.atomic import atomic_directory

        gen = self.generator
        with atomic_directory(out) as folder:
            self.write_files(folder)
            report = gen.report(self.prompt, self.seed, [self], command=command)
            write_run_files(folder, report, gen.config.to_dict(), command)
        return Path(out)
