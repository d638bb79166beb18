"""CLIP re-ranking (GLIDE sec. 3.2): score finished images against a prompt with a noised
CLIP at t = 0 and keep the best k.

The scores are the CLIP logits ``exp(logit_scale) * z_i . z_t`` of unit embeddings; the
text side is :func:`~.clip.clip_text_embeddings` (a prompt, tokens or embeddings).
"""

from __future__ import annotations

import torch

from ..clip.model import NoisedClip
from ..clip.tokenizer import ClipTokenizer
from .clip import Prompts, clip_resize, clip_text_embeddings

__all__ = ["clip_best", "clip_rerank", "clip_scores"]


def clip_scores(
    clip: NoisedClip,
    images: torch.Tensor,
    prompt: Prompts,
    *,
    tokenizer: ClipTokenizer | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """CLIP logits ``exp(logit_scale) * z_i . z_t`` (N,) of clean images (N, 3, H, W) in [-1, 1] at t = 0.

    ``prompt`` is one prompt (a string or a single-row ``(tokens, lens)``).
    Images are resized to the CLIP's image size when they differ.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images (N, 3, H, W), got {tuple(images.shape)}")
    z_t = clip_text_embeddings(clip, prompt, tokenizer)
    if z_t.shape[0] != 1:
        raise ValueError(f"clip_scores takes one prompt, got {z_t.shape[0]}")
    device, dtype = clip.logit_scale.device, clip.logit_scale.dtype
    scores = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            x = clip_resize(chunk.to(device=device, dtype=dtype), clip.config.image_size)
            t = torch.zeros(x.shape[0], dtype=torch.long, device=device)
            scores.append(clip.logits(clip.image_embeddings(x, t), z_t)[:, 0])
    return torch.cat(scores)


def clip_best(
    clip: NoisedClip,
    images: torch.Tensor,
    prompt: Prompts,
    k: int,
    *,
    tokenizer: ClipTokenizer | None = None,
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (k,) int64 of the k images best matching ``prompt`` by :func:`clip_scores`, best first
    (ties keep the earlier image first), and their scores (k,) float32, on the CPU."""
    if not 1 <= k <= images.shape[0]:
        raise ValueError(f"k must be in 1..{images.shape[0]}, got {k}")
    scores = clip_scores(clip, images, prompt, tokenizer=tokenizer, batch_size=batch_size).float().cpu()
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return order, scores[order]


def clip_rerank(
    clip: NoisedClip,
    images: torch.Tensor,
    prompt: Prompts,
    k: int,
    *,
    tokenizer: ClipTokenizer | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Indices (k,) int64 of the k images best matching ``prompt`` (:func:`clip_best`)."""
    return clip_best(clip, images, prompt, k, tokenizer=tokenizer, batch_size=batch_size)[0]
