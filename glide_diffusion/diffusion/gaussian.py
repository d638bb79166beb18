"""Gaussian diffusion formulas, one per function.

Conventions shared by every function here:

- ``s`` is a :class:`~glide_diffusion.diffusion.schedule.Schedule`.
- ``i`` indexes ``s``'s tables (the respaced index, not the original
  timestep ``t = s.timestep_map[i]`` that models and the sampler contract use;
  without respacing the two agree): either a (B,) int64 tensor (one index per
  row) or a Python int (the same index for every row; coefficients then become
  Python floats, which avoids moving tables to the device at every sampling step).
- Every per-timestep coefficient is rounded to float32 before use and all
  tensor arithmetic is float32, as in glide-text2im (``_extract_into_tensor``).
- Images are (B, C, H, W); the model output is (B, 2C, H, W) = [eps, var_interp]
  (eps prediction, learned-range variance interpolation value: Improved DDPM's v,
  named apart from v-prediction's v).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from .schedule import Schedule, extract

__all__ = [
    "Coef",
    "PMeanVar",
    "TimeIndex",
    "coef",
    "f32",
    "learned_range_log_variance",
    "original_timesteps",
    "p_mean_variance",
    "posterior_mean_variance",
    "predict_eps_from_x0",
    "predict_x0_from_eps",
    "q_mean_variance",
    "q_sample",
    "split_model_output",
]

TimeIndex = int | torch.Tensor
Coef = float | torch.Tensor


def f32(value: float) -> float:
    """Round a Python float to the nearest float32 (kept as a Python float)."""
    return float(np.float32(value))


def coef(arr: np.ndarray, i: TimeIndex, ndim: int) -> Coef:
    """``arr[i]`` rounded to float32: a Python float for an int ``i``, a
    (B, 1, ..., 1) float32 tensor (see :func:`extract`) for a (B,) tensor."""
    if isinstance(i, torch.Tensor):
        return extract(arr, i, ndim)
    return f32(arr[int(i)])


def _full(c: Coef, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a coefficient to ``like``'s shape (as the official tables)."""
    if isinstance(c, torch.Tensor):
        return c.expand_as(like)
    return torch.full_like(like, c)


def original_timesteps(s: Schedule, i: TimeIndex, batch: int, device: torch.device) -> torch.Tensor:
    """(B,) int64 ORIGINAL timesteps ``s.timestep_map[i]`` -- what models see."""
    if isinstance(i, torch.Tensor):
        return torch.tensor(s.timestep_map, device=i.device)[i]
    return torch.full((batch,), int(s.timestep_map[int(i)]), dtype=torch.int64, device=device)


def q_sample(s: Schedule, x0: torch.Tensor, i: TimeIndex, noise: torch.Tensor) -> torch.Tensor:
    """Sample x_t ~ q(x_t | x_0) (DDPM eq. 4): sqrt(abar) x0 + sqrt(1 - abar) noise.

    x0, noise: (B, C, H, W) -> (B, C, H, W).
    """
    return coef(s.sqrt_alphas_cumprod, i, x0.ndim) * x0 + coef(s.sqrt_one_minus_alphas_cumprod, i, x0.ndim) * noise


