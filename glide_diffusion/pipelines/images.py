"""Image and mask conversions the pipelines share: tensors <-> PIL and uint8, 8-bit
quantization, alpha, and the fill masks of inpainting (from a picture, rectangles or an
extended canvas) at a model's resolution.

Tensors are (B, C, H, W) in [-1, 1]; masks at this API are bool (H, W), True = fill.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "extend_canvas",
    "from_pil",
    "known_at",
    "mask_from_image",
    "mask_from_rects",
    "quantize",
    "resized",
    "split_alpha",
    "to_pil",
    "to_uint8",
]


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to 8-bit levels, as the notebooks do before upsampling."""
    return ((x + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(x: torch.Tensor) -> list[Image.Image]:
    return [Image.fromarray(a) for a in to_uint8(x)]


def from_pil(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> (1, 3, H, W) float in [-1, 1]."""
    a = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))
    return (a / 127.5 - 1).permute(2, 0, 1)[None].contiguous()


def split_alpha(image: Image.Image) -> tuple[Image.Image, np.ndarray | None]:
    """RGB image composited on white, and the transparency (True = transparent) if it has alpha."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), alpha < 128
    return image.convert("RGB"), None


def mask_from_image(mask: Image.Image, size: tuple[int, int], invert: bool = False) -> np.ndarray:
    """A mask picture -> bool (H, W), True = fill. White (>= 128) fills; grey levels are thresholded."""
    if mask.size != size:
        raise ValueError(f"the mask is {mask.size[0]}x{mask.size[1]} but the image is {size[0]}x{size[1]}")
    if mask.mode in ("RGBA", "LA"):
        mask = split_alpha(mask)[0]
    m = np.asarray(mask.convert("L"))
    if not np.isin(m, (0, 255)).all():
        warnings.warn("the mask is not binary: pixels >= 128 count as 'fill', darker ones as 'keep'", stacklevel=2)
    fill = m >= 128
    return ~fill if invert else fill


def mask_from_rects(rects: Sequence[tuple[int, int, int, int]], size: tuple[int, int]) -> np.ndarray:
    """Rectangles (left, top, right, bottom) in pixels, right/bottom exclusive -> bool (H, W) fill mask."""
    w, h = size
    fill = np.zeros((h, w), dtype=bool)
    for left, top, right, bottom in rects:
        if not (0 <= left < right <= w and 0 <= top < bottom <= h):
            raise ValueError(f"rectangle {(left, top, right, bottom)} is not inside the {w}x{h} image")
        fill[top:bottom, left:right] = True
    return fill


def extend_canvas(
    image: Image.Image,
    fill: np.ndarray | None,
    left: int,
    top: int,
    right: int,
    bottom: int,
) -> tuple[Image.Image, np.ndarray]:
    """Outpainting: grow the canvas by the given margins (grey), which become the region to fill."""
    if min(left, top, right, bottom) < 0:
        raise ValueError("canvas extensions must be >= 0 pixels")
    w, h = image.size
    canvas = Image.new("RGB", (w + left + right, h + top + bottom), (128, 128, 128))
    canvas.paste(image, (left, top))
    new_fill = np.ones((canvas.size[1], canvas.size[0]), dtype=bool)
    new_fill[top : top + h, left : left + w] = fill if fill is not None else False
    return canvas, new_fill


def known_at(fill: np.ndarray, size: int) -> torch.Tensor:
    """(1, 1, size, size) float known-mask; a pixel is known only if all of its source pixels are."""
    f = torch.from_numpy(fill.astype(np.float32))[None, None]
    if f.shape[-1] != size:
        f = F.adaptive_max_pool2d(f, size) if f.shape[-1] > size else F.interpolate(f, size=size, mode="nearest")
    return 1.0 - f


def resized(image: Image.Image, size: int) -> torch.Tensor:
    return from_pil(image if image.size == (size, size) else image.resize((size, size), Image.Resampling.BICUBIC))
