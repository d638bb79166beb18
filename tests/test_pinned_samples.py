"""Recorded outputs of the tiny pipeline, one case per sampler: an accidental change to sampling
(noise order, guidance, a step's formula, the stages' conditioning) changes these numbers.

The models are the ``tiny`` base and ``tiny-upsample`` presets with seeded random weights; each
case samples two captions through both stages as the text-to-image pipeline does
(:func:`~glide_diffusion.pipelines.stage.sample_stage`, the base's 8-bit levels as the
upsampler's input), seeds 0 and 1. Recorded on the project's x86_64 CPU (torch 2.13, float32) at
commit 8f1f64a, before the sampling-path refactor (issue 34), and unchanged by it. The
tolerance allows other CPUs' float32 rounding (a few ulp, compounded over the steps), far
below what a change of method moves (1e-2 and more).
"""

from __future__ import annotations

import math

import pytest
import torch

from glide_diffusion.checkpoints import build_model
from glide_diffusion.pipelines.images import quantize
from glide_diffusion.pipelines.recipes import OFFICIAL_BASE, OFFICIAL_UPSAMPLE, StageSettings
from glide_diffusion.pipelines.stage import Stage, sample_stage
from glide_diffusion.presets import get_preset
from glide_diffusion.sampling.noise import PerSampleNoise, seeds_for

PROMPTS = ["a red circle", "a blue square"]
ATOL = 1e-3

# sampler case -> stage -> [mean, mean |x|, std, sum_k sin(k) x_k / sqrt(N) over the flattened sample]
PINNED_6_STEPS = {
    "ddpm": {
        "base": [-0.0259393041, 0.7513377389, 0.812029809, -0.6284487737],
        "up": [0.1578094855, 0.7619928558, 0.805066013, -0.5085042671],
    },
    "ddim": {
        "base": [0.0260627713, 0.9473525365, 0.9613027132, -0.8985942184],
        "up": [0.135686735, 0.9674571267, 0.9667716225, 0.1542054687],
    },
    "ddim-eta": {
        "base": [-0.0028515966, 0.8752566898, 0.9092493664, -0.2302355104],
        "up": [0.1479538733, 0.8894492201, 0.908378703, 0.3719471075],
    },
    "dpm++2m": {
        "base": [0.0255542552, 0.944111439, 0.9596348652, -0.8896261724],
        "up": [0.1382808644, 0.9691349364, 0.9676536982, 0.6568658586],
    },
}

# the official recipe (OFFICIAL_BASE, OFFICIAL_UPSAMPLE), slow
PINNED_OFFICIAL = {
    "base": [-0.0501307615, 0.7477041367, 0.804912468, -0.5733042463],
    "up": [0.1401329022, 0.9589663361, 0.959811236, -0.1622903639],
}


def _stage(name: str, seed: int) -> Stage:
    torch.manual_seed(seed)
    model = build_model(name)
    with torch.no_grad():  # non-zero outputs: perturb the zero-initialised layers too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return Stage(model.eval(), get_preset(name), name)


@pytest.fixture(scope="module")
def stages() -> tuple[Stage, Stage]:
    return _stage("tiny", 0), _stage("tiny-upsample", 1)


def _numbers(x: torch.Tensor) -> list[float]:
    x = x.double()
    w = torch.sin(torch.arange(x.numel(), dtype=torch.float64)).view_as(x)
    return [float(x.mean()), float(x.abs().mean()), float(x.std()), float((w * x).sum() / math.sqrt(x.numel()))]


def _sample(stages: tuple[Stage, Stage], base: StageSettings, up: StageSettings) -> dict[str, list[float]]:
    base_stage, up_stage = stages
    noise = PerSampleNoise(seeds_for(0, len(PROMPTS)), torch.device("cpu"))
    with torch.inference_mode():
        low = sample_stage(base_stage, PROMPTS, noise, base)
        high = sample_stage(up_stage, PROMPTS, noise, up, low_res=quantize(low))
    return {"base": _numbers(low), "up": _numbers(high)}


CASES = {"ddpm": ("ddpm", 0.0), "ddim": ("ddim", 0.0), "ddim-eta": ("ddim", 0.5), "dpm++2m": ("dpm++2m", 0.0)}


@pytest.mark.parametrize("case", list(CASES))
def test_each_sampler_reproduces_its_recorded_samples(stages, case):
    sampler, eta = CASES[case]
    got = _sample(
        stages, StageSettings(sampler, "6", 3.0, 1.0, eta=eta), StageSettings(sampler, "6", 1.0, 0.997, eta=eta)
    )
    for stage in ("base", "up"):
        assert got[stage] == pytest.approx(PINNED_6_STEPS[case][stage], abs=ATOL), (case, stage)


@pytest.mark.slow
def test_the_official_recipe_reproduces_its_recorded_samples(stages):
    """Base DDPM 100 steps at guidance 3, upsampler DDIM fast27 at temperature 0.997."""
    got = _sample(stages, OFFICIAL_BASE, OFFICIAL_UPSAMPLE)
    for stage in ("base", "up"):
        assert got[stage] == pytest.approx(PINNED_OFFICIAL[stage], abs=ATOL), stage
