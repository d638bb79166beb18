"""Guidance as wrappers: classifier-free guidance (denoiser -> denoiser) and
gradient guidance (``cond_fn`` builders)."""

from .cfg import classifier_free_guidance
from .gradient import LogProbFn, combine_cond_fns, scaled_cond_fn

__all__ = ["LogProbFn", "classifier_free_guidance", "combine_cond_fns", "scaled_cond_fn"]
