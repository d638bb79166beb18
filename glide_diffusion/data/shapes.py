"""The Shapes text-image dataset: public API and the deterministic index stream.

Contract: ``docs/shapes.md``. The pieces live in
``shapes_scene`` (palette, geometry, scene sampler), ``shapes_captions``
(templates, parser) and ``shapes_render`` (rasteriser); this module re-exports
them and adds :class:`ShapesDataset` and :func:`test_captions`.

Global sample ``n`` of a split is a pure function of ``(seed, split, n)``: its
generator is ``numpy.random.default_rng([seed, split_id, n])``, so any sample
can be produced without the ones before it, and a run can resume at a recorded
global index on any number of processes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from glide_diffusion.data.shapes_captions import (
    SPEC_ODDS,
    CaptionOdds,
    CaptionSpec,
    ObjectSpec,
    article,
    parse_caption,
    partial_caption,
    sample_caption,
    sample_caption_with_mentions,
)
from glide_diffusion.data.shapes_render import render, render_array
from glide_diffusion.data.shapes_scene import (
    ALL_PAIRS,
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    SPLITS,
    TRAIN_PAIRS,
    TWO_OBJECT_PROB,
    Scene,
    ShapeObject,
    box_gap,
    object_position,
    relation_holds,
    sample_narrowed_scene,
    sample_scene,
    sample_single_object,
)

__all__ = [
    "ALL_PAIRS",
    "BACKGROUNDS",
    "CaptionOdds",
    "COLOURS",
    "HELD_OUT_PAIRS",
    "POSITIONS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "TRAIN_PAIRS",
    "CaptionSpec",
    "ObjectSpec",
    "Scene",
    "ShapeObject",
    "ShapesDataset",
    "article",
    "box_gap",
    "image_to_tensor",
    "object_position",
    "parse_caption",
    "relation_holds",
    "render",
    "render_array",
    "sample_caption",
    "sample_caption_with_mentions",
    "sample_narrowed_scene",
    "sample_scene",
    "sample_with_caption",
    "test_captions",
]


def sample_rng(seed: int, split: str, n: int) -> np.random.Generator:
    """The generator of global sample ``n`` of ``split``: depends on (seed, split, n) only."""
    return np.random.default_rng([seed, SPLITS[split], n])


def sample_with_caption(
    seed: int,
    split: str,
    n: int,
    narrow: Mapping[str, str] | None = None,
    two_object_prob: float = TWO_OBJECT_PROB,
    caption_odds: CaptionOdds = SPEC_ODDS,
    partial_caption_prob: float = 0.0,
) -> tuple[Scene, str, CaptionSpec]:
    """Scene, caption and caption spec of global sample ``n`` (no rendering).

    ``narrow`` (keys colour, size, background) draws a one-object scene with those attributes
    fixed instead (:func:`sample_narrowed_scene`); the caption is drawn as usual.
    ``two_object_prob`` is the share of two-object scenes (the dataset's: 1/3);
    ``caption_odds`` how often captions mention optional attributes (the spec's);
    ``partial_caption_prob`` the share of two-object scenes captioned by one of their objects
    (:func:`partial_caption`, drawn from a generator of its own so the scenes stay the same; the
    spec is then the full caption's).
    """
    rng = sample_rng(seed, split, n)
    scene = (
        sample_scene(rng, split, two_object_prob=two_object_prob)
        if narrow is None
        else sample_narrowed_scene(rng, split, **narrow)
    )
    caption, spec = sample_caption_with_mentions(scene, rng, odds=caption_odds)
    if partial_caption_prob and len(scene.objects) == 2:
        partial_rng = np.random.default_rng([seed, SPLITS[split], n, 2])
        if partial_rng.uniform() < partial_caption_prob:
            caption = partial_caption(scene, partial_rng, caption_odds)
    return scene, caption, spec


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(R, R, 3) uint8 -> (3, R, R) float32 in [-1, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div(127.5).sub(1.0)


class ShapesDataset(torch.utils.data.IterableDataset):
    """Deterministic index stream of Shapes samples.

    Args:
        split: "train", "val" (train's distribution, other samples) or "test"
            (colour-shape pairs uniform over all 30, held-out pairs included).
        resolution: side R of ``image``.
        seed: dataset seed; with ``split`` and the global index it fixes a sample.
        size: None for an endless stream, else the finite split of indices
            ``0 .. size - 1`` (the same samples on every pass).
        rank, world_size: rank r yields global indices start + r, start + r + W, ...
        start: first global index (resume position).
        low_res: if an int, items also carry the same scene rendered at that side.
        warmup_images: a curriculum: global indices below this draw narrowed one-object
            scenes (``warmup``: colour, size and/or background fixed, see
            :func:`sample_narrowed_scene`) instead of the split's scenes.
        warmup_then: later curriculum phases, ``(images, narrowing)`` pairs: the next
            ``images`` indices after the warm-up (and each phase before) draw scenes
            narrowed that way.
        warmup_replay: after the last phase, this share of the indices (drawn independently
            of each sample's own generator, so the others are unchanged) stay narrowed as
            in the last phase.
        two_object_prob: the share of two-object scenes among the split's (not narrowed)
            scenes; the dataset's is 1/3.
        caption_odds: how often captions mention optional attributes (the spec's by default).
        partial_caption_prob: the share of two-object scenes captioned by one of their
            objects and its position (not a caption of the spec: a training option for
            composing one-object terms; 0 by default).

    Items: ``dict(image=(3, R, R) float32 in [-1, 1], caption=str, scene=json str,
    index=int[, low_res=(3, r, r)])``. DataLoader workers split the rank's indices.
    """

    def __init__(
        self,
        split: str = "train",
        resolution: int = 64,
        seed: int = 0,
        size: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        low_res: int | None = None,
        warmup_images: int = 0,
        warmup: Mapping[str, str | None] | None = None,
        warmup_replay: float = 0.0,
        warmup_then: Sequence[tuple[int, Mapping[str, str | None]]] = (),
        two_object_prob: float = TWO_OBJECT_PROB,
        caption_odds: CaptionOdds = SPEC_ODDS,
        partial_caption_prob: float = 0.0,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.split, self.resolution, self.seed, self.size = split, resolution, seed, size
        self.rank, self.world_size, self.start, self.low_res = rank, world_size, start, low_res
        if not 0.0 <= warmup_replay <= 1.0:
            raise ValueError(f"warmup_replay must be in [0, 1], got {warmup_replay}")
        self.warmup_replay = warmup_replay
        if not 0.0 <= two_object_prob <= 1.0:
            raise ValueError(f"two_object_prob must be in [0, 1], got {two_object_prob}")
        self.two_object_prob, self.caption_odds = two_object_prob, caption_odds
        if not 0.0 <= partial_caption_prob <= 1.0:
            raise ValueError(f"partial_caption_prob must be in [0, 1], got {partial_caption_prob}")
        self.partial_caption_prob = partial_caption_prob
        # (first index after the phase, its narrowing), in order
        self.phases: list[tuple[int, dict[str, str]]] = []
        end = 0
        for images, narrowing in ((warmup_images, warmup or {}), *warmup_then):
            if images < 0:
                raise ValueError(f"curriculum phases need images >= 0, got {images}")
            end += images
            self.phases.append((end, {k: v for k, v in narrowing.items() if v is not None}))
        self.warmup = self.phases[0][1]  # the first phase's fixed attributes
        self.warmup_images = end  # indices below this are all narrowed
        if end or warmup_replay:
            for _, narrowing in self.phases:  # bad names fail here
                sample_narrowed_scene(sample_rng(seed, split, 0), split, **narrowing)

    def item(self, n: int) -> dict:
        """The item of global index ``n``."""
        scene, caption = self.scene_and_caption(n)
        out = {
            "image": image_to_tensor(render_array(scene, self.resolution)),
            "caption": caption,
            "scene": scene.to_json(),
            "index": n,
        }
        if self.low_res is not None:
            out["low_res"] = image_to_tensor(render_array(scene, self.low_res))
        return out

    def scene_and_caption(self, n: int) -> tuple[Scene, str]:
        """The scene and caption of global index ``n`` (probes override it to draw other scenes)."""
        scene, caption, _ = sample_with_caption(
            self.seed,
            self.split,
            n,
            self.narrowing(n),
            self.two_object_prob,
            self.caption_odds,
            self.partial_caption_prob,
        )
        return scene, caption

    def narrowing(self, n: int) -> dict[str, str] | None:
        """The fixed attributes of global index ``n``'s curriculum scene; None: a scene of the split."""
        for end, narrowing in self.phases:
            if n < end:
                return narrowing
        if self.warmup_replay and (
            np.random.default_rng([self.seed, SPLITS[self.split], n, 1]).uniform() < self.warmup_replay
        ):
            return self.phases[-1][1]
        return None

    def narrowed(self, n: int) -> bool:
        """Whether global index ``n`` draws a narrowed (curriculum) scene."""
        return self.narrowing(n) is not None

    def indices(self, worker: int = 0, num_workers: int = 1) -> Iterator[int]:
        """Global indices of this rank's share, further split among ``num_workers``."""
        stride = self.world_size * num_workers
        first = self.start + self.rank + worker * self.world_size
        stream = itertools.count(first, stride)
        size = self.size
        if size is None:
            return stream
        return itertools.takewhile(lambda n: n < size, stream)

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for n in self.indices(worker, num_workers):
            yield self.item(n)


def test_captions(n: int, seed: int = 0, kind: str = "single") -> list[tuple[str, CaptionSpec]]:
    """Evaluation prompts drawn from the test distribution, as (caption, spec) pairs.

    kind: "single" (one-object test scenes, the usual caption mix), "two"
    (two-object scenes) or "held_out" (one object whose colour-shape pair is
    held out, with a caption that names colour and shape).
    """
    kinds = {"single": 0, "two": 1, "held_out": 2}
    if kind not in kinds:
        raise ValueError(f"kind must be one of {sorted(kinds)}, got {kind!r}")
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, SPLITS["test"], 1000 + kinds[kind], i])
        if kind == "held_out":
            pairs = sorted(HELD_OUT_PAIRS)
            obj = sample_single_object(rng, pairs[rng.integers(len(pairs))])
            scene = Scene(tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))], (obj,), None)
        else:
            scene = sample_scene(rng, "test", n_objects=1 if kind == "single" else 2)
        out.append(sample_caption_with_mentions(scene, rng, require_colour=kind == "held_out"))
    return out


# A library helper, not a pytest test, when imported into tests (mypy knows no __test__ on functions).
test_captions.__test__ = False  # type: ignore[attr-defined]
