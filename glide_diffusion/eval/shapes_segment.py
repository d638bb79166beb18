"""Pixel-level analysis of a Shapes image: background, per-colour coverage, components.

Used by :mod:`glide_diffusion.eval.shapes_eval`. Rendered edges are linear
blends ``B + alpha (C - B)`` of the background B and an object colour C (spec
``docs/shapes.md``, "Canvas": box-filter anti-aliasing), so each
pixel is projected onto the segment from B to every palette colour; the
best-fitting colour gives the pixel's label and ``alpha`` its coverage.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from glide_diffusion.data.shapes_scene import BACKGROUNDS, COLOURS

BG_NAMES = tuple(BACKGROUNDS)
COLOUR_NAMES = tuple(COLOURS)
BG_RGB = np.array([BACKGROUNDS[n] for n in BG_NAMES], dtype=np.float32)  # (3, 3)
COLOUR_RGB = np.array([COLOURS[n] for n in COLOUR_NAMES], dtype=np.float32)  # (6, 3)
BG_MAX_DISTANCE = 60.0  # RGB distance from the measured background to its palette entry
BG_PIXEL_TOLERANCE = 48.0  # a pixel within this of the background counts as background
MAX_RESIDUAL = 60.0  # RGB distance from the B->C segment beyond which a pixel fits no colour


def to_array(image) -> np.ndarray:
    """PIL image, (H, W, 3) uint8 array, or (3, H, W) tensor in [-1, 1] -> (H, W, 3) float32 RGB."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if hasattr(image, "detach"):  # torch tensor, channels first, in [-1, 1]
        x = image.detach().cpu().float().numpy()
        return np.clip((np.transpose(x, (1, 2, 0)) + 1.0) * 127.5, 0, 255).astype(np.float32)
    x = np.asarray(image)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {x.shape}")
    return x.astype(np.float32)


def find_background(img: np.ndarray) -> tuple[str | None, np.ndarray, float]:
    """(name or None, measured RGB (3,), confidence) of the background.

    Objects cover under 40% of any Shapes canvas, so the per-channel median is
    the background colour; confidence is the fraction of pixels near it.
    """
    measured = np.median(img.reshape(-1, 3), axis=0)
    distance = np.linalg.norm(BG_RGB - measured, axis=1)
    confidence = float(np.mean(np.linalg.norm(img - measured, axis=2) < BG_PIXEL_TOLERANCE))
    name = BG_NAMES[int(np.argmin(distance))] if distance.min() < BG_MAX_DISTANCE else None
    return name, measured.astype(np.float32), confidence


def colour_alpha(img: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-colour coverage and fit residual of every pixel.

    Returns alpha (6, H, W), the unclipped projection onto B -> C_k, and
    residual (6, H, W), the distance to the clipped segment.
    """
    v = COLOUR_RGB - background  # (6, 3)
    d = img - background  # (H, W, 3)
    dot = np.einsum("hwc,kc->khw", d, v)  # (6, H, W)
    v2 = np.sum(v * v, axis=1)[:, None, None]
    alpha = dot / v2
    clipped = np.clip(alpha, 0.0, 1.0)
    # |d - a v|^2 expanded, so no (6, H, W, 3) array is built
    res2 = np.sum(d * d, axis=2)[None] - 2 * clipped * dot + clipped * clipped * v2
    return alpha, np.sqrt(np.maximum(res2, 0.0))


def _shifted(a: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """a shifted by (dy, dx) with ``fill`` entering at the border."""
    out = np.full_like(a, fill)
    H, W = a.shape
    out[max(dy, 0) : H + min(dy, 0), max(dx, 0) : W + min(dx, 0)] = a[
        max(-dy, 0) : H + min(-dy, 0), max(-dx, 0) : W + min(-dx, 0)
    ]
    return out


def dilate(mask: np.ndarray) -> np.ndarray:
    """4-neighbourhood binary dilation by one pixel."""
    out = mask.copy()
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        out |= _shifted(mask, dy, dx, False)
    return out


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean (H, W) mask: labels (-1 outside) and their count.

    Min-label propagation with pointer jumping: every pixel starts with its flat
    index, takes the minimum over its neighbours, then jumps to its label's label.
    """
    H, W = mask.shape
    none = H * W
    lab = np.where(mask, np.arange(H * W).reshape(H, W), none)
    while True:
        new = lab.copy()
        for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            new = np.minimum(new, _shifted(lab, dy, dx, none))
        new = np.where(mask, new, none)
        flat = new.ravel()
        inside = flat < none
        while True:  # pointer jumping: labels are flat indices of pixels in the same component
            jumped = flat[flat[inside]]
            if np.array_equal(jumped, flat[inside]):
                break
            flat[inside] = jumped
        if np.array_equal(new, lab):
            break
        lab = new
    roots, labels = np.unique(lab, return_inverse=True)
    labels = labels.reshape(H, W)
    count = len(roots) - (1 if roots[-1] == none else 0)
    return np.where(mask, labels, -1), int(count)
