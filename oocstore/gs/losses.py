"""Photometric losses and image metrics of the training recipe: SSIM, L1 + D-SSIM, PSNR.

:func:`ssim` is the structural similarity of Wang et al. (2004) as 3DGS and gsplat use
it: an 11x11 Gaussian window of sigma 1.5 (separable), constants ``K = (0.01, 0.03)``
for a data range of 1, per-channel statistics averaged over the channels and the
*valid* window positions (no padding: a window never reaches outside the image, as
``pytorch-msssim`` and gsplat's ``fused_ssim(..., padding="valid")`` compute it). The
test suite checks it against ``pytorch_msssim.ssim`` on the same images.

:func:`photo_loss` is 3DGS's training loss ``(1 - lambda) L1 + lambda (1 - SSIM)`` with
``lambda = 0.2`` by default (``--ssim-lambda``).

Images are float tensors [H, W, 3] (the rasterizer's layout) in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from oocstore.errors import UsageError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, *,
                    dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps [size] centred on the middle tap."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable valid-mode Gaussian filter of ``x`` [C, 1, H, W] -> [C, 1, H-k+1, W-k+1]."""
    k = len(g)
    x = F.conv2d(x, g.reshape(1, 1, 1, k))
    return F.conv2d(x, g.reshape(1, 1, k, 1))


def ssim_map(a: torch.Tensor,  # [H, W, C] in [0, 1]
             b: torch.Tensor,  # [H, W, C] in [0, 1]
             *, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Per-channel SSIM at every valid window position: [C, H-window+1, W-window+1]."""
    if a.shape != b.shape or a.ndim != 3:
        raise UsageError(f"ssim needs two images of one shape [H, W, C], got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    h, w = a.shape[:2]
    if h < window or w < window:
        raise UsageError(f"image {w}x{h} is smaller than the {window}x{window} SSIM window: "
                         "render or store larger images")
    g = gaussian_window(window, sigma, dtype=a.dtype, device=a.device)
    x = a.permute(2, 0, 1).unsqueeze(1)  # [C, 1, H, W]
    y = b.permute(2, 0, 1).unsqueeze(1)
    mu_x, mu_y = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mu_x * mu_x
    syy = _blur(y * y, g) - mu_y * mu_y
    sxy = _blur(x * y, g) - mu_x * mu_y
    c1, c2 = SSIM_K[0] ** 2, SSIM_K[1] ** 2
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return (lum * cs)[:, 0]


def ssim(a: torch.Tensor, b: torch.Tensor, **kw) -> torch.Tensor:
    """Mean SSIM of two images [H, W, C] in [0, 1] (a differentiable scalar)."""
    return ssim_map(a, b, **kw).mean()


def photo_loss(image: torch.Tensor, target: torch.Tensor, ssim_lambda: float = 0.2) -> torch.Tensor:
    """3DGS's loss ``(1 - lambda) * L1 + lambda * (1 - SSIM)`` (``lambda = 0`` is plain L1)."""
    l1 = torch.abs(image - target).mean()
    if ssim_lambda == 0:
        return l1
    return (1 - ssim_lambda) * l1 + ssim_lambda * (1 - ssim(image, target))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two images in [0, 1]."""
    mse = float(torch.mean((a.double() - b.double()) ** 2))
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)
