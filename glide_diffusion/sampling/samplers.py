"""Samplers: DDPM ancestral sampling and DDIM, as plain functions.

The denoiser contract -- the only thing samplers know about a model::

    denoiser(x_t, t) -> model_out
      x_t:       (B, C, H, W) float, the current noisy sample
      t:         (B,) int64 ORIGINAL timesteps (``s.timestep_map[i]``, 0..999
                 for GLIDE), on x_t.device -- never respaced indices, never
                 rescaled floats
      model_out: (B, 2C, H, W) = [eps, var_interp]: the eps prediction and
                 the learned-range variance value (Improved DDPM eq. 15's v)

Guidance (classifier-free, CLIP, inpainting paste-in) wraps a denoiser into
another denoiser, or is passed as ``x0_fn`` / ``cond_fn``:

- ``x0_fn(pred_x0, t) -> pred_x0`` edits the predicted x0 before clipping
  (the official ``denoised_fn``).
- ``cond_fn(x_t, t) -> grad`` returns the (already scaled) gradient of
  log p(y | x_t). DDPM uses the mean form, ``mean += variance * grad``
  (Sohl-Dickstein et al. 2015; Dhariwal & Nichol 2021 alg. 1); DDIM the score
  form, ``eps -= sqrt(1 - abar) * grad`` (Dhariwal & Nichol 2021 alg. 2),
  exactly as glide-text2im.

Numerics follow glide-text2im: every per-step coefficient is rounded to
float32 and the arithmetic is float32, in the official operation order. Loops
walk i = N-1 .. 0 and compute coefficients as Python floats from the float64
tables on the host, so the step loop never synchronises with the device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Protocol

import torch

from ..diffusion.gaussian import (
    Coef,
    TimeIndex,
    coef,
    f32,
    p_mean_variance,
    predict_eps_from_x0,
    predict_x0_from_eps,
)
from ..diffusion.schedule import Schedule
from .common import (
    Callback,
    CondFn,
    Denoiser,
    StepResult,
    X0Fn,
    _cond_grad,
    _run,
    _validate,
    host_timestep,
)
from .dpm_solver import sample_dpmpp_2m
from .noise import NoiseFn

__all__ = [
    "CondFn",
    "Denoiser",
    "SAMPLERS",
    "StepResult",
    "Sampler",
    "X0Fn",
    "ddim_step",
    "ddpm_step",
    "get_sampler",
    "host_timestep",
    "sample_ddim",
    "sample_ddpm",
]

# --- float32 coefficient arithmetic -------------------------------------------
# A coefficient is a Python float (int index: same step for all rows) or a
# (B, 1, 1, 1) float32 tensor (tensor index). For floats every operation is
# rounded to float32, which reproduces float32 tensor arithmetic bit for bit
# (double rounding is innocuous for +, -, *, / of float32 operands).


def _r(c: Coef) -> Coef:
    return c if isinstance(c, torch.Tensor) else f32(c)


def _sqrt(c: Coef) -> Coef:
    # For floats use torch's own CPU float32 sqrt (what the official code
    # applies to its coefficient tensors): it is not always correctly rounded
    # (1 ulp off for some inputs), and matching it keeps CPU runs bit-identical
    # to the reference. Host-only work, no device sync.
    if isinstance(c, torch.Tensor):
        return torch.sqrt(c)
    return torch.sqrt(torch.tensor(c, dtype=torch.float32)).item()


def _nonzero(i: TimeIndex, x: torch.Tensor) -> Coef:
    """1 where the step is not the last one (index 0), else 0."""
    if isinstance(i, torch.Tensor):
        return (i != 0).float().view(-1, *([1] * (x.ndim - 1)))
    return float(i != 0)


def _check_index(s: Schedule, i: TimeIndex) -> None:
    if not isinstance(i, torch.Tensor) and not 0 <= int(i) < s.num_steps:
        raise ValueError(f"step index {i} out of range [0, {s.num_steps})")


# --- single steps --------------------------------------------------------------


def ddpm_step(
    s: Schedule,
    model_out: torch.Tensor,
    x_t: torch.Tensor,
    i: TimeIndex,
    noise: torch.Tensor,
    *,
    clamp_x0: bool = True,
    x0_fn: X0Fn | None = None,
    cond_fn: CondFn | None = None,
) -> StepResult:
    """Ancestral step x_t -> x_{t-1} (DDPM alg. 2 with learned variance):
    ``mean [+ variance * grad] + (i != 0) * exp(log_var / 2) * noise``.

    model_out: (B, 2C, H, W) = denoiser(x_t, timestep_map[i]); x_t, noise:
    (B, C, H, W); i: respaced index (int, or (B,) int64 tensor per row).
    """
    _check_index(s, i)
    out = p_mean_variance(s, model_out, x_t, i, clamp_x0=clamp_x0, x0_fn=x0_fn)
    mean = out.mean
    if cond_fn is not None:
        mean = mean.float() + out.variance * _cond_grad(cond_fn, s, x_t, i)
    sample = mean + _nonzero(i, x_t) * torch.exp(0.5 * out.log_variance) * noise
    return StepResult(sample, out.pred_x0)


def ddim_step(
    s: Schedule,
    model_out: torch.Tensor,
    x_t: torch.Tensor,
    i: TimeIndex,
    noise: torch.Tensor,
    *,
    eta: float = 0.0,
    clamp_x0: bool = True,
    x0_fn: X0Fn | None = None,
    cond_fn: CondFn | None = None,
) -> StepResult:
    """DDIM step (Song et al. 2021, eq. 12):
    ``x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma noise``
    with ``sigma = eta sqrt((1 - abar_prev)/(1 - abar)) sqrt(1 - abar/abar_prev)``.

    As glide-text2im, eps is re-derived from the CLIPPED pred_x0 (so it differs
    from the model's eps whenever clipping is active); with ``cond_fn`` the
    score form ``eps -= sqrt(1 - abar) * grad`` is applied first and pred_x0
    recomputed (not re-clipped). Shapes as :func:`ddpm_step`.
    """
    _check_index(s, i)
    if not (eta >= 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be finite and >= 0, got {eta}")
    n = x_t.ndim
    out = p_mean_variance(s, model_out, x_t, i, clamp_x0=clamp_x0, x0_fn=x0_fn)
    pred_x0 = out.pred_x0
    alpha_bar = coef(s.alphas_cumprod, i, n)
    if cond_fn is not None:
        eps = predict_eps_from_x0(s, x_t, i, pred_x0)
        eps = eps - _sqrt(_r(1 - alpha_bar)) * _cond_grad(cond_fn, s, x_t, i)
        pred_x0 = predict_x0_from_eps(s, x_t, i, eps)
    eps = predict_eps_from_x0(s, x_t, i, pred_x0)
    alpha_bar_prev = coef(s.alphas_cumprod_prev, i, n)
    sigma = _r(
        _r(f32(eta) * _sqrt(_r(_r(1 - alpha_bar_prev) / _r(1 - alpha_bar))))
        * _sqrt(_r(1 - _r(alpha_bar / alpha_bar_prev)))
    )
    mean_pred = pred_x0 * _sqrt(alpha_bar_prev) + _sqrt(_r(_r(1 - alpha_bar_prev) - _r(sigma * sigma))) * eps
    sample = mean_pred + _r(_nonzero(i, x_t) * sigma) * noise
    return StepResult(sample, pred_x0)


# --- loops -------------------------------------------------------------------------


def sample_ddpm(
    denoiser: Denoiser,
    s: Schedule,
    x_T: torch.Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    clamp_x0: bool = True,
    x0_fn: X0Fn | None = None,
    cond_fn: CondFn | None = None,
    progress: bool | str = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Ancestral sampling (official ``p_sample_loop``) from x_T (B, C, H, W).

    ``noise_fn(x)`` is called once per step (default ``torch.randn_like``);
    ``callback(i, x_{i-1}, pred_x0)`` after each step. Returns x_0 (B, C, H, W).
    """
    _validate(s, x_T, noise_fn, callback)

    def step(model_out: torch.Tensor, x: torch.Tensor, i: int, noise: torch.Tensor) -> StepResult:
        return ddpm_step(s, model_out, x, i, noise, clamp_x0=clamp_x0, x0_fn=x0_fn, cond_fn=cond_fn)

    return _run(step, denoiser, s, x_T, noise_fn, cond_fn is not None, progress, callback)


def sample_ddim(
    denoiser: Denoiser,
    s: Schedule,
    x_T: torch.Tensor,
    *,
    eta: float = 0.0,
    noise_fn: NoiseFn | None = None,
    clamp_x0: bool = True,
    x0_fn: X0Fn | None = None,
    cond_fn: CondFn | None = None,
    progress: bool | str = False,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DDIM sampling (official ``ddim_sample_loop``); eta = 0 is deterministic
    given x_T (noise is still drawn once per step, times sigma = 0, as the
    official code does). Other arguments as :func:`sample_ddpm`."""
    _validate(s, x_T, noise_fn, callback)
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")

    def step(model_out: torch.Tensor, x: torch.Tensor, i: int, noise: torch.Tensor) -> StepResult:
        return ddim_step(s, model_out, x, i, noise, eta=eta, clamp_x0=clamp_x0, x0_fn=x0_fn, cond_fn=cond_fn)

    return _run(step, denoiser, s, x_T, noise_fn, cond_fn is not None, progress, callback)


class Sampler(Protocol):
    """The call every sampler in :data:`SAMPLERS` (and every :func:`get_sampler` result) takes:
    a denoiser, the (respaced) schedule and x_T (B, C, H, W) -> x_0 (B, C, H, W)."""

    def __call__(
        self,
        denoiser: Denoiser,
        s: Schedule,
        x_T: torch.Tensor,
        *,
        noise_fn: NoiseFn | None = None,
        clamp_x0: bool = True,
        x0_fn: X0Fn | None = None,
        cond_fn: CondFn | None = None,
        progress: bool | str = False,
        callback: Callback | None = None,
    ) -> torch.Tensor: ...


SAMPLERS: dict[str, Sampler] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpm++2m": sample_dpmpp_2m,
}

# Each sampler with its own settings bound (DDIM's eta; the others take none), by get_sampler.
_BIND_SETTINGS: dict[str, Callable[[float], Sampler]] = {
    "ddpm": lambda eta: sample_ddpm,
    "ddim": lambda eta: functools.partial(sample_ddim, eta=eta),
    "dpm++2m": lambda eta: sample_dpmpp_2m,
}


def get_sampler(name: str, *, eta: float = 0.0) -> Sampler:
    """The sampler ``name`` of :data:`SAMPLERS` with its own settings bound, so that every
    sampler is called the same way (:class:`Sampler`). ``eta``: DDIM's noise scale (0 =
    deterministic); the other samplers have no such setting and ignore it."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    return _BIND_SETTINGS[name](eta)
