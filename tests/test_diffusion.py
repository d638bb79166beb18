"""Schedules, respacing and Gaussian formulas.

Golden numbers: tests/data/golden/diffusion.{json,safetensors}, produced by
the official glide-text2im (commit 69b5307) on CPU in float32 (tables in
float64); see tests/data/README.md section 4. Our float32 results are
bit-identical on the reference machine; tolerances leave room for other CPUs'
libm / SIMD rounding (1e-5 absolute on O(1) float32 values, 1e-12 relative on
float64 tables).
"""

from __future__ import annotations

import dataclasses
import json
import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from glide_diffusion.diffusion import (
    Schedule,
    extract,
    get_named_beta_schedule,
    learned_range_log_variance,
    make_schedule,
    p_mean_variance,
    posterior_mean_variance,
    predict_eps_from_x0,
    predict_x0_from_eps,
    q_mean_variance,
    q_sample,
    space_timesteps,
)

GOLDEN = Path(__file__).parent / "data" / "golden"
ATOL = 1e-5  # float32 values of order 1


@cache
def golden() -> tuple[dict, dict[str, torch.Tensor]]:
    meta = json.loads((GOLDEN / "diffusion.json").read_text())
    return meta, load_file(str(GOLDEN / "diffusion.safetensors"))


def tensors() -> dict[str, torch.Tensor]:
    return golden()[1]


def d100() -> Schedule:
    # case.diffusion: create_gaussian_diffusion(steps=1000, noise_schedule='squaredcos_cap_v2',
    #                                           timestep_respacing='100')
    return make_schedule("squaredcos_cap_v2", 1000, "100")


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


# --- beta schedules -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["squaredcos_cap_v2", "linear"])
def test_betas_match_golden(name: str) -> None:
    betas = get_named_beta_schedule(name, 1000)
    assert betas.dtype == np.float64 and betas.shape == (1000,)
    np.testing.assert_allclose(betas, tensors()[f"betas/{name}"].numpy(), rtol=1e-12, atol=0)


