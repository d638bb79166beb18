"""Random-access image-caption datasets: an image folder and a CSV/JSONL manifest.

Both are index streams (the resumable contract every training dataset keeps):

* Global sample ``n`` of a source with ``N`` items is item ``perm_e[n % N]``
  of epoch ``e = n // N``; ``perm_e`` is a permutation seeded by
  ``(seed, e)`` (identity when ``shuffle=False``). The stream is endless
  unless ``epochs`` is set, in which case it stops at ``n = epochs * N``.
* Rank ``r`` of ``W`` yields ``start + r, start + r + W, ...``; under a
  DataLoader the rank's share is dealt round-robin to its workers. So worker
  ``w`` of ``K`` on rank ``r`` is consumer ``c = r + W * w`` of ``C = W * K``
  and yields ``n = start + c + C * m``.

Resuming with the global position ``start`` is exact, on any number of ranks
or workers. Skipped (bad) samples keep their index, so each yielded item
carries ``"index"`` (its global ``n``) and ``"key"`` (its file path) besides
``"image"`` and ``"caption"``; skips are counted in ``dataset.stats``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from collections.abc import Iterator, Sequence
from pathlib import Path

import fsspec
import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .images import BadSample, ImageSource, SkipStats, decode_item, read_bytes

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_COLUMNS = ("image", "path", "file_name")  # tried in this order
CAPTION_COLUMNS = ("caption", "text")


# ---------------------------------------------------------------- index stream


def consumer_slot(rank: int, world_size: int) -> tuple[int, int]:
    """This process's consumer index ``c = rank + world_size * worker`` and count ``C``."""
    info = get_worker_info()
    worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
    return rank + world_size * worker, world_size * num_workers


def global_indices(start: int, consumer: int, num_consumers: int, stop: int | None) -> Iterator[int]:
    """``start + consumer + num_consumers * m`` for m = 0, 1, ... below ``stop``."""
    n = start + consumer
    while stop is None or n < stop:
        yield n
        n += num_consumers


def epoch_permutation(num_items: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Item order of one epoch: a permutation seeded by ``(seed, epoch)``."""
    if not shuffle:
        return np.arange(num_items)
    return np.random.default_rng([seed, epoch]).permutation(num_items)


def flip_coin(seed: int, *position: int) -> bool:
    """A fair coin that depends only on ``seed`` and the sample position."""
    return bool(np.random.default_rng([seed, *position, 0xF11B]).random() < 0.5)


def check_stream_args(resolution: int, rank: int, world_size: int, start: int, low_res: int | None) -> None:
    """Fail early on arguments no stream can honour."""
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if low_res is not None and not 0 < low_res <= resolution:
        raise ValueError(f"low_res must be in (0, {resolution}], got {low_res}")


class IndexedImageDataset(IterableDataset):
    """Index-stream base: subclasses fill ``self.items`` and implement :meth:`read_item`.

    Args:
        resolution: output side R; images are (3, R, R) in [-1, 1].
        seed: seeds the per-epoch permutations (and flips).
        rank, world_size: this process's share of the stream.
        start: global sample position already consumed (resume point).
        size: use only the first ``size`` items of the (sorted) source.
        shuffle: permute each epoch; ``False`` gives source order.
        epochs: stop after this many epochs; ``None`` streams forever.
        random_flip: mirror half the images left-right. Off by default:
            captions say "left" and "right", and a flip makes them lie.
        low_res: also yield ``"low_res"``, the image box-downsampled to this size.
        max_pixels: skip images with more pixels (default: PIL's bomb limit).
    """

    def __init__(
        self,
        resolution: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        size: int | None = None,
        shuffle: bool = True,
        epochs: int | None = None,
        random_flip: bool = False,
        low_res: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        super().__init__()
        check_stream_args(resolution, rank, world_size, start, low_res)
        self.resolution = resolution
        self.seed, self.rank, self.world_size, self.start = seed, rank, world_size, start
        self.size, self.shuffle, self.epochs = size, shuffle, epochs
        self.random_flip, self.low_res, self.max_pixels = random_flip, low_res, max_pixels
        self.items: Sequence = []
        self.stats = SkipStats()  # reason -> count; per process (each worker has its own)

    def _set_items(self, items: Sequence, source: str) -> None:
        """Keep the first ``size`` items; an empty source is an error."""
        if not items:
            raise ValueError(f"no usable images found in {source}")
        self.items = items[: self.size] if self.size is not None else items

    @property
    def num_items(self) -> int:
        """Items per epoch, ``N``."""
        return len(self.items)

    def read_item(self, item) -> tuple[ImageSource, str, str]:
        """``(image path or bytes, caption, key)`` for one item; may raise BadSample."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[dict]:
        num = self.num_items
        consumer, num_consumers = consumer_slot(self.rank, self.world_size)
        stop = None if self.epochs is None else self.epochs * num
        epoch, perm = -1, np.arange(0)  # set at the first index (epoch >= 0)
        for n in global_indices(self.start, consumer, num_consumers, stop):
            if n // num != epoch:
                epoch = n // num
                perm = epoch_permutation(num, self.seed, epoch, self.shuffle)
            out = self._load(n, self.items[perm[n % num]])
            if out is not None:
                yield out

    def _load(self, n: int, item) -> dict | None:
        """Decode global sample ``n``; ``None`` (counted) when it is bad."""
        try:
            src, caption, key = self.read_item(item)
        except BadSample as exn:
            self.stats.note(exn.reason, str(exn))
            return None
        out = decode_item(
            src,
            caption,
            resolution=self.resolution,
            stats=self.stats,
            detail=key,
            low_res=self.low_res,
            flip=self.random_flip and flip_coin(self.seed, n),
            max_pixels=self.max_pixels,
        )
        if out is not None:
            out.update(key=key, index=n)
        return out


# ---------------------------------------------------------------- folder


def find_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, case-insensitive extensions), sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def read_caption_file(path: Path) -> str:
    """UTF-8 caption next to an image, stripped; empty files give ``""``."""
    try:
        return path.read_text(encoding="utf-8-sig").strip()
    except FileNotFoundError as exn:
        raise BadSample("missing_caption", str(path)) from exn
    except (UnicodeDecodeError, OSError) as exn:
        raise BadSample("bad_caption", f"{path}: {exn}") from exn


class ImageFolderDataset(IndexedImageDataset):
    """Images found recursively under ``root``, each captioned by ``STEM.txt``.

    Extensions: jpg, jpeg, png, webp, bmp, gif, tif, tiff. A missing caption
    file skips the image (``missing_caption``); an empty one is a valid empty
    caption (useful for classifier-free guidance's unconditional samples).
    ``key`` is the path relative to ``root``. Keyword args: see
    :class:`IndexedImageDataset`.
    """

    def __init__(self, root: str | os.PathLike, resolution: int, **kwargs) -> None:
        super().__init__(resolution, **kwargs)
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"image folder {self.root} does not exist or is not a directory")
        self._set_items(find_images(self.root), f"folder {self.root} (extensions {IMAGE_EXTENSIONS})")

    def read_item(self, item: Path) -> tuple[ImageSource, str, str]:
        key = item.relative_to(self.root).as_posix()
        return item, read_caption_file(item.with_suffix(".txt")), key


