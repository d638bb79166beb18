"""Text -> image: the base model with classifier-free guidance, then the upsampler.

Composition only: models come from :mod:`glide_diffusion.checkpoints`, the
process from :mod:`glide_diffusion.diffusion`, samplers and guidance from
their packages. Defaults follow the official text2im notebook: base "100"
ancestral steps at guidance scale 3, upsampler "fast27" DDIM at temperature 0.997.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..diffusion.schedule import Schedule, make_schedule, space_timesteps
from ..guidance.cfg import classifier_free_guidance
from ..precision import autocast as precision_autocast
from ..precision import check_dtype
from ..presets import ModelConfig
from ..sampling.noise import PerSampleNoise, seeds_for
from ..sampling.samplers import SAMPLERS
from ..text.tokenizer import get_tokenizer, tokenize_batch
from ..unet.model import GlideUNet, TextCondition

MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class StageSettings:
    """How one stage samples."""

    sampler: str = "ddpm"  # a key of SAMPLERS
    steps: str = "100"  # a respacing string: "100", "fast27", "ddim50", "10,20,30"
    guidance_scale: float = 3.0  # classifier-free guidance; 1 = conditional only (one pass)
    temperature: float = 1.0  # scale of the initial noise (the notebook's upsampler: 0.997)
    eta: float = 0.0  # DDIM only
    clip_denoised: bool = True

    def validate(self, stage: str, num_steps: int) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"{stage}: unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        try:
            space_timesteps(num_steps, self.steps)
        except ValueError as e:
            raise ValueError(f"{stage}: bad steps {self.steps!r}: {e}") from None
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise ValueError(f"{stage}: guidance scale must be a finite number >= 0, got {self.guidance_scale}")
        if not 0 < self.temperature <= 10 or not math.isfinite(self.temperature):
            raise ValueError(f"{stage}: temperature must be in (0, 10], got {self.temperature}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"{stage}: eta must be in [0, 1], got {self.eta}")


BASE_DEFAULTS = StageSettings("ddpm", "100", 3.0, 1.0)
UPSAMPLE_DEFAULTS = StageSettings("ddim", "fast27", 1.0, 0.997)


@dataclass
class Text2ImResult:
    images: list[Image.Image]  # final images, one per (prompt, sample)
    low_res: list[Image.Image]  # the base model's images
    prompts: list[str]  # the prompt of each image
    seeds: list[int]  # the seed of each image
    settings: dict = field(default_factory=dict)  # everything needed to reproduce them


class Stage:
    """A loaded model with its diffusion process and tokenizer."""

    def __init__(self, model: GlideUNet, config: ModelConfig, name: str, vocab_dir: str | None = None):
        # Channels-last convolutions are faster with oneDNN on CPU and tensor cores on CUDA.
        self.model = model.to(memory_format=torch.channels_last)
        self.config, self.name = config, name
        self.tokenizer = get_tokenizer(config.unet.text.tokenizer, vocab_dir)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: Sequence[str]) -> TextCondition:
        tokens, mask = tokenize_batch(self.tokenizer, prompts, self.config.unet.text.context_length)
        return self.model.encode_text(tokens.to(self.device), mask.to(self.device))

    def schedule(self, steps: str) -> Schedule:
        d = self.config.diffusion
        return make_schedule(d.noise_schedule, d.steps, steps)


class Text2ImPipeline:
    """``pipeline(prompts) -> Text2ImResult``: GLIDE's text-to-image sampling."""

    def __init__(self, base: Stage, upsampler: Stage | None = None):
        if base.config.kind != "base":
            raise ValueError(f"the base stage needs a text-to-image model, got a {base.config.kind} model")
        if upsampler is not None and upsampler.config.kind != "upsample":
            raise ValueError(f"the upsampling stage needs an upsampler, got a {upsampler.config.kind} model")
        self.base, self.upsampler = base, upsampler

    @classmethod
    def from_pretrained(
        cls,
        base: str = "base",
        upsampler: str | None = "upsample",
        *,
        device: str | torch.device = "cpu",
        cache_dir: str | None = None,
        download: bool = True,
    ) -> "Text2ImPipeline":
        """Load released names (``"base"``, ``"upsample"``) or checkpoint paths."""
        from ..checkpoints import load_model

        def load(source: str) -> Stage:
            vocab_dir = _ensure_released(source, cache_dir, download)
            model, config = load_model(source, device=device, cache_dir=cache_dir)
            return Stage(model, config, str(source), vocab_dir)

        return cls(load(base), load(upsampler) if upsampler else None)

    @torch.inference_mode()
    def __call__(
        self,
        prompts: str | Sequence[str],
        *,
        num_images: int = 1,
        seed: int = 0,
        base: StageSettings = BASE_DEFAULTS,
        upsample: StageSettings = UPSAMPLE_DEFAULTS,
        dtype: str = "fp32",
        batch_size: int | None = None,
        progress: bool = False,
        callback: Callable[[str, int, torch.Tensor], None] | None = None,
    ) -> Text2ImResult:
        """Sample ``num_images`` images for each prompt, ``batch_size`` at a time (default: all).

        Image k (counting over prompts, then samples) uses seed ``seed + k``: its
        noise comes from its own generator, so it does not change with the batch.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        validate_request(
            prompts, num_images, seed, base, upsample, dtype, self.base.device,
            self.base.config.diffusion.steps,
            self.upsampler.config.diffusion.steps if self.upsampler else None,
        )
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        rows = [p for p in prompts for _ in range(num_images)]
        seeds = seeds_for(seed, len(rows))
        autocast = functools.partial(precision_autocast, self.base.device, dtype)
        step = batch_size or len(rows)
        lows, finals = [], []
        for i in range(0, len(rows), step):
            chunk, noise = rows[i : i + step], PerSampleNoise(seeds[i : i + step], self.base.device)
            low = self._sample_stage(self.base, chunk, noise, base, autocast, progress, callback)
            final = low
            if self.upsampler is not None:
                # The upsampler was trained on 8-bit images.
                final = self._sample_stage(
                    self.upsampler, chunk, noise, upsample, autocast, progress, callback, low_res=quantize(low)
                )
            lows.append(low)
            finals.append(final)
        low, final = torch.cat(lows), torch.cat(finals)
        settings = {
            "base_model": self.base.name,
            "upsample_model": self.upsampler.name if self.upsampler else None,
            "base": asdict(base),
            "upsample": asdict(upsample) if self.upsampler else None,
            "dtype": dtype,
            "seed": seed,
            "num_images": num_images,
            "batch_size": step,
        }
        return Text2ImResult(to_pil(final), to_pil(low), rows, seeds, settings)

    def _sample_stage(self, stage, rows, noise, settings, autocast, progress, callback, **cond) -> torch.Tensor:
        """Encode the captions once, then sample; guided when the scale is not 1."""
        cfg = stage.config.unet
        guided = settings.guidance_scale != 1.0
        with autocast():
            text = stage.encode(rows)
            if guided:  # rows [cond; uncond], the empty caption encoded once
                text = TextCondition.cat([text, stage.encode([""]).repeat(len(rows))])
        if guided:
            cond = {k: torch.cat([v, v]) for k, v in cond.items()}

        def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast():
                return stage.model(x, t, text=text, **cond).float()

        if guided:
            denoiser = classifier_free_guidance(denoiser, settings.guidance_scale)
        x_T = noise.initial((cfg.in_channels, cfg.image_size, cfg.image_size)) * settings.temperature
        label = f"{stage.config.kind} {cfg.image_size}px {settings.sampler} {settings.steps}" if progress else False
        return self._run(stage, settings, denoiser, x_T, noise, label, callback)

    @staticmethod
    def _run(stage, settings, denoiser, x_T, noise, progress, callback) -> torch.Tensor:
        sampler = SAMPLERS[settings.sampler]
        kwargs = {"eta": settings.eta} if settings.sampler == "ddim" else {}
        cb = (lambda i, x, x0: callback(stage.name, i, x0)) if callback else None
        return sampler(
            denoiser,
            stage.schedule(settings.steps),
            x_T,
            noise_fn=noise,
            clip_denoised=settings.clip_denoised,
            progress=progress,
            callback=cb,
            **kwargs,
        )


def validate_request(
    prompts: Sequence[str],
    num_images: int,
    seed: int,
    base: StageSettings,
    upsample: StageSettings,
    dtype: str,
    device: torch.device,
    base_steps: int = 1000,
    upsample_steps: int | None = 1000,
) -> None:
    """Raise a clear error for a request that cannot run, before any work is done."""
    if not prompts:
        raise ValueError("give at least one prompt")
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be strings")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or not 1 <= num_images <= 1024:
        raise ValueError(f"num_images must be an integer in [1, 1024], got {num_images!r}")
    batch = len(prompts) * num_images
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED - batch:
        raise ValueError(f"seed must be an integer in [0, 2**63 - 1 - number of images], got {seed!r}")
    check_dtype(dtype, device)
    base.validate("base", base_steps)
    if upsample_steps is not None:
        upsample.validate("upsample", upsample_steps)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to 8-bit levels, as the notebooks do before upsampling."""
    return ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(a) for a in to_uint8(x)]


def _ensure_released(source: str, cache_dir, download: bool) -> str | None:
    """For a released name: fetch its weights and the GPT-2 vocab when missing; the vocab folder."""
    from ..hub.cache import released_path
    from ..hub.download import download_released
    from ..presets import RELEASED_PRESETS

    if source not in RELEASED_PRESETS:
        return None
    names = [source, "gpt2-encoder", "gpt2-vocab"]
    missing = [n for n in names if not released_path(n, cache_dir).exists()]
    if missing and download:
        download_released(missing, cache_dir)
    vocab = released_path("gpt2-vocab", cache_dir).parent
    return str(vocab) if all(released_path(n, cache_dir).exists() for n in names[1:]) else None
