"""Model configurations: a UNet plus the diffusion process it was trained with, and named presets.

The released GLIDE (filtered) presets reproduce glide-text2im's
``model_and_diffusion_defaults()`` / ``model_and_diffusion_defaults_upsampler()``
exactly (``tests/test_unet.py`` builds each and checks every key and shape
against the manifests of the released files). A preset change is a reviewed diff.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .unet.config import TextConfig, UNetConfig


@dataclass(frozen=True)
class DiffusionConfig:
    """The training-time diffusion process (sampling picks its own respacing)."""

    noise_schedule: str = "squaredcos_cap_v2"  # base models; the upsamplers use "linear"
    steps: int = 1000  # diffusion_steps


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model and use it: saved in every checkpoint."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    @property
    def kind(self) -> str:
        return self.unet.kind

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(
            unet=UNetConfig.from_dict(d["unet"]),
            diffusion=DiffusionConfig(**d.get("diffusion", {})),
        )

    @classmethod
    def from_json(cls, s: str) -> ModelConfig:
        return cls.from_dict(json.loads(s))


_RELEASED_TEXT = TextConfig()  # 128 tokens, width 512, 16 layers, 8 heads, GPT-2 BPE

_BASE_64 = UNetConfig(
    image_size=64,
    model_channels=192,
    num_res_blocks=3,
    channel_mult=(1, 2, 3, 4),
    attention_resolutions=(2, 4, 8),  # "32,16,8"
    num_head_channels=64,
    dropout=0.1,
    text=_RELEASED_TEXT,
)
_UPSAMPLE_256 = dataclasses.replace(
    _BASE_64,
    image_size=256,
    num_res_blocks=2,
    channel_mult=(1, 1, 2, 2, 4, 4),
    attention_resolutions=(8, 16, 32),  # "32,16,8"
    super_res=True,
)
_TINY_TEXT = TextConfig(context_length=32, width=64, layers=2, heads=4, n_vocab=257, tokenizer="bytes")
_TINY = UNetConfig(
    image_size=16,
    model_channels=32,
    num_res_blocks=1,
    channel_mult=(1, 2),
    attention_resolutions=(2,),
    num_head_channels=16,
    dropout=0.0,
    text=_TINY_TEXT,
)
_TINY_UPSAMPLE = dataclasses.replace(
    _TINY,
    image_size=64,
    channel_mult=(1, 1, 2),
    attention_resolutions=(4,),
    super_res=True,
)

# The paper's models (Nichol et al. 2021, GLIDE, §4 "Training" and §4.1; arXiv:2112.10741),
# never released: for sharded training (docs/training.md, "Paper scale"). The paper gives:
# - base, 3.5B parameters at 64x64: the ADM architecture (Dhariwal & Nichol 2021) "scaled to
#   512 channels", text conditioning as the released model; the text transformer has "24
#   residual blocks of width 2048, resulting in roughly 1.2 billion parameters", and "the
#   visual part of the model ... consists of 2.3 billion parameters". Everything else is the
#   released base's (ADM ImageNet 64: 3 ResBlocks per level, channel_mult 1,2,3,4, attention at
#   32,16,8 with 64-channel heads, scale-shift norm, ResBlock resampling, cosine schedule). Text
#   heads are not given: 32 heads of 64 channels, as the released 512-wide transformer's 8.
#   Built: 3.554B in all; the 24 blocks are 1.209B and the rest (UNet, token and position
#   embeddings) 2.345B, so the paper's 1.2B + 2.3B split counts the embeddings as visual.
# - upsampler, 1.5B parameters, 64 -> 256: "the ImageNet upsampler from Dhariwal & Nichol (2021),
#   except that we increase the number of base channels to 384" (ADM's upsampler: 2 ResBlocks
#   per level, channel_mult 1,1,2,2,4,4, attention at 32,16,8 with 4 heads, linear schedule),
#   conditioned "in the same way as the base model, but [with] a smaller text encoder with width
#   1024 instead of 2048". The paper gives no depth for it: 12 blocks is the depth that gives the
#   stated 1.5B (1.491B built; 16 blocks would give 1.541B, 24 blocks 1.642B).
# - the inpainting variants: the same models with the 4 extra input channels (§4.3).
_PAPER_BASE_64 = dataclasses.replace(
    _BASE_64,
    model_channels=512,
    text=dataclasses.replace(_RELEASED_TEXT, width=2048, layers=24, heads=32),
)
_PAPER_UPSAMPLE_256 = dataclasses.replace(
    _UPSAMPLE_256,
    model_channels=384,
    num_head_channels=-1,  # ADM's upsampler: num_heads=4
    num_heads=4,
    text=dataclasses.replace(_RELEASED_TEXT, width=1024, layers=12, heads=16),
)

_COSINE = DiffusionConfig("squaredcos_cap_v2", 1000)
_LINEAR = DiffusionConfig("linear", 1000)

PRESETS: dict[str, ModelConfig] = {
    # The released GLIDE (filtered) models.
    "base-64": ModelConfig(_BASE_64, _COSINE),
    "upsample-256": ModelConfig(_UPSAMPLE_256, _LINEAR),
    "inpaint-64": ModelConfig(dataclasses.replace(_BASE_64, inpaint=True), _COSINE),
    "upsample-inpaint-256": ModelConfig(dataclasses.replace(_UPSAMPLE_256, inpaint=True), _LINEAR),
    # The paper's models (never released; above): train them sharded (dist.strategy = "fsdp").
    "glide-3.5b": ModelConfig(_PAPER_BASE_64, _COSINE),
    "glide-upsample-1.5b": ModelConfig(_PAPER_UPSAMPLE_256, _LINEAR),
    "glide-inpaint-3.5b": ModelConfig(dataclasses.replace(_PAPER_BASE_64, inpaint=True), _COSINE),
    "glide-upsample-inpaint-1.5b": ModelConfig(dataclasses.replace(_PAPER_UPSAMPLE_256, inpaint=True), _LINEAR),
    # Small models for tests and quick CPU experiments (byte tokenizer: no vocab files).
    "tiny": ModelConfig(_TINY, _COSINE),
    "tiny-upsample": ModelConfig(_TINY_UPSAMPLE, _LINEAR),
    "tiny-inpaint": ModelConfig(dataclasses.replace(_TINY, inpaint=True), _COSINE),
    "tiny-upsample-inpaint": ModelConfig(dataclasses.replace(_TINY_UPSAMPLE, inpaint=True), _LINEAR),
}

# Released checkpoint name (as in glide-text2im's download.py) -> preset.
RELEASED_PRESETS: dict[str, str] = {
    "base": "base-64",
    "upsample": "upsample-256",
    "base-inpaint": "inpaint-64",
    "upsample-inpaint": "upsample-inpaint-256",
}


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name`` (or a released checkpoint's name, e.g. ``"base"``)."""
    name = RELEASED_PRESETS.get(name, name)
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]
