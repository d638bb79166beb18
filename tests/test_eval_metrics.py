"""FID, KID, precision/recall and density/coverage against independent references, and the
streaming accumulator against the one-shot statistics.

References: FID from SciPy's ``sqrtm`` in float64 (the TTUR / pytorch-fid formula); KID from the
unbiased MMD^2 written out with NumPy; the k-NN metrics from slow per-sample loops written from
the papers' equations (Kynkaanniemi et al. 2019 eq. 1-2, Naeem et al. 2020 eq. 3-4), plus small
cases computed by hand.
"""

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from glide_diffusion.eval.metrics import (
    EvalWarning,
    density_coverage,
    fid,
    frechet_distance,
    kid,
    knn_radii,
    precision_recall,
)
from glide_diffusion.eval.stats import FeatureAccumulator, feature_stats


def features(seed, n, d, shift=0.0, scale=1.0):
    """Correlated features: a fixed random mixing of Gaussians, then shifted and scaled."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(99).normal(size=(d, d)) / np.sqrt(d)
    return (rng.normal(size=(n, d)) @ mix) * scale + shift + 0.5


def scipy_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# --- FID ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.3, 1.0), (0.1, 1.5)])
def test_fid_matches_scipy_in_float64(shift, scale):
    a, b = features(0, 400, 16), features(1, 300, 16, shift, scale)
    want = scipy_fid(a, b)
    assert fid(a, b) == pytest.approx(want, rel=1e-6)
    assert fid(torch.from_numpy(a).float(), b) == pytest.approx(want, rel=1e-5)  # float32 input


def test_fid_matches_torchmetrics_class_fed_the_same_features():
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Precomputed(torch.nn.Module):  # the "images" are already features
        num_features = 16

        def forward(self, x):
            return x

    a, b = features(2, 200, 16), features(3, 250, 16, 0.2)
    metric = FrechetInceptionDistance(feature=Precomputed())
    metric.update(torch.from_numpy(a), real=True)
    metric.update(torch.from_numpy(b), real=False)
    assert fid(a, b) == pytest.approx(float(metric.compute()), rel=1e-6)


def test_fid_of_identical_gaussians_is_zero_and_of_shifted_means_the_squared_shift():
    a = features(4, 500, 8)
    s = feature_stats(a)
    assert frechet_distance(s.mean, s.cov, s.mean, s.cov) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(s.mean, s.cov, s.mean + 0.5, s.cov) == pytest.approx(8 * 0.25, abs=1e-8)


def test_fid_warns_when_samples_are_fewer_than_dimensions():
    a, b = features(5, 10, 16), features(6, 40, 16)
    with pytest.warns(EvalWarning, match="10 real samples of 16-d"):
        fid(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fid(features(5, 40, 16), b)  # N >= D: silent


def test_metrics_reject_empty_and_mismatched_inputs():
    a = features(7, 50, 8)
    for metric in (fid, kid, precision_recall, density_coverage):
        with pytest.raises(ValueError, match="no features"):
            metric(np.zeros((0, 8)), a)
        with pytest.raises(ValueError, match="width|do not compare"):
            metric(a, features(8, 50, 4))
    with pytest.raises(ValueError, match="at least 2"):
        fid(a[:1], a)
    s_a = feature_stats(a, extractor="inception-2015-12-05", resolution=64)
    with pytest.raises(ValueError, match="different extractors"):
        fid(s_a, feature_stats(a, extractor="shapes-clip-rerank", resolution=64))
    with pytest.raises(ValueError, match="64 px .* 256 px"):
        fid(s_a, feature_stats(a, extractor="inception-2015-12-05", resolution=256))


# --- KID ----------------------------------------------------------------------------------------


def numpy_mmd2_unbiased(x, y, degree=3, coef=1.0):
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with k(a, b) = (a . b / d + coef)^degree."""
    d, m, n = x.shape[1], len(x), len(y)

    def k(a, b):
        return (a @ b.T / d + coef) ** degree

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean()


def test_kid_of_one_full_subset_is_the_unbiased_mmd():
    a, b = features(10, 120, 12), features(11, 120, 12, 0.2)
    result = kid(a, b, subsets=1, subset_size=1000)  # capped at 120: every row, in some order
    assert result.subset_size == 120 and result.std == 0.0
    assert result.mean == pytest.approx(numpy_mmd2_unbiased(a, b), rel=1e-9)


def test_kid_subsets_average_the_mmd_of_each_subset_and_are_reproducible():
    a, b = features(12, 300, 8), features(13, 200, 8, 0.3)
    r1, r2 = kid(a, b, subsets=20, subset_size=50, seed=3), kid(a, b, subsets=20, subset_size=50, seed=3)
    assert r1 == r2 and r1.subset_size == 50
    full = numpy_mmd2_unbiased(a, b)
    assert abs(r1.mean - full) < 4 * r1.std / np.sqrt(20) + 1e-3  # subsets estimate the same MMD
    assert kid(a, a[::-1].copy(), subsets=1, subset_size=300).mean == pytest.approx(
        numpy_mmd2_unbiased(a, a), abs=1e-12
    )  # the unbiased estimate of MMD(P, P): about 0, may be < 0


# --- precision / recall, density / coverage -----------------------------------------------------


def loop_radii(x, k):
    return np.array(
        [np.sort([np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i])[k - 1] for i in range(len(x))]
    )


