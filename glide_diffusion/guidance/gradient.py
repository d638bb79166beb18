"""Gradient guidance: building and combining ``cond_fn``s.

A ``cond_fn(x_t, t) -> grad`` returns the (already scaled) gradient of
log p(y | x_t), shape (B, C, H, W), at ORIGINAL timesteps t (B,). Samplers
apply it in the mean form (DDPM) or the score form (DDIM); see
:mod:`glide_diffusion.sampling.samplers`. CLIP guidance (GLIDE sec. 2.4) is a
``scaled_cond_fn`` of the CLIP similarity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..sampling.samplers import CondFn

__all__ = ["LogProbFn", "combine_cond_fns", "scaled_cond_fn"]

LogProbFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def combine_cond_fns(*fns: CondFn) -> CondFn:
    """A cond_fn returning the sum of the given cond_fns' gradients
    (a product of independent likelihoods p(y1|x) p(y2|x))."""
    if not fns:
        raise ValueError("combine_cond_fns needs at least one cond_fn")
    if not all(callable(f) for f in fns):
        raise ValueError("every argument of combine_cond_fns must be callable")

    def combined(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        grad = fns[0](x_t, t)
        for fn in fns[1:]:
            grad = grad + fn(x_t, t)
        return grad

    return combined


def scaled_cond_fn(log_prob_fn: LogProbFn, scale: float) -> CondFn:
    """cond_fn = scale * d/dx_t sum_b log_prob_fn(x_t, t)_b.

    ``log_prob_fn(x_t, t) -> (B,)`` must be differentiable in x_t; rows must
    not interact, so the gradient of the sum is the per-row gradient. The
    gradient is taken on a detached copy with autograd enabled (so it also
    works when called under ``torch.no_grad``) and returned detached.
    """
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")

    def cond_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False), torch.enable_grad():
            # Clones are normal tensors even when the sampler runs under inference mode.
            x_in = x_t.detach().clone().requires_grad_(True)
            log_prob = log_prob_fn(x_in, t.clone())
            if log_prob.shape != (x_t.shape[0],):
                raise ValueError(f"log_prob_fn must return shape ({x_t.shape[0]},), got {tuple(log_prob.shape)}")
            (grad,) = torch.autograd.grad(log_prob.sum(), x_in)
        return grad.detach() * scale

    return cond_fn
