"""Analytic evaluator for Shapes images: read the scene back, score captions against it.

No learned model: the background, objects, colours, shapes, sizes, positions
and relations are recovered with the palette and geometry of
``docs/shapes.md`` (see :mod:`shapes_segment` for pixels and
:mod:`shapes_features` for shapes). Works on any generator's output.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from glide_diffusion.data.shapes_captions import CaptionSpec, ObjectSpec, parse_caption
from glide_diffusion.data.shapes_scene import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_PAIRS,
    POSITIONS,
    SIZE_SIDE,
    SIZES,
    ShapeObject,
    object_position,
)
from glide_diffusion.eval.shapes_features import box_from_features, classify_shape, features, size_word
from glide_diffusion.eval.shapes_segment import (
    COLOUR_NAMES,
    MAX_RESIDUAL,
    colour_alpha,
    dilate,
    find_background,
    label_components,
    to_array,
)

MIN_AREA_FRACTION = 0.4 * 0.281 * (0.9 * SIZE_SIDE["small"]) ** 2  # 40% of the smallest star, / R^2
SOFT_LOW, SOFT_HIGH = 0.15, 0.85  # coverage ramp that silences mild noise but keeps 0.5 at 0.5


@dataclass(frozen=True)
class DetectedObject:
    """One object read from an image; s, cx, cy are fractions of the side like ShapeObject."""

    shape: str
    colour: str
    size: str
    position: str
    s: float
    cx: float
    cy: float
    area: float  # pixels
    fill: float
    skew_y: float
    confidence: float  # min of the colour vote share and the shape-fit margin


@dataclass(frozen=True)
class DetectedScene:
    """What :func:`analyze` read: background (None if unclear) and objects (left to right)."""

    background: str | None
    background_confidence: float
    objects: tuple[DetectedObject, ...]

    @property
    def unknown(self) -> bool:
        """No clear scene: no recognisable background or no object."""
        return self.background is None or not self.objects


def _soft(alpha: np.ndarray) -> np.ndarray:
    return np.clip((alpha - SOFT_LOW) / (SOFT_HIGH - SOFT_LOW), 0.0, 1.0)


def _object(alpha: np.ndarray, votes: Counter, n_pixels: int) -> DetectedObject:
    """Classify one component given its (R, R) coverage map (clipped to [0, 1]) and colour votes."""
    R = alpha.shape[0]
    colour_index, count = votes.most_common(1)[0]
    f = features(alpha)
    shape, shape_conf, _ = classify_shape(alpha, f, ramp=_soft)
    s, cx, cy = box_from_features(f, shape, R)
    position = object_position(ShapeObject(shape, "red", "small", s, cx, cy))
    return DetectedObject(
        shape,
        COLOUR_NAMES[colour_index],
        size_word(s),
        position,
        s,
        cx,
        cy,
        f.area,
        f.fill,
        f.skew_y,
        min(count / n_pixels, shape_conf),
    )


def analyze(image) -> DetectedScene:
    """Read a Shapes image (PIL, (H, W, 3) uint8, or (3, H, W) tensor in [-1, 1]).

    Steps: background from the median colour; per-pixel best palette colour and
    coverage on the background->colour segment; 4-connected components of
    coverage > 0.5; specks under 40% of the smallest star dropped (or absorbed
    into an object within two pixels); each
    component classified (colour vote, template-fit shape, area-based size,
    centre cell).
    """
    img = to_array(image)
    H, W, _ = img.shape
    if H != W:
        raise ValueError(f"Shapes images are square, got {H}x{W}")
    bg_name, bg_rgb, bg_conf = find_background(img)
    alpha, residual = colour_alpha(img, bg_rgb)
    best = np.argmin(residual, axis=0)  # (H, W) colour index
    best_alpha = np.take_along_axis(alpha, best[None], 0)[0]
    best_res = np.take_along_axis(residual, best[None], 0)[0]
    mask = (best_alpha > 0.5) & (best_res < MAX_RESIDUAL)
    labels, count = label_components(mask)
    sizes = np.bincount(labels[labels >= 0], minlength=count)
    big = np.flatnonzero(sizes >= MIN_AREA_FRACTION * H * W)
    free = ~np.isin(labels, big)  # background and specks: any object may claim them
    objects = []
    for k in big:
        component = labels == k
        votes = Counter(best[component].tolist())
        colour_index = votes.most_common(1)[0][0]
        # Two pixels of margin take in the anti-aliased tips (a small star's
        # points at 32 px are fragments under 0.5 coverage, off the main body).
        region = dilate(dilate(component)) & (component | free)
        coverage = np.where(region, np.clip(alpha[colour_index], 0.0, 1.0), 0.0)
        objects.append(_object(coverage, votes, int(sizes[k])))
    objects.sort(key=lambda o: (o.cx, o.cy))
    return DetectedScene(bg_name, bg_conf, tuple(objects))


def relation_between(a: DetectedObject, b: DetectedObject) -> str:
    """The relation phrase for "a RELATION b" along the axis of larger centre offset."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _object_checks(spec: ObjectSpec, obj: DetectedObject | None) -> dict[str, bool]:
    """Correctness of each attribute the object spec names (all False if no object)."""
    return {k: obj is not None and getattr(obj, k) == v for k, v in dataclasses.asdict(spec).items() if v is not None}


