"""Pixel fidelity of Shapes images: how far an image is from the clean render of what it shows.

Exact match (``shapes_eval``) says the right objects are there, not that they are clean. The
fidelity score re-renders the scene the evaluator detects (background, and each object's shape,
colour, box side and centre) with the contract renderer (``data/shapes_render.py``, spec
``docs/shapes.md``) at the image's resolution and reports the mean absolute
difference in 8-bit levels (0-255, averaged over pixels and the three channels)

- ``mae``: over the whole image;
- ``background_mae``: over background pixels at least ``BACKGROUND_MARGIN`` = 3 px (Euclidean,
  centre to centre) from every pixel any re-rendered object touches. There a clean image is
  exactly the palette colour, so a grey cast, a frame, blotches or an extra smudge show up
  undiluted, and outline errors (which the margin leaves out) do not.

A clean render scores ~0 (``background_mae`` exactly 0; ``mae`` only from the detector's
sub-pixel box error on edges). An image whose background the evaluator cannot name has no
re-render: both scores are NaN and reports count such images apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from glide_diffusion.data.shapes_render import coverage, render_array
from glide_diffusion.data.shapes_scene import Scene, ShapeObject

from .shapes_eval import DetectedScene, analyze, evaluate
from .shapes_segment import to_array

__all__ = [
    "BACKGROUND_MARGIN",
    "Fidelity",
    "detected_to_scene",
    "object_mask",
    "background_mask",
    "fidelity",
    "summarize_fidelity",
    "evaluate_with_fidelity",
]

BACKGROUND_MARGIN = 3  # px from any object (issue 35: "background pixels at least 3 px from any object")


@dataclass(frozen=True)
class Fidelity:
    """Mean absolute error in 8-bit levels against the re-render (NaN when there is none)."""

    mae: float
    background_mae: float
    background_pixels: int  # how many pixels background_mae averages over


def detected_to_scene(scene: DetectedScene) -> Scene | None:
    """The renderable scene of a detection (None when the background is unknown)."""
    if scene.background is None:
        return None
    objects = tuple(ShapeObject(o.shape, o.colour, o.size, o.s, o.cx, o.cy) for o in scene.objects)
    return Scene(scene.background, objects)


def object_mask(scene: Scene, resolution: int) -> np.ndarray:
    """(R, R) bool: pixels any object of ``scene`` covers at all (a sub-sample of the 4x renderer inside)."""
    mask = np.zeros((resolution, resolution), dtype=bool)
    for obj in scene.objects:
        (r0, r1, c0, c1), cov = coverage(obj, resolution, supersample=4)
        mask[r0:r1, c0:c1] |= cov > 0
    return mask


def background_mask(objects: np.ndarray, margin: int = BACKGROUND_MARGIN) -> np.ndarray:
    """(H, W) bool: pixels whose centre is at least ``margin`` px from every True pixel's centre.

    Dilation by the disc of offsets with dy^2 + dx^2 < margin^2 (for margin 3: the 5 x 5 square).
    """
    H, W = objects.shape
    padded = np.pad(objects, margin)
    near = np.zeros_like(objects)
    for dy in range(-margin + 1, margin):
        for dx in range(-margin + 1, margin):
            if dy * dy + dx * dx < margin * margin:
                near |= padded[margin + dy : margin + dy + H, margin + dx : margin + dx + W]
    return ~near


def fidelity(image, scene: DetectedScene | None = None, margin: int = BACKGROUND_MARGIN) -> Fidelity:
    """:class:`Fidelity` of one Shapes image (PIL, (H, W, 3) uint8, or (3, H, W) tensor in [-1, 1]);
    ``scene`` is what :func:`~.shapes_eval.analyze` read from it (read here when not given)."""
    img = to_array(image).astype(np.float64)
    detected = detected_to_scene(analyze(img) if scene is None else scene)
    if detected is None:
        return Fidelity(float("nan"), float("nan"), 0)
    R = img.shape[0]
    error = np.abs(img - render_array(detected, R).astype(np.float64)).mean(axis=2)  # (R, R)
    bg = background_mask(object_mask(detected, R), margin)
    background = float(error[bg].mean()) if bg.any() else float("nan")
    return Fidelity(float(error.mean()), background, int(bg.sum()))


def summarize_fidelity(scores: list[Fidelity]) -> dict:
    """Mean and median of both scores over the images that have them, and how many do not."""
    mae = np.array([s.mae for s in scores], dtype=np.float64)
    bg = np.array([s.background_mae for s in scores], dtype=np.float64)
    ok = ~np.isnan(mae)

    def stat(f: Callable[[np.ndarray], Any], a: np.ndarray) -> float:
        return float(f(a[~np.isnan(a)])) if (~np.isnan(a)).any() else float("nan")

    return {
        "n": int(ok.sum()),
        "undefined": int((~ok).sum()),
        "mae": stat(np.mean, mae),
        "mae_median": stat(np.median, mae),
        "background_mae": stat(np.mean, bg),
        "background_mae_median": stat(np.median, bg),
    }


def evaluate_with_fidelity(captions, images) -> dict:
    """:func:`~.shapes_eval.evaluate` (exact match, attribute accuracies, diversity) plus
    ``"fidelity"`` (:func:`summarize_fidelity`) and ``"fidelity_scores"`` (one :class:`Fidelity`
    per image, in order). Each image is analysed once."""
    images = list(images)
    scenes = [analyze(im) for im in images]
    report = evaluate(captions, scenes)
    scores = [fidelity(im, sc) for im, sc in zip(images, scenes)]
    report["fidelity"] = summarize_fidelity(scores)
    report["fidelity_scores"] = scores
    return report
