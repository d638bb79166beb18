"""CLIP score of images against their captions with a noised CLIP at t = 0.

The score is 100 x the cosine between image and caption embeddings, the scale on which GLIDE
reports CLIP scores (issue 35). The CLIP is the noised one GLIDE released (``load_clip()``), the bundled
``shapes-clip`` / ``shapes-clip-rerank``, or any :class:`~glide_diffusion.clip.NoisedClip`. It is
not ``exp(logit_scale) x cosine`` (what re-ranking sorts by): that equals 100 x cosine only for
a CLIP whose logit scale is 100, as the released one's is and the Shapes CLIPs' are not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from glide_diffusion.clip.model import NoisedClip
from glide_diffusion.clip.tokenizer import ClipTokenizer
from glide_diffusion.guidance.clip import clip_text_embeddings

from .extractors import ClipImageExtractor, check_images, extract_features

__all__ = ["clip_score", "clip_score_from_embeddings"]


def clip_score(
    clip: NoisedClip,
    images,
    captions: str | Sequence[str],
    *,
    batch_size: int = 64,
    tokenizer: ClipTokenizer | None = None,
) -> torch.Tensor:
    """Per-image CLIP scores (N,) float32: 100 x cos(image embedding at t = 0, caption embedding).

    ``images``: a batch as :func:`~.extractors.to_pixels` takes it (resized to the CLIP's size);
    ``captions``: one per image, or a single caption for all.
    """
    n, _ = check_images(images)
    captions = [captions] if isinstance(captions, str) else list(captions)
    if len(captions) not in (1, n):
        raise ValueError(f"{len(captions)} captions for {n} images (need 1 or {n})")
    image_emb = torch.from_numpy(extract_features(ClipImageExtractor(clip, "clip"), images, batch_size=batch_size))
    text_emb = torch.cat(
        [
            clip_text_embeddings(clip, captions[i : i + batch_size], tokenizer).float().cpu()
            for i in range(0, len(captions), batch_size)
        ]
    )
    return clip_score_from_embeddings(image_emb, text_emb)


def clip_score_from_embeddings(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
    """100 x cosine of each image embedding (N, D) with its caption's (N, D) (or one caption (1, D)): (N,).

    Not clamped at 0 (torchmetrics' ``CLIPScore`` clamps, and only wraps Hugging Face CLIPs).
    """
    if (
        image_embeddings.ndim != 2
        or text_embeddings.ndim != 2
        or text_embeddings.shape[0] not in (1, image_embeddings.shape[0])
        or image_embeddings.shape[1] != text_embeddings.shape[1]
    ):
        raise ValueError(
            f"image embeddings {tuple(image_embeddings.shape)} and text embeddings "
            f"{tuple(text_embeddings.shape)} do not pair up"
        )
    if image_embeddings.shape[0] == 0:
        raise ValueError("no images")
    return 100 * torch.nn.functional.cosine_similarity(image_embeddings.float(), text_embeddings.float(), dim=-1)
