"""The reference marcher and the implicit depth gradient, on fields with known answers."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from iss3d.data.cameras import intrinsics, look_at, pixel_coords, rays
from iss3d.models.march import MarchConfig, cube_interval, march
from iss3d.models.renderer import Renderer, surface_normals, trace_surface


class SphereField(nn.Module):
    """Occupancy logit k (r - |p - centre|): a sphere; colour = a fixed RGB."""

    def __init__(self, radius=0.3, centre=(0.0, 0.0, 0.0), k=10.0, dtype=torch.float64):
        super().__init__()
        self.radius = nn.Parameter(torch.tensor(radius, dtype=dtype))
        self.centre = nn.Parameter(torch.tensor(centre, dtype=dtype))
        self.k = k

    def occupancy(self, points, c):
        return self.k * (self.radius - (points - self.centre).norm(dim=-1))

    def rgb(self, points, c):
        return torch.tensor([0.2, 0.4, 0.6], dtype=points.dtype).expand(*points.shape[:-1], 3)


class BlobField(nn.Module):
    """A latent-conditioned MLP blob: logit = 4 (0.3 + 0.05 tanh(MLP(p, c)) - |p|)."""

    def __init__(self, c_dim=3, hidden=16):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Linear(3 + c_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        ).double()

    def occupancy(self, points, c):
        cc = c.unsqueeze(1).expand(-1, points.shape[1], -1)
        bump = torch.tanh(self.net(torch.cat([points, cc], -1))).squeeze(-1)
        return 4.0 * (0.3 + 0.05 * bump - points.norm(dim=-1))

    def rgb(self, points, c):
        return torch.sigmoid(points)


def camera_rays(height=12, width=12, eye=(0.4, 0.5, 1.5), dtype=torch.float64):
    wm = torch.tensor(look_at(np.array(eye)), dtype=dtype)[None]
    cm = torch.tensor(intrinsics(), dtype=dtype)[None]
    xy = pixel_coords(height, width).to(dtype)[None]
    return rays(xy, wm, cm, torch.eye(4, dtype=dtype)[None]), wm, cm


def analytic_sphere_depth(origins, dirs, radius, centre):
    """Camera depth of the first intersection with the sphere, inf where the ray misses."""
    oc = origins - centre
    a = (dirs * dirs).sum(-1)
    b = 2 * (oc * dirs).sum(-1)
    cc = (oc * oc).sum(-1) - radius**2
    disc = b * b - 4 * a * cc
    t = (-b - torch.sqrt(disc.clamp(min=0))) / (2 * a)
    return torch.where(disc > 0, t, torch.full_like(t, math.inf))


def test_cube_interval():
    origins = torch.tensor([[0.0, 0.0, 2.0], [0.0, 2.0, 2.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    t_near, t_far = cube_interval(origins, dirs, 0.55)
    torch.testing.assert_close(t_near[0], torch.tensor(1.45))
    torch.testing.assert_close(t_far[0], torch.tensor(2.55))
    assert t_far[1] < t_near[1]


def test_march_matches_analytic_sphere_depth():
    (origins, dirs), _, _ = camera_rays(24, 24)
    field = SphereField(radius=0.3, centre=(0.05, -0.02, 0.03))
    m = march(field, None, origins, dirs, MarchConfig())
    depth, hit, inside_start, evals = m.depth, m.hit, m.inside_start, m.evaluations
    truth = analytic_sphere_depth(origins, dirs, field.radius.detach(), field.centre.detach())
    # Rays that graze the sphere between two samples may be missed; all others agree.
    solid = torch.isfinite(truth) & (
        truth < analytic_sphere_depth(origins, dirs, 0.29, field.centre.detach()) + 0.02
    )
    assert hit[solid].all() and not hit[~torch.isfinite(truth)].any()
    assert (depth[hit] - truth[hit]).abs().max() < 1e-6
    assert torch.isinf(depth[~hit]).all() and not inside_start.any()
    assert evals == 24 * 24 * (128 + 8)
    with torch.no_grad():
        rendered = Renderer().render_rays(field, None, origins, dirs)
    assert rendered.hits.evaluations == 24 * 24 * (128 + 8 + 1), "the colour query counts too"


def test_rays_starting_inside_get_depth_zero():
    field = SphereField(radius=0.45)
    origins = torch.tensor([[[0.0, 0.0, 0.1], [0.0, 0.0, 2.0]]], dtype=torch.float64)
    dirs = torch.tensor([[[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]]], dtype=torch.float64)
    m = march(field, None, origins, dirs, MarchConfig())
    depth, hit, inside_start = m.depth, m.hit, m.inside_start
    assert inside_start.tolist() == [[True, False]] and hit.tolist() == [[False, True]]
    assert depth[0, 0] == 0 and depth[0, 1] == pytest.approx(2.0 - 0.45, abs=1e-8)


def directional_fd(loss_fn, params, direction, eps=1e-6):
    with torch.no_grad():
        for p, v in zip(params, direction, strict=True):
            p.add_(eps * v)
        up = loss_fn()
        for p, v in zip(params, direction, strict=True):
            p.sub_(2 * eps * v)
        down = loss_fn()
        for p, v in zip(params, direction, strict=True):
            p.add_(eps * v)
    return (up - down) / (2 * eps)


def test_implicit_depth_gradient_matches_finite_differences():
    """d(depth)/d(parameters, latent): implicit differentiation vs central differences (float64)."""
    (origins, dirs), _, _ = camera_rays(16, 16)
    field = BlobField()
    c = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64, requires_grad=True)
    cfg = MarchConfig(n_steps=256, n_secant=40)
    hits = trace_surface(field, c, origins, dirs, cfg)
    mask = hits.hit.clone()
    assert mask.sum() > 20
    weights = torch.rand(
        mask.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    loss = (weights * torch.where(mask, hits.depth, torch.zeros_like(hits.depth))).sum()
    params = [*field.parameters(), c]
    grads = torch.autograd.grad(loss, params)
    gen = torch.Generator().manual_seed(2)
    direction = [torch.randn(p.shape, dtype=torch.float64, generator=gen) for p in params]
    analytic = sum((g * v).sum() for g, v in zip(grads, direction, strict=True))

    def depth_loss():
        m = march(field, c, origins, dirs, cfg)
        assert torch.equal(m.hit, mask), "perturbation changed which rays hit"
        return (weights * torch.where(mask, m.depth, torch.zeros_like(m.depth))).sum()

    numeric = directional_fd(depth_loss, params, direction)
    assert abs(analytic.item() - numeric.item()) <= 1e-4 * abs(numeric.item())


def test_gradient_reaches_the_camera_too():
    (origins, dirs), _, _ = camera_rays(6, 6)
    field = SphereField(radius=0.3)
    origins = origins.clone().requires_grad_(True)
    hits = trace_surface(field, None, origins, dirs, MarchConfig(n_secant=30))
    (hits.depth[hits.hit].sum()).backward()
    # Moving the camera towards the sphere along -z (its view direction) shortens the depth.
    assert origins.grad is not None and origins.grad.abs().sum() > 0
    # Sphere normal derivative check: d depth / d origin = -n / (n . w) with n the outward normal.
    p = hits.points[hits.hit].detach()
    n = torch.nn.functional.normalize(p, dim=-1)
    w = dirs[hits.hit]
    expected = -n / (n * w).sum(-1, keepdim=True)
    torch.testing.assert_close(origins.grad[hits.hit], expected, atol=1e-6, rtol=1e-6)


def test_surface_normals_of_a_sphere_point_outwards():
    field = SphereField(radius=0.3)
    points = torch.nn.functional.normalize(torch.randn(1, 50, 3, dtype=torch.float64), dim=-1) * 0.3
    torch.testing.assert_close(surface_normals(field, None, points), points / 0.3)


def test_render_images_shapes_background_and_no_grad():
    (_, _), wm, cm = camera_rays()
    field = SphereField(radius=0.3)
    renderer = Renderer(MarchConfig(n_steps=64))
    with torch.no_grad():
        out = renderer.render_images(
            field,
            None,
            wm,
            cm,
            torch.eye(4, dtype=torch.float64)[None],
            16,
            20,
            background=torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64),
        )
    assert out["rgb"].shape == (1, 3, 16, 20) and out["mask"].shape == (1, 1, 16, 20)
    miss = out["mask"][0, 0] == 0
    assert miss.any() and (~miss).any()
    torch.testing.assert_close(
        out["rgb"][0, :, miss].T,
        torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64).expand(int(miss.sum()), 3),
    )
    torch.testing.assert_close(
        out["rgb"][0, :, ~miss].T,
        torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64).expand(int((~miss).sum()), 3),
    )
    assert torch.isinf(out["depth"][0, 0][miss]).all()


def test_field_drawn_background_is_differentiable():
    """With background="field", misses show the decoder's colour where the ray leaves the cube."""
    (origins, dirs), _, _ = camera_rays(8, 8)
    field = BlobField()
    c = torch.zeros(1, 3, dtype=torch.float64)
    out = Renderer().render_rays(field, c, origins, dirs, background="field")
    t_near, t_far = cube_interval(origins, dirs, 0.55)
    miss = ~out.hits.hit & (t_far > t_near)
    assert miss.any()
    p = out.hits.points[miss]
    assert (p.abs().amax(-1) - 0.55).abs().max() < 1e-9, (
        "miss colours come from the cube's far side"
    )
    torch.testing.assert_close(out.rgb[miss], torch.sigmoid(p))


