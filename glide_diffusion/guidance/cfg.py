"""Classifier-free guidance (Ho & Salimans 2021; GLIDE sec. 2.3) as a denoiser wrapper.

Convention (stated once): on the eps channels,
``eps = eps_uncond + s * (eps_cond - eps_uncond)``; the variance channels v
are taken from the conditional branch, unguided. The channel split comes
from the image (``C = x.shape[1]``), never a literal. s = 1 gives the
conditional output, s = 0 the unconditional one.

A guidance interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited
Interval Improves Sample and Distribution Quality in Diffusion Models") guides
only the steps whose timestep lies inside it; the others take the conditional
output from one pass over B rows instead of 2B, which also saves their cost.
Inside a sampler the pass is chosen from the step's timestep on the host
(:func:`~glide_diffusion.sampling.samplers.host_timestep`), so the step loop
never waits for the device; called directly, the wrapper reads ``t`` instead.
"""

from __future__ import annotations

import math

import torch

from ..sampling.samplers import Denoiser, host_timestep

__all__ = ["classifier_free_guidance"]


def classifier_free_guidance(
    denoiser: Denoiser,
    guidance_scale: float,
    *,
    interval: tuple[float, float] | None = None,
    conditional: Denoiser | None = None,
) -> Denoiser:
    """Wrap a doubled-batch denoiser into a guided one.

    ``denoiser(x2, t2)`` takes 2B rows: the first B are conditioned on the
    caption, the last B on the empty caption (the caller binds the text that
    way). The returned denoiser takes the B conditional rows x (B, C, H, W),
    t (B,), calls ``denoiser(cat([x, x]), cat([t, t]))`` once and returns
    ``cat([eps_u + s (eps_c - eps_u), v_c])`` of shape (B, 2C, H, W).

    With ``interval = (lo, hi)`` (original timesteps), rows whose t is outside
    [lo, hi] get the conditional output unguided; a step with no row inside
    calls ``conditional(x, t)`` (the same model on the B caption rows) once.
    """
    scale = float(guidance_scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance_scale must be finite and >= 0, got {guidance_scale!r}")
    if interval is not None:
        lo, hi = (float(v) for v in interval)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"guidance interval must be finite with lo <= hi, got {interval!r}")
        if conditional is None:
            raise ValueError("a guidance interval needs the conditional denoiser for the unguided steps")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[0], x.shape[1]
        inside = None
        if interval is not None:
            known = host_timestep()  # every row's timestep, on the host, inside a sampler
            if known is not None:
                if not lo <= known <= hi:
                    return conditional(x, t)
            else:
                inside = (t >= lo) & (t <= hi)
                if not bool(inside.any()):
                    return conditional(x, t)
        out = denoiser(torch.cat([x, x]), torch.cat([t, t]))  # (2B, 2C, H, W)
        if out.shape[0] != 2 * batch or out.shape[1] != 2 * channels:
            raise ValueError(
                f"denoiser returned {tuple(out.shape)} for a doubled batch of {2 * batch} "
                f"rows with {channels} channels; expected ({2 * batch}, {2 * channels}, ...)"
            )
        cond, uncond = out[:batch], out[batch:]
        eps_c, v_c = cond[:, :channels], cond[:, channels:]
        eps_u = uncond[:, :channels]
        eps = eps_u + scale * (eps_c - eps_u)
        if inside is not None:
            eps = torch.where(inside.view(-1, 1, 1, 1), eps, eps_c)
        return torch.cat([eps, v_c], dim=1)

    return guided
