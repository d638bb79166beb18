"""Rasterise a Shapes scene: exact geometry at k x supersampling, then a box-filter downsample.

Implements the shape definitions of the "Objects" section and the anti-aliasing
rule of "Canvas and coordinates" in ``docs/shapes.md``. Coverage
is computed analytically at the centres of the k x k sub-pixels of each output
pixel and averaged (a box filter), so object interiors and the background get
their exact palette RGB and edges are linear blends of the two.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from glide_diffusion.data.shapes_scene import BACKGROUNDS, COLOURS, Scene, ShapeObject

STAR_INNER_RATIO = 0.382  # inner radius / outer radius (spec "Objects": star)


def star_vertices(cx: float, cy: float, s: float) -> np.ndarray:
    """(10, 2) star polygon: outer points on radius s/2 (first straight up), inner on 0.382 s/2."""
    k = np.arange(10)
    angle = -math.pi / 2 + k * math.pi / 5  # y grows downwards, so -pi/2 points up
    radius = np.where(k % 2 == 0, s / 2, STAR_INNER_RATIO * s / 2)
    return np.stack([cx + radius * np.cos(angle), cy + radius * np.sin(angle)], axis=1)


def triangle_vertices(cx: float, cy: float, s: float) -> np.ndarray:
    """(3, 2) triangle: bottom-left and bottom-right box corners and the top-centre point."""
    h = s / 2
    return np.array([[cx - h, cy + h], [cx + h, cy + h], [cx, cy - h]])


def inside_polygon(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd (crossing number) test of points (x, y) against a closed polygon (V, 2)."""
    inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if y0 == y1:
            continue  # a horizontal edge never crosses the horizontal ray
        straddles = (y0 > y) != (y1 > y)
        x_cross = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= straddles & (x < x_cross)
    return inside


def inside_shape(obj: ShapeObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of points (fractions of R, broadcastable) that lie inside the object."""
    dx, dy, h = x - obj.cx, y - obj.cy, obj.s / 2
    if obj.shape == "circle":
        return dx * dx + dy * dy <= h * h
    if obj.shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if obj.shape == "cross":
        bar = obj.s / 6  # half of the thickness s/3
        return ((np.abs(dx) <= h) & (np.abs(dy) <= bar)) | ((np.abs(dx) <= bar) & (np.abs(dy) <= h))
    if obj.shape == "triangle":
        return inside_polygon(x, y, triangle_vertices(obj.cx, obj.cy, obj.s))
    if obj.shape == "star":
        return inside_polygon(x, y, star_vertices(obj.cx, obj.cy, obj.s))
    raise ValueError(f"unknown shape {obj.shape!r}")


def coverage(obj: ShapeObject, resolution: int, supersample: int) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Fraction of each output pixel inside the object, over the pixels of its box only.

    Returns ((row0, row1, col0, col1), cov) with cov of shape (row1 - row0, col1 - col0).
    """
    R, k = resolution, supersample
    c0, c1 = max(0, math.floor((obj.cx - obj.s / 2) * R)), min(R, math.ceil((obj.cx + obj.s / 2) * R))
    r0, r1 = max(0, math.floor((obj.cy - obj.s / 2) * R)), min(R, math.ceil((obj.cy + obj.s / 2) * R))
    sub = (np.arange(k) + 0.5) / k  # sub-pixel centres inside a unit pixel
    xs = ((np.arange(c0, c1)[:, None] + sub[None, :]).ravel() / R)[None, :]  # (1, W k)
    ys = ((np.arange(r0, r1)[:, None] + sub[None, :]).ravel() / R)[:, None]  # (H k, 1)
    mask = inside_shape(obj, xs, ys).astype(np.float32)  # (H k, W k)
    cov = mask.reshape(r1 - r0, k, c1 - c0, k).mean(axis=(1, 3))  # box filter
    return (r0, r1, c0, c1), cov


def render_array(scene: Scene, resolution: int, supersample: int = 4) -> np.ndarray:
    """(R, R, 3) uint8 rendering of the scene; the spec asks for supersample >= 4."""
    if supersample < 4:
        raise ValueError("the Shapes contract asks for at least 4x supersampling")
    image = np.empty((resolution, resolution, 3), dtype=np.float32)
    image[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        (r0, r1, c0, c1), cov = coverage(obj, resolution, supersample)
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)
        patch = image[r0:r1, c0:c1]
        image[r0:r1, c0:c1] = patch + cov[..., None] * (colour - patch)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render(scene: Scene, resolution: int, supersample: int = 4) -> Image.Image:
    """RGB PIL image of side ``resolution`` (spec: supersample >= 4, box downsample, no noise)."""
    return Image.fromarray(render_array(scene, resolution, supersample), mode="RGB")