class ThreePartsField(nn.Module):
    """A sphere inside the cube, one sticking out of its front face (rays entering the padded
    cube there start inside) and one wholly outside the cube (x in [0.6, 0.9])."""

    centres = ((0.0, 0.0, 0.0), (0.0, -0.3, 0.45), (0.75, 0.0, 0.0))
    radii = (0.2, 0.2, 0.15)

    def occupancy(self, points, c):
        parts = [
            10 * (r - (points - torch.tensor(p, dtype=points.dtype)).norm(dim=-1))
            for p, r in zip(self.centres, self.radii, strict=True)
        ]
        return torch.stack(parts).amax(dim=0)

    def rgb(self, points, c):
        return torch.sigmoid(points)


def dvr_classification(field, origins, dirs, n_steps=128, depth_range=(0.0, 2.4), padding=0.1):
    """DVR's classification of each ray, written out ray by ray (im2mesh/dvr/models/
    depth_function.py): samples evenly over the ray's padded-cube interval, or over depth_range
    from the camera when it misses the cube; depth 0 when the first sample is occupied, a hit at
    the first sign change to occupied, else a miss. Returns 'zero' / 'hit' / 'miss' per ray."""
    half = 0.5 + padding / 2
    labels = []
    for o, d in zip(origins[0].numpy(), dirs[0].numpy(), strict=True):
        t_lo, t_hi = -np.inf, np.inf
        for axis in range(3):
            if abs(d[axis]) < 1e-12:
                if abs(o[axis]) > half:
                    t_lo, t_hi = np.inf, -np.inf
                continue
            a, b = (-half - o[axis]) / d[axis], (half - o[axis]) / d[axis]
            t_lo, t_hi = max(t_lo, min(a, b)), min(t_hi, max(a, b))
        t0, t1 = (t_lo, t_hi) if t_hi > t_lo else depth_range
        t = np.linspace(t0, t1, n_steps)
        points = torch.tensor(o + t[:, None] * d)[None]
        f = field.occupancy(points, None)[0].numpy()
        if f[0] >= 0:
            labels.append("zero")
        elif ((f[:-1] < 0) & (f[1:] >= 0)).any():
            labels.append("hit")
        else:
            labels.append("miss")
    return np.array(labels)


