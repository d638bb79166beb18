"""Where downloaded files live on disk.

Layout under the cache directory::

    <cache>/checkpoints/<file_name>   released model files (base.pt, ...)
    <cache>/vocab/<file_name>         tokenizer files (encoder.json, vocab.bpe, ...)
    <cache>/eval/<file_name>          evaluation networks (inception-2015-12-05.pt)
"""

from __future__ import annotations

import os
from pathlib import Path

from glide_diffusion.hub.released import RELEASED, resolve_names

__all__ = ["CACHE_ENV", "cache_dir", "released_path", "find_released"]

CACHE_ENV = "GLIDE_CACHE_DIR"

_SUBDIRS = {"model": "checkpoints", "vocab": "vocab", "eval": "eval"}


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The cache root: ``override``, else ``$GLIDE_CACHE_DIR``, else the user cache dir.

    The directory is not created here.
    """
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("glide-diffusion"))


_cache_root = cache_dir  # for functions whose ``cache_dir`` argument shadows it


def released_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the released file ``name`` lives, whether or not it exists yet.

    Raises:
        ValueError: if ``name`` is not a single released file.
    """
    if name not in RELEASED:
        resolve_names([name])  # raises ValueError listing the valid names
        raise ValueError(f"{name!r} names a group of files; name one file")
    rf = RELEASED[name]
    return _cache_root(cache_dir) / _SUBDIRS[rf.kind] / rf.file_name


def find_released(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of the released file ``name`` if it is in the cache.

    Raises:
        FileNotFoundError: with the path to put the file at by hand, the
            official URL, and the command that downloads it.
    """
    path = released_path(name, cache_dir)
    if path.is_file():
        return path
    rf = RELEASED[name]
    raise FileNotFoundError(
        f"GLIDE file {name!r} ({rf.description}) is missing: {path} does not exist.\n"
        f"Download it with:\n    glide download {name}\n"
        f"or fetch it by hand from\n    {rf.url}\n"
        f"and put it at\n    {path}"
    )
