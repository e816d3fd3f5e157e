"""The CUDA paths against the CPU: renderer (both marchers, float32 and bfloat16 autocast), the
decoder's no-autograd fast path, mesh extraction and one stage-2 step, with the shipped models.

Marked ``gpu``: skipped without CUDA (tests/conftest.py). On a GPU machine:
``python -m pytest -m gpu tests/test_gpu.py``. Tolerances: float32 on CUDA differs from the CPU
by round-off (TF32 is off in torch by default for matmuls), which can flip a ray whose sample
logit is within round-off of 0; bfloat16 keeps ~3 significant digits, which moves a surface by
a few thousandths of the unit cube.
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np
import pytest
import torch

from iss3d.data.cameras import intrinsics, look_at, orbit_eyes
from iss3d.models.march import MarchConfig
from iss3d.models.mesh import MeshConfig, extract_mesh
from iss3d.models.renderer import Renderer

pytestmark = pytest.mark.gpu

CUDA = torch.device("cuda")
CPU = torch.device("cpu")
PROMPT = "a blue lamp"  # a thin stem: the hardest shipped shape for the grid march


def shipped(device: torch.device):
    """The shipped stage-1 model, CLIP and M(f_T) of :data:`PROMPT` on ``device``."""
    from iss3d.infer.session import resolve_models

    model, _, clip, _ = resolve_models(None, None, device)
    with torch.no_grad():
        latent = model.mapper(clip.encode_text([PROMPT]).to(device))
    return model, clip, latent


def views(n: int = 4):
    eyes = orbit_eyes(np.linspace(0, 360, n, endpoint=False) + 20, np.full(n, 20.0), 1.8)
    wm = torch.tensor(np.stack([look_at(e) for e in eyes]), dtype=torch.float32)
    cm = torch.tensor(intrinsics(), dtype=torch.float32).expand(n, 4, 4)
    return wm, cm, torch.eye(4).expand(n, 4, 4)


def render(device: torch.device, method: str, bf16: bool) -> dict[str, torch.Tensor]:
    model, _, latent = shipped(device)
    cfg = MarchConfig(n_steps=64, n_secant=4, method=method, grid=32)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    with torch.no_grad(), autocast:
        out = Renderer(cfg).render_images(
            model.decoder.eval(), latent, *(m.to(device) for m in views()), 48, 48
        )
    return {k: v.float().cpu() for k, v in out.items()}


@pytest.mark.parametrize("method", ["dense", "grid"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_renderer_on_cuda_matches_the_cpu(method, bf16):
    ref = render(CPU, "dense", bf16=False)
    out = render(CUDA, method, bf16)
    agreement = (ref["mask"] == out["mask"]).float().mean()
    both = (ref["mask"] > 0) & (out["mask"] > 0)
    depth_err = (ref["depth"][both] - out["depth"][both]).abs()
    assert ref["mask"].mean() > 0.03
    assert torch.isfinite(out["depth"][out["mask"] > 0]).all()
    if bf16:  # bfloat16 moves a surface by ~1e-2 of the cube; a grazing ray by a sample
        assert agreement >= 0.99 and depth_err.median() < 1e-2 and depth_err.max() < 0.1
    else:
        assert agreement >= 0.999 and depth_err.max() < 1e-3
        color_err = (ref["rgb"] - out["rgb"]).abs().amax(dim=1)[both[:, 0]].max()
        assert color_err < 1e-3


def test_grid_march_on_cuda_is_the_dense_march_on_cuda():
    dense, grid = render(CUDA, "dense", False), render(CUDA, "grid", False)
    assert torch.equal(dense["mask"], grid["mask"])
    both = dense["mask"] > 0
    torch.testing.assert_close(grid["depth"][both], dense["depth"][both], rtol=0, atol=1e-5)


def test_decoder_fast_path_on_cuda():
    model, _, latent = shipped(CUDA)
    decoder = model.decoder.eval()
    points = torch.rand(1, 20000, 3, device=CUDA) - 0.5
    with torch.no_grad():
        fast = decoder(points, latent)  # no autograd, one latent: the folded path
    with torch.enable_grad():
        plain = decoder(points, latent)  # autograd on: the plain path
    torch.testing.assert_close(fast, plain.detach(), rtol=1e-4, atol=1e-4)
    cpu_model, _, cpu_latent = shipped(CPU)
    with torch.no_grad():
        cpu = cpu_model.decoder.eval()(points.cpu(), cpu_latent)
    torch.testing.assert_close(fast.cpu(), cpu, rtol=1e-4, atol=1e-4)


def test_mesh_on_cuda_matches_the_cpu():
    cfg = MeshConfig(resolution0=16, upsampling_steps=2)  # 64^3
    cpu, cuda = (
        extract_mesh(model.decoder.eval(), latent, cfg)
        for model, _, latent in (shipped(CPU), shipped(CUDA))
    )
    assert len(cpu.vertices) > 100
    assert abs(len(cuda.vertices) - len(cpu.vertices)) <= 0.01 * len(cpu.vertices)
    # every CUDA vertex lies on the CPU mesh's surface, to round-off
    from scipy.spatial import cKDTree

    distance, _ = cKDTree(cpu.vertices).query(cuda.vertices)
    assert np.quantile(distance, 0.99) < 1e-3
    assert np.abs(cpu.vertices.mean(0) - cuda.vertices.mean(0)).max() < 1e-3


def test_one_stage2_step_on_cuda_matches_the_cpu():
    from iss3d.infer.generator import load_generate_config
    from iss3d.infer.guidance import Guide, PromptSchedule
    from iss3d.infer.stage2 import run_stage2

    cfg = dataclasses.replace(load_generate_config("tiny").stage2, steps=1, keep="last")

    def one_step(device: torch.device):
        model, clip, _ = shipped(device)
        guide = Guide([clip], [1.0], PromptSchedule(PROMPT, cfg.guidance), cfg.guidance)
        return run_stage2(model.mapper, model.decoder, guide, cfg, torch.Generator().manual_seed(0))

    cpu, cuda = one_step(CPU), one_step(CUDA)
    for key in ("loss", "loss_clip", "loss_bg", "clip_score"):
        assert cuda.history[0][key] == pytest.approx(cpu.history[0][key], rel=1e-3, abs=1e-4)
    torch.testing.assert_close(cuda.latent_after.cpu(), cpu.latent_after, rtol=1e-3, atol=1e-3)