def loop_prdc(real, fake, k_pr, k_dc):
    """Slow, literal versions of the four formulas."""
    r_real, r_fake = loop_radii(real, k_pr), loop_radii(fake, k_pr)
    precision = np.mean([any(np.linalg.norm(f - r) <= rr for r, rr in zip(real, r_real)) for f in fake])
    recall = np.mean([any(np.linalg.norm(r - f) <= rf for f, rf in zip(fake, r_fake)) for r in real])
    r_dc = loop_radii(real, k_dc)
    density = sum(np.linalg.norm(f - r) <= rr for f in fake for r, rr in zip(real, r_dc)) / (k_dc * len(fake))
    coverage = np.mean([any(np.linalg.norm(f - r) <= rr for f in fake) for r, rr in zip(real, r_dc)])
    return precision, recall, density, coverage


@pytest.mark.parametrize("shift,scale", [(0.0, 1.0), (0.8, 1.0), (0.0, 0.5)])
def test_knn_metrics_match_slow_loops(shift, scale):
    real, fake = features(20, 90, 6), features(21, 70, 6, shift, scale)
    p, r, d, c = loop_prdc(real, fake, 3, 5)
    pr = precision_recall(real, fake, k=3, batch_size=17)  # odd batch: the blocks must join up
    dc = density_coverage(real, fake, k=5, batch_size=17)
    assert (pr.precision, pr.recall) == pytest.approx((p, r), abs=1e-12)
    assert (dc.density, dc.coverage) == pytest.approx((d, c), abs=1e-12)


def test_knn_metrics_by_hand_on_a_line():
    # real at 0, 1, 2, 3, 10 on the x axis; k = 1 radii: 1, 1, 1, 1, 7
    real = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert knn_radii(torch.from_numpy(real), 1).tolist() == [1.0, 1.0, 1.0, 1.0, 7.0]
    assert knn_radii(torch.from_numpy(real), 2).tolist() == [2.0, 1.0, 1.0, 2.0, 8.0]
    # fake at 4 (1 from the ball of 3: inside, closed ball), 20 (outside every ball), 16 (in 10's ball)
    fake = np.array([[4.0], [20.0], [16.0]])
    pr = precision_recall(real, fake, k=1)
    assert pr.precision == pytest.approx(2 / 3)
    # fake radii (k=1): 4 -> 12, 20 -> 4, 16 -> 4; real within a fake ball: 0..3 (from 4, radius 12), 10 too
    assert pr.recall == 1.0
    dc = density_coverage(real, fake, k=1)
    # balls holding each fake: 4 -> {3, 10} (10's radius is 7), 20 -> {}, 16 -> {10}: (2 + 0 + 1) / (1 * 3)
    assert dc.density == pytest.approx(1.0)
    assert dc.coverage == pytest.approx(2 / 5)  # balls of 3 and 10 hold a fake


def test_identical_sets_have_full_precision_recall_and_coverage():
    a = features(22, 60, 4)
    assert precision_recall(a, a.copy()) == precision_recall(a, a)
    pr, dc = precision_recall(a, a), density_coverage(a, a)
    assert (pr.precision, pr.recall, dc.coverage) == (1.0, 1.0, 1.0)


# --- streaming statistics -----------------------------------------------------------------------


def test_accumulator_in_batches_equals_one_shot_statistics():
    x = features(30, 1000, 12, shift=100.0)  # a large mean: a raw sum of x x^T would lose digits
    acc = FeatureAccumulator(12)
    for batch in np.array_split(x, [1, 7, 300, 301, 650]):
        acc.update(batch)
    s = acc.stats()
    assert s.n == 1000
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(s.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-13)
    np.testing.assert_array_equal(s.features, x.astype(np.float32))  # n <= max_features: every row
    assert fid(s, feature_stats(x[::-1].copy())) == pytest.approx(0.0, abs=1e-8)


def test_merged_accumulators_equal_one_over_the_union():
    x = features(31, 500, 6)
    one, a, b = FeatureAccumulator(6), FeatureAccumulator(6), FeatureAccumulator(6)
    one.update(x)
    a.update(x[:123])
    b.update(x[123:])
    a.merge(b)
    sa, so = a.stats(), one.stats()
    np.testing.assert_allclose(sa.mean, so.mean, rtol=1e-13)
    np.testing.assert_allclose(sa.cov, so.cov, rtol=1e-11)
    np.testing.assert_array_equal(sa.features, so.features)
    with pytest.raises(ValueError, match="do not merge"):
        a.merge(FeatureAccumulator(6, extractor="other"))


def test_reservoir_keeps_a_uniform_sample_of_fixed_size():
    """Each of 40 rows streamed in batches of 7 ends in a 10-row reservoir with probability 1/4."""
    x = np.arange(40, dtype=np.float64)[:, None]
    hits = np.zeros(40)
    for seed in range(2000):
        acc = FeatureAccumulator(1, max_features=10, seed=seed)
        for batch in np.array_split(x, range(7, 40, 7)):
            acc.update(batch)
        kept = acc.stats().features[:, 0].astype(int)
        assert len(set(kept)) == 10
        hits[kept] += 1
    # binomial(2000, 1/4): sd 19.4; every row within 5 sd, and the early and late halves alike
    assert np.abs(hits - 500).max() < 5 * 19.4
    assert abs(hits[:20].sum() - hits[20:].sum()) < 5 * 19.4 * np.sqrt(40)
    merged = FeatureAccumulator(1, max_features=10, seed=1)
    other = FeatureAccumulator(1, max_features=10, seed=2)
    merged.update(x[:25])
    other.update(x[25:])
    merged.merge(other)
    assert merged.stats().n == 40 and len(set(merged.stats().features[:, 0])) == 10


def test_accumulator_rejects_bad_batches():
    acc = FeatureAccumulator(4)
    with pytest.raises(ValueError, match="no features were added"):
        acc.stats()
    with pytest.raises(ValueError, match="width 3"):
        acc.update(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.full((2, 4), np.nan))
