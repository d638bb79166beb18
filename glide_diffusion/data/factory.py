"""One entry point from a :class:`DataConfig` to a dataset and a DataLoader.

Every dataset built here is an index stream (see ``folder.py`` and
``webdataset.py``): ``rank``/``world_size`` partition it and ``start`` (the
global sample position already consumed) resumes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, IterableDataset

if TYPE_CHECKING:
    from .shapes_captions import CaptionOdds

KINDS = ("folder", "manifest", "webdataset", "shapes", "synthetic")


@dataclass(frozen=True)
class ShapesPhase:
    """A phase of a Shapes curriculum: the next ``images`` samples are one-object scenes
    with these attributes fixed (None: drawn as usual)."""

    images: int = 0
    colour: str | None = None
    size: str | None = None
    background: str | None = None

    def __post_init__(self) -> None:
        from .shapes_scene import check_narrowing

        if self.images < 0:
            raise ValueError(f"images must be >= 0, got {self.images}")
        check_narrowing(self.colour, self.size, self.background)

    def scene(self) -> dict[str, str | None]:
        """The fixed attributes, as ``sample_narrowed_scene`` keywords."""
        return dict(colour=self.colour, size=self.size, background=self.background)


@dataclass(frozen=True)
class ShapesWarmup(ShapesPhase):
    """A curriculum for ``kind = "shapes"``: the first ``images`` samples of the stream are
    one-object scenes with these attributes fixed (None: drawn as usual); then each phase
    of ``then`` in turn (``[[data.shapes_warmup.then]]`` tables); then full Shapes with a
    ``replay`` share of scenes narrowed as in the last phase mixed in.

    ``images`` counts global samples (all processes together); 0: no warm-up.
    """

    replay: float = 0.0  # after the curriculum, this share of the samples stays narrowed
    then: tuple[ShapesPhase, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.replay <= 1.0:
            raise ValueError(f"shapes_warmup.replay must be in [0, 1], got {self.replay}")

    def later_phases(self) -> list[tuple[int, dict[str, str | None]]]:
        """``then`` as ``ShapesDataset(warmup_then=...)`` takes it."""
        return [(p.images, p.scene()) for p in self.then]


@dataclass(frozen=True)
class DataConfig:
    """Which training data to read and how."""

    kind: str = "shapes"  # one of KINDS; "shapes" and "synthetic" need no files (procedural)
    path: str | None = None  # folder root, manifest file, or a shard pattern for "webdataset"
    urls: list[str] | None = None  # shard URLs/patterns for "webdataset" (used before path)
    split: str = "train"  # "shapes" split; file-backed kinds: point path at the split
    size: int | None = None  # items per epoch: first `size` items; webdataset: epoch size in samples
    shuffle: bool = True  # permute each epoch by (seed, epoch)
    random_flip: bool = False  # off: flips make "left"/"right" in captions wrong
    image_column: str | None = None  # manifest image column (default image|path|file_name)
    caption_column: str | None = None  # manifest caption column (default caption|text)
    num_workers: int = 0  # DataLoader worker processes per rank
    seed: int = 0  # seeds epoch permutations (and flips)
    image_root: str | None = None  # manifest: resolve relative paths here (default: its folder)
    epochs: int | None = None  # stop after this many epochs; None streams forever (training)
    samples_per_shard: int | None = None  # webdataset resume arithmetic; default from size or 10000
    shapes_warmup: ShapesWarmup = field(default_factory=ShapesWarmup)  # "shapes" curriculum
    shapes_two_objects: float | None = None  # "shapes": share of two-object scenes (None: the dataset's 1/3)
    shapes_partial_captions: float = 0.0  # "shapes": share of two-object scenes captioned by one object


def _require_path(cfg: DataConfig) -> str:
    if not cfg.path:
        raise ValueError(f"data kind {cfg.kind!r} needs DataConfig.path")
    return cfg.path


def build_dataset(
    cfg: DataConfig,
    resolution: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    start: int = 0,
    low_res: int | None = None,
    caption_odds: CaptionOdds | None = None,
) -> IterableDataset:
    """The dataset ``cfg`` describes, yielding ``{"image": (3, R, R), "caption": str, ...}``.

    ``low_res`` adds a box-downsampled ``"low_res"`` copy (upsampler training);
    ``caption_odds`` (Shapes only) how often captions mention optional attributes (probes).
    """
    if caption_odds is not None and cfg.kind != "shapes":
        raise ValueError(f"caption_odds is for Shapes data, not {cfg.kind!r}")
    common: dict[str, Any] = dict(
        seed=cfg.seed, rank=rank, world_size=world_size, start=start, size=cfg.size, low_res=low_res
    )
    if cfg.kind == "shapes":
        from .shapes import ShapesDataset

        w = cfg.shapes_warmup
        if cfg.shapes_two_objects is not None:
            common["two_object_prob"] = cfg.shapes_two_objects
        if caption_odds is not None:
            common["caption_odds"] = caption_odds
        if cfg.shapes_partial_captions:
            common["partial_caption_prob"] = cfg.shapes_partial_captions
        return ShapesDataset(
            split=cfg.split,
            resolution=resolution,
            warmup_images=w.images,
            warmup_replay=w.replay,
            warmup=w.scene(),
            warmup_then=w.later_phases(),
            **common,
        )
    if cfg.kind == "synthetic":
        from .synthetic import SyntheticDataset

        return SyntheticDataset(resolution, **common)
    files: dict[str, Any] = dict(common, shuffle=cfg.shuffle, epochs=cfg.epochs, random_flip=cfg.random_flip)
    if cfg.kind == "folder":
        from .folder import ImageFolderDataset

        return ImageFolderDataset(_require_path(cfg), resolution, **files)
    if cfg.kind == "manifest":
        from .folder import ManifestDataset

        return ManifestDataset(
            _require_path(cfg),
            resolution,
            image_root=cfg.image_root,
            image_column=cfg.image_column,
            caption_column=cfg.caption_column,
            **files,
        )
    if cfg.kind == "webdataset":
        from .webdataset import WebDatasetShards

        urls = cfg.urls if cfg.urls else _require_path(cfg)
        return WebDatasetShards(urls, resolution, samples_per_shard=cfg.samples_per_shard, **files)
    raise ValueError(f"unknown data kind {cfg.kind!r}; expected one of {', '.join(KINDS)}")


def collate(batch: list[dict]) -> dict:
    """Batch items: tensors stacked (B, ...), ints as a (B,) tensor, the rest as lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], int) and not isinstance(values[0], bool):
            out[key] = torch.tensor(values, dtype=torch.long)
        else:
            out[key] = values
    return out


def make_loader(
    dataset: IterableDataset,
    batch_size: int,
    num_workers: int = 0,
    *,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over an index-stream dataset, batching with :func:`collate`.

    Workers split the rank's share themselves (``get_worker_info``), so no
    sampler is used. Each worker batches its own items; with ``drop_last``
    a finite stream loses up to ``num_workers`` partial batches.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
