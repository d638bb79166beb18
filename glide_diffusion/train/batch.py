"""From a data batch to the model's training inputs, and the small pieces of one step.

Random draws of one micro-batch, in order, all from the step's generator:
CFG dropout (B uniforms), timesteps (B ints), then the low-res corruption, the
upsampler's crop offsets and the inpainting masks when the task has them, then the
noise (B, C, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from ..diffusion import q_sample, sample_timesteps
from ..diffusion.schedule import Schedule
from ..text.tokenizer import Tokenizer, tokenize_batch
from ..unet.model import GlideUNet
from .config import OptimConfig, TrainConfig

__all__ = [
    "ModelInputs",
    "apply_cfg_dropout",
    "ema_update",
    "enable_activation_checkpointing",
    "lr_factor",
    "make_inputs",
    "random_crop",
    "step_generator",
]


def step_generator(seed: int, rank: int, step: int, stream: int = 0) -> torch.Generator:
    """The generator of one (process, step): every training draw is a function of
    (seed, rank, step) only, so a resumed run redraws exactly what it would have.
    ``stream`` separates independent uses (0: the step's inputs)."""
    state = np.random.SeedSequence([seed, rank, step, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def apply_cfg_dropout(captions: Sequence[str], p: float, generator: torch.Generator) -> list[str]:
    """Replace each caption by the empty one with probability p (GLIDE §4.2)."""
    drop = torch.rand(len(captions), generator=generator) < p
    return ["" if d else c for c, d in zip(captions, drop.tolist())]


@dataclass
class ModelInputs:
    x0: torch.Tensor  # (B, C, H, W)
    x_t: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor  # (B,) schedule indices (for the loss)
    t_model: torch.Tensor  # (B,) original timesteps (what the model sees)
    tokens: torch.Tensor  # (B, L)
    mask: torch.Tensor  # (B, L) bool
    cond: dict  # low_res / inpaint_image / inpaint_mask, as the task needs


def make_inputs(
    batch: dict,
    config: TrainConfig,
    schedule: Schedule,
    tokenizer: Tokenizer,
    generator: torch.Generator,
    device: torch.device,
    t_range: tuple[int, int] | None = None,
) -> ModelInputs:
    """x_t = q_sample(x0, t, noise) with uniform t (in ``t_range`` = [lo, hi) when given, else
    every step of the schedule), the (dropped-out) caption tokens and task inputs."""
    x0 = batch["image"].float()
    n = x0.shape[0]
    captions = apply_cfg_dropout(batch["caption"], config.cond.cfg_dropout, generator)
    tokens, mask = tokenize_batch(tokenizer, captions, config.model.unet.text.context_length)
    lo, hi = t_range or (0, schedule.num_steps)
    if hi > schedule.num_steps:
        raise ValueError(f"t_range {t_range} reaches past the schedule's {schedule.num_steps} steps")
    t = sample_timesteps(n, hi, generator, low=lo)
    cond: dict = {}
    unet = config.model.unet
    if unet.super_res:
        if "low_res" not in batch:
            raise ValueError("the upsampler's data batches carry no 'low_res' images")
        low_res = batch["low_res"].float()
        if config.cond.corrupt_low_res:
            from .augment import degrade_low_res

            blur_lo, blur_hi = config.cond.low_res_blur
            low_res = degrade_low_res(
                low_res, generator, blur_sigma=(blur_lo, blur_hi), noise_std=config.cond.low_res_noise_std
            )
        if config.cond.crop_size:
            x0, low_res = random_crop(x0, low_res, config.cond.crop_size, generator)
        cond["low_res"] = low_res
    if unet.inpaint:  # masks of the (cropped) training image's size
        from .masks import random_masks

        cond["inpaint_image"] = x0
        cond["inpaint_mask"] = random_masks(n, x0.shape[-1], list(config.cond.mask_kinds), generator).float()
    noise = torch.randn(x0.shape, generator=generator)
    x0, noise, t = x0.to(device), noise.to(device), t.to(device)
    x_t = q_sample(schedule, x0, t, noise)
    t_model = torch.from_numpy(schedule.timestep_map.copy()).to(device)[t]
    cond = {k: v.to(device) for k, v in cond.items()}
    return ModelInputs(x0, x_t, noise, t, t_model, tokens.to(device), mask.to(device), cond)


def random_crop(
    image: torch.Tensor, low_res: torch.Tensor, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random region of each (high-res, low-res) pair: ``size`` pixels of the
    high-res image, ``size // factor`` of the low-res one; offsets on the low-res grid."""
    factor = image.shape[-1] // low_res.shape[-1]
    small = size // factor
    n, side = image.shape[0], low_res.shape[-1]
    offsets = torch.randint(0, side - small + 1, (n, 2), generator=generator).tolist()
    hi = torch.stack(
        [
            image[i, :, y * factor : (y + small) * factor, x * factor : (x + small) * factor]
            for i, (y, x) in enumerate(offsets)
        ]
    )
    lo = torch.stack([low_res[i, :, y : y + small, x : x + small] for i, (y, x) in enumerate(offsets)])
    return hi, lo


def lr_factor(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine down to ``min_lr_ratio``."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    span = max(1, max_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameter-wise; buffers copied."""
    from .fsdp import local  # sharded (FSDP) weights: each process updates its own shards

    e_params: list[torch.Tensor] = local(ema.parameters())
    m_params = local(p.detach() for p in model.parameters())
    torch._foreach_mul_(e_params, decay)
    torch._foreach_add_(e_params, m_params, alpha=1 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)


def enable_activation_checkpointing(model: GlideUNet) -> None:
    """Recompute each UNet stage in the backward pass instead of storing its activations.

    Wraps the stages' ``forward`` on this instance only (the module tree and
    the state dict are unchanged). Copy the model (e.g. for the EMA) first.
    """
    stages = [*model.input_blocks, model.middle_block, *model.output_blocks]
    for stage in stages:
        forward = stage.forward

        def wrapped(h, emb, text, _forward=forward):
            return checkpoint(_forward, h, emb, text, use_reentrant=False)

        stage.forward = wrapped