def q_mean_variance(s: Schedule, x0: torch.Tensor, i: TimeIndex) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and log-variance of q(x_t | x_0) (DDPM eq. 4), each (B, C, H, W)."""
    mean = coef(s.sqrt_alphas_cumprod, i, x0.ndim) * x0
    variance = _full(coef(1.0 - s.alphas_cumprod, i, x0.ndim), x0)
    log_variance = _full(coef(s.log_one_minus_alphas_cumprod, i, x0.ndim), x0)
    return mean, variance, log_variance


def predict_x0_from_eps(s: Schedule, x_t: torch.Tensor, i: TimeIndex, eps: torch.Tensor) -> torch.Tensor:
    """Invert eq. 4: x0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps. Shapes (B, C, H, W)."""
    return coef(s.sqrt_recip_alphas_cumprod, i, x_t.ndim) * x_t - coef(s.sqrt_recipm1_alphas_cumprod, i, x_t.ndim) * eps


def predict_eps_from_x0(s: Schedule, x_t: torch.Tensor, i: TimeIndex, x0: torch.Tensor) -> torch.Tensor:
    """Invert eq. 4 for eps: (sqrt(1/abar) x_t - x0) / sqrt(1/abar - 1). Shapes (B, C, H, W)."""
    return (coef(s.sqrt_recip_alphas_cumprod, i, x_t.ndim) * x_t - x0) / coef(
        s.sqrt_recipm1_alphas_cumprod, i, x_t.ndim
    )


def posterior_mean_variance(
    s: Schedule, x0: torch.Tensor, x_t: torch.Tensor, i: TimeIndex
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7): mean = coef1 x0 + coef2 x_t,
    variance beta_tilde and its clipped log (index 0 uses beta_tilde_1).
    Returns three (B, C, H, W) tensors."""
    n = x_t.ndim
    mean = coef(s.posterior_mean_coef1, i, n) * x0 + coef(s.posterior_mean_coef2, i, n) * x_t
    variance = _full(coef(s.posterior_variance, i, n), x_t)
    log_variance = _full(coef(s.posterior_log_variance_clipped, i, n), x_t)
    return mean, variance, log_variance


def learned_range_log_variance(s: Schedule, var_interp: torch.Tensor, i: TimeIndex) -> torch.Tensor:
    """Improved-DDPM eq. 15: log Sigma = frac log beta_t + (1 - frac) log beta_tilde_t
    with frac = (var_interp + 1) / 2, NOT clamped (|var_interp| > 1 extrapolates).

    var_interp: (B, C, H, W) model variance output -> (B, C, H, W) log-variance.
    """
    min_log = coef(s.posterior_log_variance_clipped, i, var_interp.ndim)
    max_log = coef(s.log_betas, i, var_interp.ndim)
    frac = (var_interp + 1) / 2
    return frac * max_log + (1 - frac) * min_log


class PMeanVar(NamedTuple):
    """Output of :func:`p_mean_variance`; every field (B, C, H, W)."""

    mean: torch.Tensor
    variance: torch.Tensor
    log_variance: torch.Tensor
    pred_x0: torch.Tensor
    eps: torch.Tensor


def split_model_output(model_out: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 2C, H, W) -> eps (B, C, H, W), var_interp (B, C, H, W); C from the image."""
    if model_out.ndim < 2 or model_out.shape[1] != 2 * channels:
        raise ValueError(
            f"model output must have 2*C = {2 * channels} channels [eps, var_interp], "
            f"got shape {tuple(model_out.shape)}"
        )
    eps, var_interp = torch.split(model_out, channels, dim=1)
    return eps, var_interp


def p_mean_variance(
    s: Schedule,
    model_out: torch.Tensor,
    x_t: torch.Tensor,
    i: TimeIndex,
    *,
    clamp_x0: bool = True,
    x0_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> PMeanVar:
    """The reverse step p(x_{t-1} | x_t) from an [eps, var_interp] model output.

    pred_x0 = predict_x0_from_eps, then ``x0_fn(pred_x0, t_original)`` (the
    official ``denoised_fn``, e.g. an inpainting paste-in), then clamp to
    [-1, 1] if ``clamp_x0``; mean = posterior mean at pred_x0 (DDPM eq. 7);
    log-variance from the learned range (Improved DDPM eq. 15).

    model_out: (B, 2C, H, W); x_t: (B, C, H, W).
    """
    eps, var_interp = split_model_output(model_out, x_t.shape[1])
    log_variance = learned_range_log_variance(s, var_interp, i)
    pred_x0 = predict_x0_from_eps(s, x_t, i, eps)
    if x0_fn is not None:
        pred_x0 = x0_fn(pred_x0, original_timesteps(s, i, x_t.shape[0], x_t.device))
    if clamp_x0:
        pred_x0 = pred_x0.clamp(-1, 1)
    mean, _, _ = posterior_mean_variance(s, pred_x0, x_t, i)
    return PMeanVar(mean, torch.exp(log_variance), log_variance, pred_x0, eps)
