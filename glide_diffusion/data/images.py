"""Image decoding and preprocessing shared by every file-backed dataset.

Pipeline for one sample: bytes -> :func:`load_image` (any PIL mode -> RGB,
EXIF orientation applied) -> :func:`resize_center_crop` (shorter side to R,
centre R x R crop) -> :func:`to_tensor` ((3, R, R) float32 in [-1, 1]).
Upsampler training adds a ``low_res`` copy made by :func:`downsample` (box
filter, as GLIDE trains super-resolution on area-downsampled images).

Bad input raises :class:`BadSample` carrying a short ``reason``; datasets catch
it, count it in a :class:`SkipStats` and move on (:func:`decode_item`).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections import Counter

import fsspec
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ImageSource = str | os.PathLike | bytes

# Downscale in integer box steps until within this factor of the target, then
# BICUBIC: the same idea as guided-diffusion's repeated BOX halving.
REDUCING_GAP = 2.0

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_INT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class BadSample(ValueError):
    """A sample that cannot be used; ``reason`` is a short key for statistics."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(f"{reason}: {message}" if message else reason)
        self.reason = reason


class SkipStats(Counter):
    """Counter of skipped (and merely noteworthy) samples, keyed by reason.

    :meth:`note` counts and logs the first occurrence of each reason only, so a
    dataset with a million broken files logs one line per kind of breakage.
    One instance lives on each dataset object; under a DataLoader every worker
    process holds its own copy.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._logged: set[str] = set()

    def note(self, reason: str, detail: str = "") -> None:
        """Count one event of ``reason``; log it if it is the first of its kind."""
        self[reason] += 1
        if reason not in self._logged:
            self._logged.add(reason)
            logger.warning(
                "data: %s (%s); further '%s' events are only counted in dataset.stats",
                reason,
                detail,
                reason,
            )


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a local path or fsspec URL (``s3://``, ``https://`` ...) fully."""
    path = os.fspath(path)
    try:
        if "://" in path:
            with fsspec.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, ValueError, ImportError) as exn:
        raise BadSample("unreadable", f"{path}: {exn}") from exn


def _open_checked(data: bytes, max_pixels: int | None) -> Image.Image:
    """Open and fully decode ``data``; decompression bombs count as errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exn:
            raise BadSample("not_an_image", str(exn)) from exn
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exn:
            raise BadSample("too_large", str(exn)) from exn
        except Exception as exn:  # any decoder failure is a bad sample
            raise BadSample("corrupt", repr(exn)) from exn
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise BadSample("too_large", f"{img.width}x{img.height} > {max_pixels} pixels")
        try:
            img.load()  # truncated files fail here, not in open()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exn:
            raise BadSample("too_large", str(exn)) from exn
        except Exception as exn:  # as above: any decoder failure is a bad sample
            raise BadSample("corrupt", repr(exn)) from exn
    return img


def _exif_transpose(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a broken EXIF block is ignored."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # orientation is a nicety, not a reason to skip
        return img


def _int_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer grayscale -> 8-bit ``L`` by scaling 0..65535 to 0..255.

    PIL's own ``convert("L")`` clips instead of scaling. Mode ``I`` (what many
    decoders use for 16-bit data) is assumed to hold the 16-bit range too.
    """
    arr = np.asarray(img).astype(np.float64)
    arr = np.clip(arr, 0, 65535) / 257.0
    return Image.fromarray(np.round(arr).astype(np.uint8), mode="L")


def _float_to_l(img: Image.Image) -> Image.Image:
    """32-bit float grayscale -> ``L``: [0, 1] data scales by 255, else min-max."""
    arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.round(arr * 255.0).astype(np.uint8), mode="L")


def _on_white(img: Image.Image) -> Image.Image:
    """Composite an image with transparency onto an opaque white background."""
    rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited onto white."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return _on_white(img)
    if img.mode in _INT_MODES:
        return _int_to_l(img).convert("RGB")
    if img.mode == "F":
        return _float_to_l(img).convert("RGB")
    try:  # P, L, 1, CMYK, YCbCr, RGBX, ...
        return img.convert("RGB")
    except (ValueError, OSError) as exn:
        raise BadSample("unsupported_mode", f"mode {img.mode}: {exn}") from exn


def load_image(src: ImageSource, *, max_pixels: int | None = None) -> Image.Image:
    """Decode an image file (path, fsspec URL or bytes) to an RGB PIL image.

    Raises :class:`BadSample` with reason ``empty_file``, ``unreadable``,
    ``not_an_image``, ``too_large`` (PIL's decompression-bomb limit
    ``Image.MAX_IMAGE_PIXELS``, or ``max_pixels`` when given), ``corrupt``
    (e.g. truncated data) or ``unsupported_mode``. GIFs give their first frame.
    """
    data = src if isinstance(src, bytes) else read_bytes(src)
    if len(data) == 0:
        raise BadSample("empty_file")
    img = _exif_transpose(_open_checked(data, max_pixels))
    return to_rgb(img)


def resize_center_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Scale the shorter side to ``resolution`` and crop the centre square.

    Done as one resample of the centred square region (PIL's ``box``), which is
    the same geometry as resize-then-crop without a huge intermediate for
    extreme aspect ratios. Large downscales box-reduce first (``reducing_gap``)
    then BICUBIC, so they do not alias; small images are upscaled.
    """
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    if side == resolution and w == h:
        return img
    return img.resize((resolution, resolution), Image.Resampling.BICUBIC, box=box, reducing_gap=REDUCING_GAP)


def downsample(img: Image.Image, size: int) -> Image.Image:
    """Area (box-filter) downsample of a square image to ``size`` x ``size``."""
    return img.resize((size, size), Image.Resampling.BOX)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 tensor in [-1, 1] (x / 127.5 - 1)."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (3, H, W)
    return x.to(torch.float32) / 127.5 - 1.0


def image_tensors(
    img: Image.Image, resolution: int, *, low_res: int | None = None, flip: bool = False
) -> dict[str, torch.Tensor]:
    """Crop/resize a decoded image to ``{"image"[, "low_res"]}`` tensors.

    ``flip`` mirrors left-right before ``low_res`` is derived, so the pair
    stays aligned.
    """
    img = resize_center_crop(img, resolution)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = {"image": to_tensor(img)}
    if low_res is not None:
        out["low_res"] = to_tensor(downsample(img, low_res))
    return out


def decode_item(
    src: ImageSource,
    caption: str,
    *,
    resolution: int,
    stats: SkipStats,
    detail: str,
    low_res: int | None = None,
    flip: bool = False,
    max_pixels: int | None = None,
) -> dict | None:
    """Decode one (image, caption) pair into a dataset item, or ``None``.

    A bad image is counted in ``stats`` under its reason and gives ``None``;
    an image smaller than ``resolution`` is upscaled and counted as
    ``upscaled`` (it is still returned). ``detail`` names the sample in logs.
    """
    try:
        img = load_image(src, max_pixels=max_pixels)
    except BadSample as exn:
        stats.note(exn.reason, f"{detail}: {exn}")
        return None
    if min(img.size) < resolution:
        stats.note("upscaled", f"{detail}: {img.width}x{img.height} < {resolution}")
    return {**image_tensors(img, resolution, low_res=low_res, flip=flip), "caption": caption}
