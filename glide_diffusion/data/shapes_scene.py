"""Shapes scenes: the palette, the geometry words and the scene sampler.

Implements the "Canvas and coordinates", "Objects" and "Splits and held-out
compositions" sections of ``docs/shapes.md``. Every coordinate
is a fraction of the canvas side R, so a scene is resolution-free; the origin
is the top-left corner and y grows downwards.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {  # spec "Objects" table
    "red": (220, 50, 50),
    "green": (50, 170, 70),
    "blue": (50, 90, 220),
    "yellow": (235, 200, 40),
    "purple": (140, 70, 190),
    "orange": (240, 140, 40),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {  # spec "Canvas" table
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
SIZES: tuple[str, ...] = ("small", "large")
SIZE_SIDE: dict[str, float] = {"small": 0.22, "large": 0.40}  # s / R before jitter
SIZE_JITTER: tuple[float, float] = (0.9, 1.1)
# Row-major over the 3x3 grid: POSITIONS[3 * row + col], row 0 = top.
POSITIONS: tuple[str, ...] = (
    "in the top left corner",
    "at the top",
    "in the top right corner",
    "on the left",
    "in the center",
    "on the right",
    "in the bottom left corner",
    "at the bottom",
    "in the bottom right corner",
)
CELL_CENTRES: tuple[float, ...] = (1 / 6, 1 / 2, 5 / 6)
CELL_JITTER = 0.04  # max |offset| from the cell centre, per axis, in units of R
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
RELATION_MIN_OFFSET = 0.25  # primary-axis separation of the centres, strict
RELATION_MAX_CROSS = 0.15  # cross-axis separation of the centres, strict
MIN_BOX_GAP = 0.05  # distance between the two boxes
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "star"), ("green", "triangle"), ("orange", "circle"), ("blue", "cross"), ("yellow", "square")}
)  # (colour, shape); only ever in the test split
ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}  # split -> id used in seeds
TWO_OBJECT_PROB = 1 / 3


@dataclass(frozen=True)
class ShapeObject:
    """One filled shape inside the box [cx - s/2, cx + s/2] x [cy - s/2, cy + s/2] (fractions of R)."""

    shape: str
    colour: str
    size: str
    s: float
    cx: float
    cy: float


@dataclass(frozen=True)
class Scene:
    """A background and one or two objects; ``relation`` reads "objects[0] RELATION objects[1]"."""

    background: str
    objects: tuple[ShapeObject, ...]
    relation: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        objects = tuple(ShapeObject(**o) for o in d["objects"])
        return cls(background=d["background"], objects=objects, relation=d.get("relation"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Scene:
        return cls.from_dict(json.loads(text))


def cell_of(x: float) -> int:
    """Grid index 0, 1 or 2 of a coordinate in [0, 1] (cell edges at 1/3 and 2/3)."""
    return 0 if x < 1 / 3 else (1 if x < 2 / 3 else 2)


def object_position(obj: ShapeObject) -> str:
    """The position phrase of the 3x3 cell holding the object's centre."""
    return POSITIONS[3 * cell_of(obj.cy) + cell_of(obj.cx)]


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str) -> bool:
    """True when "a RELATION b" holds strictly by the spec's centre offsets."""
    return bool(_relation_mask(np.array(a.cx), np.array(a.cy), np.array(b.cx), np.array(b.cy), relation))


def box_gap(a: ShapeObject, b: ShapeObject) -> float:
    """Euclidean distance between the two objects' boxes (0 when they overlap)."""
    gx = max(0.0, abs(a.cx - b.cx) - (a.s + b.s) / 2)
    gy = max(0.0, abs(a.cy - b.cy) - (a.s + b.s) / 2)
    return float(np.hypot(gx, gy))


