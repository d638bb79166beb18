"""Writing samples: PNGs whose text chunks record how each image was made, and an .npz."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..checkpoints import atomic_write


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:limit].rstrip("-") or "untitled"


def save_png(image: Image.Image, path: Path, chunks: dict[str, str], *, overwrite: bool = True) -> Path:
    """Save ``image`` with tEXt/iTXt chunks, atomically (write, then rename). ``overwrite=False``:
    where ``path`` is taken, the first free ``<stem>-2.png``, ``<stem>-3.png``, ... instead."""
    info = PngInfo()
    for key, value in chunks.items():
        info.add_itxt(key, value)
    return _write_new(Path(path), lambda tmp: image.save(tmp, format="PNG", pnginfo=info), overwrite)


def _write_new(path: Path, write, overwrite: bool) -> Path:
    """``atomic_write`` to ``path``, or without ``overwrite`` to the first free name from it; the path written."""
    candidate = path
    for n in itertools.count(2):
        try:
            atomic_write(candidate, write, overwrite=overwrite)
            return candidate
        except FileExistsError:
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    raise AssertionError("unreachable")


def sample_name(prompt: str, index: int, seed: int, settings: dict, suffix: str = "") -> str:
    """``<caption>-<hash>-<index>-seed<seed><suffix>.png``: the hash (of the whole caption and the
    settings) tells apart captions that share their first 40 characters and runs with other settings;
    the index is the image's place in the request (best-of-N keeps seeds that are not consecutive)."""
    made = {k: v for k, v in settings.items() if k != "clip_rerank"}  # how it was asked for, not its scores
    key = json.dumps({"prompt": prompt, "settings": made}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{slug(prompt)}-{digest}-{index}-seed{seed}{suffix}.png"


def check_writable_dir(path: Path) -> None:
    """Raise OSError unless ``path`` is a folder this process can write in, or one it can create
    (nothing is left behind: the probe file is removed and no folder is made)."""
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a folder")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"cannot make the folder {path}: {existing} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".glide-probe-", dir=existing)
    except OSError as e:
        raise PermissionError(f"cannot write in {existing}: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)


def save_samples(
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    seeds: Sequence[int],
    settings: dict,
    out_dir: str | os.PathLike,
    *,
    suffix: str = "",
    overwrite: bool = False,
) -> list[Path]:
    """Write one PNG per image into ``out_dir`` (names: :func:`sample_name`); a file already there
    is kept and the new one takes the next free name, unless ``overwrite``."""
    out = Path(out_dir)
    paths = []
    for index, (image, prompt, seed) in enumerate(zip(images, prompts, seeds)):
        chunks = {
            "prompt": prompt,
            "seed": str(seed),
            "model": str(settings.get("upsample_model") or settings.get("base_model")),
            "settings": json.dumps(settings, sort_keys=True),
            "Software": "glide-diffusion",
        }
        terms = (settings.get("terms") or {}).get(prompt)
        if terms:  # a composed prompt: its parsed terms (text, weight), also under settings["terms"]
            chunks["terms"] = json.dumps(terms)
        paths.append(
            save_png(image, out / sample_name(prompt, index, seed, settings, suffix), chunks, overwrite=overwrite)
        )
    return paths


def save_npz(
    path: str | os.PathLike,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    seeds: Sequence[int],
    settings: dict,
    *,
    overwrite: bool = True,
) -> Path:
    """All images as one uint8 array (N, H, W, 3) with prompts, seeds and settings; the path written
    (``overwrite=False``: the next free name where ``path`` is taken)."""
    arrays = {
        "images": np.stack([np.asarray(im) for im in images]),
        "prompts": np.array(list(prompts)),
        "seeds": np.array(list(seeds), dtype=np.int64),
        "settings": np.array(json.dumps(settings, sort_keys=True)),
    }
    path = Path(path)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy stub: **kwds could bind allow_pickle

    return _write_new(path, write, overwrite)
