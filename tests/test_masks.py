"""Random inpainting masks and upsampler low-res augmentation."""

import math

import pytest
import torch

from glide_diffusion.train.augment import degrade_low_res, downsample, gaussian_blur, gaussian_kernel1d
from glide_diffusion.train.masks import ERASED_RANGE, KINDS, erased_fraction, random_mask, random_masks

SIZES = (16, 64, 256)


pytestmark = pytest.mark.usefixtures("small_cpu_work")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- masks ----------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", list(ERASED_RANGE))
def test_masks_are_binary_and_erase_the_documented_fraction(kind, size):
    lo, hi = ERASED_RANGE[kind]
    gen = _gen(size)
    n = 16 if size == 256 else 40
    fractions = []
    for _ in range(n):
        m = random_mask(kind, size, gen)
        assert m.shape == (1, size, size) and m.dtype == torch.float32
        assert ((m == 0) | (m == 1)).all()
        assert 0 < m.sum() < m.numel()  # some known and some unknown pixels
        fractions.append(float(erased_fraction(m)))
    assert lo <= min(fractions) and max(fractions) <= hi
    assert len(set(fractions)) > n // 4  # not a degenerate sampler


def test_each_kind_has_its_shape():
    size = 64
    # center: one hole whose bounding box is centred (to within a pixel).
    m = random_mask("center", size, _gen(0))[0]
    rows, cols = torch.nonzero(m == 0, as_tuple=True)
    assert abs(int(rows.min()) + int(rows.max()) - (size - 1)) <= 1
    assert abs(int(cols.min()) + int(cols.max()) - (size - 1)) <= 1
    assert (m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] == 0).all()
    # border: the known region is one axis-aligned box touching no erased border.
    for seed in range(10):
        m = random_mask("border", size, _gen(seed))[0]
        rows, cols = torch.nonzero(m == 1, as_tuple=True)
        box = m[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert (box == 1).all() and box.numel() == m.sum()
        erased_edges = [(m[0] == 0).all(), (m[-1] == 0).all(), (m[:, 0] == 0).all(), (m[:, -1] == 0).all()]
        assert 1 <= sum(bool(e) for e in erased_edges) <= 4


def test_masks_are_deterministic_per_seed_and_differ_across_seeds():
    for kind in KINDS:
        a = random_masks(4, 32, [kind], _gen(7))
        b = random_masks(4, 32, [kind], _gen(7))
        c = random_masks(4, 32, [kind], _gen(8))
        assert a.shape == (4, 1, 32, 32)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_batch_mixes_the_requested_kinds():
    masks = random_masks(64, 32, ["center", "border"], _gen(0))
    edges = torch.cat([masks[:, 0, 0], masks[:, 0, -1], masks[:, 0, :, 0], masks[:, 0, :, -1]], dim=1)
    centred = (edges == 1).all(dim=1)  # a center hole never reaches the edge; a border mask always does
    assert 10 < int(centred.sum()) < 54
    mixed = random_masks(16, 64, ["mixed"], _gen(1))
    assert ((mixed == 0) | (mixed == 1)).all()
    lo = min(r[0] for r in ERASED_RANGE.values())
    hi = max(r[1] for r in ERASED_RANGE.values())
    assert ((erased_fraction(mixed) >= lo) & (erased_fraction(mixed) <= hi)).all()


def test_unknown_kind_is_refused_with_the_list():
    with pytest.raises(ValueError, match="rectangle, strokes, border, center, mixed"):
        random_mask("circle", 64, _gen(0))
    with pytest.raises(ValueError, match="circle"):
        random_masks(2, 64, ["center", "circle"], _gen(0))


# -- low-res augmentation -----------------------------------------------------------


def _hf_energy(x: torch.Tensor) -> torch.Tensor:
    """Per-sample energy of neighbouring-pixel differences (a high-pass), (B, C, H, W) -> (B,)."""
    dx = x[..., 1:] - x[..., :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return dx.pow(2).mean(dim=(1, 2, 3)) + dy.pow(2).mean(dim=(1, 2, 3))


def _images(b: int = 4, r: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, r, r, generator=_gen(seed)) * 1.6 - 0.8


def test_identity_without_blur_or_noise():
    x = _images()
    y = degrade_low_res(x, _gen(0), blur_sigma=None, noise_std=0.0)
    assert torch.equal(y, x) and y is not x


def test_blur_preserves_a_constant_image():
    x = torch.full((3, 3, 8, 8), 0.3)
    y = degrade_low_res(x, _gen(0), blur_sigma=(0.4, 2.0))
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)


def test_blur_matches_a_direct_gaussian_sum():
    """Reference: 2-D sum over reflect-padded neighbours with weights exp(-d²/2σ²), |d| ≤ ceil(3σ)."""
    x = _images(1, 8).double()
    sigma = 0.5
    r = math.ceil(3 * sigma)
    w = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    w2 = w[:, None] * w[None, :] / w.sum() ** 2
    pad = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
    ref = torch.zeros_like(x)
    for i in range(2 * r + 1):
        for j in range(2 * r + 1):
            ref += w2[i, j] * pad[..., i : i + 8, j : j + 8]
    out = degrade_low_res(x.float(), _gen(0), blur_sigma=(sigma, sigma))
    torch.testing.assert_close(out.double(), ref.clamp(-1, 1), atol=1e-6, rtol=0)


def test_kernel_radius_is_ceil_three_sigma():
    k = gaussian_kernel1d(torch.tensor([0.3, 0.6, 1.0]), radius=3)
    assert k.shape == (3, 7)
    torch.testing.assert_close(k.sum(1), torch.ones(3, dtype=torch.float64))
    nonzero = (k > 0).tolist()
    assert nonzero[0] == [False, False, True, True, True, False, False]  # sigma 0.3: radius 1
    assert nonzero[1] == [False, True, True, True, True, True, False]  # sigma 0.6: radius 2
    assert all(nonzero[2])  # sigma 1.0: radius 3


def test_sigma_is_drawn_from_the_range():
    x = _images(1, 16).expand(8, -1, -1, -1).contiguous()  # the same image 8 times
    e_lo = _hf_energy(gaussian_blur(x[:1], torch.tensor([0.4])))
    e_hi = _hf_energy(gaussian_blur(x[:1], torch.tensor([0.6])))
    e_strong = _hf_energy(gaussian_blur(x[:1], torch.tensor([1.5])))
    assert e_strong < e_hi < e_lo < _hf_energy(x[:1])  # stronger sigma -> smoother
    e = _hf_energy(degrade_low_res(x, _gen(3), blur_sigma=(0.4, 0.6)))
    assert (e <= e_lo + 1e-7).all() and (e >= e_hi - 1e-7).all()
    assert e.unique().numel() == 8  # one sigma per sample


def test_degradation_is_deterministic_and_noise_is_clamped():
    x = _images()
    a = degrade_low_res(x, _gen(5), noise_std=0.2)
    b = degrade_low_res(x, _gen(5), noise_std=0.2)
    c = degrade_low_res(x, _gen(6), noise_std=0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    noisy = degrade_low_res(x, _gen(5), blur_sigma=None, noise_std=0.2)
    assert 0.15 < float((noisy - x).std()) < 0.25


def test_downsample_averages_blocks():
    x = _images(2, 16)
    y = downsample(x, 4)
    assert y.shape == (2, 3, 4, 4)
    torch.testing.assert_close(y, x.reshape(2, 3, 4, 4, 4, 4).mean(dim=(3, 5)))
