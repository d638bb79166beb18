"""Configuration of the text encoder and the UNet.

Plain frozen dataclasses: they serialise to JSON (saved with every checkpoint
and sample) and rebuild the model exactly. Defaults follow glide-text2im's
``model_and_diffusion_defaults()`` (the released base model) unless noted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TextConfig:
    """The caption transformer (GLIDE §4.1)."""

    context_length: int = 128  # text_ctx
    width: int = 512  # xf_width
    layers: int = 16  # xf_layers
    heads: int = 8  # xf_heads
    final_ln: bool = True  # xf_final_ln
    padding: bool = True  # xf_padding: learned embedding where the mask is False
    n_vocab: int = 50257  # GPT-2 BPE
    tokenizer: str = "gpt2"  # name in glide_diffusion.text.tokenizer's registry
    # The caption feature added to the timestep embedding. "last" (GLIDE): the transformer's
    # output at the last context slot. "mean": the mean of its outputs over the caption's
    # tokens (the last slot for the empty caption), so every word keeps an equal share.
    pool: str = "last"
    # Not in GLIDE. True adds a bag of words to the caption feature: a learned vector per
    # token id (N(0, 1) init), summed over the caption's tokens, so the empty caption adds
    # nothing. Why: without it the pooled feature collapses onto the background word and the
    # object words go unread (docs/results.md, "How the Shapes base learned to read its captions").
    bag_of_words: bool = False
    # Not in GLIDE. Words that open a caption's second clause ("to", "above", "below" for Shapes'
    # relations): the bag of words then adds a second learned vector per token of that clause, so
    # "a red circle to the left of a blue star" and its colour swap differ (a plain bag cannot
    # tell which object a word belongs to). Each word must be one token; needs bag_of_words.
    clause_words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_positive(self, "context_length", "width", "layers", "heads", "n_vocab")
        object.__setattr__(self, "clause_words", tuple(self.clause_words))
        if self.clause_words and not self.bag_of_words:
            raise ValueError("text clause_words needs text bag_of_words = true")
        if self.pool not in ("last", "mean"):
            raise ValueError(f"text pool must be 'last' or 'mean', got {self.pool!r}")
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} is not divisible by {self.heads} heads")


@dataclass(frozen=True)
class UNetConfig:
    """The ADM UNet with text conditioning (Dhariwal & Nichol 2021; GLIDE §4.1).

    ``attention_resolutions`` are downsample rates (1 = full resolution), the
    official ``attention_resolutions="32,16,8"`` at 64 px becomes ``(2, 4, 8)``.
    ``super_res`` adds the bilinearly upsampled low-res image to the input and
    ``inpaint`` the masked image and its mask; ``in_channels`` counts only the
    noisy image's channels.
    """

    image_size: int = 64
    model_channels: int = 192  # num_channels
    num_res_blocks: int = 3
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)  # the official default at 64 px
    attention_resolutions: tuple[int, ...] = (2, 4, 8)  # "32,16,8" at 64 px
    num_head_channels: int = 64  # -1: use num_heads instead
    num_heads: int = 1
    num_heads_upsample: int = -1  # -1: same as num_heads
    dropout: float = 0.1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    in_channels: int = 3
    learn_sigma: bool = True  # 2 * in_channels outputs: eps and the variance interpolation
    super_res: bool = False
    inpaint: bool = False
    # What the network's first C output channels predict. "eps" (GLIDE): the noise itself.
    # "v" (Salimans & Ho 2022): v = sqrt(abar) eps - sqrt(1 - abar) x0, turned into eps inside
    # forward(), so every consumer still receives [eps, var]; needs the noise schedule.
    prediction: str = "eps"
    # Groups of every GroupNorm. ADM/GLIDE: 32, i.e. 6 channels per group at 192 channels; at
    # 32 channels that is one channel per group (instance norm). Parameter shapes do not depend
    # on it. A trade-off: with one channel per group every norm removes each channel's spatial
    # mean, so a flat, caption-dependent output is hard to express, yet on the Shapes base fewer
    # groups denoised worse (docs/results.md, "How the Shapes base learned to read its captions").
    norm_groups: int = 32
    # CoordConv (Liu et al. 2018): two constant input channels, x and y from -1 (left, top) to
    # 1, appended last to the first convolution's input. The ADM UNet has no positional
    # input; at high noise, where the caption must decide where an object goes, it can tell
    # where it is only from the zero padding. Not in GLIDE (False keeps its architecture).
    coord_channels: bool = False
    # Space-to-depth (pixel unshuffle) by this factor before the first convolution and
    # depth-to-space after the last: the UNet's top level runs at image_size / patch_size
    # with patch_size**2 times the input and output channels, as ViT-style diffusion models
    # patchify (DiT, U-ViT use 2). attention_resolutions stay downsample rates of the image,
    # so the smallest is patch_size. Not in GLIDE (1 keeps its architecture).
    patch_size: int = 1
    # Width of the timestep embedding, which the caption's pooled feature (and the bag of
    # words) joins and every ResBlock reads through its scale and shift; None: 4 *
    # model_channels (ADM/GLIDE). Lets a UNet with a narrow full-resolution level keep a wide
    # embedding. Not in GLIDE (None keeps its architecture).
    embed_channels: int | None = None
    # A guided-distilled student (Meng et al. 2023): the classifier-free guidance scale is an
    # input, embedded as the timestep is and added to its embedding, so one pass gives the
    # guided output. Not in GLIDE (False keeps its architecture).
    guidance_embed: bool = False
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self) -> None:
        _check_positive(self, "image_size", "model_channels", "num_res_blocks", "in_channels", "patch_size")
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        if not self.channel_mult or min(self.channel_mult) <= 0:
            raise ValueError(f"channel_mult must be positive integers, got {self.channel_mult}")
        if self.image_size % (self.patch_size * 2 ** (len(self.channel_mult) - 1)):
            raise ValueError(
                f"image_size {self.image_size} is not divisible by the total downsampling "
                f"{self.patch_size} * 2**{len(self.channel_mult) - 1} of patch_size {self.patch_size} "
                f"and channel_mult {self.channel_mult}"
            )
        if self.embed_channels is not None and self.embed_channels <= 0:
            raise ValueError(
                f"embed_channels must be positive (or None: 4 * model_channels), got {self.embed_channels}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        widths = sorted({self.model_channels * m for m in self.channel_mult})
        if self.norm_groups < 1 or any(w % self.norm_groups for w in widths):
            raise ValueError(
                f"norm_groups must be a positive divisor of every level's width {widths}, got {self.norm_groups}"
            )
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {self.prediction!r}")
        if isinstance(self.text, dict):
            object.__setattr__(self, "text", TextConfig(**self.text))

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def first_conv_channels(self) -> int:
        """Input channels of the first convolution: x (``in_channels``), the inpainting and low-res
        conditions, coordinates."""
        extra = (
            (self.in_channels + 1 if self.inpaint else 0)
            + (self.in_channels if self.super_res else 0)
            + (2 if self.coord_channels else 0)
        )
        return self.in_channels + extra

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels if self.embed_channels is None else self.embed_channels

    @property
    def kind(self) -> str:
        return {
            (False, False): "base",
            (True, False): "upsample",
            (False, True): "inpaint",
            (True, True): "upsample-inpaint",
        }[(self.super_res, self.inpaint)]

    def heads_for(self, channels: int, upsample: bool = False) -> int:
        if self.num_head_channels != -1:
            if channels % self.num_head_channels:
                raise ValueError(f"{channels} channels are not divisible by num_head_channels={self.num_head_channels}")
            return channels // self.num_head_channels
        if upsample and self.num_heads_upsample != -1:
            return self.num_heads_upsample
        return self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        d = dict(d)
        text = TextConfig(**d.pop("text", {}))
        return cls(**d, text=text)

    @classmethod
    def from_glide_options(
        cls, options: dict[str, Any], *, n_vocab: int = 50257, tokenizer: str = "gpt2"
    ) -> UNetConfig:
        """Build from glide-text2im's option dict (``model_and_diffusion_defaults()``)."""
        size = int(options["image_size"])
        mult = options.get("channel_mult", "")
        if mult:
            channel_mult = tuple(int(m) for m in str(mult).split(","))
        else:
            channel_mult = _default_channel_mult(size)
        attention = tuple(size // int(r) for r in str(options["attention_resolutions"]).split(","))
        return cls(
            image_size=size,
            model_channels=int(options["num_channels"]),
            num_res_blocks=int(options["num_res_blocks"]),
            channel_mult=channel_mult,
            attention_resolutions=attention,
            num_head_channels=int(options["num_head_channels"]),
            num_heads=int(options["num_heads"]),
            num_heads_upsample=int(options["num_heads_upsample"]),
            dropout=float(options["dropout"]),
            use_scale_shift_norm=bool(options["use_scale_shift_norm"]),
            resblock_updown=bool(options["resblock_updown"]),
            super_res=bool(options.get("super_res", False)),
            inpaint=bool(options.get("inpaint", False)),
            text=TextConfig(
                context_length=int(options["text_ctx"]),
                width=int(options["xf_width"]),
                layers=int(options["xf_layers"]),
                heads=int(options["xf_heads"]),
                final_ln=bool(options["xf_final_ln"]),
                padding=bool(options["xf_padding"]),
                n_vocab=n_vocab,
                tokenizer=tokenizer,
            ),
        )


def _default_channel_mult(image_size: int) -> tuple[int, ...]:
    """glide-text2im's ``create_model`` defaults by resolution."""
    table = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
    if image_size not in table:
        raise ValueError(f"no default channel_mult for image_size {image_size}; give one")
    return table[image_size]


def _check_positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive integer, got {value!r}")
