"""CLIP guidance knobs: loss kinds, aggregations, prompt weights and per-view prompts,
augmentations, CLIP ensembles; each changes the loss as documented."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iss3d.core.config import from_dict
from iss3d.core.errors import UserError
from iss3d.infer.guidance import (
    AugmentConfig,
    Augmenter,
    GuidanceConfig,
    Guide,
    PromptSchedule,
    RandomPerspective,
    image_embeddings,
    view_label,
)
from iss3d.infer.stage2 import Stage2Config
from iss3d.models.clip import load_clip
from iss3d.models.losses import clip_loss, view_losses

CLIP = "clip/tiny-64"


@pytest.fixture(scope="module")
def clips():
    torch.manual_seed(0)
    a = load_clip(CLIP)
    torch.manual_seed(1)
    b = load_clip(CLIP)
    return a, b


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 24, 24, generator=torch.Generator().manual_seed(seed))


# -- losses -----------------------------------------------------------------------------------


def test_cosine_and_inner_product_losses():
    e = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]])
    t = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(view_losses(e, t, "cosine"), torch.tensor([1 - 0.6, 1.0]))
    torch.testing.assert_close(view_losses(e, t, "inner"), torch.tensor([-3.0, 0.0]))


def test_aggregations():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    emb = torch.stack([e1, e2])
    t = F.normalize(e1 + e2, dim=0)[None]
    w = torch.ones(2, 1)
    per = 1 - 2**-0.5
    mean, views = clip_loss(emb, t, w, "cosine", "mean")
    total, _ = clip_loss(emb, t, w, "cosine", "sum")
    mean_emb, _ = clip_loss(emb, t, w, "cosine", "mean_embedding")
    torch.testing.assert_close(mean, torch.tensor(per))
    torch.testing.assert_close(views, torch.tensor([per, per]))
    torch.testing.assert_close(total, torch.tensor(2 * per))
    # the views' mean embedding points exactly at the target: loss 0, unlike the mean of losses
    torch.testing.assert_close(mean_emb, torch.tensor(0.0), atol=1e-6, rtol=0)
    # the inner-product loss is linear in e: both aggregations agree
    raw = torch.tensor([[2.0, 0.5], [0.3, -1.0], [1.0, 1.0]])
    w3 = torch.ones(3, 1)
    a, _ = clip_loss(raw, t, w3, "inner", "mean")
    b, _ = clip_loss(raw, t, w3, "inner", "mean_embedding")
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, -(raw @ t[0]).mean())


def test_prompt_weights_and_unguided_views():
    emb = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    text = F.normalize(torch.randn(2, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    w = torch.tensor([[0.25, 0.75], [1.0, 0.0], [0.0, 0.0]])  # the third view has no prompt
    loss, per_view = clip_loss(emb, text, w, "cosine", "mean")
    pair = 1 - emb @ text.T
    expected = torch.stack([0.25 * pair[0, 0] + 0.75 * pair[0, 1], pair[1, 0], torch.tensor(0.0)])
    torch.testing.assert_close(per_view, expected)
    torch.testing.assert_close(loss, expected[:2].mean())  # mean over the guided views only
    # mean embedding: each prompt's weighted mean embedding, weighted by its share
    loss_me, _ = clip_loss(emb, text, w, "cosine", "mean_embedding")
    m0 = (0.25 * emb[0] + emb[1]) / 1.25
    m1 = emb[0]
    l0 = 1 - F.cosine_similarity(m0, text[0], dim=0)
    l1 = 1 - F.cosine_similarity(m1, text[1], dim=0)
    torch.testing.assert_close(loss_me, (1.25 * l0 + 0.75 * l1) / 2)


def test_inner_product_uses_the_raw_embedding(clips):
    clip = clips[0]
    x = images()
    raw = image_embeddings(clip, x, normalize=False)
    unit = image_embeddings(clip, x, normalize=True)
    torch.testing.assert_close(F.normalize(raw, dim=-1), unit)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))
    for kind, expected in (("inner", raw), ("cosine", unit)):
        cfg = GuidanceConfig(loss=kind)
        guide = Guide([clip], [1.0], PromptSchedule("a red chair", cfg), cfg)
        loss, _, _ = guide.loss(x, [0, 120, 240], [20, 20, 20])
        t = guide.text[0][0]
        value = -(expected @ t).mean() if kind == "inner" else (1 - expected @ t).mean()
        torch.testing.assert_close(loss, value, atol=1e-5, rtol=1e-5)


# -- prompts ----------------------------------------------------------------------------------


def test_view_labels_by_azimuth_and_elevation():
    assert [view_label(a, 10) for a in (0, 30, 350, 90, 270, 180, 200, 130)] == [
        "front", "front", "front", "side", "side", "back", "back", "side",
    ]  # fmt: skip
    assert view_label(0, 70) == "overhead" and view_label(180, 59) == "back"


def test_per_view_prompts_pick_the_prompt_by_azimuth():
    cfg = GuidanceConfig(view_prompts=True)
    schedule = PromptSchedule("a red chair", cfg)
    assert schedule.texts == [
        "front view of a red chair",
        "side view of a red chair",
        "back view of a red chair",
        "overhead view of a red chair",
    ]
    azimuth, elevation = [10, 100, 190, 280, 0], [0, 0, 0, 0, 75]
    w = schedule.weights(azimuth, elevation)
    assert w.argmax(1).tolist() == [0, 1, 2, 1, 3]
    assert torch.equal(w.sum(1), torch.ones(5)) and torch.equal(w.max(1).values, torch.ones(5))
    assert schedule.labels(azimuth, elevation)[2] == "back view of a red chair"


def test_extra_prompts_with_weights_and_azimuth_ranges():
    cfg = from_dict(
        GuidanceConfig,
        {
            "prompt_weight": 1.0,
            "prompts": [
                {"text": "{prompt}, photo", "weight": 3.0},
                {"text": "the seat of a chair", "weight": 1.0, "azimuth": [315, 45]},
            ],
        },
        "guidance",
    )
    schedule = PromptSchedule("a red chair", cfg)
    assert schedule.texts == ["a red chair", "a red chair, photo", "the seat of a chair"]
    w = schedule.weights([0, 180], [0, 0])
    torch.testing.assert_close(w[0], torch.tensor([0.2, 0.6, 0.2]))  # in the range: 1 : 3 : 1
    torch.testing.assert_close(w[1], torch.tensor([0.25, 0.75, 0.0]))


def test_guidance_config_is_strict():
    with pytest.raises(UserError, match="unknown key 'loss_kind'"):
        from_dict(GuidanceConfig, {"loss_kind": "cosine"}, "guidance")
    with pytest.raises(UserError, match="'loss' must be one of"):
        from_dict(GuidanceConfig, {"loss": "l2"}, "guidance")
    with pytest.raises(UserError, match="prompt_weight"):
        GuidanceConfig(prompt_weight=0.0)
    with pytest.raises(UserError, match="perspective"):
        AugmentConfig(perspective=1.5)
    cfg = Stage2Config.from_dict({"guidance": {"ensemble": [{"spec": CLIP, "weight": 2}]}})
    assert cfg.guidance.ensemble[0].weight == 2.0


# -- ensembles --------------------------------------------------------------------------------


def test_ensemble_weights(clips):
    a, b = clips
    x = images()
    cfg = GuidanceConfig()
    schedule = PromptSchedule("a blue table", cfg)
    az, el = [0, 120, 240], [20, 20, 20]
    la, _, _ = Guide([a], [1.0], schedule, cfg).loss(x, az, el)
    lb, _, _ = Guide([b], [1.0], schedule, cfg).loss(x, az, el)
    assert not torch.allclose(la, lb)  # two different models
    both, _, emb = Guide([a, b], [1.0, 3.0], schedule, cfg).loss(x, az, el)
    torch.testing.assert_close(both, 0.25 * la + 0.75 * lb)
    assert len(emb) == 2
    # weight 0: that model is not run
    only_b, _, emb = Guide([a, b], [0.0, 1.0], schedule, cfg).loss(x, az, el)
    torch.testing.assert_close(only_b, lb)
    assert emb[0] is None


# -- augmentations ------------------------------------------------------------------------------


def test_random_background_replaces_only_the_background():
    rgb = images(2, seed=5)
    fg = torch.zeros(2, 1, 24, 24)
    fg[:, :, 6:18, 6:18] = 1
    field = Augmenter(AugmentConfig(), torch.Generator().manual_seed(0))(rgb, fg)
    assert torch.equal(field, rgb)
    for kind in ("random", "noise"):
        out = Augmenter(AugmentConfig(background=kind), torch.Generator().manual_seed(0))(rgb, fg)
        inside = fg.bool().expand_as(rgb)
        assert torch.equal(out[inside], rgb[inside])
        assert not torch.allclose(out[~inside], rgb[~inside])
        if kind == "random":  # one solid colour per view
            bg = out[0][~inside[0]].reshape(3, -1)
            assert torch.allclose(bg, bg[:, :1].expand_as(bg))
            assert not torch.allclose(out[0, :, 0, 0], out[1, :, 0, 0])


def test_crop_and_perspective_are_seeded_and_differentiable():
    rgb = images(2).requires_grad_()
    fg = torch.ones(2, 1, 24, 24)
    cfg = AugmentConfig(crop=True, crop_scale=(0.5, 0.8), perspective=0.3)
    a = Augmenter(cfg, torch.Generator().manual_seed(0))(rgb, fg)
    b = Augmenter(cfg, torch.Generator().manual_seed(0))(rgb, fg)
    c = Augmenter(cfg, torch.Generator().manual_seed(1))(rgb, fg)
    assert a.shape == rgb.shape and torch.equal(a, b) and not torch.allclose(a, c)
    assert not torch.allclose(a, rgb)
    a.sum().backward()
    assert rgb.grad is not None and rgb.grad.abs().sum() > 0


def test_perspective_with_no_distortion_is_the_identity():
    rgb = images(2)
    out = RandomPerspective(0.0, torch.Generator().manual_seed(0))(rgb)
    torch.testing.assert_close(out, rgb, atol=1e-5, rtol=0)
