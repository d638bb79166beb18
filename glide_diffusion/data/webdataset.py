"""Image-caption pairs from WebDataset tar shards (the img2dataset layout).

Each shard holds members ``KEY.jpg|jpeg|png|webp|...`` (the image),
``KEY.txt`` (the caption) and optionally ``KEY.json`` (metadata, whose
``"caption"`` is used when there is no ``.txt``). Tar streams are read and
grouped by key with the ``webdataset`` package; shards open through fsspec
(local paths, ``file://``, ``s3://``, ``gs://``, ``http(s)://`` ... given the
matching fsspec backend) or ``pipe:COMMAND`` (the command's stdout is the tar).

Stream semantics (the shard is the unit, since tars have no random access):

* Shard *slot* ``g`` is shard ``perm_e[g % S]`` of epoch ``e = g // S``, with
  ``perm_e`` a permutation of the ``S`` shards seeded by ``(seed, e)``
  (identity when ``shuffle=False``). Endless unless ``epochs`` is set (then
  slots stop at ``epochs * S``). Samples inside a shard keep tar order.
* Resume: ``start`` is converted with a nominal ``samples_per_shard`` (``P``):
  slots before ``g0 = start // P`` are skipped and the first remaining slot is
  entered ``start % P`` tar records in (records are skipped before decoding,
  bad ones included). This is exact for one consumer when every shard holds
  ``P`` records; otherwise approximate, off by at most about one shard per
  consumer.
* Partition: consumer ``c = rank + world_size * worker`` of
  ``C = world_size * num_workers`` reads slots ``g0 + c, g0 + c + C, ...``, so
  every shard of an epoch is read by exactly one consumer. With fewer shards
  than consumers and ``epochs`` set, some consumers get no shard.

Items are ``{"image", "caption", "key", "url"}`` (+ ``"low_res"``). Bad
shards, tar members and images are skipped and counted in ``dataset.stats``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import IO

import braceexpand
import fsspec
import numpy as np
from torch.utils.data import IterableDataset
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from .folder import check_stream_args, consumer_slot, epoch_permutation, flip_coin
from .images import SkipStats, decode_item

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
DEFAULT_SAMPLES_PER_SHARD = 10_000  # img2dataset's default number_sample_per_shard
_GLOB_CHARS = "*?["


def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and ("://" not in url or url.startswith("file://"))


def _glob(pattern: str) -> list[str]:
    """Sorted matches of a glob pattern on any fsspec filesystem."""
    fs, path = fsspec.core.url_to_fs(pattern)
    matches = sorted(fs.glob(path))
    return [fs.unstrip_protocol(m) for m in matches] if "://" in pattern else matches


def expand_urls(urls: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard list from a brace pattern, glob, ``::``-joined string or list of them.

    ``"data/{00000..00009}.tar"`` gives ten paths; a glob (``*``, ``?``,
    ``[``) is matched with fsspec; ``pipe:`` commands are brace-expanded only.
    Raises ``ValueError`` when nothing matches or no local shard exists.
    """
    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for item in items:
        for part in os.fspath(item).split("::"):
            for url in braceexpand.braceexpand(part):
                globbed = not url.startswith("pipe:") and any(ch in url for ch in _GLOB_CHARS)
                out.extend(_glob(url) if globbed else [url])
    if not out:
        raise ValueError(f"no shards match {urls!r}")
    local = [u for u in out if _is_local(u)]
    if local and len(local) == len(out) and not any(fsspec.core.url_to_fs(u)[0].exists(u) for u in local):
        raise ValueError(f"no shards match {urls!r} (none of {len(out)} local paths exists)")
    return out


def open_shard(url: str) -> IO[bytes]:
    """A binary stream for a shard: ``pipe:`` via webdataset, else fsspec."""
    if url.startswith("pipe:"):
        return gopen(url, "rb")
    return fsspec.open(url, "rb").open()


def sample_caption(sample: dict) -> tuple[str | None, str]:
    """``(caption, reason)``: from ``txt``, else ``json["caption"]``; ``None`` if absent."""
    try:
        if "txt" in sample:
            return sample["txt"].decode("utf-8-sig").strip(), ""
        if "json" in sample:
            caption = json.loads(sample["json"]).get("caption")
            if isinstance(caption, str):
                return caption.strip(), ""
    except (UnicodeDecodeError, ValueError, AttributeError):
        return None, "bad_caption"
    return None, "missing_caption"


