"""Classifier-free guidance wrapper and cond_fn builders."""

from __future__ import annotations

import math

import pytest
import torch

from glide_diffusion.diffusion import make_schedule, p_mean_variance
from glide_diffusion.guidance import classifier_free_guidance, combine_cond_fns, scaled_cond_fn
from glide_diffusion.sampling import ddpm_step, host_timestep, sample_ddim, sample_ddpm, sample_dpmpp_2m


class DoubledBatchModel:
    """A fake text-conditional denoiser over [cond rows; uncond rows]: the
    conditional half adds +1 to eps and +10 to v, so the halves are distinct."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls.append((x, t))
        half = x.shape[0] // 2
        eps = 0.5 * x + 0.001 * t.view(-1, 1, 1, 1)
        v = torch.tanh(x)
        eps[:half] += 1.0
        v[:half] += 10.0
        return torch.cat([eps, v], dim=1)

    def branch(self, x: torch.Tensor, t: torch.Tensor, cond: bool) -> torch.Tensor:
        """The output one branch gives for B rows."""
        out = self(torch.cat([x, x]), torch.cat([t, t]))
        self.calls.pop()
        return out[: x.shape[0]] if cond else out[x.shape[0] :]


def inputs(channels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, channels, 4, 4, generator=gen), torch.tensor([999, 17])


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_cfg_endpoints_and_interpolation(channels: int) -> None:
    model = DoubledBatchModel()
    x, t = inputs(channels)
    cond, uncond = model.branch(x, t, True), model.branch(x, t, False)
    c = channels
    s0 = classifier_free_guidance(model, 0.0)(x, t)
    s1 = classifier_free_guidance(model, 1.0)(x, t)
    s3 = classifier_free_guidance(model, 3.0)(x, t)
    assert s0.shape == s1.shape == (2, 2 * c, 4, 4)
    torch.testing.assert_close(s0[:, :c], uncond[:, :c], atol=0, rtol=0)
    torch.testing.assert_close(s1[:, :c], cond[:, :c], atol=1e-6, rtol=0)
    torch.testing.assert_close(s3[:, :c], uncond[:, :c] + 3.0 * (cond[:, :c] - uncond[:, :c]), atol=0, rtol=0)
    # Variance channels: conditional branch, unguided, for every scale.
    for out in (s0, s1, s3):
        torch.testing.assert_close(out[:, c:], cond[:, c:], atol=0, rtol=0)


def test_cfg_calls_model_once_with_doubled_batch() -> None:
    model = DoubledBatchModel()
    x, t = inputs()
    classifier_free_guidance(model, 3.0)(x, t)
    assert len(model.calls) == 1
    x2, t2 = model.calls[0]
    assert torch.equal(x2, torch.cat([x, x])) and torch.equal(t2, torch.cat([t, t]))


@pytest.mark.parametrize("scale", [-1.0, float("nan"), float("inf")])
def test_cfg_rejects_bad_scale(scale: float) -> None:
    with pytest.raises(ValueError, match="guidance_scale"):
        classifier_free_guidance(DoubledBatchModel(), scale)


def test_cfg_rejects_wrong_output_shape() -> None:
    guided = classifier_free_guidance(lambda x, t: x, 2.0)  # no variance channels
    with pytest.raises(ValueError, match="doubled batch"):
        guided(*inputs())


def test_cfg_composes_with_sampler() -> None:
    """s = 1 sampling equals sampling with the conditional branch alone."""
    model = DoubledBatchModel()
    s = make_schedule("squaredcos_cap_v2", 1000, "ddim10")
    x_T, _ = inputs()
    guided = sample_ddim(classifier_free_guidance(model, 1.0), s, x_T)
    cond_only = sample_ddim(lambda x, t: model.branch(x, t, True), s, x_T)
    torch.testing.assert_close(guided, cond_only, atol=1e-5, rtol=0)


def test_cfg_interval_guides_only_inside() -> None:
    """Rows with t in [lo, hi] are guided; the others get the conditional branch; a step with
    no row inside runs the conditional denoiser alone, once, on the B rows."""
    model = DoubledBatchModel()
    conditional_calls = []

    def conditional(x, t):
        conditional_calls.append(x.shape[0])
        return model.branch(x, t, True)

    x, t = inputs()  # t = [999, 17]
    guided = classifier_free_guidance(model, 3.0, interval=(100, 999), conditional=conditional)
    out = guided(x, t)
    full = classifier_free_guidance(model, 3.0)(x, t)
    cond = model.branch(x, t, True)
    torch.testing.assert_close(out[:1], full[:1], atol=0, rtol=0)  # t = 999: inside
    torch.testing.assert_close(out[1:], cond[1:], atol=0, rtol=0)  # t = 17: outside, unguided
    assert conditional_calls == []
    model.calls.clear()
    out = guided(x, torch.tensor([50, 17]))
    assert conditional_calls == [2] and model.calls == []  # one pass of B rows, no doubled batch
    torch.testing.assert_close(out, model.branch(x, torch.tensor([50, 17]), True), atol=0, rtol=0)


@pytest.mark.parametrize("sampler", [sample_ddpm, sample_ddim, sample_dpmpp_2m])
def test_cfg_interval_inside_a_sampler_decides_on_the_host(sampler, monkeypatch) -> None:
    """Inside a sampler the wrapper picks the pass from host_timestep(), never reading t back
    from the device; the steps it guides are exactly those inside the interval."""
    model = DoubledBatchModel()
    seen = []

    def conditional(x, t):
        seen.append(("cond", host_timestep(), t.tolist()))
        return model.branch(x, t, True)

    def doubled(x, t):
        seen.append(("guided", host_timestep(), t.tolist()))
        return model(x, t)

    s = make_schedule("squaredcos_cap_v2", 1000, "10")
    x_T, _ = inputs()
    guided = classifier_free_guidance(doubled, 3.0, interval=(300, 1000), conditional=conditional)
    monkeypatch.setattr(torch.Tensor, "any", lambda *a, **k: pytest.fail("read t back from the device"))
    sampler(guided, s, x_T, noise_fn=lambda x: torch.zeros_like(x))
    assert [kind for kind, _, _ in seen] == ["guided" if t >= 300 else "cond" for t in reversed(s.timestep_map)]
    assert all(set(ts) == {hint} for _, hint, ts in seen)  # the hint is every row's timestep
    assert host_timestep() is None  # only set during the sampler's calls


def test_cfg_interval_validation() -> None:
    model = DoubledBatchModel()
    with pytest.raises(ValueError, match="lo <= hi"):
        classifier_free_guidance(model, 3.0, interval=(500, 100), conditional=model)
    with pytest.raises(ValueError, match="conditional denoiser"):
        classifier_free_guidance(model, 3.0, interval=(100, 500))


# --- gradient guidance -------------------------------------------------------------------------


def gaussian_log_prob(mu: float, tau: float):
    """log N(x; mu, tau^2) summed per row, up to a constant; gradient -(x - mu)/tau^2."""

    def log_prob(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (-0.5 * (x - mu) ** 2 / tau**2).flatten(1).sum(1)

    return log_prob


def test_scaled_cond_fn_gradient() -> None:
    x, t = inputs()
    cond_fn = scaled_cond_fn(gaussian_log_prob(0.3, 2.0), scale=5.0)
    expected = -5.0 * (x - 0.3) / 4.0
    torch.testing.assert_close(cond_fn(x, t), expected, atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(cond_fn(x, t), expected, atol=1e-6, rtol=0)
    with torch.inference_mode():
        x_inf = x.clone()
        torch.testing.assert_close(cond_fn(x_inf, t), expected, atol=1e-6, rtol=0)
    assert not cond_fn(x, t).requires_grad


def test_scaled_cond_fn_passes_t_and_checks_shape() -> None:
    seen = []

    def log_prob(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return x.sum()  # wrong shape: scalar, not (B,)

    with pytest.raises(ValueError, match="shape"):
        scaled_cond_fn(log_prob, 1.0)(*inputs())
    assert seen[0].tolist() == [999, 17]
    with pytest.raises(ValueError):
        scaled_cond_fn(log_prob, math.nan)


def test_combine_cond_fns_sums() -> None:
    x, t = inputs()
    a = scaled_cond_fn(gaussian_log_prob(0.0, 1.0), 1.0)

    def b(x, t):
        return torch.full_like(x, 2.0)

    torch.testing.assert_close(combine_cond_fns(a, b)(x, t), a(x, t) + 2.0, atol=1e-6, rtol=0)
    torch.testing.assert_close(combine_cond_fns(a)(x, t), a(x, t), atol=0, rtol=0)
    with pytest.raises(ValueError):
        combine_cond_fns()


def test_cond_fn_in_ddpm_loop_shifts_mean_by_variance_times_grad() -> None:
    """In a sampling loop (run without grad) the cond_fn still gets autograd,
    and one DDPM step shifts the mean by variance * grad (mean form)."""
    s = make_schedule("squaredcos_cap_v2", 1000, "10")
    model = DoubledBatchModel()
    denoiser = classifier_free_guidance(model, 2.0)
    cond_fn = scaled_cond_fn(gaussian_log_prob(0.5, 1.0), 3.0)
    x_T, _ = inputs()
    out = sample_ddpm(denoiser, s, x_T, noise_fn=torch.zeros_like, cond_fn=cond_fn)
    assert torch.isfinite(out).all() and not out.requires_grad
    i = s.num_steps - 1
    t = torch.full((2,), int(s.timestep_map[i]))
    model_out = denoiser(x_T, t)
    zero = torch.zeros_like(x_T)
    plain = ddpm_step(s, model_out, x_T, i, zero)
    guided = ddpm_step(s, model_out, x_T, i, zero, cond_fn=cond_fn)
    variance = p_mean_variance(s, model_out, x_T, i).variance
    torch.testing.assert_close(guided.sample - plain.sample, variance * cond_fn(x_T, t), atol=1e-5, rtol=1e-5)
