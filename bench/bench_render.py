"""Renderers and mesh extraction: time per view, decoder evaluations per ray, mesh time.

Each view is rendered by the reference (dense) march and by the grid march in the same run; the
grid march is reported as a speed ratio and by its agreement with the reference (hit-mask
agreement, largest depth difference on common hits, image PSNR).

Decoders: the shipped stage-1 decoder (``models/pretrained/stage1.ckpt``) at the latents the
shipped mapper gives a few prompts (what stage 2 renders first), and DVR's architecture at the
tiny (h=128, 3 blocks) and paper (h=512, 5 blocks) sizes with random weights, a sphere term added
to its occupancy so that rays really meet a surface (the decoder's cost is what is measured; the
sphere's steep logits, 20 per unit length, make it a harder case for the grid than a trained
decoder).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch

from bench.common import target, write_result
from iss3d.data.cameras import intrinsics, look_at, orbit_eyes, pixel_coords, rays
from iss3d.models.decoder import Decoder
from iss3d.models.march import MarchConfig
from iss3d.models.mesh import MeshConfig, extract_mesh
from iss3d.models.renderer import Renderer

NAME = "render"
METHODS = ("dense", "grid")
#: Views rendered per latent in one batch (a tiny-preset stage-2 step renders 4).
VIEWS = 4
#: The grid march's lattice side.
GRID = 48
#: Prompts whose M(f_T) latents the shipped decoder renders (stage 2's first step).
PROMPTS = ("a red cone", "a blue chair", "a green torus")


def _agreement(ref: dict, fast: dict, key: str) -> dict[str, float]:
    """Hit-mask agreement, largest depth difference on common hits and PSNR of fast vs ref."""
    both = (ref["mask"] > 0) & (fast["mask"] > 0)
    depth_err = (ref["depth"][both] - fast["depth"][both]).abs().max() if both.any() else 0.0
    mse = ((ref["rgb"] - fast["rgb"]) ** 2).mean().item()
    return {
        f"{key}_mask_agreement": float((ref["mask"] == fast["mask"]).float().mean()),
        f"{key}_max_depth_error": float(depth_err),
        f"{key}_psnr_db": float("inf") if mse == 0 else float(-10 * np.log10(mse)),
    }


class SphereDecoder(torch.nn.Module):
    """A Decoder whose occupancy is a sphere of radius 0.3 plus a small learned bump."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder

    @staticmethod
    def _sphere(points, learned):
        return 20.0 * (0.3 - points.norm(dim=-1)) + 0.1 * torch.tanh(learned)

    def occupancy(self, points, c):
        return self._sphere(points, self.decoder.occupancy(points, c))

    def rgb(self, points, c):
        return self.decoder.rgb(points, c)

    def occupancy_and_rgb(self, points, c):
        learned, rgb = self.decoder.occupancy_and_rgb(points, c)
        return self._sphere(points, learned), rgb


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (also fills ``out`` for the figures derived from the render)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def _view_rays(views: int, res: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of ``views`` orbit cameras at ``res`` px as ONE batch element (1, V * res^2, 3):
    all views of one latent together, as a stage-2 step renders them."""
    eyes = orbit_eyes(np.linspace(0, 360, views, endpoint=False), np.full(views, 20.0), 1.8)
    world = torch.tensor(np.stack([look_at(e) for e in eyes]), dtype=torch.float32, device=device)
    camera = torch.tensor(intrinsics(), dtype=torch.float32, device=device).expand(views, 4, 4)
    xy = pixel_coords(res, res).to(device).expand(views, -1, -1)
    origins, dirs = rays(xy, world, camera, torch.eye(4, device=device).expand(views, 4, 4))
    return origins.reshape(1, -1, 3), dirs.reshape(1, -1, 3)


def render_targets(figures: dict[str, float], cpu: bool) -> dict:
    """The issue's targets for the figures this run has: the grid march at <= 16 decoder
    evaluations per ray, hit masks agreeing on >= 99.5% of rays, depth within 1e-3 of the
    reference on common hits; a 256^3 mesh with colours in <= 10 s on a CPU, <= 1 s on a GPU."""
    goals = {
        "_grid_": ("evals_per_ray", 16.0, "<="),
        "_mask_agreement": ("", 0.995, ">="),
        "_max_depth_error": ("", 1e-3, "<="),
        "_mesh_s_256": ("", 10.0 if cpu else 1.0, "<="),
    }
    targets = {}
    for key, value in figures.items():
        for part, (suffix, goal, direction) in goals.items():
            if part in key and key.endswith(suffix):
                targets[key] = target(value, goal, direction)
    return targets


def march_figures(
    field: torch.nn.Module, c: torch.Tensor, key: str, res: int, repeats: int
) -> dict[str, float]:
    """Dense and grid march of :data:`VIEWS` orbit views per latent at ``res`` px.

    Args:
        field: the decoder. c: (B, c_dim) latents, each rendered from the same views.
        key: figure name prefix (the decoder's name).

    Returns:
        seconds per view and evaluations per ray of each method, the grid march's agreement
        with the dense one, its speed-up, and the fraction of rays that hit.
    """
    origins, dirs = _view_rays(VIEWS, res, c.device)
    origins, dirs = origins.expand(len(c), -1, -1), dirs.expand(len(c), -1, -1)
    figures: dict[str, float] = {}
    outs = {}
    for method in METHODS:
        renderer = Renderer(MarchConfig(n_steps=128, n_secant=8, method=method, grid=GRID))
        out = outs.setdefault(method, {})

        def render(renderer=renderer, out=out):
            with torch.no_grad():
                r = renderer.render_rays(field, c, origins, dirs, background=1.0)
            out.update(
                rgb=r.rgb,
                mask=r.hits.mask.float(),
                depth=r.hits.depth,
                evaluations=r.hits.evaluations,
            )

        seconds = _time(render, repeats)
        figures[f"{key}_{method}_{res}px_s_per_view"] = seconds / (VIEWS * len(c))
        figures[f"{key}_{method}_{res}px_evals_per_ray"] = float(out["evaluations"]) / (
            origins.shape[0] * origins.shape[1]
        )
    figures.update(_agreement(outs["dense"], outs["grid"], f"{key}_{res}px"))
    figures[f"{key}_{res}px_speedup"] = (
        figures[f"{key}_dense_{res}px_s_per_view"] / figures[f"{key}_grid_{res}px_s_per_view"]
    )
    figures[f"{key}_hit_fraction_{res}px"] = float(outs["dense"]["mask"].mean())
    return figures


def _same_mesh(a, b) -> float:
    """Fraction of mesh a's vertices that mesh b has too (1e-6 apart at most); 0 if b differs
    in size."""
    if a.vertices.shape != b.vertices.shape:
        return 0.0
    return float(np.mean(np.abs(a.vertices - b.vertices).max(axis=1) <= 1e-6))


def mesh_figures(field, c: torch.Tensor, key: str, cfg: MeshConfig) -> dict[str, float]:
    """A mesh with colours at ``cfg`` with the default (auto) search precision, against the
    same with a float32 search: seconds, decoder evaluations, speed-up and vertex agreement,
    and the largest difference (0-255) between a vertex colour (interpolated along its grid
    edge) and the field's colour at the vertex."""
    r = cfg.resolution
    meshes = {}
    figures = {}
    for precision in ("auto", "float32"):
        run_cfg = dataclasses.replace(cfg, search_precision=precision)

        def mesh(run_cfg=run_cfg, precision=precision):
            meshes[precision] = extract_mesh(field, c, run_cfg)

        seconds = _time(mesh, 1)
        suffix = "" if precision == "auto" else "_float32"
        figures[f"{key}_mesh{suffix}_s_{r}"] = seconds
        figures[f"{key}_mesh{suffix}_evals_{r}"] = float(meshes[precision].evaluations)
    figures[f"{key}_mesh_dense_evals_{r}"] = float((r + 1) ** 3)
    figures[f"{key}_mesh_search_speedup_{r}"] = (
        figures[f"{key}_mesh_float32_s_{r}"] / figures[f"{key}_mesh_s_{r}"]
    )
    figures[f"{key}_mesh_float32_vertex_agreement_{r}"] = _same_mesh(
        meshes["float32"], meshes["auto"]
    )
    mesh = meshes["auto"]
    with torch.no_grad():
        vertices = torch.from_numpy(mesh.vertices).to(c.device)[None]
        exact = torch.cat(
            [
                field.rgb(vertices[:, i : i + cfg.chunk], c)[0]
                for i in range(0, len(mesh.vertices), cfg.chunk)
            ]
        )
    exact = exact.clamp(0, 1).cpu().numpy() * 255
    figures[f"{key}_mesh_max_color_error_{r}"] = float(np.abs(mesh.colors - exact).max())
    return figures


def mesh_dense_agreement(field, c: torch.Tensor, key: str, cfg: MeshConfig) -> dict[str, float]:
    """The coarse-to-fine mesh against the reference: every point of the final grid decoded in
    float32 (dense); their vertex agreement and the speed-up."""
    r = cfg.resolution
    dense_cfg = MeshConfig(resolution0=r, upsampling_steps=0, padding=cfg.padding)
    meshes = {}
    dense_s = _time(lambda: meshes.update(dense=extract_mesh(field, c, dense_cfg)), 1)
    fast_s = _time(lambda: meshes.update(fast=extract_mesh(field, c, cfg)), 1)
    return {
        f"{key}_mesh_dense_s_{r}": dense_s,
        f"{key}_mesh_dense_speedup_{r}": dense_s / fast_s,
        f"{key}_mesh_dense_vertex_agreement_{r}": _same_mesh(meshes["dense"], meshes["fast"]),
    }


def shipped_latents(
    device: torch.device, prompts: Sequence[str] = PROMPTS
) -> tuple[torch.nn.Module, torch.Tensor]:
    """The shipped stage-1 decoder and M(f_T) of ``prompts``: stage 2's first render.

    Returns (decoder, (len(prompts), c_dim) latents)."""
    from iss3d.infer.session import resolve_models

    model, _, clip, _ = resolve_models(None, None, device)
    with torch.no_grad():
        latents = model.mapper(clip.encode_text(list(prompts)).to(device))
    return model.decoder.eval(), latents


def main(quick: bool = False) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = {
        "tiny": dict(c_dim=128, hidden=128, n_blocks=3),
        "paper": dict(c_dim=256, hidden=512, n_blocks=5),
    }
    cpu = device.type == "cpu"
    resolutions = (32,) if quick else (64, 128)
    mesh_resolutions = ((16, 2),) if quick else ((32, 2), (32, 3))  # 128^3, 256^3
    repeats = 1 if quick or cpu else 3
    figures: dict[str, float] = {}
    torch.manual_seed(0)
    decoder, latents = shipped_latents(device)
    for res in resolutions:
        figures.update(march_figures(decoder, latents, "shipped", res, repeats))
    for r0, steps in mesh_resolutions:
        figures.update(mesh_figures(decoder, latents[:1], "shipped", MeshConfig(r0, steps)))
    for size, kw in sizes.items():
        field = SphereDecoder(Decoder(**kw)).to(device).eval()
        c = torch.randn(1, kw["c_dim"], device=device)
        for res in resolutions:
            if cpu and size == "paper" and res > 64:
                continue  # minutes per view on 2 cores; evaluations per ray do not depend on res
            figures.update(march_figures(field, c, size, res, repeats))
        for r0, steps in mesh_resolutions:
            figures.update(mesh_figures(field, c, size, MeshConfig(r0, steps)))
        if size == "tiny":  # a dense grid is affordable for the tiny decoder only
            r0, steps = mesh_resolutions[0]
            figures.update(mesh_dense_agreement(field, c, size, MeshConfig(r0, steps)))
    targets = render_targets(figures, cpu)
    config = {
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "march": {"n_steps": 128, "n_secant": 8, "methods": list(METHODS), "grid": GRID},
        "shipped_prompts": list(PROMPTS),
        "decoders": sizes,
        "resolutions": list(resolutions),
        "views_per_latent": VIEWS,
        "repeats": repeats,
        "skipped": "paper decoder at 128 px on CPU" if cpu else None,
    }
    notes = [
        "dense: the reference, 128 samples + 8 secant steps per ray, plus the colour query;"
        " grid: models/grid_march.py (48^3 lattice built coarse to fine from 24^3, margin 1,"
        " same samples and secant steps);"
        " evals_per_ray counts decoder point evaluations divided by pixels (lattice included)",
        "mesh: coarse-to-fine occupancy grid from 32^3 (MISE-like levels, then a band of the"
        " corners of cells with a crossing, all in float32), marching cubes, vertex colours"
        " interpolated along grid edges; mesh_s: levels before the last at the auto search"
        " precision (bfloat16 where native), mesh_float32_s: all float32;"
        " mesh_dense_evals is what a dense grid would cost; mesh_dense_*: the tiny decoder's"
        " dense float32 grid, the reference",
    ]
    return write_result(NAME, figures, config, quick, targets, notes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
