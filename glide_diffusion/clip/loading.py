"""Building, saving and loading the noised CLIP.

Two formats:

- the released ``clip_image_enc.pt`` / ``clip_text_enc.pt`` (pickled state
  dicts of the two towers, official key names), read with
  ``torch.load(weights_only=True)`` through :func:`read_state_dict`, so a
  pickle that would run code is refused. They do not store ``logit_scale``;
  it is set from the config (log 100).
- the project's own: one ``.safetensors`` file with both towers
  (``image_encoder.*``, ``text_encoder.*``) and ``logit_scale``, the
  :class:`ClipConfig` as JSON in the metadata (``clip_config``).

Every state dict is checked against the model (missing keys, unexpected keys,
shapes) before any weight is copied.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from glide_diffusion.checkpoints import CheckpointError, atomic_write, check_state_dict, read_state_dict

from .config import ClipConfig, get_clip_preset
from .model import NoisedClip
from .tokenizer import ClipTokenizer, clip_tokenizer_for, shipped_clip_vocab

__all__ = ["CLIP_FORMAT", "build_clip", "save_clip", "load_clip", "load_clip_and_tokenizer"]

CLIP_FORMAT = "glide-diffusion-clip/1"
_RELEASED = ("clip-image-enc", "clip-text-enc")


def _config(config: ClipConfig | str | None) -> ClipConfig | None:
    return get_clip_preset(config) if isinstance(config, str) else config


def build_clip(config: ClipConfig | str = "released", *, device: torch.device | str = "cpu") -> NoisedClip:
    """A randomly initialised noised CLIP for a config or preset name (``"released"``, ``"tiny"``)."""
    with torch.device(device):
        return NoisedClip(_config(config))


def save_clip(path: str | os.PathLike, clip: NoisedClip, metadata: Mapping[str, str] | None = None) -> Path:
    """Write both towers, ``logit_scale`` and the config to ``path`` (.safetensors), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format": CLIP_FORMAT, "clip_config": clip.config.to_json(), **(metadata or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in clip.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def load_clip(
    image_source: str | os.PathLike = "clip-image-enc",
    text_source: str | os.PathLike = "clip-text-enc",
    *,
    config: ClipConfig | str | None = None,
    cache_dir: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> NoisedClip:
    """Build the noised CLIP and load its weights, float32, in eval mode.

    ``image_source`` / ``text_source`` are released names (``"clip-image-enc"``,
    ``"clip-text-enc"``: read from the download cache, see ``glide download``)
    or paths to ``.pt`` state dicts of the towers, or a bundled name
    (``"shapes-clip"``); ``config`` (a
    :class:`ClipConfig` or preset name, default ``"released"``) says what to
    build. A ``.safetensors`` ``image_source`` written by :func:`save_clip`
    holds the whole model and its config (``text_source`` must then be left
    at its default; ``config``, if given, overrides the saved one).

    Raises:
        FileNotFoundError: a released file is not in the cache (the message says how to get it).
        CheckpointError: unreadable or unsafe file, or keys/shapes that do not fit.
    """
    config = _config(config)
    from glide_diffusion.bundled import NAMES as BUNDLED
    from glide_diffusion.bundled import bundled_path

    if str(image_source) in BUNDLED:
        image_source = bundled_path(str(image_source))
        if not image_source.is_file():
            raise FileNotFoundError(f"this installation does not ship the bundled model {image_source.stem!r}")
    if Path(image_source).suffix == ".safetensors":
        if str(text_source) != "clip-text-enc":
            raise ValueError("a .safetensors CLIP file holds both towers; do not pass text_source with it")
        state, config = _read_own(Path(image_source), config)
        source = str(image_source)
    else:
        config = config or ClipConfig()
        image_path, text_path = (_resolve(s, cache_dir) for s in (image_source, text_source))
        image_state, _ = read_state_dict(image_path)
        text_state, _ = read_state_dict(text_path)
        with torch.device("meta"):
            probe = NoisedClip(config)
        check_state_dict(probe.image_encoder, image_state, str(image_path))
        check_state_dict(probe.text_encoder, text_state, str(text_path))
        state = {
            **{f"image_encoder.{k}": v for k, v in image_state.items()},
            **{f"text_encoder.{k}": v for k, v in text_state.items()},
            # not stored in the released files: log(logit_scale) in float32, as the official code
            "logit_scale": torch.tensor(math.log(config.logit_scale), dtype=torch.float32),
        }
        source = f"{image_path} + {text_path}"
    with torch.device("meta"):
        clip = NoisedClip(config)
    check_state_dict(clip, state, source)
    clip.load_state_dict(state, strict=True, assign=True)
    return clip.to(device=device, dtype=torch.float32).eval()


def _read_own(path: Path, config: ClipConfig | None) -> tuple[dict[str, torch.Tensor], ClipConfig]:
    from safetensors import safe_open

    state, _ = read_state_dict(path)  # raises CheckpointError on a corrupt file
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if config is None:
        if "clip_config" not in meta:
            raise CheckpointError(f"{path}: no clip_config in the metadata (not written by save_clip?); pass config=")
        config = ClipConfig.from_json(meta["clip_config"])
    return state, config


def _resolve(source: str | os.PathLike, cache_dir: str | os.PathLike | None) -> Path:
    if str(source) in _RELEASED:
        from glide_diffusion.hub.cache import find_released

        return find_released(str(source), cache_dir)
    return Path(source)


def load_clip_and_tokenizer(
    name: str,
    *,
    device: torch.device | str = "cpu",
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[NoisedClip, ClipTokenizer]:
    """A noised CLIP by name and its tokenizer: ``"released"`` (GLIDE's, its two towers fetched
    into the cache when missing, unless ``download`` is False), a bundled name (``"shapes-clip"``,
    ``"shapes-clip-rerank"``) or a ``.safetensors`` path written by :func:`save_clip`.

    The CLIP BPE file ships in the package; only an installation without it fetches ``clip-bpe``."""
    from glide_diffusion.hub.cache import released_path
    from glide_diffusion.hub.download import download_released

    need_bpe = shipped_clip_vocab() is None
    if name == "released":
        names = [*_RELEASED, *(["clip-bpe"] if need_bpe else [])]
        missing = [n for n in names if not released_path(n, cache_dir).exists()]
        if missing and download:
            download_released(missing, cache_dir)
        clip = load_clip(cache_dir=cache_dir, device=device)
    else:
        clip = load_clip(name, device=device)
    bpe = released_path("clip-bpe", cache_dir)
    vocab_dir = bpe.parent if need_bpe and bpe.exists() else None  # None: $GLIDE_VOCAB_DIR, shipped, cache
    return clip, clip_tokenizer_for(clip.config, vocab_dir)
