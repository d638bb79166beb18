"""Writing samples: PNGs whose text chunks record how each image was made, and an .npz."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..checkpoints import atomic_write


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "untitled"


def save_png(image: Image.Image, path: Path, chunks: dict[str, str]) -> Path:
    """Save ``image`` with tEXt/iTXt chunks, atomically (write, then rename)."""
    info = PngInfo()
    for key, value in chunks.items():
        info.add_itxt(key, value)
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG", pnginfo=info))
    return Path(path)


def save_samples(
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    seeds: Sequence[int],
    settings: dict,
    out_dir: str | os.PathLike,
    *,
    suffix: str = "",
) -> list[Path]:
    """Write one PNG per image into ``out_dir``; names carry the prompt and seed."""
    out = Path(out_dir)
    paths = []
    for image, prompt, seed in zip(images, prompts, seeds):
        chunks = {
            "prompt": prompt,
            "seed": str(seed),
            "model": str(settings.get("upsample_model") or settings.get("base_model")),
            "settings": json.dumps(settings, sort_keys=True),
            "Software": "glide-diffusion",
        }
        paths.append(save_png(image, out / f"{slug(prompt)}-{seed}{suffix}.png", chunks))
    return paths


def save_npz(path: str | os.PathLike, images: Sequence[Image.Image], prompts: Sequence[str],
             seeds: Sequence[int], settings: dict) -> Path:
    """All images as one uint8 array (N, H, W, 3) with prompts, seeds and settings."""
    arrays = {
        "images": np.stack([np.asarray(im) for im in images]),
        "prompts": np.array(list(prompts)),
        "seeds": np.array(list(seeds), dtype=np.int64),
        "settings": np.array(json.dumps(settings, sort_keys=True)),
    }
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
    return path