def pairs_for_split(split: str) -> tuple[tuple[str, str], ...]:
    """Colour-shape pairs a split draws from: train/val exclude the held-out five."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    return ALL_PAIRS if split == "test" else TRAIN_PAIRS


def _sample_side(rng: np.random.Generator) -> tuple[str, float]:
    size = SIZES[rng.integers(len(SIZES))]
    return size, SIZE_SIDE[size] * rng.uniform(*SIZE_JITTER)


def _sample_pair(rng: np.random.Generator, pairs, exclude=None) -> tuple[str, str]:
    choices = [p for p in pairs if p != exclude]
    return choices[rng.integers(len(choices))]


def sample_single_object(rng: np.random.Generator, pair: tuple[str, str], size: str | None = None) -> ShapeObject:
    """One object at a jittered 3x3 cell centre, pulled inwards onto the canvas (spec "Objects").

    ``size`` fixes the size word (same random draws: the drawn jitter applies to it)."""
    drawn, s = _sample_side(rng)
    if size is not None:
        s = SIZE_SIDE[size] * s / SIZE_SIDE[drawn]
    size = size or drawn
    cx, cy = place_in_cell(rng, int(rng.integers(9)), s)
    return ShapeObject(shape=pair[1], colour=pair[0], size=size, s=float(s), cx=cx, cy=cy)


def place_in_cell(rng: np.random.Generator, cell: int, s: float) -> tuple[float, float]:
    """Centre of an object of side ``s`` in 3x3 ``cell`` (row-major): the cell centre plus
    jitter, pulled inwards just enough for its box to stay on the canvas."""
    row, col = divmod(cell, 3)
    cx = CELL_CENTRES[col] + rng.uniform(-CELL_JITTER, CELL_JITTER)
    cy = CELL_CENTRES[row] + rng.uniform(-CELL_JITTER, CELL_JITTER)
    return float(np.clip(cx, s / 2, 1 - s / 2)), float(np.clip(cy, s / 2, 1 - s / 2))


def _relation_mask(ax, ay, bx, by, relation: str):
    if relation == "to the left of":
        primary, cross = bx - ax, by - ay
    elif relation == "to the right of":
        primary, cross = ax - bx, ay - by
    elif relation == "above":
        primary, cross = by - ay, bx - ax
    elif relation == "below":
        primary, cross = ay - by, ax - bx
    else:
        raise ValueError(f"unknown relation {relation!r}")
    return (primary > RELATION_MIN_OFFSET) & (np.abs(cross) < RELATION_MAX_CROSS)


def _place_pair(rng: np.random.Generator, sa: float, sb: float, relation: str, batch: int = 4096):
    """Uniform centres for two boxes with the relation and the 0.05 R gap, by batched rejection."""
    while True:
        lo = np.array([sa, sa, sb, sb]) / 2
        u = rng.uniform(size=(batch, 4))
        ax, ay, bx, by = (lo + u * (1 - 2 * lo)).T  # each centre keeps its box on the canvas
        gx = np.maximum(0.0, np.abs(ax - bx) - (sa + sb) / 2)
        gy = np.maximum(0.0, np.abs(ay - by) - (sa + sb) / 2)
        ok = _relation_mask(ax, ay, bx, by, relation) & (np.hypot(gx, gy) >= MIN_BOX_GAP)
        if ok.any():
            i = int(np.argmax(ok))
            return float(ax[i]), float(ay[i]), float(bx[i]), float(by[i])


def sample_two_objects(rng: np.random.Generator, pairs) -> tuple[tuple[ShapeObject, ShapeObject], str]:
    """Two objects with distinct colour-shape pairs, a relation, and the spec's placement rules."""
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    pair_a = _sample_pair(rng, pairs)
    pair_b = _sample_pair(rng, pairs, exclude=pair_a)
    size_a, sa = _sample_side(rng)
    size_b, sb = _sample_side(rng)
    ax, ay, bx, by = _place_pair(rng, sa, sb, relation)
    a = ShapeObject(pair_a[1], pair_a[0], size_a, float(sa), ax, ay)
    b = ShapeObject(pair_b[1], pair_b[0], size_b, float(sb), bx, by)
    return (a, b), relation


def check_narrowing(colour: str | None = None, size: str | None = None, background: str | None = None) -> None:
    """ValueError unless each given attribute is a Shapes colour, size or background name."""
    for name, value, allowed in (
        ("colour", colour, COLOURS),
        ("size", size, SIZES),
        ("background", background, BACKGROUNDS),
    ):
        if value is not None and value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")


def sample_narrowed_scene(
    rng: np.random.Generator,
    split: str = "train",
    colour: str | None = None,
    size: str | None = None,
    background: str | None = None,
) -> Scene:
    """One object with the given attributes fixed and the rest drawn as in :func:`sample_scene`.

    The narrowed scenes of a training curriculum (``ShapesDataset(warmup_images=...)``): the
    colour-shape pair is drawn from the split's pairs with that colour, so a train-split warm-up
    never shows a held-out pair either.
    """
    check_narrowing(colour, size, background)
    pairs = [p for p in pairs_for_split(split) if colour is None or p[0] == colour]
    bg = background or tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    return Scene(bg, (sample_single_object(rng, _sample_pair(rng, pairs), size),), None)


def sample_scene(
    rng: np.random.Generator,
    split: str = "train",
    n_objects: int | None = None,
    two_object_prob: float = TWO_OBJECT_PROB,
) -> Scene:
    """Draw a scene: background, then one object (p = 2/3) or two related objects (p = 1/3).

    ``n_objects`` forces one or two objects (used for evaluation prompts);
    ``two_object_prob`` reweights the mix (a training curriculum; the dataset's is 1/3).
    """
    pairs = pairs_for_split(split)
    background = tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    if n_objects is None:
        n_objects = 2 if rng.uniform() < two_object_prob else 1
    if n_objects == 1:
        return Scene(background, (sample_single_object(rng, _sample_pair(rng, pairs)),), None)
    if n_objects == 2:
        objects, relation = sample_two_objects(rng, pairs)
        return Scene(background, objects, relation)
    raise ValueError(f"n_objects must be 1 or 2, got {n_objects}")
