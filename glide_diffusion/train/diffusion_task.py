"""Training a diffusion model (base, upsampler, inpainting): the GLIDE loss on noised images.

x_t = q_sample(x0, t, noise) with uniform t (``train/batch.py``: make_inputs), model output
[eps, v], loss = hybrid_loss (eps-MSE + VB with learned-range variance, as GLIDE) averaged
over the batch, the eps-MSE optionally weighted (:func:`mse_weights`). Sample grids of the
EMA model are written at sampling steps (``train/samples.py``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import cast

import torch
from torch import nn

from ..checkpoints import build_model
from ..data.factory import collate
from ..diffusion import hybrid_loss, make_schedule
from ..diffusion.losses import min_snr_weights, v_weights
from ..diffusion.schedule import Schedule
from ..pipelines.recipes import StageSettings
from ..precision import autocast as precision_autocast
from ..text.tokenizer import tokenizer_for
from ..unet.model import GlideUNet
from .batch import ModelInputs, make_inputs
from .config import ConfigError, TrainConfig
from .task import RunContext

__all__ = ["DiffusionTask", "mse_weights"]


def mse_weights(config: TrainConfig, schedule: Schedule, t: torch.Tensor) -> torch.Tensor | None:
    """Per-sample weights (B,) of the eps-MSE for the config's loss, or None (GLIDE's plain eps-MSE).

    Min-SNR weights are the same in eps and v terms; a v-predicting model otherwise learns
    the v-MSE (optionally with its 1/abar weight capped).
    """
    loss = config.loss
    if loss.min_snr_gamma:
        return min_snr_weights(schedule, t, loss.min_snr_gamma)
    if config.model.unet.prediction == "v":
        return v_weights(schedule, t, loss.v_weight_max or None)
    return None


class DiffusionTask:
    """The :class:`~glide_diffusion.train.task.Task` of ``config.model``; ``t_range`` = [lo, hi)
    trains on those timesteps only (probes: benchmarks/high_noise_probe.py), None on all."""

    terms = ("loss", "mse", "vb")

    def __init__(self, context: RunContext, *, t_range: tuple[int, int] | None = None):
        self.context, self.t_range = context, t_range
        c = self.config = context.config
        self.device = context.device
        self.schedule = make_schedule(c.model.diffusion.noise_schedule, c.model.diffusion.steps)
        self.tokenizer = tokenizer_for(c.model.unet.text)
        self.model_config = c.model
        self.low_res = c.low_res_size if c.model.unet.super_res else None
        self.fsdp = c.dist.strategy == "fsdp"
        # channels-last convolutions: faster training steps on CPU (docs/results.md, "Training
        # throughput") and what tensor cores want; checkpoints are written contiguous. FSDP
        # shards parameters as flat rows of their contiguous layout: it keeps theirs.
        self.memory_format = torch.preserve_format if self.fsdp else torch.channels_last

    def build_model(self, fresh: bool) -> nn.Module:
        c = self.config
        if not (c.init_from and fresh):  # a resumed run loads its checkpoint
            return build_model(c.model)
        try:
            from .init import init_model
        except ImportError as e:
            raise ConfigError(f"init_from needs glide_diffusion.train.init, which is missing ({e})") from None
        return init_model(c.model, c.init_from)

    def make_inputs(self, batch: dict, generator: torch.Generator) -> ModelInputs:
        return make_inputs(batch, self.config, self.schedule, self.tokenizer, generator, self.device, self.t_range)

    def loss(self, model: nn.Module, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        with precision_autocast(self.device, self.config.precision):
            out = model(inputs.x_t, inputs.t_model, tokens=inputs.tokens, mask=inputs.mask, **inputs.cond)
        weights = mse_weights(self.config, self.schedule, inputs.t)
        terms = hybrid_loss(self.schedule, out.float(), inputs.x0, inputs.x_t, inputs.t, inputs.noise, weights)
        return terms.loss.mean(), torch.stack([terms.loss.mean(), terms.mse.mean(), terms.vb.mean()]).detach()

    def after_step(self, model: nn.Module) -> None:
        pass

    def write_samples(self, ema: nn.Module, step: int) -> Path | None:
        """A grid (rows: seeds, columns: prompts) of the EMA model, written by rank 0."""
        from .samples import sample_images, write_grid

        state = None
        if self.fsdp:  # gather the EMA once, to a plain model on rank 0 (every process takes part)
            from .fsdp import full_state_dict

            state = full_state_dict(ema)
        if not self.context.is_main:
            return None
        if state is not None:
            ema = build_model(self.config.model)
            ema.load_state_dict(state)
            ema.eval()
        s, mc = self.config.sample, self.config.model
        settings = StageSettings(s.sampler, s.steps, s.guidance_scale, 1.0)
        prompts, cond, rows = self._sample_conditions()
        for seed in s.seeds:
            rows.append(sample_images(cast(GlideUNet, ema), mc, prompts, seed, settings, cond))
        return write_grid(Path(self.config.out_dir) / "samples" / f"step_{step:08d}.png", rows)

    def _sample_conditions(self) -> tuple[list[str], dict | None, list]:
        """(prompts, conditioning images, the grid's first rows): for upsamplers and inpainting models,
        the first items of the data stream, shown above the samples."""
        from .samples import condition_row

        c = self.config
        prompts, mc = list(c.sample.prompts), c.model
        if mc.kind == "base":
            return prompts, None, []
        items = self.context.dataset_factory(c, 0, 1, 0, self.low_res)
        batch = collate([it for _, it in zip(range(len(prompts)), items)])
        # whole images (training may crop), clean low-res inputs, captions kept
        clean = dataclasses.replace(c.cond, cfg_dropout=0.0, corrupt_low_res=False, crop_size=0)
        inputs = make_inputs(
            batch,
            dataclasses.replace(c, cond=clean),
            self.schedule,
            self.tokenizer,
            torch.Generator().manual_seed(0),
            torch.device("cpu"),
        )
        return batch["caption"], inputs.cond, [condition_row(inputs.cond, mc.unet.image_size)]
