"""Hybrid training loss vs guided-diffusion (commit 22e0df8) golden numbers.

tests/data/golden/losses.{json,safetensors}: create_gaussian_diffusion(steps=1000,
learn_sigma=True, noise_schedule="cosine", ...).training_losses(model, x_start,
t, noise) with a fixed 6-channel model output, CPU float32. Bit-identical on
the reference machine; tolerances allow other CPUs' rounding.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glide_diffusion.diffusion import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    make_schedule,
    normal_kl,
    p_mean_variance,
    posterior_mean_variance,
    q_sample,
    sample_timesteps,
)

GOLDEN = Path(__file__).parent / "data" / "golden"


@cache
def golden() -> tuple[dict, dict[str, torch.Tensor]]:
    meta = json.loads((GOLDEN / "losses.json").read_text())
    return meta, load_file(str(GOLDEN / "losses.safetensors"))


@cache
def schedule():
    # guided-diffusion "cosine" == glide "squaredcos_cap_v2"; SpacedDiffusion over all 1000 steps.
    return make_schedule("cosine", 1000, "")


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5, rtol: float = 0.0) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def test_x_t_and_intermediates() -> None:
    _, g = golden()
    s, t = schedule(), g["t"]
    x_t = q_sample(s, g["x_start"], t, g["noise"])
    close(x_t, g["x_t"])
    mean, _, log_var = posterior_mean_variance(s, g["x_start"], g["x_t"], t)
    close(mean, g["posterior_true_mean"])
    close(log_var, g["posterior_true_log_variance_clipped"])
    p = p_mean_variance(s, g["model_out"], g["x_t"], t, clamp_x0=False)
    close(p.mean, g["p_mean"])
    close(p.log_variance, g["p_log_variance"])
    # pred_x0 = sqrt(1/abar) x_t - ...: at t = 999 (abar ~ 2e-9) it is ~1e4, so compare relatively.
    close(p.pred_x0, g["p_pred_xstart"], atol=1e-5, rtol=1e-5)


def test_loss_terms_match_golden() -> None:
    meta, g = golden()
    terms = hybrid_loss(schedule(), g["model_out"], g["x_start"], g["x_t"], g["t"], g["noise"])
    for name in ("mse", "vb", "loss"):
        value = getattr(terms, name)
        assert value.shape == (6,)
        # vb at t = 999 is ~1.7e3 bits/dim, so also a relative tolerance.
        close(value, g[name], atol=1e-5, rtol=1e-6)
        assert value.tolist() == pytest.approx(meta["per_sample"][name], rel=1e-6, abs=1e-6)


def test_gradient_and_stop_gradient() -> None:
    _, g = golden()
    model_out = g["model_out"].clone().requires_grad_(True)
    terms = hybrid_loss(schedule(), model_out, g["x_start"], g["x_t"], g["t"], g["noise"])
    terms.loss.sum().backward()
    close(model_out.grad, g["grad_loss_sum_wrt_model_out"], atol=1e-6)
    # eps channels: only d mse / d eps = -2 (noise - eps) / (C H W)
    eps = g["model_out"][:, :3]
    close(model_out.grad[:, :3], -2 * (g["noise"] - eps) / (3 * 8 * 8), atol=1e-7)


def test_vb_does_not_train_eps() -> None:
    _, g = golden()
    model_out = g["model_out"].clone().requires_grad_(True)
    hybrid_loss(schedule(), model_out, g["x_start"], g["x_t"], g["t"], g["noise"]).vb.sum().backward()
    assert torch.all(model_out.grad[:, :3] == 0)
    assert model_out.grad[:, 3:].abs().sum() > 0


def test_normal_kl_closed_forms() -> None:
    z = torch.zeros(3)
    close(normal_kl(z, z, z, z), z, atol=0)
    # KL(N(0,1) || N(1, e^2)) = log(e) + (1 + 1) / (2 e^2) - 1/2
    kl = normal_kl(torch.tensor(0.0), torch.tensor(0.0), torch.tensor(1.0), torch.tensor(2.0))
    assert kl.item() == pytest.approx(1 + 2 / (2 * math.e**2) - 0.5, rel=1e-6)


def test_approx_cdf_and_discretized_likelihood() -> None:
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])
    exact = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    close(approx_standard_normal_cdf(x), exact, atol=2e-3)
    # Probabilities of the 256 bins of [-1, 1] sum to 1 (edges extend to infinity).
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    mean, log_scale = torch.full_like(bins, 0.2), torch.full_like(bins, math.log(0.3))
    logp = discretized_gaussian_log_likelihood(bins, means=mean, log_scales=log_scale)
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-3)


def test_sample_timesteps() -> None:
    gen = torch.Generator().manual_seed(0)
    t = sample_timesteps(4096, 1000, generator=gen)
    assert t.shape == (4096,) and t.dtype == torch.int64
    assert 0 <= t.min() and t.max() < 1000 and t.unique().numel() > 900
    again = sample_timesteps(4096, 1000, generator=torch.Generator().manual_seed(0), device="cpu")
    assert torch.equal(t, again)


def test_v_weights_are_one_over_abar_optionally_capped() -> None:
    from glide_diffusion.diffusion import make_schedule
    from glide_diffusion.diffusion.losses import v_weights

    s = make_schedule("linear", 1000)
    t = torch.arange(1000)
    inv = 1 / torch.tensor(s.alphas_cumprod, dtype=torch.float64)
    assert torch.allclose(v_weights(s, t).double(), inv, rtol=1e-6) and v_weights(s, t)[-1] > 1e4
    capped = v_weights(s, t, 50.0)
    assert capped.max() == 50 and torch.allclose(capped.double(), inv.clamp(max=50), rtol=1e-6)
    assert torch.equal(capped[inv < 50], v_weights(s, t)[inv < 50])


def test_min_snr_weights_keep_noisy_steps_and_weight_only_the_mse() -> None:
    from glide_diffusion.diffusion import make_schedule
    from glide_diffusion.diffusion.losses import min_snr_weights

    s = make_schedule("squaredcos_cap_v2", 1000)
    t = torch.arange(1000)
    w = min_snr_weights(s, t, 2.0)
    abar = torch.tensor(s.alphas_cumprod, dtype=torch.float64)
    snr = abar / (1 - abar)
    assert torch.allclose(w.double(), torch.minimum(snr, torch.tensor(2.0)) / snr, rtol=1e-6)
    assert (w[snr <= 2] == 1).all() and (w[snr > 2] < 1).all() and w[0] < 1e-3

    torch.manual_seed(0)
    x0, noise, out = torch.rand(3, 3, 4, 4) * 2 - 1, torch.randn(3, 3, 4, 4), torch.randn(3, 6, 4, 4)
    tt = torch.tensor([0, 500, 999])
    x_t = q_sample(s, x0, tt, noise)
    plain = hybrid_loss(s, out, x0, x_t, tt, noise)
    weighted = hybrid_loss(s, out, x0, x_t, tt, noise, min_snr_weights(s, tt, 2.0))
    assert torch.equal(plain.mse, weighted.mse) and torch.equal(plain.vb, weighted.vb)
    assert torch.allclose(weighted.loss, min_snr_weights(s, tt, 2.0) * plain.mse + plain.vb)
