"""Random inpainting masks for training the inpainting models (GLIDE §4.3).

GLIDE fine-tunes its inpainting models on "random regions of training
examples" erased; the paper gives no mask distribution, so this module offers
the usual families: rectangles, free-form brush strokes (as in DeepFill v2 /
LaMa), outpainting borders and a central box (the paper's editing case).

Convention (the model's, see ``GlideUNet.forward``): a mask is a float tensor
with 1 = KNOWN pixel and 0 = region to fill. Every mask is drawn from a CPU
``torch.Generator`` only, so the same seed gives the same masks on any device.

Erased fraction (pixels set to 0 / all pixels) per kind, guaranteed by
redrawing (at most ``_MAX_TRIES`` times, then a centred half-side square, 25%):

=========  ==============  ====================================================
kind       erased range    shape
=========  ==============  ====================================================
rectangle  [0.10, 0.60]    1-3 axis-aligned boxes, each 10-50% of the side per axis
strokes    [0.05, 0.50]    1-4 random-walk polylines, width 4-12% of the side, round joints and caps
border     [0.10, 0.75]    1-4 erased borders, each 10-50% of the side (outpainting)
center     [0.10, 0.60]    one centred box, 35-75% of the side per axis
=========  ==============  ====================================================

``"mixed"`` picks one of the four uniformly for each mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

__all__ = ["KINDS", "ERASED_RANGE", "random_mask", "random_masks", "erased_fraction"]

# Erased-fraction bounds per kind (see the module docstring).
ERASED_RANGE: dict[str, tuple[float, float]] = {
    "rectangle": (0.10, 0.60),
    "strokes": (0.05, 0.50),
    "border": (0.10, 0.75),
    "center": (0.10, 0.60),
}
KINDS: tuple[str, ...] = (*ERASED_RANGE, "mixed")
MIN_SIZE = 8
_MAX_TRIES = 50

Sampler = Callable[[int, torch.Generator], torch.Tensor]


# -- random numbers from a torch.Generator -------------------------------------


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def _randint(gen: torch.Generator, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (both inclusive)."""
    return int(torch.randint(lo, hi + 1, (), generator=gen))


def _side_px(size: int, lo: float, hi: float) -> tuple[int, int]:
    """Pixel bounds for a length between ``lo`` and ``hi`` of ``size`` (at least 1 px)."""
    a = max(1, math.ceil(lo * size))
    return a, max(a, math.floor(hi * size))


# -- one sampler per kind: size -> (size, size) mask, 1 = known -----------------


def _rectangle(size: int, gen: torch.Generator) -> torch.Tensor:
    m = torch.ones(size, size)
    lo, hi = _side_px(size, 0.10, 0.50)
    for _ in range(_randint(gen, 1, 3)):
        h, w = _randint(gen, lo, hi), _randint(gen, lo, hi)
        top, left = _randint(gen, 0, size - h), _randint(gen, 0, size - w)
        m[top : top + h, left : left + w] = 0
    return m


def _strokes(size: int, gen: torch.Generator) -> torch.Tensor:
    img = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(img)
    for _ in range(_randint(gen, 1, 4)):
        width = max(1, round(_uniform(gen, 0.04, 0.12) * size))
        points = _random_walk(size, gen)
        draw.line(points, fill=0, width=width, joint="curve")
        r = width / 2  # round caps: PIL's line ends are square-cut
        for x, y in (points[0], points[-1]):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    return torch.from_numpy((np.asarray(img) > 127).astype(np.float32))


def _random_walk(size: int, gen: torch.Generator) -> list[tuple[float, float]]:
    """3-8 vertices; steps of 10-30% of the side, turning up to ±90° each step."""
    x, y = _uniform(gen, 0, size - 1), _uniform(gen, 0, size - 1)
    angle = _uniform(gen, 0, 2 * math.pi)
    points = [(x, y)]
    for _ in range(_randint(gen, 2, 7)):
        angle += _uniform(gen, -math.pi / 2, math.pi / 2)
        step = _uniform(gen, 0.10, 0.30) * size
        x = min(max(x + step * math.cos(angle), 0.0), size - 1.0)
        y = min(max(y + step * math.sin(angle), 0.0), size - 1.0)
        points.append((x, y))
    return points


def _border(size: int, gen: torch.Generator) -> torch.Tensor:
    """Erase 1-4 of the top/bottom/left/right borders: the kept region is side-anchored or centred."""
    m = torch.ones(size, size)
    lo, hi = _side_px(size, 0.10, 0.50)
    sides = torch.randperm(4, generator=gen)[: _randint(gen, 1, 4)].tolist()
    for side in sides:
        w = _randint(gen, lo, hi)
        if side == 0:
            m[:w, :] = 0
        elif side == 1:
            m[size - w :, :] = 0
        elif side == 2:
            m[:, :w] = 0
        else:
            m[:, size - w :] = 0
    return m


def _center(size: int, gen: torch.Generator) -> torch.Tensor:
    lo, hi = _side_px(size, 0.35, 0.75)
    h, w = _randint(gen, lo, hi), _randint(gen, lo, hi)
    return _centred_hole(size, h, w)


def _centred_hole(size: int, h: int, w: int) -> torch.Tensor:
    m = torch.ones(size, size)
    top, left = (size - h) // 2, (size - w) // 2
    m[top : top + h, left : left + w] = 0
    return m


_SAMPLERS: dict[str, Sampler] = {
    "rectangle": _rectangle,
    "strokes": _strokes,
    "border": _border,
    "center": _center,
}


# -- public API ------------------------------------------------------------------


def erased_fraction(mask: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels to fill (mask == 0), per mask: (..., H, W) -> (...)."""
    return 1.0 - mask.float().mean(dim=(-2, -1))


def random_mask(kind: str, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random mask, (1, size, size) float32 on the CPU, 1 = known pixel, 0 = fill.

    Redraws until the erased fraction lies in ``ERASED_RANGE[kind]``; after
    ``_MAX_TRIES`` draws (never seen in practice) it returns a centred square
    of half the side (25% erased), which is inside every range.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; known: {', '.join(KINDS)}")
    if size < MIN_SIZE:
        raise ValueError(f"mask size must be at least {MIN_SIZE}, got {size}")
    if kind == "mixed":
        names = list(_SAMPLERS)
        kind = names[_randint(generator, 0, len(names) - 1)]
    lo, hi = ERASED_RANGE[kind]
    for _ in range(_MAX_TRIES):
        m = _SAMPLERS[kind](size, generator)
        if lo <= float(erased_fraction(m)) <= hi:
            return m[None]
    return _centred_hole(size, size // 2, size // 2)[None]


def random_masks(batch: int, size: int, kinds: Sequence[str], generator: torch.Generator) -> torch.Tensor:
    """A batch of masks, (B, 1, size, size); each row's kind is drawn uniformly from ``kinds``."""
    if not kinds:
        raise ValueError("kinds must name at least one mask kind")
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown mask kind {kind!r}; known: {', '.join(KINDS)}")
    rows = [random_mask(kinds[_randint(generator, 0, len(kinds) - 1)], size, generator) for _ in range(batch)]
    return torch.stack(rows)
