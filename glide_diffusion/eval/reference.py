"""Reference statistics on disk: a :class:`~.stats.FeatureStats` as one ``.npz``, computed once.

Format ``glide-eval-stats/1`` (``np.savez``, no pickles; load with ``allow_pickle=False``):

| key          | value                                                            |
|--------------|------------------------------------------------------------------|
| format       | "glide-eval-stats/1"                                             |
| extractor    | extractor name, e.g. "inception-2015-12-05", "shapes-clip-rerank" |
| dim          | feature width D (int64)                                          |
| n            | images the statistics cover (int64)                              |
| resolution   | image side in pixels (int64; 0 = unknown)                        |
| mean         | (D,) float64                                                     |
| cov          | (D, D) float64, unbiased                                         |
| features     | (M, D) float32, a uniform sample of the features (KID, P&R, D&C)  |
| description  | free text: which images (data set, split, seed, count)           |

Written atomically (``checkpoints.atomic_write``). :func:`load_stats` checks the extractor name,
width and resolution against what the caller will compare them with, so a mismatch fails before
any image is generated or featurised.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from glide_diffusion.checkpoints import atomic_write

from .stats import FeatureStats

__all__ = ["STATS_FORMAT", "save_stats", "load_stats", "check_stats"]

STATS_FORMAT = "glide-eval-stats/1"


def save_stats(path: str | os.PathLike, stats: FeatureStats, description: str = "") -> Path:
    """Write ``stats`` to ``path`` (.npz), atomically; returns the path."""
    path = Path(path)
    arrays = {
        "format": np.array(STATS_FORMAT),
        "extractor": np.array(stats.extractor),
        "dim": np.array(stats.dim, dtype=np.int64),
        "n": np.array(stats.n, dtype=np.int64),
        "resolution": np.array(stats.resolution, dtype=np.int64),
        "mean": stats.mean.astype(np.float64),
        "cov": stats.cov.astype(np.float64),
        "features": stats.features.astype(np.float32),
        "description": np.array(description),
    }

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy stub: **kwds could bind allow_pickle

    atomic_write(path, write)
    return path


def check_stats(
    stats: FeatureStats,
    *,
    extractor: str | None = None,
    dim: int | None = None,
    resolution: int | None = None,
    source: str = "reference statistics",
) -> None:
    """ValueError unless ``stats`` were made by ``extractor`` with width ``dim`` from images of
    ``resolution`` px (each check skipped when None; a recorded resolution of 0 matches any)."""
    if extractor is not None and stats.extractor != extractor:
        raise ValueError(f"{source} were computed with the extractor {stats.extractor!r}, not {extractor!r}")
    if dim is not None and stats.dim != dim:
        raise ValueError(f"{source} have {stats.dim}-d features, the extractor gives {dim}-d")
    if resolution is not None and stats.resolution and stats.resolution != resolution:
        raise ValueError(f"{source} are of {stats.resolution} px images; these images are {resolution} px")


def load_stats(
    path: str | os.PathLike, *, extractor: str | None = None, dim: int | None = None, resolution: int | None = None
) -> FeatureStats:
    """Read statistics written by :func:`save_stats`, checked as :func:`check_stats` says."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        if "format" not in z.files or str(z["format"]) != STATS_FORMAT:
            raise ValueError(f"{path} is not a {STATS_FORMAT} statistics file")
        stats = FeatureStats(
            str(z["extractor"]), int(z["dim"]), int(z["n"]), z["mean"], z["cov"], z["features"], int(z["resolution"])
        )
    check_stats(stats, extractor=extractor, dim=dim, resolution=resolution, source=str(path))
    return stats
