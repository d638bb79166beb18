"""Distribution metrics on image features: FID, KID, precision/recall, density/coverage, CLIP score.

Every metric is a plain function of two feature sets ("real": the reference, "fake": the
generated images), each an (N, D) array or tensor or a :class:`~.stats.FeatureStats` (which a
:class:`~.stats.FeatureAccumulator` streams and ``reference.py`` saves). The features come from
any extractor in ``extractors.py``; the numbers are only comparable for the same extractor.

- FID (Heusel et al. 2017): the Frechet distance between Gaussians fitted to the two sets,
  ``|mu_r - mu_f|^2 + Tr(S_r + S_f - 2 (S_r S_f)^(1/2))``, computed by torchmetrics. Its class
  ``FrechetInceptionDistance`` keeps both sets' raw sums inside one object and takes no saved
  statistics, so we call the function the class calls, ``torchmetrics.image.fid._compute_fid``
  (the trace of the matrix square root from the eigenvalues of S_r S_f), on our float64 mean and
  covariance; tests pin it to SciPy's ``sqrtm`` formula and to the class fed the same features.
  FID is biased upwards at finite N (Chong & Forsyth 2020), badly when N < D (rank-deficient
  covariance): that warns.
- KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
  ``(x . y / D + 1)^3``, averaged over random subsets; torchmetrics' ``poly_mmd`` per subset,
  subsets drawn here with a seeded ``torch.Generator`` (the torchmetrics class draws from the
  global RNG and keeps every feature in a list state).
- Improved precision and recall (Kynkaanniemi et al. 2019, k = 3) and density and coverage
  (Naeem et al. 2020, k = 5): k-nearest-neighbour balls, not in torchmetrics; batched with
  ``torch.cdist``. Balls are closed (distance <= radius), as in Kynkaanniemi et al.'s eq. 2.

The CLIP score is in ``clip_score.py`` (it needs no torchmetrics).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

try:
    from torchmetrics.image.fid import _compute_fid
    from torchmetrics.image.kid import poly_mmd
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        f"glide_diffusion.eval.metrics needs torchmetrics ({e}); "
        "install the evaluation extras: pip install 'glide-diffusion[eval]'"
    ) from e

from .stats import FeatureStats, as_features, feature_stats

__all__ = [
    "EvalWarning",
    "KID",
    "PrecisionRecall",
    "DensityCoverage",
    "fid",
    "frechet_distance",
    "kid",
    "knn_radii",
    "precision_recall",
    "density_coverage",
]


class EvalWarning(UserWarning):
    """A metric was computed where its estimate is unreliable (e.g. FID with N < D)."""


@dataclass(frozen=True)
class KID:
    """Mean and standard deviation of the per-subset unbiased MMD^2 estimates."""

    mean: float
    std: float
    subsets: int
    subset_size: int


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float  # share of fake samples inside the real manifold
    recall: float  # share of real samples inside the fake manifold
    k: int


@dataclass(frozen=True)
class DensityCoverage:
    density: float  # mean number of real balls holding a fake sample, / k (1 when the sets match)
    coverage: float  # share of real balls holding at least one fake sample
    k: int


def _stats(x, name: str) -> FeatureStats:
    return x if isinstance(x, FeatureStats) else feature_stats(as_features(x, name), max_features=1)


def _check_pair(real: FeatureStats, fake: FeatureStats) -> None:
    if real.dim != fake.dim:
        raise ValueError(f"features of width {real.dim} (real) and {fake.dim} (fake) do not compare")
    if real.extractor and fake.extractor and real.extractor != fake.extractor:
        raise ValueError(f"features of different extractors: {real.extractor!r} (real), {fake.extractor!r} (fake)")
    if real.resolution and fake.resolution and real.resolution != fake.resolution:
        raise ValueError(f"features of {real.resolution} px (real) and {fake.resolution} px (fake) images")


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64, torchmetrics)."""
    t = [torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (mu1, sigma1, mu2, sigma2)]
    return float(_compute_fid(*t))


def fid(real, fake) -> float:
    """FID between two feature sets ((N, D) arrays/tensors or :class:`FeatureStats`).

    Warns (:class:`EvalWarning`) when either set has fewer samples than feature dimensions.
    """
    real, fake = _stats(real, "real"), _stats(fake, "fake")
    _check_pair(real, fake)
    for name, s in (("real", real), ("fake", fake)):
        if s.n < 2:
            raise ValueError(f"FID needs at least 2 {name} samples, got {s.n}")
        if s.n < s.dim:
            warnings.warn(
                f"FID from {s.n} {name} samples of {s.dim}-d features: with fewer samples than "
                f"dimensions the covariance is rank-deficient and FID is strongly biased upwards; "
                f"compare only numbers computed at the same N",
                EvalWarning,
                stacklevel=2,
            )
    return frechet_distance(real.mean, real.cov, fake.mean, fake.cov)


