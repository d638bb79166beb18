"""Feature extractors: image batches -> (N, D) float32 features, and the batching around them.

The protocol (:class:`FeatureExtractor`) is small: a ``name`` (recorded in feature statistics, so
statistics of different extractors never compare), a width ``dim``, a ``device``, and a call
from pixels (B, 3, H, W) float32 in [0, 255] on that device to (B, D) float32 features.

Images enter through :func:`to_pixels`: uint8 (N, H, W, 3) as ``.npz`` sample files hold them,
uint8 (N, 3, H, W), or float (N, 3, H, W) in [-1, 1] as the samplers return them. Float images
are rounded to 8-bit levels first, so a tensor and its saved PNG give the same features.
Conversion is vectorised per batch; there is no per-image Python work.

Extractors:

- ``inception``: the standard FID Inception (``inception.py``), 2048-d, any resolution.
- ``clip``: the released noised CLIP's image tower at t = 0, unit embeddings (512-d), images
  resized to its 64 px as CLIP guidance resizes them. :class:`ClipImageExtractor` wraps any
  :class:`~glide_diffusion.clip.NoisedClip` (give it a name that identifies the weights).
- ``shapes-clip-rerank`` (also ``shapes-clip``): the bundled Shapes CLIP's image tower at t = 0,
  128-d, for FID-like numbers on Shapes without Inception (ImageNet features say little about
  flat synthetic shapes). The rerank CLIP is the Shapes default because its features follow the
  content of the images: FID between 500 test renders and 500 others (seeds 1, 2; 32 px) is
  0.013, and 0.45 when every object of the second set is recoloured red, 0.27 when every shape
  is made a circle, 0.026 when every box is 15% larger; ``shapes-clip`` (trained up to t = 500)
  hardly sees shape (0.0087 -> 0.022 for all circles). Neither sees pixel quality (a +15 grey
  cast: 0.013 -> 0.013 with rerank, 0.071 with shapes-clip): that is the fidelity score's job
  (``shapes_fidelity.py``). The analytic evaluator's attribute vector was not used: it is
  discrete (the covariance of one-hot attributes says nothing about how images look), costs
  Python work per image, and is already reported as attribute accuracies.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from glide_diffusion.clip.model import NoisedClip
from glide_diffusion.guidance.clip import clip_resize  # the resize CLIP guidance and re-ranking use

from .stats import DEFAULT_MAX_FEATURES, FeatureAccumulator

__all__ = [
    "FeatureExtractor",
    "ClipImageExtractor",
    "EXTRACTORS",
    "get_extractor",
    "to_pixels",
    "check_images",
    "feature_batches",
    "extract_features",
    "accumulate",
]


@runtime_checkable
class FeatureExtractor(Protocol):
    name: str
    dim: int
    device: torch.device

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float32 in [0, 255] -> (B, dim) float32."""
        ...


class ClipImageExtractor:
    """Unit image embeddings (B, n_embd) of a noised CLIP at t = 0 (clean images).

    Pixels are resized to the CLIP's ``image_size`` (area averaging when shrinking, bilinear when
    enlarging) and mapped to [-1, 1].
    """

    def __init__(self, clip: NoisedClip, name: str) -> None:
        self.clip, self.name = clip.eval(), name
        self.dim = clip.config.n_embd
        self.device = clip.logit_scale.device

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = clip_resize(pixels.to(self.device, torch.float32), self.clip.config.image_size) / 127.5 - 1
        t = torch.zeros(x.shape[0], dtype=torch.long, device=self.device)
        with torch.no_grad():
            return self.clip.image_embeddings(x, t).float()


def _clip_extractor(source: str, name: str) -> Callable[..., ClipImageExtractor]:
    def make(*, device: torch.device | str = "cpu", cache_dir: str | os.PathLike | None = None) -> ClipImageExtractor:
        from glide_diffusion.clip.loading import load_clip

        clip = (
            load_clip(source, cache_dir=cache_dir, device=device)
            if source
            else load_clip(cache_dir=cache_dir, device=device)
        )
        return ClipImageExtractor(clip, name)

    return make


def _inception(*, device: torch.device | str = "cpu", cache_dir: str | os.PathLike | None = None):
    from .inception import load_inception

    return load_inception(cache_dir=cache_dir, device=device)