@pytest.mark.parametrize("method", ["dense", "grid"])
def test_outside_cube_march_reproduces_dvr_classification(method):
    """``outside_cube: march`` classifies rays as DVR does, occupancy outside the cube
    included; ``skip`` (the default) counts the rays that miss the cube as misses."""
    (origins, dirs), _, _ = camera_rays(24, 24, eye=(0.0, 0.0, 2.0))
    field = ThreePartsField()
    expected = dvr_classification(field, origins, dirs)
    t_near, t_far = cube_interval(origins, dirs, 0.55)
    off_cube = (t_far <= t_near)[0].numpy()
    assert (expected[off_cube] == "hit").sum() > 5, "rays that meet only the outside sphere"
    assert (expected == "zero").sum() > 5 and (expected == "miss").sum() > 5
    dvr = march_for(method, field, origins, dirs, outside_cube="march")
    labels = np.where(dvr.inside_start[0], "zero", np.where(dvr.hit[0], "hit", "miss"))
    np.testing.assert_array_equal(labels, expected)
    ours = march_for(method, field, origins, dirs, outside_cube="skip")
    expected_ours = np.where(off_cube, "miss", expected)
    labels = np.where(ours.inside_start[0], "zero", np.where(ours.hit[0], "hit", "miss"))
    np.testing.assert_array_equal(labels, expected_ours)


def march_for(method, field, origins, dirs, **kw):
    from iss3d.models.renderer import run_march

    return run_march(field, None, origins, dirs, MarchConfig(method=method, grid=24, **kw))


def test_the_mask_is_the_rays_that_meet_the_object():
    """render_images: mask = finite depth (a surface crossing or a start inside), and a ray that
    starts inside shows the field's colour where it enters the padded cube."""
    (_, _), wm, cm = camera_rays(24, 24, eye=(0.0, 0.0, 2.0))
    field = ThreePartsField()
    out = Renderer(MarchConfig(grid=24, method="grid")).render_images(
        field, None, wm, cm, torch.eye(4, dtype=torch.float64)[None], 24, 24, background=0.0
    )
    mask, depth, rgb = out["mask"][0, 0], out["depth"][0, 0], out["rgb"][0]
    torch.testing.assert_close(mask, torch.isfinite(depth).to(mask.dtype))
    zero = depth == 0
    assert zero.sum() > 5 and (mask[zero] == 1).all()
    # the entry point of those rays lies on the cube's front face, z = 0.55
    (origins, dirs), _, _ = camera_rays(24, 24, eye=(0.0, 0.0, 2.0))
    t_near, _ = cube_interval(origins, dirs, 0.55)
    entry = (origins + t_near.unsqueeze(-1) * dirs)[0].reshape(24, 24, 3)
    torch.testing.assert_close(rgb.permute(1, 2, 0)[zero], torch.sigmoid(entry[zero]))
    assert (rgb[:, mask == 0] == 0).all()
