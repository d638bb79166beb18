"""Diffusion math: schedules and respacing, Gaussian q/posterior/p formulas, losses.

Pure functions over an immutable float64 :class:`Schedule`; no model code.
"""

from .gaussian import (
    PMeanVar,
    learned_range_log_variance,
    original_timesteps,
    p_mean_variance,
    posterior_mean_variance,
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_mean_variance,
    q_sample,
)
from .losses import (
    LossTerms,
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    normal_kl,
    sample_timesteps,
)
from .schedule import Schedule, extract, get_named_beta_schedule, make_schedule, space_timesteps

__all__ = [
    "LossTerms",
    "PMeanVar",
    "Schedule",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "extract",
    "get_named_beta_schedule",
    "hybrid_loss",
    "learned_range_log_variance",
    "make_schedule",
    "normal_kl",
    "original_timesteps",
    "p_mean_variance",
    "posterior_mean_variance",
    "predict_eps_from_x0",
    "predict_x0_from_eps",
    "q_mean_variance",
    "q_sample",
    "sample_timesteps",
    "space_timesteps",
]
