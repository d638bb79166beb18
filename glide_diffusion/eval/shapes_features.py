"""Shape features and classification of one segmented Shapes object.

Reference values follow from the geometry in ``docs/shapes.md``
("Objects"), for a box of side s:

| shape    | area / s^2        | fill = area / bbox | y-skewness |
|----------|-------------------|--------------------|------------|
| square   | 1                 | 1                  | 0          |
| circle   | pi/4 = 0.785      | pi/4 = 0.785       | 0          |
| cross    | 5/9 = 0.556       | 5/9 = 0.556        | 0          |
| triangle | 1/2               | 1/2                | -2^1.5/5 = -0.566 |
| star     | 5 k sin36 / 4 = 0.281 | 0.326 (bbox 0.951 s x 0.905 s) | 0 |

with k = 0.382 the star's inner/outer radius ratio. The triangle's mass sits
low (y grows downwards), so its vertical skewness is that of a triangular
density rising to its maximum; every other shape is symmetric about a
horizontal axis or (star) five-fold symmetric, so its third moments vanish.

Fill and skewness separate the shapes at 64 px and up, but a 6-pixel star at
32 px blurs towards a disc. Classification therefore fits templates instead:
each candidate is re-rendered with the dataset's own rasteriser at the box
implied by the object's area and centroid, and the best L1 fit wins. The
table's fill and skewness are reported as diagnostics and tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from glide_diffusion.data.shapes_render import STAR_INNER_RATIO, coverage
from glide_diffusion.data.shapes_scene import ShapeObject

AREA_PER_S2: dict[str, float] = {
    "square": 1.0,
    "circle": math.pi / 4,
    "cross": 5 / 9,
    "triangle": 0.5,
    "star": 5 * STAR_INNER_RATIO * math.sin(math.radians(36)) / 4,
}
STAR_BBOX = (math.sin(math.radians(72)), (1 + math.cos(math.radians(36))) / 2)  # (w, h) / s
FILL: dict[str, float] = {
    **{k: v for k, v in AREA_PER_S2.items() if k != "star"},
    "star": AREA_PER_S2["star"] / (STAR_BBOX[0] * STAR_BBOX[1]),
}
SKEW: dict[str, float] = {"square": 0.0, "circle": 0.0, "cross": 0.0, "star": 0.0, "triangle": -(2**1.5) / 5}
SIZE_THRESHOLD = 0.30  # s / R between small (<= 0.242) and large (>= 0.36)


@dataclass(frozen=True)
class Features:
    """Moments of a soft coverage map, in pixels (x right, y down)."""

    area: float
    mx: float
    my: float
    width: float
    height: float
    fill: float
    skew_y: float


def features(alpha: np.ndarray) -> Features:
    """Features of an (H, W) coverage map in [0, 1] holding one object."""
    H, W = alpha.shape
    ys, xs = np.arange(H) + 0.5, np.arange(W) + 0.5
    area = float(alpha.sum())
    mx = float((alpha.sum(0) * xs).sum() / area)
    my = float((alpha.sum(1) * ys).sum() / area)
    width, height = float(alpha.max(0).sum()), float(alpha.max(1).sum())
    row_mass = alpha.sum(1)
    var_y = float((row_mass * (ys - my) ** 2).sum() / area)
    skew = float((row_mass * (ys - my) ** 3).sum() / area) / max(var_y, 1e-9) ** 1.5
    return Features(area, mx, my, width, height, area / max(width * height, 1e-9), skew)


def template(shape: str, s: float, cx: float, cy: float, resolution: int) -> np.ndarray:
    """(R, R) coverage map of a shape rendered exactly as the dataset renders it."""
    obj = ShapeObject(shape, "red", "small", s, cx, cy)
    (r0, r1, c0, c1), cov = coverage(obj, resolution, supersample=4)
    out = np.zeros((resolution, resolution), dtype=np.float32)
    out[r0:r1, c0:c1] = cov
    return out


def classify_shape(alpha: np.ndarray, f: Features, ramp=lambda a: a) -> tuple[str, float, dict[str, float]]:
    """Shape whose rendered template best fits the coverage map (analysis by synthesis).

    For each shape the box (s, cx, cy) follows from the object's area and
    centroid (:func:`box_from_features`); the template is rendered at the same
    resolution and compared by L1 distance over the object's area, after the
    same ``ramp`` (the evaluator's noise-suppressing coverage map) on both. Returns
    (shape, confidence in [0, 1] from the margin to the runner-up, errors).
    """
    R = alpha.shape[0]
    errors = {}
    for shape in AREA_PER_S2:
        s, cx, cy = box_from_features(f, shape, R)
        errors[shape] = float(np.abs(ramp(alpha) - ramp(template(shape, s, cx, cy, R))).sum() / max(f.area, 1e-9))
    best, second = sorted(errors, key=errors.__getitem__)[:2]
    confidence = 1.0 - errors[best] / max(errors[second], 1e-9)
    return best, float(np.clip(confidence, 0.0, 1.0)), errors


def box_from_features(f: Features, shape: str, resolution: int) -> tuple[float, float, float]:
    """(s, cx, cy) of the object's box as fractions of R, from its area and centroid.

    Centroids coincide with box centres except the triangle's, s/6 below it.
    """
    s = math.sqrt(f.area / AREA_PER_S2[shape]) / resolution
    cy = f.my / resolution - (s / 6 if shape == "triangle" else 0.0)
    return s, f.mx / resolution, cy


def size_word(s: float) -> str:
    """ "small" below 0.30 R, else "large" (spec sizes 0.22 R and 0.40 R, jitter 0.9-1.1)."""
    return "small" if s < SIZE_THRESHOLD else "large"
