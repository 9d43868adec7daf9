"""SSIM against pytorch-msssim on the same images; the training loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from oocstore.errors import UsageError
from oocstore.gs.losses import gaussian_window, photo_loss, ssim

pytorch_msssim = pytest.importorskip("pytorch_msssim")


def _pair(h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                          torch.arange(w, dtype=torch.float64), indexing="ij")
    phase = torch.rand(3, generator=g, dtype=torch.float64)
    a = torch.stack([0.5 + 0.4 * torch.sin(x / (3 + c) + y / 5 + 6 * phase[c]) for c in range(3)], 2)
    # a shifted, noisy copy: SSIM well inside (0, 1)
    b = a.roll(1, 1) + 0.15 * torch.randn(h, w, 3, generator=g, dtype=torch.float64)
    return a, b.clamp(0, 1)


@pytest.mark.parametrize("shape,seed", [((48, 64), 0), ((11, 11), 1), ((100, 100), 2)])
def test_ssim_matches_pytorch_msssim(shape, seed):
    a, b = _pair(*shape, seed=seed)
    ref = pytorch_msssim.ssim(a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None],
                              data_range=1.0, win_size=11, win_sigma=1.5)
    ours = ssim(a, b)
    assert 0.05 < float(ours) < 0.95
    # pytorch-msssim builds its window in float32: agreement to its rounding
    assert float(ours) == pytest.approx(float(ref), abs=2e-6)
    ours32 = ssim(a.float(), b.float())
    ref32 = pytorch_msssim.ssim(a.float().permute(2, 0, 1)[None], b.float().permute(2, 0, 1)[None],
                                data_range=1.0)
    assert float(ours32) == pytest.approx(float(ref32), abs=2e-6)


def test_ssim_of_an_image_with_itself_is_one_and_photographs_differ():
    a, b = _pair()
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-12)
    assert float(ssim(a, b)) < float(ssim(a, 0.9 * a + 0.1 * b))


def test_window_is_normalised_gaussian():
    g = gaussian_window(11, 1.5, dtype=torch.float64)
    assert float(g.sum()) == pytest.approx(1.0)
    assert int(torch.argmax(g)) == 5 and torch.allclose(g, g.flip(0))
    assert float(g[5] / g[6]) == pytest.approx(np.exp(1 / (2 * 1.5 ** 2)))


def test_photo_loss_is_the_3dgs_mix_and_differentiable():
    a, b = _pair()
    a = a.clone().requires_grad_(True)
    loss = photo_loss(a, b, 0.2)
    expect = 0.8 * (a - b).abs().mean() + 0.2 * (1 - ssim(a, b))
    assert float(loss.detach()) == pytest.approx(float(expect.detach()), rel=1e-12)
    loss.backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert float(photo_loss(a.detach(), b, 0.0)) == pytest.approx(float((a.detach() - b).abs().mean()))


def test_image_smaller_than_window_is_refused():
    a = torch.zeros(8, 20, 3)
    with pytest.raises(UsageError, match="smaller than the 11x11 SSIM window"):
        ssim(a, a)