class WebDatasetShards(IterableDataset):
    """Image-caption stream over tar shards; see the module docstring for semantics.

    Args:
        urls: brace pattern, glob, fsspec URL(s), ``pipe:`` command(s) or a list.
        resolution: output side R; images are (3, R, R) in [-1, 1].
        seed, rank, world_size, start, shuffle, epochs, random_flip, low_res,
        max_pixels: as for :class:`~glide_diffusion.data.folder.IndexedImageDataset`.
        size: the number of samples in one epoch of all shards (img2dataset
            reports it); sets ``samples_per_shard = ceil(size / S)``.
        samples_per_shard: nominal records per shard for ``start``; overrides
            ``size``; default 10000 (img2dataset's default).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
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
        samples_per_shard: int | None = None,
        max_pixels: int | None = None,
    ) -> None:
        super().__init__()
        check_stream_args(resolution, rank, world_size, start, low_res)
        self.urls = expand_urls(urls)
        self.resolution = resolution
        self.seed, self.rank, self.world_size, self.start = seed, rank, world_size, start
        self.shuffle, self.epochs = shuffle, epochs
        self.random_flip, self.low_res, self.max_pixels = random_flip, low_res, max_pixels
        if samples_per_shard is None:
            samples_per_shard = -(-size // len(self.urls)) if size else DEFAULT_SAMPLES_PER_SHARD
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.samples_per_shard = samples_per_shard
        self.stats = SkipStats()  # reason -> count; per process (each worker has its own)

    def shard_slots(self, consumer: int, num_consumers: int) -> Iterator[tuple[int, str, int]]:
        """``(slot, url, records to skip)`` for one consumer, in reading order."""
        num = len(self.urls)
        first, offset = divmod(self.start, self.samples_per_shard)
        stop = None if self.epochs is None else self.epochs * num
        g, epoch, perm = first + consumer, -1, np.arange(0)  # set at the first slot (epoch >= 0)
        while stop is None or g < stop:
            if g // num != epoch:
                epoch = g // num
                perm = epoch_permutation(num, self.seed, epoch, self.shuffle)
            yield g, self.urls[perm[g % num]], offset if g == first else 0
            g += num_consumers

    def __iter__(self) -> Iterator[dict]:
        consumer, num_consumers = consumer_slot(self.rank, self.world_size)
        for slot, url, skip in self.shard_slots(consumer, num_consumers):
            yield from self._shard_items(slot, url, skip)

    def _handler(self, reason: str, url: str):
        """A webdataset exception handler that counts and carries on."""

        def handle(exn: Exception) -> bool:
            self.stats.note(reason, f"{url}: {exn!r}")
            return True

        return handle

    def _shard_samples(self, url: str) -> Iterator[dict]:
        """Raw grouped samples (``{"__key__", "jpg": bytes, ...}``) of one shard."""
        try:
            stream = open_shard(url)
        except Exception as exn:  # a missing shard must not stop training
            self.stats.note("unreadable_shard", f"{url}: {exn!r}")
            return
        bad_before = self.stats["bad_shard"]
        try:
            files = tar_file_expander([{"url": url, "stream": stream}], handler=self._handler("bad_shard", url))
            yield from group_by_keys(files, handler=self._handler("bad_tar_member", url))
        finally:
            try:
                stream.close()
            except Exception as exn:  # e.g. a pipe command's exit status
                if self.stats["bad_shard"] == bad_before:  # count each shard once
                    self.stats.note("bad_shard", f"{url}: {exn!r}")

    def _shard_items(self, slot: int, url: str, skip: int) -> Iterator[dict]:
        """Decoded items of one shard, after skipping ``skip`` records."""
        for pos, sample in enumerate(self._shard_samples(url)):
            if pos < skip:
                continue
            item = self._decode(sample, url, flip_coin(self.seed, slot, pos) if self.random_flip else False)
            if item is not None:
                yield item

    def _decode(self, sample: dict, url: str, flip: bool) -> dict | None:
        """One grouped tar sample -> dataset item, or ``None`` (counted)."""
        key = sample.get("__key__", "?")
        detail = f"{url}:{key}"
        image = next((sample[s] for s in IMAGE_SUFFIXES if s in sample), None)
        if image is None:
            self.stats.note("missing_image", detail)
            return None
        caption, reason = sample_caption(sample)
        if caption is None:
            self.stats.note(reason, detail)
            return None
        item = decode_item(
            image,
            caption,
            resolution=self.resolution,
            stats=self.stats,
            detail=detail,
            low_res=self.low_res,
            flip=flip,
            max_pixels=self.max_pixels,
        )
        if item is not None:
            item.update(key=key, url=url)
        return item
