"""Samplers (functions of a denoiser) and reproducible noise sources."""

from .noise import NoiseFn, PerSampleNoise, seeds_for
from .samplers import (
    SAMPLERS,
    CondFn,
    Denoiser,
    StepResult,
    X0Fn,
    ddim_step,
    ddpm_step,
    sample_ddim,
    sample_ddpm,
)

__all__ = [
    "CondFn",
    "Denoiser",
    "NoiseFn",
    "PerSampleNoise",
    "SAMPLERS",
    "StepResult",
    "X0Fn",
    "ddim_step",
    "ddpm_step",
    "sample_ddim",
    "sample_ddpm",
    "seeds_for",
]
