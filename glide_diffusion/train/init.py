"""Initialising a model for training or fine-tuning.

GLIDE §4.3: the inpainting models are fine-tuned from the text-to-image ones
with "four additional input channels: a second set of RGB channels, and a
mask channel", whose input weights are zero-initialised; so at the start of
fine-tuning the inpainting model computes exactly what its source computed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from ..checkpoints import CheckpointError, _resolve, build_model, load_weights, read_state_dict
from ..presets import ModelConfig, get_preset
from ..unet.config import UNetConfig
from ..unet.model import GlideUNet

__all__ = ["init_model", "expand_input_conv", "check_same_architecture", "INPUT_CONV"]

INPUT_CONV = "input_blocks.0.0.weight"  # the first convolution, (out, first_conv_channels, 3, 3)

# Fields that may differ between the source and the fine-tuned model.
_FREE_FIELDS = ("inpaint", "dropout", "text.clause_words", "guidance_embed")


def init_model(
    config: ModelConfig | str,
    init_from: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> GlideUNet:
    """A model built from ``config``, randomly initialised or loaded from ``init_from``.

    ``init_from`` is a released checkpoint's name (``"base"``, ``"upsample"``,
    ``"base-inpaint"``, ``"upsample-inpaint"``, read from the download cache
    under ``cache_dir``), a ``.safetensors`` file written by ``save_model`` or a
    ``.pt`` state dict. Reading and key checks are ``checkpoints``'s.

    An inpainting ``config`` may start from a source without the inpainting
    channels (a base model, or an upsampler for an upsampling-inpainting
    target): the first convolution is widened by :func:`expand_input_conv`.
    Everything else must fit exactly: when the source records its config (our
    ``.safetensors``, or a released name), any architecture field other than
    ``inpaint`` and ``dropout`` that differs raises :class:`CheckpointError`
    naming the fields; missing/unexpected keys and shape mismatches raise it
    naming the keys. Nothing is loaded partially.

    ``config`` is a :class:`ModelConfig` or a preset name. The model is
    returned on the CPU, in float32 and in training mode.
    """
    if isinstance(config, str):
        config = get_preset(config)
    if init_from is None:
        return build_model(config)
    path, implied = _resolve(init_from, cache_dir)
    state, saved = read_state_dict(path)
    source_config = saved or implied
    if source_config is not None:
        check_same_architecture(source_config.unet, config.unet, str(path))
    state = expand_input_conv(state, config.unet)
    model = build_model(config)
    if model.clause_bag_of_words is not None and CLAUSE_BAG not in state:  # grown from a plain bag: zeros
        state[CLAUSE_BAG] = torch.zeros_like(model.clause_bag_of_words.weight)
    if model.guidance_embed is not None and not any(k.startswith(GUIDANCE_EMBED) for k in state):
        # a distilled student from its teacher: the new embedding as built (its output zero)
        state.update({k: v for k, v in model.state_dict().items() if k.startswith(GUIDANCE_EMBED)})
    return load_weights(model, state, str(path)).train()


CLAUSE_BAG = "clause_bag_of_words.weight"
GUIDANCE_EMBED = "guidance_embed."


def expand_input_conv(state: Mapping[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """Widen a non-inpainting source's first conv for an inpainting ``config``; other keys are kept.

    With C = ``config.in_channels`` (3), the target's input is
    ``cat([x, image*mask, mask])`` (2C + 1 = 7 channels), plus ``low_res`` last
    for an upsampling-inpainting model (3C + 1 = 10). The source conv has C
    channels ``[x]`` (base) or 2C ``[x, low_res]`` (upsampler). The new
    weight (out, first_conv_channels, k, k) is::

        target channels [0, C)          <- source channels [0, C)    (x)
        target channels [C, 2C + 1)     <- zeros                     (image*mask, mask)
        target channels [2C + 1, 3C + 1) <- source channels [C, 2C)   (low_res, upsamplers only)

    Any further source channels (the coordinate channels of a ``coord_channels`` model)
    follow low_res the same way: everything after x moves up by C + 1 (for a ``patch_size``
    p model, in groups of p**2 conv channels, one per pixel of a patch). The bias is
    unchanged. ``state`` is returned as is when ``config`` is not inpainting or the source
    conv does not have exactly the channels listed above (it already fits, or
    :func:`check_state_dict` will report it).
    """
    w = state.get(INPUT_CONV)
    c, cells = config.in_channels, config.patch_size**2
    if not config.inpaint or w is None or w.ndim != 4:
        return dict(state)
    if w.shape[1] != (config.first_conv_channels - (c + 1)) * cells:
        return dict(state)
    # A patch_size p model's conv sees channel k of the input as p**2 consecutive channels
    # (pixel_unshuffle): move whole groups.
    w = w.reshape(w.shape[0], -1, cells, *w.shape[2:])
    new = w.new_zeros(w.shape[0], config.first_conv_channels, cells, *w.shape[3:])
    new[:, :c] = w[:, :c]
    new[:, 2 * c + 1 :] = w[:, c:]
    return {**state, INPUT_CONV: new.flatten(1, 2)}


def check_same_architecture(source: UNetConfig, target: UNetConfig, name: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` naming every field (but inpaint, dropout) that differs."""
    a, b = _flat(source.to_dict()), _flat(target.to_dict())
    diffs = [
        f"{k}: checkpoint {a.get(k)!r} vs config {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if k not in _FREE_FIELDS and a.get(k) != b.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"{name} was trained with a different architecture than the config:\n  " + "\n  ".join(diffs)
        )


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"text.width": 64, ...}; tuples and lists compare as tuples."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out