# ---------------------------------------------------------------- manifest


def _read_text(path: str) -> str:
    """Whole text of a local path or fsspec URL."""
    with fsspec.open(path, "r", encoding="utf-8-sig") as f:
        return f.read()


def read_manifest_rows(path: str, stats: SkipStats) -> list[dict]:
    """Rows of a ``.csv`` (header row) or ``.jsonl``/``.json`` lines manifest.

    Malformed JSON lines are counted as ``bad_manifest_row`` and dropped.
    """
    text = _read_text(path)
    if path.lower().endswith(".csv"):
        return list(csv.DictReader(io.StringIO(text)))
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exn:
            stats.note("bad_manifest_row", f"{path}:{lineno}: {exn}")
            continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            stats.note("bad_manifest_row", f"{path}:{lineno}: not an object")
    return rows


def pick_column(rows: list[dict], wanted: str | None, candidates: Sequence[str], role: str, path: str) -> str:
    """The column to use for ``role``: ``wanted`` or the first candidate present."""
    columns = {k for row in rows for k in row if k is not None}
    options = [wanted] if wanted is not None else list(candidates)
    for name in options:
        if name in columns:
            return name
    raise ValueError(f"manifest {path} has no {role} column (looked for {options}; columns are {sorted(columns)})")


def _join(root: str, rel: str) -> str:
    """Resolve ``rel`` against ``root`` (a folder path or URL); absolute stays."""
    if "://" in rel or os.path.isabs(rel):
        return rel
    if "://" in root:
        return posixpath.join(root, rel)
    return os.path.join(root, rel)


def _manifest_dir(path: str) -> str:
    """The folder holding the manifest, as a path or URL."""
    return posixpath.dirname(path) if "://" in path else os.path.dirname(os.path.abspath(path))


class ManifestDataset(IndexedImageDataset):
    """Image-caption pairs listed in a CSV or JSONL manifest.

    Columns default to the first of ``image``/``path``/``file_name`` and of
    ``caption``/``text``. Relative image paths resolve against ``image_root``
    (default: the manifest's folder); paths and the manifest may be fsspec
    URLs. A row without a caption (missing key, JSON null, short CSV row) is
    skipped as ``missing_caption``; an empty string is a valid caption.
    ``key`` is the image path as written in the manifest. Keyword args: see
    :class:`IndexedImageDataset`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resolution: int,
        *,
        image_root: str | os.PathLike | None = None,
        image_column: str | None = None,
        caption_column: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(resolution, **kwargs)
        self.path = os.fspath(path)
        try:
            rows = read_manifest_rows(self.path, self.stats)
        except FileNotFoundError as exn:
            raise ValueError(f"manifest {self.path} not found") from exn
        if not rows:
            raise ValueError(f"manifest {self.path} has no rows")
        self.image_column = pick_column(rows, image_column, IMAGE_COLUMNS, "image", self.path)
        self.caption_column = pick_column(rows, caption_column, CAPTION_COLUMNS, "caption", self.path)
        self.image_root = os.fspath(image_root) if image_root is not None else _manifest_dir(self.path)
        pairs = [(row.get(self.image_column), row.get(self.caption_column)) for row in rows]
        self._set_items(pairs, f"manifest {self.path}")

    def read_item(self, item: tuple) -> tuple[ImageSource, str, str]:
        rel, caption = item
        if not rel:
            raise BadSample("missing_image", f"{self.path}: row without {self.image_column!r}")
        rel = str(rel)
        if caption is None:
            raise BadSample("missing_caption", rel)
        return read_bytes(_join(self.image_root, rel)), str(caption).strip(), rel
