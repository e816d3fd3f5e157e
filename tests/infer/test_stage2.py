"""ISS stage 2: camera sampling, batched view rendering, the loop (it raises the CLIP score,
leaves the stage-1 mapper alone, is reproducible per seed, skips and reports non-finite steps),
diversity perturbations, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iss3d.core.errors import UserError
from iss3d.data.cameras import look_at, orbit_eyes
from iss3d.infer.export import turntable_cameras
from iss3d.infer.guidance import Guide, PromptSchedule
from iss3d.infer.stage2 import (
    Stage2Config,
    render_views,
    run_stage2,
    skip_reason,
    skipped_warnings,
)
from iss3d.infer.view_sampling import CameraConfig, fixed_views, sample_views
from iss3d.models.clip import load_clip
from iss3d.models.loaders import load_stage1
from iss3d.models.march import MarchConfig
from iss3d.models.renderer import Renderer
from tests.fixtures.nonfinite import counted_optimizer_steps, poison_renders
from tests.fixtures.stage1_ckpt import build_stage1_checkpoint

CLIP = "clip/tiny-64"

SMALL = {
    "steps": 6,
    "views": 3,
    "resolution": 24,
    "lr": 3e-3,
    "march": {"n_steps": 16, "n_secant": 4},
    "cameras": {"distance": [1.8, 1.8]},
}


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    path = build_stage1_checkpoint(tmp_path_factory.mktemp("stage1") / "stage1.ckpt", CLIP)
    return load_stage1(path)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)  # clip/<name> specs have random weights from the global RNG
    return load_clip(CLIP)


def make_guide(clip, prompt: str, cfg: Stage2Config) -> Guide:
    return Guide([clip], [1.0], PromptSchedule(prompt, cfg.guidance), cfg.guidance)


def eval_score(stage1, clip, c: torch.Tensor, text: torch.Tensor) -> float:
    views = fixed_views(4, 20.0, 1.8)
    with torch.no_grad():
        r = render_views(
            Renderer(MarchConfig(n_steps=16, n_secant=4)), stage1.decoder, c, views, 32, 0.1
        )
        return float((clip.encode_image(r.rgb) @ text).mean())


# -- cameras ------------------------------------------------------------------------------------


def test_sample_views_follow_the_distribution_and_the_seed():
    cfg = CameraConfig(azimuth=(0, 360), elevation=(10, 40), distance=(2.0, 3.0))
    a = sample_views(cfg, 8, torch.Generator().manual_seed(1))
    b = sample_views(cfg, 8, torch.Generator().manual_seed(1))
    c = sample_views(cfg, 8, torch.Generator().manual_seed(2))
    assert torch.equal(a.world_mat, b.world_mat) and not torch.equal(a.world_mat, c.world_mat)
    assert ((a.elevation >= 10) & (a.elevation <= 40)).all()
    assert ((a.distance >= 2) & (a.distance <= 3)).all()
    # stratified: one azimuth per 45-degree sector
    assert sorted((a.azimuth // 45).astype(int).tolist()) == list(range(8))
    # the matrices are data.cameras' look_at of orbit_eyes, the camera centres at the distance
    eyes = orbit_eyes(a.azimuth, a.elevation, a.distance)
    expected = np.stack([look_at(e) for e in eyes])
    np.testing.assert_allclose(a.world_mat.numpy(), expected, atol=1e-6)
    centres = -np.einsum("vji,vj->vi", expected[:, :3, :3], expected[:, :3, 3])
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), a.distance, rtol=1e-5)
    # a narrow azimuth range wraps around 0
    front = sample_views(
        CameraConfig(azimuth=(-30, 30), stratified=False), 50, torch.Generator().manual_seed(0)
    )
    assert ((front.azimuth <= 30) | (front.azimuth >= 330)).all()


def test_fixed_views_are_the_turntable_cameras():
    views = fixed_views(6, 20.0, 1.8)
    world, camera = turntable_cameras(6, 20.0, 1.8)
    torch.testing.assert_close(views.world_mat, world)
    torch.testing.assert_close(views.camera_mat, camera)


def test_camera_config_refuses_bad_ranges():
    with pytest.raises(UserError, match="distance"):
        CameraConfig(distance=(0.5, 0.5))
    with pytest.raises(UserError, match="lo <= hi"):
        CameraConfig(elevation=(40, 10))


# -- rendering ----------------------------------------------------------------------------------


def test_render_views_matches_the_reference_renderer(stage1):
    c = 0.5 * torch.randn(1, 16, generator=torch.Generator().manual_seed(0))
    views = fixed_views(3, 15.0, 2.5)
    renderer = Renderer(MarchConfig(n_steps=16, n_secant=4))
    out = render_views(renderer, stage1.decoder, c, views, 20, 0.1)
    ref = renderer.render_images(
        stage1.decoder,
        c,
        views.world_mat,
        views.camera_mat,
        views.scale_mat,
        20,
        20,
        background="field",
    )
    assert out.foreground.sum() > 0
    torch.testing.assert_close(out.foreground, ref["mask"])
    in_cube = out.foreground.bool() | out.background
    assert (~in_cube).any()  # at distance 2.5 some rays miss the cube
    same = in_cube.expand_as(out.rgb)
    torch.testing.assert_close(out.rgb[same], ref["rgb"][same], atol=1e-5, rtol=1e-5)
    assert torch.all(out.rgb[~same] == 1.0)  # rays that miss the cube show white
    # L_bg per view: mean |1 - rgb| over its background pixels
    for v in range(3):
        bg = out.background[v, 0]
        expected = (1 - out.rgb[v][:, bg]).abs().mean()
        torch.testing.assert_close(out.bg_loss[v], expected)


def test_render_views_gradients_reach_the_latent(stage1):
    c = (0.5 * torch.randn(1, 16, generator=torch.Generator().manual_seed(1))).requires_grad_()
    out = render_views(
        Renderer(MarchConfig(n_steps=16, n_secant=4)),
        stage1.decoder,
        c,
        fixed_views(2, 20.0, 1.8),
        16,
        0.1,
    )
    (out.rgb.mean() + out.bg_loss.sum()).backward()
    assert c.grad is not None and c.grad.abs().sum() > 0


# -- the loop -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["a red chair", "a tall blue lamp"])
def test_stage2_raises_the_clip_score(stage1, clip, prompt):
    cfg = Stage2Config.from_dict(SMALL)
    guide = make_guide(clip, prompt, cfg)
    before_state = {k: v.clone() for k, v in stage1.mapper.state_dict().items()}
    result = run_stage2(stage1.mapper, stage1.decoder, guide, cfg, torch.Generator().manual_seed(0))
    text = guide.prompt_feature
    before = eval_score(stage1, clip, result.latent_before, text)
    after = eval_score(stage1, clip, result.latent_after, text)
    assert after > before + 1e-3, (before, after)
    scores = [h["clip_score"] for h in result.history]
    assert len(scores) == cfg.steps and scores[-1] > scores[0]
    # the stage-1 mapper is untouched; the tuned copy moved
    for k, v in stage1.mapper.state_dict().items():
        assert torch.equal(v, before_state[k]), k
    assert not torch.equal(result.latent_before, result.latent_after)
    torch.testing.assert_close(result.latent_before, stage1.mapper(result.mapper_input))


def test_stage2_phase_timing_changes_nothing_but_the_records(stage1, clip):
    cfg = Stage2Config.from_dict({**SMALL, "steps": 2})

    def run(phases: bool):
        guide = make_guide(clip, "a red chair", cfg)
        generator = torch.Generator().manual_seed(0)
        return run_stage2(stage1.mapper, stage1.decoder, guide, cfg, generator, phases=phases)

    plain, timed = run(False), run(True)
    torch.testing.assert_close(plain.latent_after, timed.latent_after, rtol=0, atol=0)
    phases = ("render_s", "clip_s", "backward_s", "optimizer_s")
    assert not any(k in plain.history[0] for k in phases)
    for record in timed.history:
        assert all(record[k] > 0 for k in phases), record
        assert sum(record[k] for k in phases) <= record["seconds"]
        assert 0 < record["evaluations_per_pixel"] < cfg.march.n_steps + cfg.march.n_secant + 2


def test_keep_best_returns_the_mapper_of_the_best_scored_step(stage1, clip):
    def run(steps: int, keep: str):
        cfg = Stage2Config.from_dict({**SMALL, "steps": steps, "keep": keep})
        guide = make_guide(clip, "a red chair", cfg)
        generator = torch.Generator().manual_seed(0)
        return run_stage2(stage1.mapper, stage1.decoder, guide, cfg, generator)

    last = run(4, "last")
    assert last.kept_step is None
    best = run(4, "best")
    scores = [h["clip_score"] for h in best.history]
    assert scores == [h["clip_score"] for h in last.history]  # the same trajectory
    assert best.kept_step == max(range(4), key=scores.__getitem__)
    # the mapper before step k's update is the mapper after k steps
    if best.kept_step == 0:
        expected = best.latent_before
    else:
        expected = run(best.kept_step, "last").latent_after
    torch.testing.assert_close(best.latent_after, expected)
    with pytest.raises(UserError, match="keep"):
        Stage2Config.from_dict({**SMALL, "keep": "first"})


def run_small(stage1, clip, **settings):
    """Stage 2 with :data:`SMALL` and ``settings`` for "a red chair", seed 0."""
    cfg = Stage2Config.from_dict({**SMALL, **settings})
    guide = make_guide(clip, "a red chair", cfg)
    return run_stage2(stage1.mapper, stage1.decoder, guide, cfg, torch.Generator().manual_seed(0))


def same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    return all(torch.equal(x, y) for x, y in pairs)


@pytest.mark.parametrize("keep", ["last", "best"])
def test_non_finite_steps_are_skipped_and_leave_the_mapper_alone(stage1, clip, monkeypatch, keep):
    poison_renders(monkeypatch)  # every step's renders are NaN
    with counted_optimizer_steps() as updates:
        result = run_small(stage1, clip, keep=keep)
    assert updates == []
    assert [h["skipped"] for h in result.history] == ["non-finite loss"] * SMALL["steps"]
    assert all(math.isnan(h["clip_score"]) and math.isnan(h["loss"]) for h in result.history)
    assert same_parameters(result.mapper, stage1.mapper)
    assert torch.equal(result.latent_after, result.latent_before)
    assert result.kept_step is None  # keep: best found no step to keep
    assert result.warnings == [
        "stage 2: 6 of 6 steps had a non-finite loss and were skipped",
        "stage 2 left the shape unchanged",
    ]


def test_finite_steps_still_optimise_between_non_finite_ones(stage1, clip, monkeypatch):
    poison_renders(monkeypatch, {1, 3})
    with counted_optimizer_steps() as updates:
        result = run_small(stage1, clip)
    assert len(updates) == SMALL["steps"] - 2
    skipped = [h["skipped"] for h in result.history]
    assert skipped == [None, "non-finite loss", None, "non-finite loss", None, None]
    finite = [h["clip_score"] for h in result.history if h["skipped"] is None]
    assert all(math.isfinite(s) for s in finite) and finite[-1] > finite[0]
    assert torch.isfinite(result.latent_after).all()
    assert not torch.equal(result.latent_after, result.latent_before)
    assert result.warnings == ["stage 2: 2 of 6 steps had a non-finite loss and were skipped"]


def test_steps_with_non_finite_gradients_are_skipped(stage1, clip, monkeypatch):
    poison_renders(monkeypatch, {0}, kind="gradients")
    with counted_optimizer_steps() as updates:
        result = run_small(stage1, clip, steps=2)
    assert len(updates) == 1
    assert [h["skipped"] for h in result.history] == ["non-finite gradients", None]
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert all(torch.isfinite(p).all() for p in result.mapper.parameters())
    assert not same_parameters(result.mapper, stage1.mapper)
    assert result.warnings == ["stage 2: 1 of 2 steps had non-finite gradients and was skipped"]


def test_skip_reasons_and_their_warnings():
    nan, inf = float("nan"), float("inf")
    assert skip_reason(torch.tensor(0.5), 0.2) is None
    assert skip_reason(torch.tensor(inf), 0.2) == "non-finite loss"
    assert skip_reason(torch.tensor(nan), nan) == "non-finite loss"
    assert skip_reason(torch.tensor(0.5), -inf) == "non-finite CLIP score"
    history = [{"skipped": r} for r in [None, "non-finite CLIP score", "non-finite loss"] * 2]
    assert skipped_warnings("stylize", history[:1]) == []
    assert skipped_warnings("stylize", history) == [
        "stylize: 2 of 6 steps had a non-finite CLIP score and were skipped",
        "stylize: 2 of 6 steps had a non-finite loss and were skipped",
    ]


def test_keep_best_ignores_non_finite_steps(stage1, clip, monkeypatch):
    poison_renders(monkeypatch, {0, 2})  # step 0 is the one a NaN comparison used to keep
    result = run_small(stage1, clip, keep="best")
    scores = {h["step"]: h["clip_score"] for h in result.history if h["skipped"] is None}
    assert sorted(scores) == [1, 3, 4, 5]
    assert result.kept_step == max(scores, key=scores.__getitem__)
    # step 1 rendered the stage-1 mapper (step 0 made no update): keeping it changes nothing
    unchanged = "stage 2 left the shape unchanged" in result.warnings
    assert unchanged == (result.kept_step == 1)
    assert unchanged == torch.equal(result.latent_after, result.latent_before)


def test_stage2_is_reproducible_per_seed(stage1, clip):
    cfg = Stage2Config.from_dict({**SMALL, "steps": 2})

    def run(seed: int):
        guide = make_guide(clip, "a red chair", cfg)
        return run_stage2(
            stage1.mapper, stage1.decoder, guide, cfg, torch.Generator().manual_seed(seed)
        )

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a.latent_after, b.latent_after)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert not torch.equal(a.latent_after, c.latent_after)  # other cameras


def test_diversity_perturbs_the_input_and_the_target(stage1, clip):
    cfg = Stage2Config.from_dict({**SMALL, "steps": 1, "diversity": {"tau_1": 0.5, "tau_2": 0.8}})
    guide = make_guide(clip, "a red chair", cfg)
    f_t = guide.prompt_feature
    plain = run_stage2(stage1.mapper, stage1.decoder, guide, cfg, torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain.mapper_input[0], f_t)
    assert torch.equal(guide.targets[0], guide.text[0])

    results, targets = [], []
    for seed in (0, 1):
        g = guide.copy()
        results.append(
            run_stage2(
                stage1.mapper,
                stage1.decoder,
                g,
                cfg,
                torch.Generator().manual_seed(seed),
                perturb=True,
            )
        )
        targets.append(g.targets[0][0])
    for r, t in zip(results, targets, strict=True):
        cos_in = float(r.mapper_input[0] @ f_t)
        cos_target = float(t @ f_t)
        # normalize(tau f + (1 - tau) z) with z a random unit vector (nearly orthogonal to f
        # in 128 dimensions): cos ~ tau / sqrt(tau^2 + (1 - tau)^2), 0.71 and 0.97 here
        assert abs(cos_in - 0.707) < 0.1 and abs(cos_target - 0.970) < 0.03
        assert r.perturbed
    assert not torch.allclose(results[0].mapper_input, results[1].mapper_input)
    assert not torch.allclose(results[0].latent_before, results[1].latent_before)
    assert not torch.allclose(targets[0], targets[1])
    assert torch.equal(guide.targets[0], guide.text[0])  # copies were perturbed, not the guide


def test_stage2_config_is_strict():
    with pytest.raises(UserError, match="steps"):
        Stage2Config.from_dict({"steps": 0})
    with pytest.raises(UserError, match="views"):
        Stage2Config.from_dict({"views": -1})
    with pytest.raises(UserError, match="unknown key 'lrr'"):
        Stage2Config.from_dict({"lrr": 1.0})
    with pytest.raises(UserError, match="march"):
        Stage2Config.from_dict({"march": {"n_steps": 1}})
    with pytest.raises(UserError, match="tau_1"):
        Stage2Config.from_dict({"diversity": {"tau_1": 1.5}})
    cfg = Stage2Config.from_dict(SMALL)
    assert Stage2Config.from_dict(cfg.to_dict()) == cfg
