"""Low-resolution inputs for training the upsamplers, and their corruption.

The low-res conditioning image is the training image downsampled by area
averaging, as in guided-diffusion's ``scripts/super_res_train.py``
(``F.interpolate(large_batch, small_size, mode="area")``). Corrupting it with a
small random Gaussian blur (and optionally noise) keeps the upsampler from
relying on perfectly clean inputs (conditioning augmentation, Ho et al. 2021,
"Cascaded Diffusion Models"). The default sigma range (0.4, 0.6) is this
project's choice, not a number from the GLIDE paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["downsample", "degrade_low_res", "gaussian_kernel1d", "gaussian_blur"]


def downsample(images: torch.Tensor, r: int) -> torch.Tensor:
    """(B, C, R, R) -> (B, C, r, r) by area averaging (antialiased; exact box filter when r divides R)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    return F.interpolate(images, size=(r, r), mode="area")


def gaussian_kernel1d(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels, (B,) sigmas -> (B, 2*radius + 1).

    Each row keeps only taps within its own radius ``ceil(3 sigma)`` (the rest
    are zero), so a batch shares one kernel length. Sigma 0 gives the identity.
    """
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)  # (K,)
    s = sigma.to(torch.float64).clamp_min(1e-12)[:, None]  # (B, 1)
    k = torch.exp(-0.5 * (offsets / s) ** 2)
    own_radius = torch.ceil(3 * sigma.to(torch.float64))[:, None]
    k = torch.where(offsets.abs() <= own_radius, k, torch.zeros_like(k))
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each sample with its own sigma: (B, C, H, W), (B,) -> (B, C, H, W).

    Separable convolution (rows then columns) with reflect padding; kernel
    radius ``ceil(3 sigma)``, capped at ``min(H, W) - 1`` (reflect padding
    cannot go further).
    """
    b, c, h, w = images.shape
    radius = int(math.ceil(3 * float(sigma.max()))) if b else 0
    radius = min(radius, h - 1, w - 1)
    if radius <= 0:
        return images.clone()
    k = gaussian_kernel1d(sigma, radius).to(images.device, images.dtype)  # (B, K)
    k = k.repeat_interleave(c, dim=0)  # (B*C, K): one kernel per (sample, channel) group
    x = images.reshape(1, b * c, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=b * c)
    return x.reshape(b, c, h, w)


def degrade_low_res(
    low_res: torch.Tensor,
    generator: torch.Generator,
    *,
    blur_sigma: tuple[float, float] | None = (0.4, 0.6),
    noise_std: float = 0.0,
) -> torch.Tensor:
    """Corrupt upsampler conditioning images: (B, 3, r, r) in [-1, 1] -> same shape, in [-1, 1].

    Per sample, sigma ~ U(blur_sigma) and a Gaussian blur (see
    :func:`gaussian_blur`); then, if ``noise_std > 0``, additive N(0,
    noise_std²) noise; then clamping to [-1, 1]. All random numbers come from
    ``generator`` (CPU; sigmas first, then noise) and are moved to the input's
    device. With ``blur_sigma=None`` and ``noise_std=0`` the input is returned
    unchanged (a copy).
    """
    if blur_sigma is None and noise_std == 0:
        return low_res.clone()
    x = low_res
    if blur_sigma is not None:
        lo, hi = blur_sigma
        if not 0 <= lo <= hi:
            raise ValueError(f"blur_sigma must be (lo, hi) with 0 <= lo <= hi, got {blur_sigma}")
        sigma = lo + (hi - lo) * torch.rand(x.shape[0], generator=generator, dtype=torch.float64)
        x = gaussian_blur(x, sigma)
    if noise_std > 0:
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)
        x = x + noise_std * noise.to(x.device, x.dtype)
    return x.clamp(-1.0, 1.0)
