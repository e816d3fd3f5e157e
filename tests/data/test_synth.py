"""The synthetic shape world: exact renders, ground truth, captions, splits, determinism."""

import numpy as np
import pytest
import torch

from iss3d.core.errors import UserError
from iss3d.data.cameras import pixel_coords, rays
from iss3d.data.reader import MultiViewFile
from iss3d.data.synth import world
from iss3d.data.synth.build import ObjectPlan, SynthConfig, make_object, plan_objects, synthesize
from tests.fixtures.layouts import assert_points_in_masks, dilate, mask_hit_fraction

SMALL = SynthConfig(
    objects=4, views=3, res=24, surface_points=2048, occ_uniform=128, occ_near=128, seed=3
)


def test_world_is_rich_enough():
    assert len(world.PRIMITIVE_CATEGORIES) >= 6
    assert len(world.COMPOSITE_CATEGORIES) >= 4
    assert len(world.COLORS) >= 8
    assert all(c in world.CATEGORIES and col in world.COLORS for c, col in world.HELD_OUT)


@pytest.mark.parametrize("category", world.CATEGORIES)
def test_every_category_renders_exactly(category):
    spec = world.sample_object(np.random.default_rng(7), category=category, color="blue")
    cfg = SynthConfig(views=4, res=32, surface_points=2048, occ_uniform=512, occ_near=512)
    rec = make_object(ObjectPlan(index=0, spec=spec, split="train"), cfg)
    field = world.CompositeSDF(spec)
    assert rec.mask.any(axis=(1, 2)).all(), "every view sees the object"
    assert not rec.mask[:, [0, -1], :].any() and not rec.mask[:, :, [0, -1]].any(), (
        "nothing is clipped"
    )
    # Depth is exact: the point at that depth along each pixel's ray lies on the surface.
    xy = pixel_coords(32, 32, "center").expand(4, -1, -1)
    origin, direction = rays(
        xy, torch.tensor(rec.world_mat).float(), torch.tensor(rec.camera_mat).float(), torch.eye(4)
    )
    depth = torch.from_numpy(rec.depth).reshape(4, -1)
    hit = torch.from_numpy(rec.mask).reshape(4, -1)
    points = origin[hit] + depth[hit].unsqueeze(-1) * direction[hit]
    assert field(points).abs().max() < 3e-3
    assert (rec.rgb[~rec.mask] == 255).all(), "white background"
    # Ground truth: surface points on the surface, unit normals, the part colours.
    surf = rec.surface
    assert field(torch.from_numpy(surf.points)).abs().max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(surf.normals, axis=-1), 1.0, atol=1e-4)
    palette = {tuple(world.COLORS[c]) for c in spec.colors().values()}
    assert {tuple(c) for c in surf.colors} <= palette
    occ = rec.occupancy
    assert occ.points.dtype == np.float16
    inside = field(torch.from_numpy(occ.points.astype(np.float32))).numpy() < 0
    np.testing.assert_array_equal(occ.inside, inside)
    assert 0 < occ.inside[: occ.n_uniform].mean() < 0.6
    assert occ.inside[occ.n_uniform :].mean() > 0.2, "near-surface samples straddle the surface"


def test_surface_points_project_inside_masks(tiny_world):
    """Ground-truth surface points project into the silhouettes (within the one pixel that
    rounding a rim point to a pixel can cost; see assert_points_in_masks)."""
    mv = MultiViewFile(tiny_world)
    fractions = []
    for obj in range(mv.num_objects):
        rec = mv.read_object(obj)
        fractions.append(
            mask_hit_fraction(
                rec.surface.points,
                rec.world_mat,
                rec.camera_mat,
                rec.scale_mat,
                dilate(rec.mask),
                mv.pixel_convention,
            )
        )
    assert_points_in_masks(fractions)


def test_captions_name_category_and_colours():
    rng = np.random.default_rng(0)
    for _ in range(40):
        spec = world.sample_object(rng)
        caps = world.captions(spec)
        assert len(caps) >= 2 and len(set(caps)) == len(caps)
        assert all(spec.category in c and spec.main_color in c for c in caps)
        if spec.category in world.CAPTION_PARTS:
            first, second = world.CAPTION_PARTS[spec.category]
            colors = spec.colors()
            assert any(
                f"{colors[first]} {first}" in c and f"{colors[second]} {second}" in c for c in caps
            )
    chair = world.sample_object(np.random.default_rng(1), category="chair", color="green")
    assert any(c.startswith("a chair with a green seat and") for c in world.captions(chair))
    assert (
        world.captions(world.sample_object(rng, category="torus", color="orange"))[0]
        == "an orange torus"
    )


def test_held_out_pairs_never_in_train():
    plans = plan_objects(SynthConfig(objects=600, seed=1))
    held = [p for p in plans if (p.spec.category, p.spec.main_color) in world.HELD_OUT]
    assert len(held) > 10
    assert all(p.split in ("val", "test") for p in held)
    splits = [p.split for p in plans]
    assert 0.7 < splits.count("train") / len(splits) < 0.9


def test_same_seed_same_file_any_worker_count(tmp_path):
    a = synthesize(tmp_path / "a.h5", SMALL, workers=1, progress=False)
    b = synthesize(tmp_path / "b.h5", SMALL, workers=2, progress=False)
    c = synthesize(
        tmp_path / "c.h5", SynthConfig(**{**SMALL.__dict__, "seed": 4}), workers=1, progress=False
    )
    ma, mb, mc = MultiViewFile(a), MultiViewFile(b), MultiViewFile(c)
    for obj in range(ma.num_objects):
        ra, rb = ma.read_object(obj), mb.read_object(obj)
        np.testing.assert_array_equal(ra.rgb, rb.rgb)
        np.testing.assert_array_equal(ra.depth, rb.depth)
        np.testing.assert_array_equal(ra.surface.points, rb.surface.points)
        assert ra.captions == rb.captions
    assert not np.array_equal(ma.read_object(0).rgb, mc.read_object(0).rgb)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"objects": 0}, "--objects"),
        ({"res": 4}, "--res"),
        ({"distance": 0.5}, "--distance"),
        ({"surface_points": 100}, "2048"),
    ],
)
def test_bad_synth_config(tmp_path, change, message):
    with pytest.raises(UserError, match=message):
        synthesize(
            tmp_path / "x.h5",
            SynthConfig(**{**SMALL.__dict__, **change}),
            workers=1,
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []
