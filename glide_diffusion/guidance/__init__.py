"""Guidance as wrappers: classifier-free and composed guidance (denoiser -> denoiser),
gradient guidance (``cond_fn`` builders, incl. noised-CLIP guidance), and CLIP re-ranking."""

from .cfg import classifier_free_guidance, composed_guidance
from .clip import clip_cond_fn
from .gradient import LogProbFn, combine_cond_fns, scaled_cond_fn
from .rerank import clip_best, clip_rerank, clip_scores

__all__ = [
    "LogProbFn",
    "classifier_free_guidance",
    "composed_guidance",
    "clip_cond_fn",
    "clip_best",
    "clip_rerank",
    "clip_scores",
    "combine_cond_fns",
    "scaled_cond_fn",
]
