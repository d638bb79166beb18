"""What the samplers share: the denoiser contract's types, the step loop and its checks.

:mod:`.samplers` (DDPM, DDIM) and :mod:`.dpm_solver` (DPM-Solver++) both build on this
module, which imports neither of them. See :mod:`.samplers` for the denoiser contract.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import NamedTuple

import torch

from ..diffusion.gaussian import TimeIndex, original_timesteps
from ..diffusion.schedule import Schedule
from .noise import NoiseFn

__all__ = ["Callback", "CondFn", "Denoiser", "StepResult", "X0Fn", "host_timestep"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CondFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


class StepResult(NamedTuple):
    """One reverse step: the new sample x_{t-1} and the pred_x0 used, (B, C, H, W)."""

    sample: torch.Tensor
    pred_x0: torch.Tensor


def _cond_grad(cond_fn: CondFn, s: Schedule, x_t: torch.Tensor, i: TimeIndex) -> torch.Tensor:
    """cond_fn at the ORIGINAL timestep, with autograd enabled at the call site
    only (the model call itself runs without grad), detached, float32."""
    t = original_timesteps(s, i, x_t.shape[0], x_t.device)
    with torch.enable_grad():
        grad = cond_fn(x_t, t)
    return grad.detach().float()


def _validate(s: Schedule, x_T: torch.Tensor, noise_fn: NoiseFn | None, callback: Callback | None) -> None:
    if not isinstance(s, Schedule):
        raise ValueError(f"s must be a Schedule, got {type(s).__name__}")
    if not isinstance(x_T, torch.Tensor) or x_T.ndim != 4:
        shape = tuple(x_T.shape) if isinstance(x_T, torch.Tensor) else type(x_T).__name__
        raise ValueError(f"x_T must be a (B, C, H, W) tensor, got {shape}")
    if not x_T.is_floating_point() or x_T.shape[0] == 0:
        raise ValueError(f"x_T must be a non-empty floating-point tensor, got {x_T.dtype} {tuple(x_T.shape)}")
    for name, fn in (("noise_fn", noise_fn), ("callback", callback)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be callable")


_HOST_TIMESTEP: ContextVar[int | None] = ContextVar("glide_host_timestep", default=None)


def host_timestep() -> int | None:
    """The original timestep of the denoiser call a sampler is making, on the host.

    Inside a sampler's ``denoiser(x, t)`` call every row of ``t`` holds this value;
    a wrapper that branches on the timestep (a guidance interval) reads it here
    instead of reading ``t`` back from the device. None outside such a call.
    """
    return _HOST_TIMESTEP.get()


def _run(
    step: Callable[[torch.Tensor, torch.Tensor, int, torch.Tensor], StepResult],
    denoiser: Denoiser,
    s: Schedule,
    x_T: torch.Tensor,
    noise_fn: NoiseFn | None,
    use_grad: bool,
    progress: bool | str,
    callback: Callback | None,
) -> torch.Tensor:
    """Walk i = N-1 .. 0: model call, one noise draw, one step.

    The noise is drawn right after the model call, as in the official
    ``p_sample`` (its DDIM draws after ``cond_fn``; only matters if a cond_fn
    consumes the same global RNG as the default ``torch.randn_like``).
    """
    noise_fn = noise_fn if noise_fn is not None else torch.randn_like
    indices = range(s.num_steps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, total=s.num_steps, desc=progress if isinstance(progress, str) else None)
    # cond_fn needs autograd (enabled at its call site only), which inference
    # tensors cannot take part in, so guided runs use no_grad instead.
    mode = torch.no_grad() if use_grad else torch.inference_mode()
    batch, device = x_T.shape[0], x_T.device
    with mode:
        x = x_T
        for i in indices:
            t_host = int(s.timestep_map[i])
            t = torch.full((batch,), t_host, dtype=torch.int64, device=device)
            token = _HOST_TIMESTEP.set(t_host)
            try:
                model_out = denoiser(x, t)
            finally:
                _HOST_TIMESTEP.reset(token)
            if model_out.shape[0] != batch:
                raise ValueError(f"denoiser returned batch {model_out.shape[0]}, expected {batch}")
            x, pred_x0 = step(model_out, x, i, noise_fn(x))
            if callback is not None:
                callback(i, x, pred_x0)
    return x.clone()  # a normal tensor, usable outside inference mode
