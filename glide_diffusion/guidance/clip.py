"""Noised-CLIP guidance (GLIDE sec. 2.4): text embeddings and the guidance gradient.

:func:`clip_cond_fn` is exactly glide-text2im's ``CLIPModel.cond_fn``:
``grad_scale * d/dx_t [exp(logit_scale) * sum_b z_t[b] . z_i(x_t[b], t[b])]``
with unit text and image embeddings, at ORIGINAL timesteps t (what the
samplers hand a ``cond_fn``; see :mod:`glide_diffusion.sampling.samplers`).
CLIP re-ranking of finished images is :mod:`.rerank`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..clip.model import NoisedClip
from ..clip.tokenizer import ClipTokenizer, clip_tokenize_batch, clip_tokenizer_for
from ..sampling.samplers import CondFn
from .gradient import scaled_cond_fn

__all__ = ["Prompts", "clip_resize", "clip_text_embeddings", "composed_text_embeddings", "clip_cond_fn"]

Prompts = str | Sequence[str] | tuple[torch.Tensor, torch.Tensor] | torch.Tensor
"""A prompt, a list of prompts, already padded CLIP ``(tokens (B, L), lens (B,))``, or text
embeddings (B, n_embd) (e.g. :func:`composed_text_embeddings`)."""


def clip_text_embeddings(clip: NoisedClip, prompts: Prompts, tokenizer: ClipTokenizer | None = None) -> torch.Tensor:
    """Unit text embeddings (B, n_embd), without autograd.

    Strings are tokenized with ``tokenizer`` (default: the one ``clip.config`` names);
    a ``(tokens, lens)`` pair is used as is, and so are embeddings (a floating-point tensor).
    """
    if isinstance(prompts, torch.Tensor):
        if not prompts.is_floating_point() or prompts.ndim != 2:
            raise ValueError(
                f"text embeddings must be a float (B, n_embd) tensor, got {prompts.dtype} {tuple(prompts.shape)}"
            )
        return prompts.to(clip.logit_scale.device)
    if isinstance(prompts, tuple) and len(prompts) == 2 and isinstance(prompts[0], torch.Tensor):
        tokens, lens = prompts
    else:
        if isinstance(prompts, str):
            prompts = [prompts]
        tokenizer = tokenizer or clip_tokenizer_for(clip.config)
        tokens, lens = clip_tokenize_batch(tokenizer, list(prompts), clip.config.max_text_len)
    device = clip.logit_scale.device
    with torch.no_grad():
        return clip.text_embeddings(tokens.to(device), lens.to(device))


def composed_text_embeddings(
    clip: NoisedClip,
    compositions: Sequence[Sequence[tuple[str, float]]],
    tokenizer: ClipTokenizer | None = None,
) -> torch.Tensor:
    """One text embedding (B, n_embd) per composition of (caption, weight) terms: the weighted mean
    ``sum_k w_k z_k / sum_k w_k`` of the unit embeddings of its terms of weight > 0.

    A CLIP logit is linear in the text embedding, so this embedding's logit for an image is the
    same weighted mean of the positive terms' logits: what CLIP guidance climbs and reranking
    sorts by for a composed prompt. Negated terms are left out (a noised CLIP scores what an
    image shows, not what it lacks). One term of weight 1: its own embedding.
    """
    positive = [[(text, float(w)) for text, w in terms if w > 0] for terms in compositions]
    if any(not terms for terms in positive):
        raise ValueError("every composition needs a term of weight > 0")
    texts = list(dict.fromkeys(text for terms in positive for text, _ in terms))
    z = clip_text_embeddings(clip, texts, tokenizer)  # (T, D), each text once
    index = {text: i for i, text in enumerate(texts)}
    rows = []
    for terms in positive:
        w = torch.tensor([w for _, w in terms], dtype=z.dtype, device=z.device)
        rows.append((w[:, None] * z[[index[text] for text, _ in terms]]).sum(dim=0) / w.sum())
    return torch.stack(rows)


def clip_cond_fn(
    clip: NoisedClip, prompts_or_tokens: Prompts, grad_scale: float, *, tokenizer: ClipTokenizer | None = None
) -> CondFn:
    """``cond_fn(x_t, t) -> grad_scale * d/dx_t exp(logit_scale) * sum(z_t * z_i)``, shape of x_t.

    The text embeddings are computed once. Their rows pair with the rows of
    x_t (B of them), or a single row is used for every image. x_t is in the
    model's [-1, 1] space, resized (differentiably) to the CLIP's image size
    when it differs; t holds ORIGINAL timesteps. A CLIP trained only below
    ``config.max_timestep`` gives no gradient at t >= it.
    """
    z_t = clip_text_embeddings(clip, prompts_or_tokens, tokenizer)  # (P, D)
    max_t = clip.config.max_timestep

    def log_prob(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if z_t.shape[0] not in (1, x_t.shape[0]):
            raise ValueError(f"{z_t.shape[0]} prompts for a batch of {x_t.shape[0]} images (need 1 or {x_t.shape[0]})")
        z_i = clip.image_embeddings(clip_resize(x_t, clip.config.image_size), t)  # (B, D)
        z = z_t.clone() if z_t.is_inference() else z_t  # usable by autograd
        logits = torch.exp(clip.logit_scale) * (z.to(z_i.dtype) * z_i).sum(dim=-1)  # (B,)
        if max_t:
            logits = logits * (torch.as_tensor(t, device=logits.device) < max_t).to(logits.dtype)
        return logits

    cond_fn = scaled_cond_fn(log_prob, grad_scale)
    if not max_t:
        return cond_fn

    def limited(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if bool((torch.as_tensor(t) >= max_t).all()):  # no CLIP pass where it would give 0 anyway
            return torch.zeros_like(x_t)
        return cond_fn(x_t, t)

    return limited


def clip_resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, C, H, W) to a CLIP's (B, C, size, size): area averaging when shrinking, bilinear
    when enlarging (differentiable). What CLIP guidance, re-ranking and the CLIP feature extractor use."""
    if images.shape[-2:] == (size, size):
        return images
    mode = "area" if images.shape[-1] >= size and images.shape[-2] >= size else "bilinear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(images, size=(size, size), mode=mode, **kwargs)
