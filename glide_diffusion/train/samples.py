"""Sample grids from the EMA model during training (fixed prompts and seeds).

Base models sample through :class:`~glide_diffusion.pipelines.text2im.Text2ImPipeline`;
upsamplers and inpainting models through the pipelines' own sampling call
(:func:`~glide_diffusion.pipelines.stage.sample_stage`), with conditioning images taken from
the start of the dataset, so every grid of a run shows the same inputs. Grid rows are seeds,
columns prompts; for upsampling and inpainting the first row shows the conditioning input.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from ..checkpoints import atomic_write
from ..pipelines.images import to_pil
from ..pipelines.recipes import StageSettings
from ..pipelines.stage import Stage, sample_stage
from ..pipelines.text2im import Text2ImPipeline
from ..presets import ModelConfig
from ..sampling.noise import PerSampleNoise, seeds_for
from ..unet.model import GlideUNet

__all__ = ["grid", "sample_images", "write_grid"]


def grid(rows: Sequence[Sequence[Image.Image]]) -> Image.Image:
    """Paste equally sized images into one (rows x columns) image."""
    w, h = rows[0][0].size
    out = Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)))
    for y, row in enumerate(rows):
        for x, im in enumerate(row):
            out.paste(im, (x * w, y * h))
    return out


@torch.no_grad()
def sample_images(
    model: GlideUNet,
    config: ModelConfig,
    prompts: Sequence[str],
    seed: int,
    settings: StageSettings,
    cond: dict[str, torch.Tensor] | None = None,
) -> list[Image.Image]:
    """One image per prompt; image k uses seed + k (as the pipeline)."""
    stage = Stage(copy.deepcopy(model).eval(), config, "ema")
    if config.kind == "base":
        return Text2ImPipeline(stage)(list(prompts), num_images=1, seed=seed, base=settings).images
    images: dict[str, Any] = {k: v.to(stage.device) for k, v in (cond or {}).items()}
    noise = PerSampleNoise(seeds_for(seed, len(prompts)), stage.device)
    return to_pil(sample_stage(stage, list(prompts), noise, settings, **images))


def condition_row(cond: dict[str, torch.Tensor], size: int) -> list[Image.Image]:
    """The conditioning inputs shown above the samples: the low-res or the masked image."""
    if "low_res" in cond:
        return to_pil(F.interpolate(cond["low_res"], size=(size, size), mode="nearest"))
    return to_pil(cond["inpaint_image"] * cond["inpaint_mask"])


def write_grid(path: Path, rows: Sequence[Sequence[Image.Image]]) -> Path:
    image = grid(rows)
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))
    return Path(path)
