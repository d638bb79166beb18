"""What every pipeline does with a request before any work: check it
(:func:`validate_request`), then parse its prompts, resolve its dtype and warn about captions the
model will not follow and a negative prompt that changes nothing (:func:`prepare_request`); and
the settings every result records first (:func:`run_settings`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import torch

from ..precision import check_dtype, resolve_dtype
from .captions import warn_captions
from .prompts import Composition, parse_prompts, warn_unused_negative
from .recipes import SettingError, StageSettings
from .stage import Stage

MAX_SEED = 2**63 - 1


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
    *,
    reranks: bool = False,
    negative: str | None = None,
) -> None:
    """Raise a clear error for a request that cannot run, before any work is done. ``reranks``:
    the pipeline keeps the best of ``base.candidates`` (text-to-image, inpainting); elsewhere it must be 1.
    Composed prompts must parse (:class:`~.prompts.CompositionError` points at the character)."""
    if not prompts:
        raise ValueError("give at least one prompt")
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be strings")
    parse_prompts(prompts, warn=False)
    if negative is not None and not isinstance(negative, str):
        raise TypeError(f"the negative prompt must be a string, got {type(negative).__name__}")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or not 1 <= num_images <= 1024:
        raise SettingError("num_images", f"must be an integer in [1, 1024], got {num_images!r}")
    base.validate("base", base_steps)
    if base.candidates != 1 and not reranks:
        raise ValueError(
            f"base: candidates (best of N by a noised CLIP) is for text-to-image and inpainting; "
            f"got {base.candidates}, expected 1"
        )
    if upsample.candidates != 1:
        raise ValueError(f"upsample: candidates applies to the base stage only; got {upsample.candidates}")
    batch = len(prompts) * num_images * base.candidates
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED - batch:
        raise SettingError("seed", f"must be an integer in [0, 2**63 - 1 - number of images], got {seed!r}")
    check_dtype(dtype, device)
    if upsample_steps is not None:
        upsample.validate("upsample", upsample_steps)


def prepare_request(
    base_stage: Stage,
    upsampler: Stage | None,
    prompts: Sequence[str],
    num_images: int,
    seed: int,
    base: StageSettings,
    upsample: StageSettings,
    dtype: str,
    negative: str | None,
    *,
    reranks: bool = False,
) -> tuple[list[Composition], str]:
    """:func:`validate_request` against these stages (``upsampler`` None: no upsampling stage),
    then each prompt's :class:`~.prompts.Composition` and the resolved dtype; warns (a
    :class:`~.captions.CaptionWarning` or :class:`~.prompts.CompositionWarning`, pointing at the
    pipeline's caller) about captions the base model will not follow and a negative prompt
    that changes nothing."""
    validate_request(
        prompts,
        num_images,
        seed,
        base,
        upsample,
        dtype,
        base_stage.device,
        base_stage.config.diffusion.steps,
        upsampler.config.diffusion.steps if upsampler else None,
        reranks=reranks,
        negative=negative,
    )
    comps = parse_prompts(prompts)
    params = sum(p.numel() for stage in (base_stage, upsampler) if stage for p in stage.model.parameters())
    resolved = resolve_dtype(dtype, base_stage.device, params)
    warn_captions(comps, base_stage.config.unet.text.tokenizer, negative, stacklevel=4)
    warn_unused_negative(negative, comps, base, upsample if upsampler else None, stacklevel=4)
    return comps, resolved


def run_settings(
    base_stage: Stage,
    upsampler: Stage | None,
    base: StageSettings,
    upsample: StageSettings,
    dtype: str,
    seed: int,
    num_images: int,
) -> dict:
    """The first entries of a result's settings (and so of every PNG's metadata), in this order:
    the models, each stage's settings (the upsampler's None without one), dtype, seed, num_images."""
    return {
        "base_model": base_stage.name,
        "upsample_model": upsampler.name if upsampler else None,
        "base": asdict(base),
        "upsample": asdict(upsample) if upsampler else None,
        "dtype": dtype,
        "seed": seed,
        "num_images": num_images,
    }