def test_betas_closed_forms() -> None:
    lin = get_named_beta_schedule("linear", 1000)
    assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02)
    assert get_named_beta_schedule("linear", 100)[0] == pytest.approx(1e-3)  # scaled by 1000/T
    cos = get_named_beta_schedule("squaredcos_cap_v2", 1000)
    assert cos[-1] == 0.999  # capped

    def abar(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    assert cos[500] == pytest.approx(1 - abar(0.501) / abar(0.5), rel=1e-12)
    np.testing.assert_array_equal(get_named_beta_schedule("cosine", 1000), cos)


def test_unknown_beta_schedule() -> None:
    with pytest.raises(ValueError, match="linear.*squaredcos_cap_v2"):
        get_named_beta_schedule("quadratic", 1000)


# --- respacing --------------------------------------------------------------------------------


def _respacing_names() -> list[str]:
    return list(golden()[0]["respacing"])


@pytest.mark.parametrize("name", _respacing_names())
def test_space_timesteps_golden(name: str) -> None:
    spec = "" if name == "none" else name
    expected = golden()[0]["respacing"][name]["use_timesteps"]
    assert space_timesteps(1000, spec) == expected


@pytest.mark.parametrize("schedule", ["squaredcos_cap_v2", "linear"])
@pytest.mark.parametrize("name", _respacing_names())
def test_respaced_betas_golden(schedule: str, name: str) -> None:
    s = make_schedule(schedule, 1000, "" if name == "none" else name)
    np.testing.assert_allclose(s.betas, tensors()[f"respaced_betas/{schedule}/{name}"].numpy(), rtol=1e-12, atol=0)
    np.testing.assert_array_equal(s.timestep_map, golden()[0]["respacing"][name]["use_timesteps"])


def test_respacing_rounding_quirks() -> None:
    # Python round() (half-to-even) on an accumulated float stride.
    assert 499 in space_timesteps(1000, "21") and 500 not in space_timesteps(1000, "21")
    assert {166, 832} <= set(space_timesteps(1000, "25"))
    ddim50 = space_timesteps(1000, "ddim50")
    assert ddim50 == list(range(0, 1000, 20)) and 999 not in ddim50
    fast27 = space_timesteps(1000, "fast27")
    assert len(fast27) == 27 and {799, 800, 997} <= set(fast27) and 999 not in fast27
    assert space_timesteps(1000, [10, 10, 3, 2, 2])[-1] == 999
    assert space_timesteps(1000, "10,20,30,40") == space_timesteps(1000, [10, 20, 30, 40])
    # ddim7 is possible: stride 143 gives exactly 7 steps.
    assert space_timesteps(1000, "ddim7") == list(range(0, 1000, 143))


@pytest.mark.parametrize(
    "bad", ["0", "abc", "ddim999", "ddim600", "ddim0", "ddimx", "2000", "10,abc", "10,0", "-5", "fast30", "3,1001"]
)
def test_bad_respacing_raises(bad: str) -> None:
    with pytest.raises(ValueError):
        space_timesteps(1000, bad)


def test_respacing_all_steps_reproduces_betas() -> None:
    for name in ("squaredcos_cap_v2", "linear"):
        base = Schedule.from_betas(get_named_beta_schedule(name, 1000))
        full = base.respace("")
        np.testing.assert_allclose(full.betas, base.betas, rtol=1e-10, atol=0)
        np.testing.assert_array_equal(full.alphas_cumprod, base.alphas_cumprod)
        np.testing.assert_array_equal(full.timestep_map, np.arange(1000))


def test_respace_keeps_alphas_cumprod_and_composes() -> None:
    base = make_schedule("squaredcos_cap_v2", 1000)
    s = base.respace("100")
    # 1 - (1 - abar_i / abar_prev) re-multiplied loses ~1e-11 relative where abar ~ 2e-9.
    np.testing.assert_allclose(s.alphas_cumprod, base.alphas_cumprod[s.timestep_map], rtol=1e-9)
    assert s.num_steps == 100
    assert golden()[0]["observed"]["respaced_100_alphas_cumprod_last"] == pytest.approx(s.alphas_cumprod[-1], rel=1e-12)
    twice = s.respace("ddim10")  # every 10th kept index of the 100-step process
    np.testing.assert_array_equal(twice.timestep_map, s.timestep_map[0:100:10])
    np.testing.assert_allclose(twice.alphas_cumprod, base.alphas_cumprod[twice.timestep_map], rtol=1e-9)


# --- schedule tables ---------------------------------------------------------------------------

D100_TABLES = [
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
]  # fmt: skip


@pytest.mark.parametrize("table", D100_TABLES)
def test_d100_tables(table: str) -> None:
    np.testing.assert_allclose(getattr(d100(), table), tensors()[f"d100/{table}"].numpy(), rtol=1e-12, atol=1e-300)


def test_table_edges() -> None:
    s = d100()
    assert s.posterior_variance[0] == 0.0
    assert s.posterior_log_variance_clipped[0] == np.log(s.posterior_variance[1])
    assert s.alphas_cumprod_prev[0] == 1.0 and s.alphas_cumprod_next[-1] == 0.0
    np.testing.assert_allclose(s.log_betas, np.log(s.betas))


def test_schedule_is_immutable() -> None:
    s = d100()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.betas = np.zeros(100)  # type: ignore[misc]
    with pytest.raises(ValueError):
        s.betas[0] = 0.5


def test_extract_rounds_to_float32_and_shapes() -> None:
    s = d100()
    t = torch.tensor([0, 1, 50, 99])
    out = extract(s.alphas_cumprod, t, 4)
    assert out.shape == (4, 1, 1, 1) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.flatten().numpy(), s.alphas_cumprod[[0, 1, 50, 99]].astype(np.float32))


# --- Gaussian formulas vs golden ----------------------------------------------------------------


@pytest.mark.parametrize("clip", [True, False])
def test_p_mean_variance_golden(clip: bool) -> None:
    g = tensors()
    out = p_mean_variance(d100(), g["case/model_out"], g["case/x_t"], g["case/t"], clamp_x0=clip)
    pre = f"p_mean_variance/clip_{clip}/"
    close(out.mean, g[pre + "mean"])
    close(out.variance, g[pre + "variance"])
    close(out.log_variance, g[pre + "log_variance"])
    close(out.pred_x0, g[pre + "pred_xstart"])
    close(out.eps, g["case/model_out"][:, :3], atol=0)
    if clip:
        assert out.pred_x0.abs().max() <= 1


