"""DPM-Solver++(2M): the multistep second-order data-prediction ODE solver.

Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", Algorithm 2. With ``alpha_t = sqrt(abar_t)``,
``sigma_t = sqrt(1 - abar_t)`` and ``lambda_t = log(alpha_t / sigma_t)``
(half the log-SNR), one step from s = t_i to t = t_{i-1} with
``h = lambda_t - lambda_s`` is::

    x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - exp(-h)) D
    D   = x0_s                                          (first order = DDIM)
    D   = (1 + 1/(2r)) x0_s - 1/(2r) x0_prev,  r = h_prev / h   (second order)

where ``x0_s`` is the denoised prediction at s and ``x0_prev`` the one at the
previous (noisier) step, ``h_prev = lambda_s - lambda_prev``. This is the
paper's Algorithm 2 and diffusers' ``solver_type="midpoint"``.

Choices:

- The solver walks the kept timesteps of ``s`` (usually respaced), N steps,
  N model calls. The first step is first order (no history yet). The final
  step, from the last kept timestep (t = 0 for GLIDE respacings) to
  abar = 1 (``sigma = 0``, ``h`` infinite), is necessarily first order and
  returns x0 exactly, as DDIM does at i = 0 here (abar_prev = 1).
- ``lower_order_final=True`` (default) also makes the step INTO the last
  kept timestep first order. GLIDE's respacings are uniform in t and end at
  t = 0, where lambda jumps (cosine, 10 steps: lambda 1.7 at t = 111, 5.1 at
  t = 0, so h = 3.4 against h_prev = 0.7 and w = 1/(2r) = 2.5): the linear
  extrapolation of x0 over that step overshoots badly (Gaussian data with
  sigma 0.5: endpoint +29% at 10 steps, +10% at 20, where DDIM is -16% and
  -8%; with the first-order step -6% and -0.3%; tests/test_dpm_solver.py).
  This is the spirit of diffusers' ``lower_order_final`` ("more stable for
  few steps") applied where the large step is. ``lower_order_final=False``
  is Algorithm 2 exactly, step for step what diffusers'
  ``DPMSolverMultistepScheduler`` does (its final step to sigma = 0 is
  first order, as here).
- Denoised prediction: the eps channels only (the learned variance v is
  ignored: the ODE needs no variance), x0 from eps, then ``x0_fn``, then
  clamp to [-1, 1] when ``clamp_x0`` (GLIDE's clipping: the static
  form of DPM-Solver++'s thresholding).
- ``cond_fn`` in score form, ``eps -= sqrt(1 - abar) * grad``, applied
  BEFORE x0 is computed (so the guided x0 is also projected and clipped;
  DDIM here guides after clipping and does not re-clip).
- Deterministic: ``noise_fn`` is accepted so every sampler in ``SAMPLERS``
  has one signature, but it is never called.
- Coefficients are Python floats computed in float64 from the schedule's
  tables before the loop: no host-device sync per step. Unlike DDPM/DDIM
  they are not rounded to float32 (there is no official GLIDE
  implementation to match bit for bit).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..diffusion.gaussian import original_timesteps, predict_x0_from_eps, split_model_output
from ..diffusion.schedule import Schedule
from .common import Callback, CondFn, Denoiser, StepResult, X0Fn, _cond_grad, _run, _validate
from .noise import NoiseFn

__all__ = ["DPMStepCoefs", "dpmpp_2m_coefficients", "sample_dpmpp_2m"]


class DPMStepCoefs(NamedTuple):
    """Coefficients of the step from index i to i-1 (Python floats):
    ``x_{i-1} = ratio * x_i + scale * D`` with
    ``D = (1 + w) x0_i - w x0_{i+1}``, ``w = 1/(2r)`` (0 for a first-order step)."""

    ratio: float  # sigma_t / sigma_s
    scale: float  # alpha_t (1 - exp(-h))
    w: float  # 1 / (2r), or 0 for a first-order step


def _lambda(abar: float) -> float:
    """lambda = log(alpha / sigma) = (log abar - log(1 - abar)) / 2; +inf at abar = 1."""
    if abar >= 1.0:
        return math.inf
    return 0.5 * (math.log(abar) - math.log1p(-abar))


def dpmpp_2m_coefficients(s: Schedule, lower_order_final: bool = True) -> list[DPMStepCoefs]:
    """Per-step coefficients, indexed like the schedule (entry i: step i -> i-1;
    entry 0 goes to abar = 1). The first step (i = N-1) and the last (i = 0)
    are first order, and with ``lower_order_final`` also i = 1; the rest
    second order (Algorithm 2)."""
    n = s.num_steps
    lam = [_lambda(float(a)) for a in s.alphas_cumprod]
    out = []
    for i in range(n):
        abar_s, abar_t = float(s.alphas_cumprod[i]), float(s.alphas_cumprod_prev[i])
        if abar_t >= 1.0:  # sigma_t = 0, h = inf: x_t = x0 (exactly DDIM's last step)
            ratio, scale = 0.0, 1.0
        else:
            h = _lambda(abar_t) - lam[i]
            ratio = math.sqrt((1.0 - abar_t) / (1.0 - abar_s))
            scale = -math.sqrt(abar_t) * math.expm1(-h)
        w = 0.0  # first order: the first step (no history) and the final one(s)
        if (2 if lower_order_final else 1) <= i < n - 1:
            h, h_prev = lam[i - 1] - lam[i], lam[i] - lam[i + 1]
            w = 0.5 * h / h_prev  # 1 / (2r), r = h_prev / h
        out.append(DPMStepCoefs(ratio, scale, w))
    return out


def sample_dpmpp_2m(
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
    lower_order_final: bool = True,
) -> torch.Tensor:
    """DPM-Solver++(2M) from x_T (B, C, H, W) over the kept timesteps of ``s``.

    ``denoiser(x, t_original) -> (B, 2C, H, W) [eps, var_interp]`` (var_interp ignored).
    ``noise_fn`` is accepted and ignored (the solver is deterministic).
    ``callback(i, x_{i-1}, x0_i)`` after each step, with the denoised x0 used
    at step i (after ``x0_fn`` and clipping). Returns the sample (B, C, H, W):
    the denoised x0 at the last kept timestep. ``lower_order_final``: see the
    module docstring (False = Algorithm 2 exactly, as diffusers).
    """
    _validate(s, x_T, noise_fn, callback)
    coefs = dpmpp_2m_coefficients(s, lower_order_final)
    sqrt_1m_abar = [math.sqrt(1.0 - float(a)) for a in s.alphas_cumprod]
    history: list[torch.Tensor] = []  # x0 of the previous step

    def step(model_out: torch.Tensor, x: torch.Tensor, i: int, _noise: torch.Tensor) -> StepResult:
        eps, _ = split_model_output(model_out, x.shape[1])
        if cond_fn is not None:
            eps = eps - sqrt_1m_abar[i] * _cond_grad(cond_fn, s, x, i)
        x0 = predict_x0_from_eps(s, x, i, eps)
        if x0_fn is not None:
            x0 = x0_fn(x0, original_timesteps(s, i, x.shape[0], x.device))
        if clamp_x0:
            x0 = x0.clamp(-1, 1)
        c = coefs[i]
        d = x0 if c.w == 0.0 else (1 + c.w) * x0 - c.w * history[0]
        history[:] = [x0]
        x_prev = d if c.ratio == 0.0 else c.ratio * x + c.scale * d  # last step: exactly x0
        return StepResult(x_prev, x0)

    # _run draws noise_fn(x) once per step; pass a no-op source so nothing is drawn.
    return _run(step, denoiser, s, x_T, _no_noise, cond_fn is not None, progress, callback)


def _no_noise(x: torch.Tensor) -> torch.Tensor:
    return x
