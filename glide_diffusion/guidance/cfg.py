"""Classifier-free guidance (Ho & Salimans 2021; GLIDE sec. 2.3) and its composition (Liu et al.
2022, "Compositional Visual Generation with Composable Diffusion Models") as one denoiser wrapper.

Convention (stated once): on the eps channels,
``eps = eps_uncond + s * sum_k w_k (eps_k - eps_uncond)`` over an image's K
terms (captions) with weights w_k (< 0: negated); "uncond" is the empty
caption or a negative prompt. One term of weight 1 is classifier-free
guidance, ``eps_uncond + s * (eps_cond - eps_uncond)``. The variance channels
(var_interp) are taken from the image's lead term (its first of weight > 0; the
conditional branch), unguided. The channel split comes from the image
(``C = x.shape[1]``), never a literal. s = 1 with one term gives the
conditional output, s = 0 the unconditional one.

A guidance interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited
Interval Improves Sample and Distribution Quality in Diffusion Models") guides
only the steps whose timestep lies inside it; the others run at s = 1: for one
term of weight 1 the conditional output from one pass over B rows instead of
2B, which also saves their cost.
Inside a sampler the pass is chosen from the step's timestep on the host
(:func:`~glide_diffusion.sampling.samplers.host_timestep`), so the step loop
never waits for the device; called directly, the wrapper reads ``t`` instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..sampling.samplers import Denoiser, host_timestep

__all__ = ["classifier_free_guidance", "composed_guidance"]

Weights = Sequence[Sequence[float]]


def classifier_free_guidance(
    denoiser: Denoiser,
    guidance_scale: float,
    *,
    interval: tuple[float, float] | None = None,
    conditional: Denoiser | None = None,
) -> Denoiser:
    """Wrap a doubled-batch denoiser into a guided one: :func:`composed_guidance` with one term of
    weight 1 for every image.

    ``denoiser(x2, t2)`` takes 2B rows: the first B are conditioned on the
    caption, the last B on the empty caption (the caller binds the text that
    way). The returned denoiser takes the B conditional rows x (B, C, H, W),
    t (B,), calls ``denoiser(cat([x, x]), cat([t, t]))`` once and returns
    ``cat([eps_u + s (eps_c - eps_u), var_interp_c])`` of shape (B, 2C, H, W).

    With ``interval = (lo, hi)`` (original timesteps), rows whose t is outside
    [lo, hi] get the conditional output unguided; a step with no row inside
    calls ``conditional(x, t)`` (the same model on the B caption rows) once.
    """
    return composed_guidance(denoiser, guidance_scale, ((1.0,),), interval=interval, conditional=conditional)


def composed_guidance(
    denoiser: Denoiser,
    guidance_scale: float,
    weights: Weights = ((1.0,),),
    *,
    interval: tuple[float, float] | None = None,
    conditional: Denoiser | None = None,
) -> Denoiser:
    """Wrap a denoiser over K + 1 rows per image into a guided one of B rows.

    ``weights[b]``: the weights w_b1 .. w_bK of image b's K terms (K may differ between
    images; a single list applies to every image), each finite, at least one > 0.
    ``denoiser(xr, tr)`` takes R = sum_b K_b + B rows: image b's K_b term rows,
    consecutively, images in order, then the B rows of the unconditional (or negative)
    caption (the caller binds the text that way). The returned denoiser takes x
    (B, C, H, W), t (B,), calls ``denoiser`` once on the rows of x and t laid out so, and
    returns ``cat([eps_u + s * sum_k w_k (eps_k - eps_u), var_interp_lead])`` of shape (B, 2C, H, W).

    With ``interval = (lo, hi)`` (original timesteps), rows whose t is outside [lo, hi]
    get the composition at s = 1, ``sum_k w_k eps_k + (1 - sum_k w_k) eps_u`` (for one term
    of weight 1 exactly its conditional output); a step with no row inside calls
    ``conditional(x, t)`` once instead: the denoiser at s = 1 (for one term of weight 1, the
    model on the B caption rows alone).
    """
    scale = float(guidance_scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance_scale must be finite and >= 0, got {guidance_scale!r}")
    limited: tuple[float, float, Denoiser] | None = None  # (lo, hi, conditional) with an interval
    if interval is not None:
        lo, hi = (float(v) for v in interval)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"guidance interval must be finite with lo <= hi, got {interval!r}")
        if conditional is None:
            raise ValueError("a guidance interval needs the conditional denoiser for the unguided steps")
        limited = (lo, hi, conditional)
    term_weights = [[float(w) for w in ws] for ws in weights]
    if not term_weights or any(not ws for ws in term_weights):
        raise ValueError("weights: every image needs at least one term")
    for ws in term_weights:
        if not all(math.isfinite(w) for w in ws) or max(ws) <= 0:
            raise ValueError(f"term weights must be finite with one > 0 per image, got {ws}")
    layouts: dict[tuple[int, torch.device], _Layout] = {}

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[0], x.shape[1]
        inside = None
        if limited is not None:
            low, high, unguided_step = limited
            known = host_timestep()  # every row's timestep, on the host, inside a sampler
            if known is not None:
                if not low <= known <= high:
                    return unguided_step(x, t)
            else:
                inside = (t >= low) & (t <= high)
                if not bool(inside.any()):
                    return unguided_step(x, t)
        key = (batch, x.device)
        if key not in layouts:
            layouts[key] = _layout(term_weights, batch, x.device)
        lay = layouts[key]
        rows = lay.terms + batch
        out = denoiser(torch.cat([x[lay.owner], x]), torch.cat([t[lay.owner], t]))  # (R, 2C, H, W)
        if out.shape[0] != rows or out.shape[1] != 2 * channels:
            raise ValueError(
                f"denoiser returned {tuple(out.shape)} for {rows} rows ({lay.terms} term rows, then {batch} "
                f"unconditional; for one term a doubled batch) with {channels} channels; "
                f"expected ({rows}, {2 * channels}, ...)"
            )
        eps_u = out[lay.terms :, :channels]  # (B, C, H, W)
        eps_k = out[: lay.terms, :channels][lay.gather]  # (B, K, C, H, W), padding rows of weight 0
        w = lay.weights.to(eps_u.dtype).view(*lay.gather.shape, 1, 1, 1)
        eps = eps_u + scale * (w * (eps_k - eps_u[:, None])).sum(dim=1)
        if inside is not None:
            unguided = (w * eps_k).sum(dim=1) + (1 - w.sum(dim=1)) * eps_u
            eps = torch.where(inside.view(-1, 1, 1, 1), eps, unguided)
        return torch.cat([eps, out[lay.lead, channels:]], dim=1)

    return guided


class _Layout(NamedTuple):
    """Where each image's terms lie among the denoiser's rows (built once per batch size)."""

    terms: int  # term rows, sum_b K_b
    owner: torch.Tensor  # (terms,) the image of each term row
    gather: torch.Tensor  # (B, K_max) term row of each image's k-th term (padding: its lead)
    weights: torch.Tensor  # (B, K_max), padding 0
    lead: torch.Tensor  # (B,) each image's first term of weight > 0


def _layout(weights: list[list[float]], batch: int, device: torch.device) -> _Layout:
    if len(weights) == 1:
        weights = weights * batch
    elif len(weights) != batch:
        raise ValueError(f"term weights for {len(weights)} images, called with a batch of {batch}")
    k_max = max(len(ws) for ws in weights)
    owner: list[int] = []
    gather: list[list[int]] = []
    padded: list[list[float]] = []
    lead: list[int] = []
    for b, ws in enumerate(weights):
        first = len(owner)
        lead.append(first + next(k for k, w in enumerate(ws) if w > 0))
        gather.append([first + k for k in range(len(ws))] + [lead[-1]] * (k_max - len(ws)))
        padded.append(ws + [0.0] * (k_max - len(ws)))
        owner += [b] * len(ws)

    def as_index(v: list[int] | list[list[int]]) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.long, device=device)

    return _Layout(
        len(owner),
        as_index(owner),
        as_index(gather),
        torch.tensor(padded, dtype=torch.float32, device=device),
        as_index(lead),
    )
