"""A file-free synthetic dataset (``kind = "synthetic"``) for tests and benchmarks.

Same contract as ``glide_diffusion.data.factory.build_dataset``: an index
stream where process ``rank`` of ``world_size`` yields global indices
``start + rank, start + rank + world_size, ...``; item ``i`` depends only on
``(seed, i)``, so a run resumes exactly from its global sample position.
Item i is a flat colour (one of a few, named in the caption) with a lighter
square at an index-dependent place, plus a little noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

__all__ = ["SyntheticDataset"]

COLOURS = {
    "red": (1.0, -0.8, -0.8),
    "green": (-0.8, 1.0, -0.8),
    "blue": (-0.8, -0.8, 1.0),
    "yellow": (1.0, 1.0, -0.8),
}


class SyntheticDataset(IterableDataset):
    def __init__(
        self,
        resolution: int,
        *,
        size: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        low_res: int | None = None,
    ):
        super().__init__()
        self.resolution, self.size, self.seed = resolution, size, seed
        self.rank, self.world_size, self.start, self.low_res = rank, world_size, start, low_res

    def item(self, index: int) -> dict:
        i = index % self.size if self.size else index
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        name = list(COLOURS)[i % len(COLOURS)]
        r = self.resolution
        image = torch.tensor(COLOURS[name]).view(3, 1, 1).expand(3, r, r).clone()
        s = max(1, r // 4)
        y, x = torch.randint(0, r - s + 1, (2,), generator=g).tolist()
        image[:, y : y + s, x : x + s] = 0.9
        image = (image + 0.05 * torch.randn(3, r, r, generator=g)).clamp(-1, 1)
        item = {"image": image, "caption": f"a {name} picture"}
        if self.low_res:
            item["low_res"] = F.interpolate(image[None], size=(self.low_res,) * 2, mode="area")[0]
        return item

    def __iter__(self):
        index = self.start + self.rank
        while True:
            yield self.item(index)
            index += self.world_size
