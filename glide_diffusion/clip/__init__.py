"""GLIDE's noised CLIP: image encoder on noisy images (timestep token), causal
text encoder, its BPE tokenizer, and loading of the released weights."""

from .config import CLIP_PRESETS, ClipConfig, get_clip_preset
from .loading import build_clip, load_clip, load_clip_and_tokenizer, save_clip
from .model import ImageEncoder, NoisedClip, TextEncoder, normalize_embeddings
from .tokenizer import ClipTokenizer, clip_tokenize_batch, find_clip_vocab, load_clip_tokenizer

__all__ = [
    "CLIP_PRESETS",
    "ClipConfig",
    "ClipTokenizer",
    "ImageEncoder",
    "NoisedClip",
    "TextEncoder",
    "build_clip",
    "clip_tokenize_batch",
    "find_clip_vocab",
    "get_clip_preset",
    "load_clip",
    "load_clip_and_tokenizer",
    "load_clip_tokenizer",
    "normalize_embeddings",
    "save_clip",
]
