"""Training losses: the hybrid objective of Improved DDPM (Nichol & Dhariwal
2021, eq. 16), L_hybrid = L_simple + L_vlb, as guided-diffusion computes it
for an [eps, var_interp] model (EPSILON mean, LEARNED_RANGE variance, MSE loss type).

Every loss term is per sample, shape (B,).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .gaussian import p_mean_variance, posterior_mean_variance, split_model_output
from .schedule import Schedule

__all__ = [
    "LossTerms",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "hybrid_loss",
    "mean_flat",
    "min_snr_weights",
    "v_weights",
    "normal_kl",
    "sample_timesteps",
]

_LOG2 = math.log(2.0)


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all non-batch dims: (B, ...) -> (B,)."""
    return x.mean(dim=list(range(1, x.ndim)))


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats (broadcasting)."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + ((mean1 - mean2) ** 2) * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Tanh approximation of the standard normal CDF (as used by DDPM's decoder)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood (nats, elementwise) of 8-bit data x in [-1, 1] under a
    Gaussian discretised into bins of width 2/255 (DDPM eq. 13); the edge bins
    extend to -inf / +inf. ``log_scales`` is log(std)."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class LossTerms(NamedTuple):
    """Per-sample (B,) loss terms."""

    mse: torch.Tensor
    vb: torch.Tensor
    loss: torch.Tensor


def _vb_bits_per_dim(
    s: Schedule, model_out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """L_{t-1} (KL, t > 0) or L_0 (decoder NLL, t == 0) in bits/dim, (B,)."""
    true_mean, _, true_log_var = posterior_mean_variance(s, x0, x_t, t)
    p = p_mean_variance(s, model_out, x_t, t, clamp_x0=False)
    kl = mean_flat(normal_kl(true_mean, true_log_var, p.mean, p.log_variance)) / _LOG2
    nll = -discretized_gaussian_log_likelihood(x0, means=p.mean, log_scales=0.5 * p.log_variance)
    nll = mean_flat(nll) / _LOG2
    return torch.where(t == 0, nll, kl)


def hybrid_loss(
    s: Schedule,
    model_out: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    mse_weights: torch.Tensor | None = None,
) -> LossTerms:
    """Improved DDPM hybrid loss for an [eps, var_interp] model output.

    mse = mean over C, H, W of (noise - eps)^2 (L_simple); vb = L_vlb term
    in bits/dim computed from ``cat([eps.detach(), var_interp])`` with no clipping, so
    the mean is trained only by mse and the variance only by vb (Improved DDPM
    sec. 3.1); loss = mse + vb, or ``mse_weights * mse + vb`` when per-sample
    weights (B,) are given (e.g. :func:`min_snr_weights`; ``mse`` stays unweighted).

    model_out: (B, 2C, H, W); x0, x_t, noise: (B, C, H, W) with
    x_t = q_sample(s, x0, t, noise); t: (B,) int64 indices into ``s``.
    """
    eps, var_interp = split_model_output(model_out, x_t.shape[1])
    frozen = torch.cat([eps.detach(), var_interp], dim=1)
    vb = _vb_bits_per_dim(s, frozen, x0, x_t, t)
    mse = mean_flat((noise - eps) ** 2)
    weighted = mse if mse_weights is None else mse_weights.to(mse.dtype) * mse
    return LossTerms(mse, vb, weighted + vb)


def v_weights(s: Schedule, t: torch.Tensor, max_weight: float | None = None) -> torch.Tensor:
    """Weights (B,) that turn the eps-MSE into the v-MSE of a v-predicting model: ``1 / abar_t``.

    With eps = sqrt(1 - abar) x_t + sqrt(abar) v, eps - eps_hat = sqrt(abar) (v - v_hat),
    so |v - v_hat|^2 = |eps - eps_hat|^2 / abar (Salimans & Ho 2022). ``max_weight``
    caps the weight: ``min(1 / abar_t, max_weight)``.
    """
    abar = torch.tensor(s.alphas_cumprod, dtype=torch.float64)[t.cpu()]
    w = 1 / abar
    if max_weight is not None:
        w = w.clamp(max=max_weight)
    return w.to(torch.float32).to(t.device)


def min_snr_weights(s: Schedule, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights of the eps-MSE (Hang et al. 2023), (B,): ``min(SNR, gamma) / SNR``.

    SNR(t) = abar_t / (1 - abar_t). Steps with SNR <= gamma (the noisy ones, where the
    caption decides the image) keep weight 1; the nearly clean ones, whose large eps
    errors otherwise dominate the gradient, are down-weighted. Timesteps stay uniform.
    """
    abar = torch.tensor(s.alphas_cumprod, dtype=torch.float64)[t.cpu()]
    snr = abar / (1 - abar)
    return (snr.clamp(max=gamma) / snr).to(torch.float32).to(t.device)


def sample_timesteps(
    batch: int,
    num_steps: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    *,
    low: int = 0,
) -> torch.Tensor:
    """Uniform training timesteps: (batch,) int64 in [low, num_steps), drawn on
    the generator's device and moved to ``device``."""
    if not 0 <= low < num_steps:
        raise ValueError(f"need 0 <= low < num_steps, got {low} and {num_steps}")
    draw_device = generator.device if generator is not None else device
    t = torch.randint(low, num_steps, (batch,), generator=generator, device=draw_device)
    return t.to(device) if device is not None else t
