"""Configuration of GLIDE's noised CLIP (image and text encoders).

Field names are those of glide-text2im's ``clip/config.yaml``, so a config
from there (or from the reference data) maps onto :class:`ClipConfig` with
``ClipConfig(**values)``. Defaults are the released model's values.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

__all__ = ["ClipConfig", "CLIP_PRESETS", "get_clip_preset"]


@dataclass(frozen=True)
class ClipConfig:
    """Noised CLIP: a ViT on noisy 64x64 images (timestep token) and a causal text transformer."""

    logit_scale: float = 100.0  # config.yaml; stored as log(100) in a float32 parameter
    beta_schedule: str = "squaredcos_cap_v2"  # config.yaml: the noise the image encoder was trained on
    n_timesteps: int = 1000  # config.yaml: rows of the timestep embedding w_t
    image_size: int = 64  # config.yaml
    patch_size: int = 4  # config.yaml: 16x16 patches + 1 timestep token = 257 tokens
    n_vocab: int = 65536  # config.yaml (the tokenizer only produces ids < 49408)
    max_text_len: int = 77  # config.yaml: text context
    n_embd: int = 512  # config.yaml: shared embedding width
    n_head_state_text: int = 64  # config.yaml: text head width
    n_head_text: int = 8  # config.yaml: text width 8 x 64 = 512
    n_xf_blocks_text: int = 12  # config.yaml
    n_head_state_image: int = 64  # config.yaml: image head width
    n_head_image: int = 12  # config.yaml: image width 12 x 64 = 768
    n_xf_blocks_image: int = 12  # config.yaml
    # Not in config.yaml: the text tokenizer. "clip" is CLIP's BPE (49408 ids, a vocab file);
    # "shapes" is the file-free Shapes word vocabulary with start/end ids (296 ids).
    tokenizer: str = "clip"
    # Not in config.yaml: the image encoder was trained on timesteps t < max_timestep (0: all
    # n_timesteps, as the released one). Training draws t uniformly below it; CLIP guidance is
    # off at t >= it, where the encoder has not learned to read the image.
    max_timestep: int = 0
    # Not in config.yaml: add a learned vector per caption token (start and end included,
    # padding not), summed, to the text tower's pooled end-token feature. As the Shapes base
    # model's text.bag_of_words: the pooled feature of the causal tower alone hardly reads the
    # shape word (configs/clip-shapes.toml).
    bag_of_words: bool = False

    def __post_init__(self) -> None:
        for name in (
            "n_timesteps",
            "image_size",
            "patch_size",
            "n_vocab",
            "max_text_len",
            "n_embd",
            "n_head_state_text",
            "n_head_text",
            "n_xf_blocks_text",
            "n_head_state_image",
            "n_head_image",
            "n_xf_blocks_image",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ClipConfig.{name} must be a positive integer, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        if self.max_text_len < 2:
            raise ValueError("max_text_len must leave room for the start and end tokens (>= 2)")
        if self.tokenizer not in ("clip", "shapes"):
            raise ValueError(f"ClipConfig.tokenizer must be 'clip' or 'shapes', got {self.tokenizer!r}")
        if not isinstance(self.max_timestep, int) or not 0 <= self.max_timestep <= self.n_timesteps:
            raise ValueError(
                f"ClipConfig.max_timestep must be 0 (all) or in 1..{self.n_timesteps}, got {self.max_timestep!r}"
            )
        if not isinstance(self.bag_of_words, bool):
            raise ValueError(f"ClipConfig.bag_of_words must be true or false, got {self.bag_of_words!r}")
        if not self.logit_scale > 0:
            raise ValueError(f"logit_scale must be positive, got {self.logit_scale!r}")

    @property
    def text_width(self) -> int:
        return self.n_head_text * self.n_head_state_text

    @property
    def image_width(self) -> int:
        return self.n_head_image * self.n_head_state_image

    @property
    def n_image_context(self) -> int:
        """Timestep token + patches."""
        return 1 + (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClipConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ClipConfig fields: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> ClipConfig:
        return cls.from_dict(json.loads(s))


CLIP_PRESETS: dict[str, ClipConfig] = {
    # glide-text2im clip/config.yaml: the released clip_image_enc.pt / clip_text_enc.pt.
    "released": ClipConfig(),
    # For tests and small experiments: 16 px images (17 image tokens), 16-token text, the
    # full CLIP BPE vocabulary (49408 ids) so the real tokenizer can feed it.
    "tiny": ClipConfig(
        image_size=16,
        patch_size=4,
        n_vocab=49408,
        max_text_len=16,
        n_embd=16,
        n_head_state_text=8,
        n_head_text=2,
        n_xf_blocks_text=2,
        n_head_state_image=8,
        n_head_image=2,
        n_xf_blocks_image=2,
    ),
    # The bundled Shapes CLIP: 32 px images (8x8 patches of 4 px + the timestep token), the
    # Shapes word tokenizer, 4+4 blocks of width 128 (~1.7 M parameters); the same noise
    # schedule as the Shapes base model it guides. Trained on t < 500 only: on that schedule a
    # 32 px Shapes image is pure noise above t ~ 600 (docs/results.md, "The noised CLIPs").
    "shapes": ClipConfig(
        image_size=32,
        patch_size=4,
        n_vocab=296,
        max_text_len=24,
        n_embd=128,
        n_head_state_text=32,
        n_head_text=4,
        n_xf_blocks_text=4,
        n_head_state_image=32,
        n_head_image=4,
        n_xf_blocks_image=4,
        tokenizer="shapes",
        beta_schedule="linear",
        max_timestep=500,
    ),
}


def get_clip_preset(name: str) -> ClipConfig:
    if name not in CLIP_PRESETS:
        raise ValueError(f"unknown CLIP preset {name!r}; known: {', '.join(sorted(CLIP_PRESETS))}")
    return CLIP_PRESETS[name]
