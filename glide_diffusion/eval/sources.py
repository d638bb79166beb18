"""Image sources of ``glide eval stats``: folders, samples folders, WebDataset shards, Shapes renders.

``image_batches(source, resolution, batch)`` yields uint8 (B, R, R, 3) batches; see
``glide eval stats --help`` for what SOURCE may be.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["SHAPES_PREFIX", "image_batches"]

SHAPES_PREFIX = "shapes:"


def image_batches(source: str, resolution: int | None, batch: int, seed: int = 0) -> Iterator[np.ndarray]:
    """uint8 (B, R, R, 3) batches of a stats SOURCE (see ``glide eval stats --help``)."""
    from .shards import REQUEST_FILE, read_samples

    path = Path(source)
    if source.startswith(SHAPES_PREFIX):
        yield from _shapes_batches(source, resolution, batch, seed)
    elif path.is_dir() and (path / REQUEST_FILE).is_file():
        images = read_samples(path).images
        if resolution is not None and images.shape[1] != resolution:
            raise ValueError(f"{path} holds {images.shape[1]} px images, --resolution asks for {resolution}")
        for i in range(0, len(images), batch):
            yield images[i : i + batch]
    elif path.is_dir():
        yield from _folder_batches(path, resolution, batch)
    else:
        yield from _webdataset_batches(source, resolution, batch)


def _shapes_batches(source: str, resolution: int | None, batch: int, seed: int) -> Iterator[np.ndarray]:
    from ..data.shapes import render_array, sample_with_caption

    n = source[len(SHAPES_PREFIX) :]
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"expected shapes:N with N >= 1, got {source!r}")
    if resolution is None:
        raise ValueError("shapes:N needs --resolution (the side of the samples it is compared with)")
    for i in range(0, int(n), batch):
        yield np.stack(
            [
                render_array(sample_with_caption(seed, "test", j)[0], resolution)
                for j in range(i, min(i + batch, int(n)))
            ]
        )


def _folder_batches(root: Path, resolution: int | None, batch: int) -> Iterator[np.ndarray]:
    from ..data.folder import find_images
    from ..data.images import BadSample, load_image, resize_center_crop

    files = find_images(root)
    if not files:
        raise ValueError(f"no images in {root}")
    for i in range(0, len(files), batch):
        out = []
        for f in files[i : i + batch]:
            try:
                img = load_image(f)
            except BadSample as e:
                raise ValueError(f"{f}: not a readable image ({e})") from None
            if resolution is not None:
                img = resize_center_crop(img, resolution)
            elif img.size != (img.size[0],) * 2:
                raise ValueError(f"{f} is {img.size[0]}x{img.size[1]}: give --resolution to resize and crop")
            out.append(np.asarray(img))
        if len({a.shape for a in out}) > 1:
            raise ValueError(f"images of different sizes in {root}: give --resolution")
        yield np.stack(out)


def _webdataset_batches(urls: str, resolution: int | None, batch: int) -> Iterator[np.ndarray]:
    from ..data.webdataset import WebDatasetShards

    if resolution is None:
        raise ValueError("WebDataset shards need --resolution")
    data = WebDatasetShards(urls, resolution, shuffle=False, epochs=1)
    out = []
    for item in data:
        out.append(((item["image"].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy())
        if len(out) == batch:
            yield np.stack(out)
            out = []
    if out:
        yield np.stack(out)