def _sample(x, name: str) -> torch.Tensor:
    """The feature rows of x (the kept sample of a FeatureStats), as a float64 tensor."""
    if isinstance(x, FeatureStats):
        return torch.from_numpy(x.features.astype(np.float64))
    if isinstance(x, torch.Tensor):
        as_features(x[:1], name)  # shape check only
        return x.detach().double()
    return torch.from_numpy(as_features(x, name))


def _pair(real, fake) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(real, FeatureStats) and isinstance(fake, FeatureStats):
        _check_pair(real, fake)
    r, f = _sample(real, "real"), _sample(fake, "fake")
    if r.shape[0] == 0 or f.shape[0] == 0:
        raise ValueError("empty feature set")
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"features of width {r.shape[1]} (real) and {f.shape[1]} (fake) do not compare")
    return r, f.to(r.device)


def kid(
    real,
    fake,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> KID:
    """KID: per subset, ``poly_mmd`` (torchmetrics) of ``subset_size`` real and fake rows drawn
    without replacement; mean and population std over ``subsets`` subsets.

    ``subset_size`` is capped at the smaller set (clean-fid does the same), so with a single
    subset of the full size it is the unbiased MMD^2 of the two whole sets. The protocol of
    Binkowski et al. is 100 subsets of 1000.
    """
    r, f = _pair(real, fake)
    m = min(subset_size, r.shape[0], f.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {r.shape[0]} real and {f.shape[0]} fake")
    g = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        ri = torch.randperm(r.shape[0], generator=g)[:m].to(r.device)
        fi = torch.randperm(f.shape[0], generator=g)[:m].to(f.device)
        scores.append(poly_mmd(r[ri], f[fi], degree=degree, gamma=gamma, coef=coef))
    s = torch.stack(scores)
    return KID(float(s.mean()), float(s.std(unbiased=False)), subsets, m)


def knn_radii(x: torch.Tensor, k: int, batch_size: int = 1024) -> torch.Tensor:
    """Distance (N,) from each row of x (N, D) to its k-th nearest other row (the row itself,
    at distance 0, is not counted: the (k+1)-th smallest distance of the row)."""
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k = {k} needs more than k samples, got {x.shape[0]}")
    return torch.cat([torch.cdist(b, x).kthvalue(k + 1, dim=1).values for b in x.split(batch_size)])


def _in_balls(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(P, C) -> per point, how many balls B(centre_i, radius_i) hold it (closed balls), (P,)."""
    return torch.cat([(torch.cdist(b, centres) <= radii[None]).sum(dim=1) for b in points.split(batch_size)])


def precision_recall(real, fake, *, k: int = 3, batch_size: int = 1024) -> PrecisionRecall:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-2).

    precision = share of fake samples within the k-NN ball of at least one real sample;
    recall = share of real samples within the k-NN ball of at least one fake sample.
    """
    r, f = _pair(real, fake)
    precision = (_in_balls(f, r, knn_radii(r, k, batch_size), batch_size) > 0).double().mean()
    recall = (_in_balls(r, f, knn_radii(f, k, batch_size), batch_size) > 0).double().mean()
    return PrecisionRecall(float(precision), float(recall), k)


def density_coverage(real, fake, *, k: int = 5, batch_size: int = 1024) -> DensityCoverage:
    """Density and coverage (Naeem et al. 2020, eq. 3-4), with the real k-NN balls only.

    density = 1/(k M) sum_j sum_i [fake_j in B(real_i, NND_k(real_i))];
    coverage = 1/N sum_i [some fake_j in B(real_i, NND_k(real_i))].
    """
    r, f = _pair(real, fake)
    radii = knn_radii(r, k, batch_size)
    density = _in_balls(f, r, radii, batch_size).double().sum() / (k * f.shape[0])
    nearest_fake = torch.cat([torch.cdist(b, f).min(dim=1).values for b in r.split(batch_size)])
    coverage = (nearest_fake <= radii).double().mean()
    return DensityCoverage(float(density), float(coverage), k)
