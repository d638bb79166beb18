"""Sharded, resumable sampling for evaluation (``glide eval sample``).

Image ``i`` (0 <= i < n) has caption ``captions[i % len(captions)]`` and the pipeline's seed
``seed + i``. Images are grouped in shards of ``shard_size`` consecutive indices, written to
``shard-00000.npz``, ``shard-00001.npz``, ...; the layout depends on (n, shard_size) only, never
on the number of processes, and process ``rank`` of ``world`` samples shards rank, rank + world, ...

A shard file is written atomically (temporary file, then rename) with fixed zip timestamps, so the
same images give the same bytes. A rerun skips every shard that loads and holds exactly the
expected indices and captions; a truncated or corrupt one is resampled (with a warning).
``request.json`` records what was asked; a rerun asking for something else is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoints import atomic_write, atomic_write_text

__all__ = [
    "SHARD_FORMAT",
    "DEFAULT_SHARD_SIZE",
    "Samples",
    "shard_name",
    "shard_ranges",
    "rank_shards",
    "write_shard",
    "shard_problem",
    "request_record",
    "sample_shards",
    "read_samples",
    "write_manifest",
]

SHARD_FORMAT = "glide-eval-shard/1"
DEFAULT_SHARD_SIZE = 100
REQUEST_FILE, MANIFEST_FILE = "request.json", "manifest.json"

# (captions, first seed) -> (uint8 images (B, H, W, 3), seeds (B,), settings dict)
SampleFn = Callable[[list[str], int], tuple[np.ndarray, Sequence[int], dict]]


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.npz"


def shard_ranges(n: int, shard_size: int) -> list[range]:
    """The global indices of each shard: consecutive runs of ``shard_size`` (the last may be shorter)."""
    if n < 1 or shard_size < 1:
        raise ValueError(f"need n >= 1 and shard_size >= 1, got n={n}, shard_size={shard_size}")
    return [range(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def rank_shards(num_shards: int, rank: int, world: int) -> list[int]:
    """The shards process ``rank`` of ``world`` samples: rank, rank + world, ..."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} not in [0, {world})")
    return list(range(rank, num_shards, world))


