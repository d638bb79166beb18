"""Streaming feature statistics: running mean/covariance (float64) and a uniform feature sample.

:class:`FeatureAccumulator` takes (B, D) feature batches as they come off an extractor and keeps

- the count, mean (D,) and centred second-moment matrix (D, D) in float64, updated with the
  pairwise formula of Chan, Golub & LeVeque (1979) (no catastrophic cancellation, unlike a raw
  sum of x x^T), so FID's statistics take O(D^2) memory whatever the number of images N;
- a uniform random sample of at most ``max_features`` feature rows (reservoir sampling,
  Vitter 1985 "algorithm R", batched), which KID, precision/recall and density/coverage need:
  they are functions of the features themselves, not of their moments. While N <= max_features
  the sample is every feature, in order. At the default 50,000 rows of 2048-d Inception features
  it holds 400 MB of float32.

Two accumulators over disjoint image sets merge into the accumulator of their union
(:meth:`FeatureAccumulator.merge`), so shards sampled by different processes or machines can be
scored as one set. :class:`FeatureStats` is the frozen result; ``reference.py`` saves it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["FeatureStats", "FeatureAccumulator", "feature_stats", "as_features"]

DEFAULT_MAX_FEATURES = 50_000  # Kynkaanniemi et al. 2019 use 50k images for precision/recall


def as_features(x, name: str = "features") -> np.ndarray:
    """(N, D) features from a tensor or array, as a float64 NumPy array; ValueError when empty or not 2-d."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected an (N, D) feature array, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: no features (shape {x.shape})")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or infinity")
    return x


@dataclass(frozen=True)
class FeatureStats:
    """What the metrics need of one image set, as extracted by one feature extractor.

    Attributes:
        extractor: the extractor's name (statistics of different extractors never compare).
        dim: feature width D.
        n: images seen.
        mean: (D,) float64.
        cov: (D, D) float64, unbiased (divided by n - 1; zeros when n == 1).
        features: (M, D) float32, a uniform sample of M = min(n, max_features) of the features.
        resolution: side in pixels of the images the features came from (0: unknown).
    """

    extractor: str
    dim: int
    n: int
    mean: np.ndarray
    cov: np.ndarray
    features: np.ndarray
    resolution: int = 0

    def __post_init__(self) -> None:
        if self.mean.shape != (self.dim,) or self.cov.shape != (self.dim, self.dim):
            raise ValueError(f"mean {self.mean.shape} / cov {self.cov.shape} do not fit dim {self.dim}")
        if self.features.ndim != 2 or self.features.shape[1] != self.dim:
            raise ValueError(f"features {self.features.shape} do not fit dim {self.dim}")

    def replace(self, **changes) -> FeatureStats:
        return dataclasses.replace(self, **changes)


class FeatureAccumulator:
    """Running float64 mean/covariance plus a reservoir sample of feature rows (module docstring).

    Args:
        dim: feature width D.
        extractor: name recorded in the statistics.
        resolution: image side the features come from (0: unknown).
        max_features: most feature rows kept for KID and the k-NN metrics.
        seed: seeds the reservoir; the same seed and batches give the same sample.
    """

    def __init__(
        self,
        dim: int,
        *,
        extractor: str = "",
        resolution: int = 0,
        max_features: int = DEFAULT_MAX_FEATURES,
        seed: int = 0,
    ) -> None:
        if dim <= 0 or max_features <= 0:
            raise ValueError(f"dim and max_features must be positive, got {dim} and {max_features}")
        self.dim, self.extractor, self.resolution = dim, extractor, resolution
        self.max_features = max_features
        self.n = 0
        self._mean = np.zeros(dim)
        self._m2 = np.zeros((dim, dim))  # sum of (x - mean)(x - mean)^T
        self._sample = np.zeros((0, dim), dtype=np.float32)
        self._rng = np.random.default_rng(seed)

    def update(self, features) -> None:
        """Add a batch of features (B, D) (tensor or array)."""
        x = as_features(features)
        if x.shape[1] != self.dim:
            raise ValueError(f"features of width {x.shape[1]} for an accumulator of width {self.dim}")
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        self._combine(x.shape[0], batch_mean, centred.T @ centred)
        self._reservoir(x.astype(np.float32))

    def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        """Chan et al.: merge (n_b, mean_b, m2_b) into the running moments."""
        n_a, n = self.n, self.n + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.n = n

    def _reservoir(self, x: np.ndarray) -> None:
        """Algorithm R on a batch: row i of the stream (0-based) replaces a random slot with
        probability max_features / (i + 1); later rows win over earlier ones for the same slot."""
        seen = self.n - x.shape[0]
        room = max(0, self.max_features - self._sample.shape[0])
        self._sample = np.concatenate([self._sample, x[:room]])
        rest = x[room:]
        if not len(rest):
            return
        index = seen + room + np.arange(len(rest))  # stream index of each remaining row
        slot = np.floor(self._rng.random(len(rest)) * (index + 1)).astype(np.int64)
        keep = np.flatnonzero(slot < self.max_features)
        # last occurrence of each slot (np.unique on the reversed list gives the first from the end)
        slots, first_from_end = np.unique(slot[keep][::-1], return_index=True)
        self._sample[slots] = rest[keep[::-1][first_from_end]]

    def merge(self, other: FeatureAccumulator) -> None:
        """Absorb an accumulator over a disjoint image set: moments exactly, samples by a
        hypergeometric draw (each row of the union equally likely to be kept)."""
        if (other.dim, other.extractor, other.resolution) != (self.dim, self.extractor, self.resolution):
            raise ValueError("accumulators of different extractors, widths or resolutions do not merge")
        if other.n == 0:
            return
        n_self = self.n
        self._combine(other.n, other._mean, other._m2)
        keep = min(self.max_features, n_self + other.n)
        from_self = int(self._rng.hypergeometric(n_self, other.n, keep)) if n_self else 0

        def pick(s: np.ndarray, k: int) -> np.ndarray:
            return s[np.sort(self._rng.choice(len(s), size=k, replace=False))]

        self._sample = np.concatenate([pick(self._sample, from_self), pick(other._sample, keep - from_self)])

    def stats(self) -> FeatureStats:
        """The statistics so far (copies); ValueError before any feature."""
        if self.n == 0:
            raise ValueError("no features were added")
        cov = self._m2 / (self.n - 1) if self.n > 1 else np.zeros_like(self._m2)
        return FeatureStats(
            self.extractor, self.dim, self.n, self._mean.copy(), cov, self._sample.copy(), self.resolution
        )


def feature_stats(
    features, *, extractor: str = "", resolution: int = 0, max_features: int = DEFAULT_MAX_FEATURES, seed: int = 0
) -> FeatureStats:
    """:class:`FeatureStats` of an (N, D) feature array in one go."""
    x = as_features(features)
    acc = FeatureAccumulator(
        x.shape[1], extractor=extractor, resolution=resolution, max_features=max_features, seed=seed
    )
    acc.update(x)
    return acc.stats()