def _match(spec: CaptionSpec, scene: DetectedScene) -> tuple[DetectedObject | None, ...]:
    """Detected object for each spec object, maximising the number of matching attributes."""
    n = len(spec.objects)
    found: list[DetectedObject | None] = [*scene.objects, *[None] * max(0, n - len(scene.objects))]
    best: tuple[DetectedObject | None, ...] = ()
    best_hits = -1
    for perm in itertools.permutations(found, n):
        hits = sum(sum(_object_checks(s, o).values()) for s, o in zip(spec.objects, perm))
        if hits > best_hits:
            best, best_hits = perm, hits
    return best


def _as_spec(caption_or_spec) -> CaptionSpec:
    return caption_or_spec if isinstance(caption_or_spec, CaptionSpec) else parse_caption(caption_or_spec)


def score(caption_or_spec, image, scene: DetectedScene | None = None) -> dict:
    """Per-attribute correctness of an image for the attributes its caption specifies.

    Keys present only when specified: count, shape, colour, size, position,
    background, relation (each True when right for every object); ``exact``
    is True when all of them are. The empty caption specifies nothing (exact).
    """
    spec = _as_spec(caption_or_spec)
    scene = analyze(image) if scene is None else scene
    result: dict[str, bool] = {}
    if spec.objects:
        result["count"] = len(scene.objects) == len(spec.objects)
        matched = _match(spec, scene)
        for s, o in zip(spec.objects, matched):
            for k, ok in _object_checks(s, o).items():
                result[k] = result.get(k, True) and ok
        if spec.relation is not None:
            a, b = matched
            result["relation"] = a is not None and b is not None and relation_between(a, b) == spec.relation
    if spec.background is not None:
        result["background"] = scene.background == spec.background
    result["exact"] = all(result.values())
    return result


def entropy_bits(values: list[str]) -> float:
    """Entropy in bits of the empirical distribution of ``values``."""
    counts = np.array(list(Counter(values).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) if len(values) else 0.0


OPEN_ATTRIBUTES = {
    "colour": len(COLOURS),
    "size": len(SIZES),
    "position": len(POSITIONS),
    "background": len(BACKGROUNDS),
}


def _open_values(spec: CaptionSpec, scene: DetectedScene) -> dict[str, list[str]]:
    """Detected values of the attributes the caption leaves open (position: one object only)."""
    out: dict[str, list[str]] = {k: [] for k in OPEN_ATTRIBUTES}
    if spec.objects and spec.background is None and scene.background is not None:
        out["background"].append(scene.background)
    for s, o in zip(spec.objects, _match(spec, scene)):
        for k in ("colour", "size", "position"):
            if o is not None and getattr(s, k) is None and not (k == "position" and len(spec.objects) > 1):
                out[k].append(getattr(o, k))
    return out


def _accuracies(scores: list[dict]) -> dict:
    keys = sorted({k for s in scores for k in s})
    return {"n": len(scores), **{k: float(np.mean([s[k] for s in scores if k in s])) for k in keys}}


def evaluate(captions, images) -> dict:
    """Score images against their captions (strings or CaptionSpec) and report.

    An image may also be given as the :class:`DetectedScene` :func:`analyze` read from it.
    Returns {"all", "single", "two", "held_out": per-attribute accuracy dicts
    with "n" and "exact"; "diversity": per open attribute the entropy (bits) of
    the detected values, the maximum log2(k), and n; "unknown_rate"; "scores": each
    caption's :func:`score`, in order (for paired comparisons of two runs on the same captions)}.
    """
    specs = [_as_spec(c) for c in captions]
    scenes = [im if isinstance(im, DetectedScene) else analyze(im) for im in images]
    if len(specs) != len(scenes):
        raise ValueError(f"{len(specs)} captions for {len(scenes)} images")
    scores = [score(sp, None, scene=sc) for sp, sc in zip(specs, scenes)]
    groups = {
        "all": [True] * len(specs),
        "single": [len(sp.objects) == 1 for sp in specs],
        "two": [len(sp.objects) == 2 for sp in specs],
        "held_out": [any((o.colour, o.shape) in HELD_OUT_PAIRS for o in sp.objects) for sp in specs],
    }
    report: dict[str, Any] = {
        name: _accuracies([s for s, m in zip(scores, member) if m]) for name, member in groups.items()
    }
    open_values: dict[str, list[str]] = {k: [] for k in OPEN_ATTRIBUTES}
    for sp, sc in zip(specs, scenes):
        for k, v in _open_values(sp, sc).items():
            open_values[k] += v
    report["diversity"] = {
        k: {"entropy_bits": entropy_bits(v), "max_bits": math.log2(OPEN_ATTRIBUTES[k]), "n": len(v)}
        for k, v in open_values.items()
    }
    report["unknown_rate"] = float(np.mean([sc.unknown for sc in scenes])) if scenes else 0.0
    report["scores"] = scores
    return report