def _captions_of(captions: Sequence[str], indices: range) -> list[str]:
    return [captions[i % len(captions)] for i in indices]


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an .npz with fixed timestamps (same arrays -> same bytes), atomically."""
    from numpy.lib import format as npy

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            for key in sorted(arrays):
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with z.open(info, "w", force_zip64=True) as f:
                    npy.write_array(f, np.asanyarray(arrays[key]), allow_pickle=False)

    atomic_write(path, write)
    return path


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def shard_problem(path: Path, indices: range, captions: Sequence[str]) -> str | None:
    """Why the shard at ``path`` is not the complete shard of ``indices`` with ``captions``; None if it is."""
    if not path.is_file():
        return "missing"
    try:
        z = _load(path)
    except Exception as e:
        return f"unreadable ({type(e).__name__}: {e})"
    need = {"format", "images", "captions", "indices", "seeds", "settings"}
    if not need <= set(z):
        return f"missing arrays {sorted(need - set(z))}"
    if str(z["format"]) != SHARD_FORMAT:
        return f"format {str(z['format'])!r}, expected {SHARD_FORMAT!r}"
    n = len(indices)
    images = z["images"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != n or images.shape[-1] != 3:
        return f"images {images.dtype} {images.shape}, expected {n} uint8 images (N, H, W, 3)"
    if z["indices"].tolist() != list(indices):
        return "indices differ from the shard's"
    if z["captions"].tolist() != list(captions):
        return "captions differ from the caption list's"
    if len(z["seeds"]) != n:
        return f"{len(z['seeds'])} seeds for {n} images"
    return None


def request_record(request: dict, captions: Sequence[str], n: int, seed: int, shard_size: int) -> dict:
    """What ``request.json`` holds for this request (a rerun must match it)."""
    digest = hashlib.sha256("\n".join(captions).encode("utf-8")).hexdigest()
    return {
        "format": SHARD_FORMAT,
        "n": n,
        "seed": seed,
        "shard_size": shard_size,
        "captions": len(captions),
        "captions_sha256": digest,
        **request,
    }


def _check_request(out: Path, record: dict) -> None:
    """Refuse a folder that holds samples of another request; else record this one."""
    path = out / REQUEST_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old is not None and old != record:
            keys = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
            raise ValueError(
                f"{out} holds samples of another request (differs in {', '.join(keys)}); "
                "choose another -o/--output or remove that folder"
            )
    else:
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def sample_shards(
    sample_fn: SampleFn,
    captions: Sequence[str],
    out: str | os.PathLike,
    *,
    n: int,
    seed: int = 0,
    shard_size: int = DEFAULT_SHARD_SIZE,
    rank: int = 0,
    world: int = 1,
    request: dict | None = None,
    progress: bool = True,
) -> list[Path]:
    """Sample this process's shards of ``n`` images into ``out`` (skipping complete ones) and return
    every shard path of this process, in order. ``request``: settings that must match on a rerun."""
    out = Path(out)
    captions = list(captions)
    if not captions:
        raise ValueError("no captions")
    ranges = shard_ranges(n, shard_size)
    out.mkdir(parents=True, exist_ok=True)
    _check_request(out, request_record(request or {}, captions, n, seed, shard_size))
    mine = rank_shards(len(ranges), rank, world)
    todo, paths = [], []
    for k in mine:
        path = out / shard_name(k)
        paths.append(path)
        problem = shard_problem(path, ranges[k], _captions_of(captions, ranges[k]))
        if problem is not None:
            if problem != "missing":
                warnings.warn(f"{path} is incomplete or corrupt ({problem}); sampling it again")
            todo.append(k)
    total = sum(len(ranges[k]) for k in mine)
    done = total - sum(len(ranges[k]) for k in todo)
    bar = _bar(total, done, rank, world, progress)
    for k in todo:
        idx = ranges[k]
        rows = _captions_of(captions, idx)
        images, seeds, settings = sample_fn(rows, seed + idx.start)
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.shape[0] != len(idx):
            raise ValueError(f"the sampler returned {images.dtype} {images.shape} for {len(idx)} images")
        write_shard(
            out / shard_name(k),
            {
                "format": np.array(SHARD_FORMAT),
                "images": images,
                "captions": np.array(rows),
                "indices": np.arange(idx.start, idx.stop, dtype=np.int64),
                "seeds": np.asarray(seeds, dtype=np.int64),
                "settings": np.array(json.dumps(settings, sort_keys=True)),
            },
        )
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return paths


def _bar(total: int, done: int, rank: int, world: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    desc = "sampling" if world == 1 else f"sampling [rank {rank}/{world}]"
    return tqdm(total=total, initial=done, unit="img", desc=desc, position=rank, dynamic_ncols=True)


@dataclass
class Samples:
    """The images of a samples folder, in index order."""

    images: np.ndarray  # (N, H, W, 3) uint8
    captions: list[str]
    seeds: np.ndarray  # (N,) int64
    settings: dict  # the first shard's (per-shard fields such as the seed differ)
    request: dict  # request.json

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])


def _read_request(folder: Path) -> dict:
    path = folder / REQUEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {REQUEST_FILE}: not a folder written by glide eval sample")
    return json.loads(path.read_text(encoding="utf-8"))


def shard_shapes(folder: str | os.PathLike) -> tuple[int, int]:
    """(image count, resolution) of a samples folder from its request and first shard's header, without
    loading the images (for checks before any work)."""
    folder = Path(folder)
    request = _read_request(folder)
    first = folder / shard_name(0)
    try:
        with np.load(first, allow_pickle=False, mmap_mode="r") as z:
            shape = z["images"].shape
    except Exception as e:
        raise ValueError(f"{first}: not readable ({e}); rerun glide eval sample to resample it") from None
    return int(request["n"]), int(shape[1])


def read_samples(folder: str | os.PathLike) -> Samples:
    """Every shard of a samples folder, each checked against the request: a missing, truncated or
    corrupt shard is an error (never silently left out); rerun ``glide eval sample`` to resample it."""
    folder = Path(folder)
    request = _read_request(folder)
    ranges = shard_ranges(int(request["n"]), int(request["shard_size"]))
    images, captions, seeds, settings = [], [], [], None
    for k, idx in enumerate(ranges):
        path = folder / shard_name(k)
        try:
            z = _load(path)
            rows = z["captions"].tolist()
        except Exception as e:
            raise ValueError(
                f"{path}: missing or unreadable ({type(e).__name__}); rerun glide eval sample "
                f"with the same options to resample it"
            ) from None
        problem = shard_problem(path, idx, rows)
        if problem is not None:
            raise ValueError(f"{path}: {problem}; rerun glide eval sample with the same options to resample it")
        images.append(z["images"])
        captions.extend(rows)
        seeds.append(z["seeds"])
        settings = settings or json.loads(str(z["settings"]))
    shapes = {im.shape[1:] for im in images}
    if len(shapes) > 1:
        raise ValueError(f"{folder}: shards of different image sizes {sorted(shapes)}")
    return Samples(np.concatenate(images), captions, np.concatenate(seeds), settings or {}, request)


def write_manifest(folder: str | os.PathLike, world: int, seconds: float | None = None) -> Path:
    """Check every shard and write ``manifest.json`` (rank 0, after all processes finished)."""
    folder = Path(folder)
    samples = read_samples(folder)
    record = {
        "request": samples.request,
        "images": len(samples.captions),
        "resolution": samples.resolution,
        "shards": [
            shard_name(k) for k in range(len(shard_ranges(samples.request["n"], samples.request["shard_size"])))
        ],
        "processes": world,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if seconds is not None:
        record["seconds"] = round(seconds, 3)
    path = folder / MANIFEST_FILE
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return path
