import numpy as np
import pytest
import torch

from iss3d.data.cameras import (
    DVR_FOCAL,
    coords_to_pixels,
    intrinsics,
    is_valid_matrix,
    look_at,
    orbit_eyes,
    pixel_coords,
    project,
    rays,
)


def test_look_at_axes_and_centre():
    eye = np.array([0.3, 0.8, 1.7])
    wm = look_at(eye)
    rot = wm[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    # The eye maps to the camera origin; the target lies straight ahead (+z).
    np.testing.assert_allclose(wm @ np.append(eye, 1), [0, 0, 0, 1], atol=1e-12)
    cam_target = wm @ np.array([0, 0, 0, 1.0])
    np.testing.assert_allclose(cam_target[:2], [0, 0], atol=1e-12)
    assert cam_target[2] == pytest.approx(np.linalg.norm(eye))
    # World up appears at the top of the image: negative camera y.
    above = wm @ np.array([0, 0.2, 0, 1.0])
    assert above[1] < 0


def test_orbit_eyes_distance_and_azimuth_zero_on_plus_z():
    eyes = orbit_eyes(np.array([0.0, 90.0]), np.array([0.0, 30.0]), 2.0)
    np.testing.assert_allclose(np.linalg.norm(eyes, axis=-1), 2.0)
    np.testing.assert_allclose(eyes[0], [0, 0, 2.0], atol=1e-12)


@pytest.mark.parametrize("convention", ["center", "dvr"])
def test_pixel_coords_round_trip(convention):
    h, w = 5, 7
    xy = pixel_coords(h, w, convention)
    assert xy.shape == (h * w, 2)
    cols_rows = coords_to_pixels(xy, h, w, convention)
    expect = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")[::-1], -1)
    torch.testing.assert_close(cols_rows, expect.reshape(-1, 2).float(), atol=1e-5, rtol=0)


def test_pixel_conventions_differ_at_the_edges():
    dvr = pixel_coords(1, 4, "dvr")[:, 0]
    centre = pixel_coords(1, 4, "center")[:, 0]
    torch.testing.assert_close(dvr, torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))
    torch.testing.assert_close(centre, torch.tensor([-0.75, -0.25, 0.25, 0.75]))


def test_rays_hit_the_points_they_were_made_from():
    wm = torch.tensor(look_at(np.array([0.5, 0.6, 1.6])), dtype=torch.float64)
    cm = torch.tensor(intrinsics(DVR_FOCAL), dtype=torch.float64)
    sm = torch.tensor(np.diag([2.0, 2.0, 2.0, 1.0]), dtype=torch.float64)
    sm[:3, 3] = torch.tensor([0.1, -0.2, 0.05])
    points = torch.rand(50, 3, dtype=torch.float64) - 0.5
    xy, depth = project(points, wm, cm, sm)
    origin, direction = rays(xy, wm, cm, sm)
    # The ray parameter equals camera-space depth.
    torch.testing.assert_close(origin + depth.unsqueeze(-1) * direction, points)


def test_is_valid_matrix_reasons():
    assert is_valid_matrix(np.eye(4)) is None
    assert "NaN" in is_valid_matrix(np.full((4, 4), np.nan))
    assert "singular" in is_valid_matrix(np.zeros((4, 4)))
    assert "shape" in is_valid_matrix(np.eye(3))
    bad_row = np.eye(4)
    bad_row[3, 0] = 1
    assert "last row" in is_valid_matrix(bad_row)
    assert is_valid_matrix(bad_row, affine=False) is None
