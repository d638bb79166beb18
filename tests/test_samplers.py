"""DDPM / DDIM steps and loops, and the per-row noise source.

Golden numbers: tests/data/golden/diffusion.{json,safetensors} (official
glide-text2im 69b5307, CPU float32; README section 4). The official code drew
its per-step noise with torch.randn_like, which was replaced by pre-drawn
tensors (``*/noise``, ``loops/*/step_noise``); we inject the same tensors
through ``noise_fn``. Results are bit-identical on the reference machine;
tolerances allow other CPUs' float32 rounding (single steps 1e-5; loops 5e-5
because 1-ulp differences can compound over up to 100 steps).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from glide_diffusion.diffusion import make_schedule
from glide_diffusion.sampling import (
    SAMPLERS,
    PerSampleNoise,
    ddim_step,
    ddpm_step,
    get_sampler,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    seeds_for,
)

GOLDEN = Path(__file__).parent / "data" / "golden"
ATOL = 1e-5
LOOP_ATOL = 5e-5


@cache
def golden() -> tuple[dict, dict[str, torch.Tensor]]:
    meta = json.loads((GOLDEN / "diffusion.json").read_text())
    return meta, load_file(str(GOLDEN / "diffusion.safetensors"))


def d100():
    return make_schedule("squaredcos_cap_v2", 1000, "100")


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


def case():
    g = golden()[1]
    return g["case/model_out"], g["case/x_t"], g["case/t"], g["p_sample/noise"]


def fixed_grad_cond_fn(seen: list):
    # json case.cond: "cond_fn returns cond/grad" whatever its input.
    grad = golden()[1]["cond/grad"]

    def cond_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        return grad

    return cond_fn


# --- single steps vs golden -------------------------------------------------------------------


def test_ddpm_step_golden() -> None:
    g = golden()[1]
    out = ddpm_step(d100(), *case())
    close(out.sample, g["p_sample/sample"])
    close(out.pred_x0, g["p_sample/pred_xstart"])


def test_ddim_step_golden() -> None:
    g = golden()[1]
    out = ddim_step(d100(), *case(), eta=0.0)
    close(out.sample, g["ddim_sample/eta0/sample"])
    close(out.pred_x0, g["ddim_sample/eta0/pred_xstart"])
    close(ddim_step(d100(), *case(), eta=0.5).sample, g["ddim_sample/eta0.5/sample"])


def test_cond_fn_mean_form_ddpm_golden() -> None:
    g, seen = golden()[1], []
    out = ddpm_step(d100(), *case(), cond_fn=fixed_grad_cond_fn(seen))
    close(out.sample, g["cond/p_sample/sample"])
    # cond_fn receives ORIGINAL timesteps (int64), like the model.
    assert seen[0].tolist() == g["cond/cond_fn_t_received"].tolist() == [0, 10, 505, 999]
    assert seen[0].dtype == torch.int64


def test_cond_fn_score_form_ddim_golden() -> None:
    g, seen = golden()[1], []
    out = ddim_step(d100(), *case(), eta=0.0, cond_fn=fixed_grad_cond_fn(seen))
    close(out.sample, g["cond/ddim_sample/sample"])
    close(out.pred_x0, g["cond/condition_score/pred_xstart"])
    assert seen[0].tolist() == [0, 10, 505, 999]


@pytest.mark.parametrize("which", ["ddpm", "ddim0", "ddim0.5", "ddpm_cond", "ddim_cond"])
def test_int_index_matches_per_row_golden(which: str) -> None:
    """Loops pass a Python int index (coefficients as Python floats): each row
    stepped alone must reproduce the batched golden row."""
    g = golden()[1]
    model_out, x_t, t, noise = case()
    expected = {
        "ddpm": g["p_sample/sample"], "ddim0": g["ddim_sample/eta0/sample"],
        "ddim0.5": g["ddim_sample/eta0.5/sample"], "ddpm_cond": g["cond/p_sample/sample"],
        "ddim_cond": g["cond/ddim_sample/sample"],
    }[which]  # fmt: skip
    for b in range(4):
        rows = slice(b, b + 1)
        grad = g["cond/grad"][rows]
        cond_fn = (lambda x, tt, grad=grad: grad) if which.endswith("cond") else None
        args = (d100(), model_out[rows], x_t[rows], int(t[b]), noise[rows])
        if which.startswith("ddpm"):
            out = ddpm_step(*args, cond_fn=cond_fn)
        else:
            out = ddim_step(*args, eta=0.5 if which == "ddim0.5" else 0.0, cond_fn=cond_fn)
        close(out.sample, expected[rows])


# --- full loops vs golden -----------------------------------------------------------------------

LOOPS = {
    "p_sample_loop_fast27_linear": ("linear", "fast27", sample_ddpm),
    "p_sample_loop_100_cos": ("squaredcos_cap_v2", "100", sample_ddpm),
    "ddim_sample_loop_ddim50_cos": ("squaredcos_cap_v2", "ddim50", sample_ddim),
}


@pytest.mark.parametrize("name", list(LOOPS))
def test_loops_golden(name: str) -> None:
    meta, g = golden()
    schedule, respacing, sampler = LOOPS[name]
    info = meta["loops"][name]
    assert (info["schedule"], info["respacing"], info["clip_denoised"]) == (schedule, respacing, True)
    pre = f"loops/{name}/"
    s = make_schedule(schedule, 1000, respacing)
    step_noise = iter(g[pre + "step_noise"])
    seen_t, samples, pred_x0s, indices = [], [], [], []

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # json: output = cat([0.3 * x + 0.001 * t_model, tanh(x)], dim=1)
        seen_t.append(t)
        return torch.cat([0.3 * x + 0.001 * t.view(-1, 1, 1, 1), torch.tanh(x)], dim=1)

    def callback(i: int, x: torch.Tensor, pred_x0: torch.Tensor) -> None:
        indices.append(i)
        samples.append(x)
        pred_x0s.append(pred_x0)

    final = sampler(model, s, g[pre + "init_noise"], noise_fn=lambda like: next(step_noise), callback=callback)
    assert [int(t[0]) for t in seen_t] == info["model_t_received_per_step"]
    assert all(t.dtype == torch.int64 and t.shape == (2,) and t[0] == t[1] for t in seen_t)
    assert indices == list(range(s.num_steps - 1, -1, -1))
    assert next(step_noise, None) is None  # exactly one noise draw per step
    close(torch.stack(samples), g[pre + "samples"], atol=LOOP_ATOL)
    close(torch.stack(pred_x0s), g[pre + "pred_xstart"], atol=LOOP_ATOL)
    close(final, g[pre + "samples"][-1], atol=LOOP_ATOL)
    assert not final.is_inference()


# --- determinism and noise ---------------------------------------------------------------------


def toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.cat([0.3 * x + 0.001 * t.view(-1, 1, 1, 1), torch.tanh(x)], dim=1)


def test_ddim_eta0_is_deterministic() -> None:
    s = make_schedule("squaredcos_cap_v2", 1000, "ddim25")
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    a = sample_ddim(toy_model, s, x_T, eta=0.0, noise_fn=lambda like: torch.randn_like(like))
    b = sample_ddim(toy_model, s, x_T, eta=0.0, noise_fn=lambda like: 100 * torch.ones_like(like))
    assert torch.equal(a, b)
    c = sample_ddim(toy_model, s, x_T, eta=1.0, noise_fn=lambda like: torch.ones_like(like))
    assert not torch.equal(a, c)


def test_per_sample_noise_batch_independent_and_reproducible() -> None:
    one = PerSampleNoise(seeds_for(7, 1))
    three = PerSampleNoise(seeds_for(7, 3))
    x1, x3 = one.initial((3, 4, 4)), three.initial((3, 4, 4))
    assert x1.shape == (1, 3, 4, 4) and x3.shape == (3, 3, 4, 4)
    assert torch.equal(x1[0], x3[0])
    assert not torch.equal(x3[0], x3[1])
    for _ in range(3):  # later draws too
        assert torch.equal(one(x1)[0], three(x3)[0])
    # A whole sampling run: image 0 does not change with the batch size.
    s = make_schedule("linear", 1000, "10")
    n1 = PerSampleNoise([7])
    a = sample_ddpm(toy_model, s, n1.initial((3, 4, 4)), noise_fn=n1)
    n3 = PerSampleNoise([7, 8, 9])
    b = sample_ddpm(toy_model, s, n3.initial((3, 4, 4)), noise_fn=n3)
    close(a[0], b[0], atol=1e-6)  # per-row math; allow batched-kernel rounding
    # Rerun with the same seeds: identical.
    n3b = PerSampleNoise([7, 8, 9])
    assert torch.equal(b, sample_ddpm(toy_model, s, n3b.initial((3, 4, 4)), noise_fn=n3b))


def test_per_sample_noise_select_goes_on_from_the_rows_state() -> None:
    whole, ref = PerSampleNoise([3, 4, 5]), PerSampleNoise([3, 4, 5])
    x = whole.initial((2, 2))
    assert torch.equal(x, ref.initial((2, 2)))
    sub = whole.select([2, 0])  # rows 2 and 0, their generators shared
    assert sub.seeds == [5, 3] and len(sub) == 2
    later = ref(x)
    assert torch.equal(sub(x[:2]), later[[2, 0]])
    assert torch.equal(whole(x)[1], later[1])  # row 1 was not drawn from by the subset
    with pytest.raises(ValueError, match="at least one row"):
        whole.select([])


def test_per_sample_noise_checks_and_dtype() -> None:
    assert seeds_for(5, 3) == [5, 6, 7]
    noise = PerSampleNoise([1, 2])
    with pytest.raises(ValueError, match="batch size"):
        noise(torch.zeros(3, 1, 2, 2))
    with pytest.raises(ValueError):
        PerSampleNoise([])
    half = noise(torch.zeros(2, 1, 2, 2, dtype=torch.float64))
    assert half.dtype == torch.float64 and half.shape == (2, 1, 2, 2)


# --- analytic check ---------------------------------------------------------------------------


def test_ddim_on_gaussian_data_recovers_sigma() -> None:
    """Data x0 ~ N(0, sigma^2 I): x_t ~ N(0, abar sigma^2 + 1 - abar) and the
    exact eps-predictor is E[eps | x_t] = sqrt(1 - abar) x_t / (abar sigma^2 + 1 - abar).
    DDIM (eta = 0) with it must map N(0, I) to std ~ sigma."""
    sigma = 0.5
    base = make_schedule("squaredcos_cap_v2", 1000)
    abar = torch.tensor(base.alphas_cumprod)  # indexed by ORIGINAL timesteps

    def exact(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = abar[t].view(-1, 1, 1, 1)
        eps = ((1 - ab).sqrt() / (ab * sigma**2 + 1 - ab) * x.double()).float()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)

    x_T = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x0 = sample_ddim(exact, base.respace("ddim100"), x_T, clamp_x0=False)
    # 4096 samples: sampling error of the std ~1.1%; 100 DDIM steps bias it ~1% low.
    assert x0.std().item() == pytest.approx(sigma, rel=0.04)
    assert abs(x0.mean().item()) < 0.03
    # eta = 0 with the exact predictor is a deterministic per-element map: x0 = c * x_T.
    ratio = (x0 / x_T).flatten()
    assert ratio.std().item() < 1e-4 * ratio.mean().item()


# --- API behaviour --------------------------------------------------------------------------------


def test_argument_validation() -> None:
    s = make_schedule("linear", 1000, "10")
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(toy_model, s, x, eta=-0.1)
    with pytest.raises(ValueError, match="eta"):
        sample_ddim(toy_model, s, x, eta=float("nan"))
    with pytest.raises(ValueError, match="x_T"):
        sample_ddpm(toy_model, s, torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="floating"):
        sample_ddpm(toy_model, s, torch.zeros(1, 3, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="2\\*C"):
        sample_ddpm(lambda x, t: x, s, x)
    with pytest.raises(ValueError, match="out of range"):
        ddpm_step(s, torch.zeros(1, 6, 4, 4), x, 10, x)


def test_progress_and_samplers_registry(capsys: pytest.CaptureFixture) -> None:
    assert SAMPLERS == {"ddpm": sample_ddpm, "ddim": sample_ddim, "dpm++2m": sample_dpmpp_2m}
    s = make_schedule("linear", 1000, "5")
    x_T = torch.zeros(1, 3, 2, 2)
    out = SAMPLERS["ddim"](toy_model, s, x_T, progress=True)
    assert out.shape == x_T.shape
    assert "5/5" in capsys.readouterr().err


def test_get_sampler_binds_eta_so_every_sampler_is_called_alike() -> None:
    s = make_schedule("linear", 1000, "5")
    x_T = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(0))

    def noise(seed: int):
        g = torch.Generator().manual_seed(seed)
        return lambda x: torch.randn(x.shape, generator=g)

    for name in SAMPLERS:
        assert get_sampler(name)(toy_model, s, x_T, noise_fn=noise(1)).shape == x_T.shape
    assert get_sampler("ddpm", eta=0.7) is sample_ddpm  # no eta to bind: ignored
    torch.testing.assert_close(
        get_sampler("ddim", eta=0.5)(toy_model, s, x_T, noise_fn=noise(1)),
        sample_ddim(toy_model, s, x_T, eta=0.5, noise_fn=noise(1)),
        rtol=0,
        atol=0,
    )
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("euler")


def test_x0_fn_and_cond_fn_in_loop_get_original_timesteps() -> None:
    s = make_schedule("linear", 1000, "fast27")
    seen_x0, seen_cond = [], []

    def x0_fn(x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen_x0.append(int(t[0]))
        return x0

    def cond_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert torch.is_grad_enabled()  # enabled at the call site
        seen_cond.append(int(t[0]))
        return torch.zeros_like(x)

    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    plain = sample_ddpm(toy_model, s, x_T, noise_fn=torch.zeros_like)
    guided = sample_ddpm(toy_model, s, x_T, noise_fn=torch.zeros_like, x0_fn=x0_fn, cond_fn=cond_fn)
    expected = golden()[0]["loops"]["p_sample_loop_fast27_linear"]["model_t_received_per_step"]
    assert seen_x0 == seen_cond == expected
    assert torch.equal(plain, guided)  # zero gradient, identity x0_fn
    assert np.array_equal(s.timestep_map[::-1], expected)
