"""Released GLIDE files: registry, cache layout and a resumable downloader."""

from glide_diffusion.hub.cache import cache_dir, find_released, released_path
from glide_diffusion.hub.download import (
    DownloadError,
    cli_download,
    download_file,
    download_released,
)
from glide_diffusion.hub.released import GROUPS, RELEASED, ReleasedFile, resolve_names

__all__ = [
    "GROUPS",
    "RELEASED",
    "DownloadError",
    "ReleasedFile",
    "cache_dir",
    "cli_download",
    "download_file",
    "download_released",
    "find_released",
    "released_path",
    "resolve_names",
]
