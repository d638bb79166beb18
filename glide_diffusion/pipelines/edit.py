"""Image-to-image editing (SDEdit, Meng et al. 2021): noise the input part-way, denoise toward a caption.

With ``strength`` s in (0, 1] and a respacing of N steps, the base-resolution
input is diffused to the k = max(1, round(s·N))-th kept timestep with q(x_t | x_0)
and sampled from there with the first k steps (a prefix of a schedule is itself
a schedule); s = 1 starts from (almost) pure noise. The upsampler then works
as in text-to-image, from the edited low-resolution image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from ..diffusion.gaussian import q_sample
from ..diffusion.schedule import Schedule
from ..sampling.noise import PerSampleNoise, seeds_for
from .images import quantize, resized, split_alpha, to_pil
from .prompts import prompt_settings
from .recipes import OFFICIAL_BASE, OFFICIAL_UPSAMPLE, SettingError, StageSettings
from .request import prepare_request, run_settings
from .stage import Stage, load_stages, sample_stage
from .text2im import Text2ImResult


def truncate(s: Schedule, k: int) -> Schedule:
    """The first k steps of ``s``: same alphas_cumprod, same original timesteps."""
    return Schedule.from_betas(s.betas[:k], timestep_map=s.timestep_map[:k])


class EditPipeline:
    """``pipeline(image, prompt, strength) -> Text2ImResult`` with the text-to-image models."""

    def __init__(self, base: Stage, upsampler: Stage | None = None):
        if base.config.kind != "base":
            raise ValueError(f"editing needs a text-to-image base model, got a {base.config.kind} model")
        if upsampler is not None and upsampler.config.kind != "upsample":
            raise ValueError(f"the upsampling stage needs an upsampler, got a {upsampler.config.kind} model")
        self.base, self.upsampler = base, upsampler

    @classmethod
    def from_pretrained(
        cls,
        base: str = "base",
        upsampler: str | None = "upsample",
        *,
        device="cpu",
        cache_dir=None,
        download=True,
        base_config=None,
        upsampler_config=None,
    ) -> EditPipeline:
        return cls(
            *load_stages(
                base,
                upsampler,
                device=device,
                cache_dir=cache_dir,
                download=download,
                base_config=base_config,
                upsampler_config=upsampler_config,
            )
        )

    @torch.inference_mode()
    def __call__(
        self,
        image: Image.Image,
        prompt: str,
        *,
        strength: float = 0.6,
        num_images: int = 1,
        seed: int = 0,
        base: StageSettings = OFFICIAL_BASE,
        upsample: StageSettings = OFFICIAL_UPSAMPLE,
        dtype: str = "auto",
        progress: bool = False,
        negative: str | None = None,
        callback: Callable[[str, int, torch.Tensor], None] | None = None,
    ) -> Text2ImResult:
        """Redraw ``image`` toward ``prompt``; a composed prompt and ``negative`` work as in
        :class:`~.text2im.Text2ImPipeline` (the base stage composes, the upsampler gets the
        positive terms joined). ``callback(stage name, step, x0)`` after each sampling step."""
        if not (isinstance(strength, (int, float)) and math.isfinite(strength) and 0 < strength <= 1):
            raise SettingError("strength", f"must be in (0, 1], got {strength!r}")
        image, _ = split_alpha(image)
        if image.size[0] != image.size[1]:
            raise ValueError(f"the image must be square, got {image.size[0]}x{image.size[1]}")
        (comp,), dtype = prepare_request(
            self.base, self.upsampler, [prompt], num_images, seed, base, upsample, dtype, negative
        )
        rows, seeds = [prompt] * num_images, seeds_for(seed, num_images)
        noise = PerSampleNoise(seeds, self.base.device)
        run: dict[str, Any] = dict(dtype=dtype, progress=progress, negative=negative or "", callback=callback)

        full = self.base.schedule(base.steps)
        k = max(1, round(strength * full.num_steps))
        source = resized(image, self.base.image_size).to(self.base.device).expand(num_images, -1, -1, -1)
        x_start = q_sample(full, source, k - 1, noise.initial(source.shape[1:]))
        low = sample_stage(self.base, [comp] * num_images, noise, base, schedule=truncate(full, k), x_T=x_start, **run)
        final = low
        if self.upsampler is not None:
            final = sample_stage(
                self.upsampler, [comp.caption] * num_images, noise, upsample, low_res=quantize(low), **run
            )
        settings = {
            **run_settings(self.base, self.upsampler, base, upsample, dtype, seed, num_images),
            "task": "edit",
            "strength": strength,
            "start_step": k,
            **prompt_settings([prompt], [comp], negative),
        }
        return Text2ImResult(to_pil(final), to_pil(low), rows, seeds, settings)


__all__ = ["EditPipeline", "truncate"]