EXTRACTORS: dict[str, Callable[..., FeatureExtractor]] = {
    "inception": _inception,
    "clip": _clip_extractor("", "clip-released"),
    "shapes-clip-rerank": _clip_extractor("shapes-clip-rerank", "shapes-clip-rerank"),
    "shapes": _clip_extractor("shapes-clip-rerank", "shapes-clip-rerank"),  # the Shapes default
    "shapes-clip": _clip_extractor("shapes-clip", "shapes-clip"),
}
"""Extractor factories by name: ``factory(device=..., cache_dir=...)``."""


def get_extractor(
    name: str, *, device: torch.device | str = "cpu", cache_dir: str | os.PathLike | None = None
) -> FeatureExtractor:
    """Build the extractor ``name`` (a key of :data:`EXTRACTORS`)."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; known: {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name](device=device, cache_dir=cache_dir)


def check_images(images, resolution: int | None = None) -> tuple[int, int]:
    """(N, side) of an image batch, checked before any work: 4-d, 3 channels, square, N > 0,
    uint8 or float, and ``resolution`` px when given."""
    shape, dtype = tuple(images.shape), images.dtype
    is_uint8 = dtype in (np.uint8, torch.uint8)
    if len(shape) != 4:
        raise ValueError(f"expected a batch of images (N, H, W, 3) or (N, 3, H, W), got shape {shape}")
    if is_uint8 and shape[-1] == 3:
        h, w = shape[1], shape[2]
    elif shape[1] == 3:
        h, w = shape[2], shape[3]
    else:
        raise ValueError(f"expected 3 colour channels, got images of shape {shape}")
    if not is_uint8 and not (
        torch.is_floating_point(images) if isinstance(images, torch.Tensor) else np.issubdtype(dtype, np.floating)
    ):
        raise ValueError(f"images must be uint8 or float in [-1, 1], got {dtype}")
    if shape[0] == 0:
        raise ValueError("no images")
    if h != w:
        raise ValueError(f"images must be square, got {h}x{w}")
    if resolution is not None and h != resolution:
        raise ValueError(f"images are {h} px, but {resolution} px are expected (e.g. by the reference statistics)")
    return shape[0], h


def to_pixels(images) -> torch.Tensor:
    """A batch of images -> (N, 3, H, W) float32 in [0, 255], whole 8-bit levels (see module docstring)."""
    check_images(images)
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.dtype == torch.uint8:
        x = x.permute(0, 3, 1, 2) if x.shape[-1] == 3 else x
        return x.float().contiguous()
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).contiguous()


def feature_batches(
    extractor: FeatureExtractor, images, *, batch_size: int = 64, resolution: int | None = None
) -> Iterator[torch.Tensor]:
    """Features (B, D) float32 on the CPU of consecutive batches of ``images`` (an array, a
    memory-mapped ``.npy`` from ``np.load(..., mmap_mode="r")``, or a tensor)."""
    n, _ = check_images(images, resolution)
    for start in range(0, n, batch_size):
        pixels = to_pixels(images[start : start + batch_size]).to(extractor.device)
        yield extractor(pixels).float().cpu()


def extract_features(
    extractor: FeatureExtractor, images, *, batch_size: int = 64, resolution: int | None = None
) -> np.ndarray:
    """All features (N, D) float32 of ``images``."""
    return torch.cat(list(feature_batches(extractor, images, batch_size=batch_size, resolution=resolution))).numpy()


def accumulate(
    extractor: FeatureExtractor,
    images,
    accumulator: FeatureAccumulator | None = None,
    *,
    batch_size: int = 64,
    max_features: int = DEFAULT_MAX_FEATURES,
    seed: int = 0,
) -> FeatureAccumulator:
    """Stream the features of ``images`` into ``accumulator`` (a new one by default) and return it.

    A given accumulator must be for this extractor and image resolution (checked before any work).
    """
    _, side = check_images(images)
    if accumulator is None:
        accumulator = FeatureAccumulator(
            extractor.dim, extractor=extractor.name, resolution=side, max_features=max_features, seed=seed
        )
    elif (accumulator.extractor, accumulator.dim) != (extractor.name, extractor.dim):
        raise ValueError(
            f"accumulator for {accumulator.extractor!r} ({accumulator.dim}-d), "
            f"extractor {extractor.name!r} ({extractor.dim}-d)"
        )
    for features in feature_batches(
        extractor, images, batch_size=batch_size, resolution=accumulator.resolution or None
    ):
        accumulator.update(features)
    return accumulator
