"""Samplers (functions of a denoiser) and reproducible noise sources."""

from .dpm_solver import dpmpp_2m_coefficients, sample_dpmpp_2m
from .noise import NoiseFn, PerSampleNoise, seeds_for
from .samplers import (
    SAMPLERS,
    CondFn,
    Denoiser,
    Sampler,
    StepResult,
    X0Fn,
    ddim_step,
    ddpm_step,
    get_sampler,
    host_timestep,
    sample_ddim,
    sample_ddpm,
)

__all__ = [
    "CondFn",
    "Denoiser",
    "NoiseFn",
    "PerSampleNoise",
    "SAMPLERS",
    "Sampler",
    "StepResult",
    "X0Fn",
    "ddim_step",
    "ddpm_step",
    "dpmpp_2m_coefficients",
    "get_sampler",
    "host_timestep",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "seeds_for",
]