def test_p_mean_variance_with_inpainting_x0_fn() -> None:
    # json case.denoised_fn: lambda x0: x0 * (1 - mask) + image * mask, applied before clipping.
    g = tensors()
    mask, image = g["denoised_fn/mask"], g["denoised_fn/image"]
    seen = []

    def x0_fn(x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return x0 * (1 - mask) + image * mask

    out = p_mean_variance(d100(), g["case/model_out"], g["case/x_t"], g["case/t"], clamp_x0=True, x0_fn=x0_fn)
    close(out.mean, g["denoised_fn/mean"])
    close(out.pred_x0, g["denoised_fn/pred_xstart"])
    # x0_fn sees ORIGINAL timesteps, like the model (json: observed.model_t_received_for_case_t).
    assert seen[0].tolist() == golden()[0]["observed"]["model_t_received_for_case_t"] == [0, 10, 505, 999]
    assert seen[0].dtype == torch.int64


def test_q_sample_golden() -> None:
    g = tensors()
    close(q_sample(d100(), g["q_sample/x_start"], g["case/t"], g["q_sample/noise"]), g["q_sample/d100"])
    s1000 = make_schedule("squaredcos_cap_v2", 1000)
    close(q_sample(s1000, g["q_sample/x_start"], g["q_sample/t_1000"], g["q_sample/noise"]), g["q_sample/d1000"])


def test_int_index_matches_tensor_index() -> None:
    g = tensors()
    s, x, mo = d100(), g["case/x_t"], g["case/model_out"]
    for i in (0, 1, 50, 99):
        t = torch.full((4,), i)
        a = p_mean_variance(s, mo, x, t)
        b = p_mean_variance(s, mo, x, i)
        for fa, fb in zip(a, b):
            torch.testing.assert_close(fa, fb, atol=0, rtol=0)


def test_eps_x0_round_trip() -> None:
    s, gen = d100(), torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1
    eps = torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.tensor([1, 10, 50, 80])  # away from abar ~ 1 and ~ 0, where float32 inversion is ill-conditioned
    x_t = q_sample(s, x0, t, eps)
    close(predict_x0_from_eps(s, x_t, t, eps), x0, atol=1e-4)
    close(predict_eps_from_x0(s, x_t, t, x0), eps, atol=1e-4)


def test_q_mean_variance_and_posterior_closed_forms() -> None:
    s = make_schedule("linear", 1000)
    x0, x_t = torch.full((2, 1, 2, 2), 0.5), torch.full((2, 1, 2, 2), -0.25)
    t = torch.tensor([0, 500])
    mean, var, log_var = q_mean_variance(s, x0, t)
    abar = s.alphas_cumprod[[0, 500]]
    close(mean[:, 0, 0, 0], torch.tensor(0.5 * np.sqrt(abar), dtype=torch.float32))
    close(var[:, 0, 0, 0], torch.tensor(1 - abar, dtype=torch.float32))
    close(log_var[:, 0, 0, 0], torch.tensor(np.log(1 - abar), dtype=torch.float32))
    pm, pv, plv = posterior_mean_variance(s, x0, x_t, t)
    # DDPM eq. 7 in float64
    b, ab, abp = s.betas[500], s.alphas_cumprod[500], s.alphas_cumprod_prev[500]
    expected = b * np.sqrt(abp) / (1 - ab) * 0.5 + (1 - abp) * np.sqrt(1 - b) / (1 - ab) * -0.25
    assert pm[1, 0, 0, 0].item() == pytest.approx(expected, abs=1e-6)
    assert pv[1, 0, 0, 0].item() == pytest.approx(b * (1 - abp) / (1 - ab), rel=1e-6)
    assert pm[0, 0, 0, 0].item() == pytest.approx(0.5, abs=1e-6)  # t = 0: the mean is x0
    assert pv.shape == plv.shape == x0.shape


def test_learned_range_endpoints_and_extrapolation() -> None:
    s, t = d100(), torch.tensor([3, 60])
    ones = torch.ones(2, 1, 1, 1)
    close(learned_range_log_variance(s, ones, t), extract(s.log_betas, t, 4))
    close(learned_range_log_variance(s, -ones, t), extract(s.posterior_log_variance_clipped, t, 4))
    lo, hi = extract(s.posterior_log_variance_clipped, t, 4), extract(s.log_betas, t, 4)
    close(learned_range_log_variance(s, 3 * ones, t), 2 * hi - lo)  # frac = 2, not clamped


def test_p_mean_variance_channels_from_input() -> None:
    s = d100()
    x = torch.zeros(2, 1, 4, 4)
    out = p_mean_variance(s, torch.zeros(2, 2, 4, 4), x, 5)
    assert out.mean.shape == x.shape
    with pytest.raises(ValueError, match="2\\*C"):
        p_mean_variance(s, torch.zeros(2, 6, 4, 4), x, 5)
