"""The reference rasterizer: compositing against a per-pixel loop, culling, gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from oocstore.errors import UsageError
from oocstore.gs.layout import join_params, param_width
from oocstore.gs.render import (ALPHA_MAX, ALPHA_MIN, SH_C0, T_MIN, eval_sh, project, psnr,
                                render, render_on)


def look_at_origin(dist: float = 4.0) -> torch.Tensor:
    """World-to-camera: camera on -z looking at the origin (x right, y down)."""
    vm = torch.eye(4, dtype=torch.float64)
    vm[2, 3] = dist
    return vm


def intrinsics(w: int, h: int, f: float) -> torch.Tensor:
    return torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1]], dtype=torch.float64)


def random_scene(n: int, deg: int, seed: int, spread: float = 0.6, dtype=torch.float64):
    g = np.random.default_rng(seed)
    k = (deg + 1) ** 2
    params = join_params(
        g.uniform(-spread, spread, (n, 3)),
        g.normal(size=(n, 4)),
        np.log(g.uniform(0.08, 0.3, (n, 3))),
        g.uniform(-1.0, 2.0, n),
        g.normal(scale=0.4, size=(n, k, 3)),
    )
    return torch.tensor(params, dtype=dtype)


def brute_force(params, deg, vm, K, w, h, bg):
    """Per-pixel loop over depth-sorted Gaussians, written straight from the 3DGS rules."""
    m2, conics, depth, radii, _ext, colors, opac = (t.detach() for t in project(params, deg, vm, K, w, h))
    order = [i for i in torch.argsort(depth).tolist() if radii[i] > 0]
    img = torch.zeros(h, w, 3, dtype=params.dtype)
    for y in range(h):
        for x in range(w):
            t, c = 1.0, torch.zeros(3, dtype=params.dtype)
            for i in order:
                dx, dy = x + 0.5 - m2[i, 0], y + 0.5 - m2[i, 1]
                s = 0.5 * (conics[i, 0] * dx * dx + conics[i, 2] * dy * dy) + conics[i, 1] * dx * dy
                if s < 0:
                    continue
                a = min(ALPHA_MAX, float(opac[i] * torch.exp(-s)))
                if a < ALPHA_MIN:
                    continue
                if t * (1 - a) < T_MIN:
                    break
                c += t * a * colors[i]
                t *= 1 - a
            img[y, x] = c + t * bg
    return img


@pytest.mark.parametrize("deg", [0, 3])
def test_matches_per_pixel_compositing(deg):
    params = random_scene(12, deg, seed=deg)
    w, h = 20, 14
    vm, K = look_at_origin(), intrinsics(w, h, 18.0)
    bg = torch.tensor([0.2, 0.1, 0.3], dtype=torch.float64)
    out = render(params, deg, vm, K, w, h, background=bg)
    ref = brute_force(params, deg, vm, K, w, h, bg)
    assert out.num_pairs > 0
    torch.testing.assert_close(out.image, ref, rtol=1e-9, atol=1e-9)


def test_transmittance_cutoff_stops_the_pixel():
    # ten Gaussians of opacity 0.95 stacked on the optical axis: T after each is 0.05^k,
    # so the first three contribute (T = 1.25e-4 >= 1e-4) and the fourth would take T
    # below 1e-4, which stops the pixel; the rest of T shows the background
    n, a = 10, 0.95
    means = np.zeros((n, 3))
    means[:, 2] = np.linspace(-1, 1, n)
    red = np.arange(n) / n
    sh = np.zeros((n, 1, 3))
    sh[:, 0, 0] = (red - 0.5) / SH_C0
    params = torch.tensor(join_params(means, np.tile([1, 0, 0, 0], (n, 1)),
                                      np.full((n, 3), np.log(0.5)), np.full(n, math.log(a / (1 - a))),
                                      sh)).double()
    w = h = 5
    out = render(params, 0, look_at_origin(), intrinsics(w, h, 5.0), w, h,
                 background=torch.ones(3, dtype=torch.float64))
    t, expected = 1.0, 0.0
    for i in range(3):
        expected += t * a * red[i]
        t *= 1 - a
    expected += t  # background red = 1
    assert math.isclose(float(out.image[2, 2, 0]), expected, rel_tol=1e-6)
    assert math.isclose(float(out.alpha[2, 2]), 1 - t, rel_tol=1e-6)


def test_front_to_back_order_decides_the_colour():
    means = np.array([[0, 0, -0.5], [0, 0, 0.5]])
    sh = np.zeros((2, 1, 3))
    sh[0, 0] = (np.array([1, 0, 0]) - 0.5) / SH_C0
    sh[1, 0] = (np.array([0, 0, 1]) - 0.5) / SH_C0
    q = np.tile([1, 0, 0, 0], (2, 1))
    p = torch.tensor(join_params(means, q, np.full((2, 3), np.log(0.5)), np.full(2, 5.0), sh)).double()
    w = h = 9
    K = intrinsics(w, h, 6.0)
    front = render(p, 0, look_at_origin(), K, w, h).image[4, 4]
    assert front[0] > 0.9 and front[2] < 0.05  # the red one is nearer the camera
    flip = look_at_origin()
    flip[0, 0] = -1
    flip[2, 2] = -1  # a camera on +z looking back: blue is nearer
    back = render(p, 0, flip, K, w, h).image[4, 4]
    assert back[2] > 0.9 and back[0] < 0.05


def test_culling_behind_and_off_screen():
    means = np.array([[0, 0, 0], [0, 0, -10.0], [50.0, 0, 0]])  # visible, behind, far right
    p = torch.tensor(join_params(means, np.tile([1, 0, 0, 0], (3, 1)), np.full((3, 3), -2.0),
                                 np.zeros(3), np.zeros((3, 1, 3)))).double()
    out = render(p, 0, look_at_origin(), intrinsics(16, 16, 10.0), 16, 16)
    assert out.radii.tolist()[1:] == [0, 0] and out.radii[0] > 0
    empty = render(p[1:], 0, look_at_origin(), intrinsics(16, 16, 10.0), 16, 16,
                   background=torch.tensor([0.5, 0.5, 0.5]))
    assert torch.all(empty.image == 0.5) and empty.num_pairs == 0


def test_bands_do_not_change_the_image():
    params = random_scene(40, 1, seed=3, dtype=torch.float32)
    vm, K = look_at_origin(), intrinsics(32, 24, 30.0)
    whole = render(params, 1, vm, K, 32, 24)
    banded = render(params, 1, vm, K, 32, 24, max_pairs=64)
    torch.testing.assert_close(whole.image, banded.image, rtol=0, atol=1e-6)


def test_gradcheck_on_a_tiny_scene():
    params = random_scene(3, 1, seed=7).requires_grad_(True)
    w, h = 8, 6
    vm, K = look_at_origin(), intrinsics(w, h, 8.0)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)

    def f(p):
        return render(p, 1, vm, K, w, h, background=bg).image

    assert torch.autograd.gradcheck(f, (params,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_means2d_gradient_is_retained_for_densification():
    params = random_scene(10, 0, seed=1, dtype=torch.float32).requires_grad_(True)
    out = render_on(params, 0, look_at_origin(), intrinsics(16, 16, 14.0), 16, 16)
    out.image.sum().backward()
    g = out.means2d.grad
    assert g is not None and g.shape == (10, 2)
    assert torch.all(g[~out.visible] == 0) and torch.any(g[out.visible] != 0)


def test_sh_degree_zero_is_the_dc_colour():
    sh = torch.randn(5, 16, 3, dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(5, 3, dtype=torch.float64), dim=1)
    torch.testing.assert_close(eval_sh(0, sh, dirs), SH_C0 * sh[:, 0])
    # degree 3 uses all 16 coefficients: changing the last one changes the colour
    sh2 = sh.clone()
    sh2[:, 15] += 1
    assert not torch.allclose(eval_sh(3, sh, dirs), eval_sh(3, sh2, dirs))
    assert torch.allclose(eval_sh(2, sh, dirs), eval_sh(2, sh2, dirs))


def test_bad_input_is_refused():
    p = torch.zeros(2, param_width(0))
    with pytest.raises(UsageError, match=r"expected \[N, 23\]"):
        render(p, 1, look_at_origin(), intrinsics(4, 4, 4.0), 4, 4)
    with pytest.raises(UsageError, match="focal lengths"):
        render(p, 0, look_at_origin(), torch.zeros(3, 3), 4, 4)


def test_psnr():
    a = torch.zeros(4, 4, 3)
    assert psnr(a, a) == float("inf")
    assert math.isclose(psnr(a, a + 0.1), 20.0, rel_tol=1e-6)
