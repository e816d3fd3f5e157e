"""The outputs of a generated or stylized shape, made and written in one place.

:func:`render_shape` makes what ``iss3d generate`` and ``iss3d stylize`` show of a shape: the
mesh with vertex colours, the turntable, and the evaluation views before and after (the
``export`` section of their presets, :class:`ExportConfig`); :func:`write_shape` writes them:

- ``mesh.glb``, ``mesh.ply``: the surface with vertex colours (skipped, with a warning, when
  the shape is empty);
- ``turntable.gif`` and its ``turntable.png`` strip;
- ``views.png``: one row per evaluation view, before (left) and after (right).

Beside them: ``latent.pt`` (:func:`save_latent`, what ``iss3d stylize`` needs to rebuild a
generated shape) and the run's ``report.json``, ``config.yaml`` and ``command.txt``
(:func:`write_run_files`). ``iss3d export`` (an SVR reconstruction) writes its mesh and
turntable with :func:`write_mesh`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from iss3d.core.errors import UserError
from iss3d.infer.export import render_turntable, save_mesh, save_turntable
from iss3d.models.march import ImplicitField, MarchConfig
from iss3d.models.mesh import Mesh, MeshConfig, extract_mesh
from iss3d.models.renderer import Renderer

__all__ = [
    "LATENT_FILE",
    "ExportConfig",
    "ShapeRender",
    "decoder_fingerprint",
    "frames_score",
    "load_latent",
    "render_shape",
    "save_latent",
    "views_sheet",
    "write_mesh",
    "write_run_files",
    "write_shape",
]

#: What ``iss3d generate`` writes beside each shape for ``iss3d stylize``.
LATENT_FILE = "latent.pt"
_LATENT_FORMAT = "iss3d-latent"


@dataclass
class ExportConfig:
    """What is made of a shape after stage 2 or stylization (YAML section ``export``).

    Attributes:
        mesh_resolution0, mesh_upsampling_steps: the coarse-to-fine occupancy grid of the mesh
            (resolution0 x 2^steps cells per side; DVR: 32 and 3, i.e. 256^3).
        march_steps: ray samples of the turntable and views renders (None: the loop's).
        turntable_views, turntable_resolution: frames and their side in pixels.
        elevation: degrees, of the turntable and the evaluation views.
        distance: camera distance of both (None: the middle of the loop's distance range).
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
class ShapeRender:
    """A shape as the outputs show it.

    Attributes:
        mesh: the surface (vertices (N, 3), faces (F, 3), vertex colours (N, 3) uint8);
            no faces when the shape is empty.
        mesh_info: vertices, faces, written (whether there is a mesh to write), resolution.
        frames: (turntable_views, H, W, 3) uint8 turntable of the shape.
        before, after: (eval_views, H, W, 3) uint8 evaluation views of the initial shape and of
            this one.
        times: seconds per phase (mesh_s, turntable_s, views_s).
    """

    mesh: Mesh
    mesh_info: dict[str, Any]
    frames: np.ndarray
    before: np.ndarray
    after: np.ndarray
    times: dict[str, float]


def render_shape(
    field: ImplicitField,
    c: torch.Tensor,
    initial: tuple[ImplicitField, torch.Tensor],
    export: ExportConfig,
    march: MarchConfig,
    mean_distance: float,
) -> ShapeRender:
    """Mesh, turntable and before / after views of the shape ``field`` at latent ``c`` (1, C),
    the "before" views from ``initial`` = (field, latent) of the shape before the loop.

    ``march``: the loop's march (its padding and chunk also set the mesh grid's);
    ``mean_distance``: the camera distance when ``export.distance`` is None.
    """
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    mesh_cfg = MeshConfig(
        resolution0=export.mesh_resolution0,
        upsampling_steps=export.mesh_upsampling_steps,
        padding=march.padding,
        chunk=march.chunk,
    )
    mesh = extract_mesh(field, c, mesh_cfg)
    times["mesh_s"] = time.perf_counter() - t0
    mesh_info = {
        "vertices": len(mesh.vertices),
        "faces": len(mesh.faces),
        "written": len(mesh.faces) > 0,
        "resolution": mesh_cfg.resolution,
    }
    renderer = Renderer(dataclasses.replace(march, n_steps=export.march_steps or march.n_steps))
    distance = export.distance if export.distance is not None else mean_distance
    view = (export.turntable_resolution, export.elevation, distance)

    t0 = time.perf_counter()
    frames = render_turntable(field, c, renderer, export.turntable_views, *view)
    times["turntable_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    before = render_turntable(*initial, renderer, export.eval_views, *view)
    if export.turntable_views % export.eval_views == 0:
        after = frames[:: export.turntable_views // export.eval_views]
    else:
        after = render_turntable(field, c, renderer, export.eval_views, *view)
    times["views_s"] = time.perf_counter() - t0
    return ShapeRender(mesh, mesh_info, frames, before, after, times)


def write_mesh(mesh: Mesh, folder: Path, formats: tuple[str, ...]) -> None:
    """``mesh.<format>`` for each of ``formats`` (UserError for an empty mesh)."""
    for suffix in formats:
        save_mesh(mesh, folder / f"mesh.{suffix}")


def write_shape(shape: ShapeRender, folder: Path) -> None:
    """``mesh.glb`` and ``mesh.ply`` (when the shape has a surface), ``turntable.gif`` /
    ``.png`` and ``views.png`` of ``shape`` into ``folder``."""
    from PIL import Image

    if shape.mesh_info["written"]:
        write_mesh(shape.mesh, folder, ("glb", "ply"))
    save_turntable(shape.frames, folder)
    Image.fromarray(views_sheet(shape.before, shape.after)).save(folder / "views.png")


def views_sheet(before: np.ndarray, after: np.ndarray, gap: int = 4) -> np.ndarray:
    """(V, H, W, 3) before and after frames -> one image, a row per view: before | after."""
    v, h, w, _ = before.shape
    sheet = np.full((v * h, 2 * w + gap, 3), 255, dtype=np.uint8)
    for i in range(v):
        sheet[i * h : (i + 1) * h, :w] = before[i]
        sheet[i * h : (i + 1) * h, w + gap :] = after[i]
    return sheet


def frames_score(clip_model, frames: np.ndarray, text: torch.Tensor) -> float:
    """CLIP score (mean cosine over the views) of (V, H, W, 3) uint8 ``frames`` and the text
    feature ``text`` (D,)."""
    from iss3d.infer.guidance import clip_score

    images = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255.0)
    return clip_score(clip_model, images, text)


def write_run_files(
    folder: Path, report: dict[str, Any], config: dict[str, Any], command: str | None
) -> None:
    """``report.json`` (strict JSON), ``config.yaml`` and, when given, ``command.txt``."""
    import yaml

    from iss3d.core.atomic import write_json

    write_json(folder / "report.json", report)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if command:
        (folder / "command.txt").write_text(command + "\n")


# -- the latent file ------------------------------------------------------------------------------


def decoder_fingerprint(decoder: nn.Module) -> str:
    """sha256 of a module's state (keys, dtypes, shapes and values): which decoder a latent
    belongs to."""
    h = hashlib.sha256()
    for key, value in sorted(decoder.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def save_latent(
    path: str | Path,
    latent: torch.Tensor,
    *,
    prompt: str,
    stage1: str | Path,
    clip: str,
    decoder_sha256: str,
    latent_before: torch.Tensor | None = None,
) -> Path:
    """Write ``latent.pt``: what ``iss3d stylize`` needs to rebuild a generated shape.

    Contents (``torch.load(..., weights_only=True)`` reads it): ``format``
    ("iss3d-latent"), ``version`` 1, ``latent`` (1, c_dim) float32, ``latent_before`` (the
    shape before stage 2) or None, ``prompt``, ``stage1`` (the checkpoint's absolute path),
    ``clip`` (the CLIP spec; absolute when it is a file), ``decoder_sha256``
    (:func:`decoder_fingerprint` of the stage-1 decoder).
    """
    clip_path = Path(clip)
    data = {
        "format": _LATENT_FORMAT,
        "version": 1,
        "latent": latent.detach().float().cpu().reshape(1, -1).clone(),
        "latent_before": None
        if latent_before is None
        else latent_before.detach().float().cpu().reshape(1, -1).clone(),
        "prompt": prompt,
        "stage1": str(Path(stage1).resolve()),
        "clip": str(clip_path.resolve()) if clip_path.is_file() else str(clip),
        "decoder_sha256": decoder_sha256,
    }
    path = Path(path)
    torch.save(data, path)
    return path


def load_latent(run_dir: str | Path) -> dict[str, Any]:
    """Read ``RUN_DIR/latent.pt`` (see :func:`save_latent`).

    Raises:
        UserError: RUN_DIR is missing or not a folder, holds several samples, is not a
            generate folder, or its latent file is unreadable or not one.
    """
    from iss3d.models.checkpoints import safe_load

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UserError(f"{run_dir}: no such folder")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a folder (expected an `iss3d generate` output folder)")
    path = run_dir / LATENT_FILE
    if not path.is_file():
        _no_latent(run_dir)
    data = safe_load(path, what="latent")
    keys = ("format", "latent", "stage1", "clip", "prompt")
    if (
        not isinstance(data, dict)
        or data.get("format") != _LATENT_FORMAT
        or not all(k in data for k in keys)
    ):
        raise UserError(f"{path}: not an iss3d latent file")
    c = data["latent"]
    if not isinstance(c, torch.Tensor) or c.dim() != 2 or c.shape[0] != 1:
        raise UserError(f"{path}: the latent must be a (1, c_dim) tensor")
    if not torch.isfinite(c).all():
        raise UserError(f"{path}: the latent has non-finite values")
    return data


def _no_latent(run_dir: Path) -> None:
    """Raise the UserError that says why ``run_dir`` has no latent file."""
    samples = sorted(p.name for p in run_dir.glob("sample_*") if (p / LATENT_FILE).is_file())
    if samples:
        raise UserError(
            f"{run_dir}: a folder of several samples ({', '.join(samples[:3])}"
            f"{', ...' if len(samples) > 3 else ''}); stylize one of them, e.g. "
            f"{run_dir / samples[0]}"
        )
    if (run_dir / "report.json").is_file() and (run_dir / "turntable.gif").is_file():
        raise UserError(
            f"{run_dir}: has no {LATENT_FILE} (written by an older `iss3d generate`?); "
            "generate the shape again"
        )
    raise UserError(f"{run_dir}: not an `iss3d generate` output folder (no {LATENT_FILE})")
