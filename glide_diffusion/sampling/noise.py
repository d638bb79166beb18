"""Noise sources for samplers.

A :data:`NoiseFn` returns fresh standard-normal noise shaped like its
argument; samplers call it exactly once per step (and never otherwise), so a
noise function fully determines a sampling run.

:class:`PerSampleNoise` keeps one ``torch.Generator`` per batch row: row i's
noise sequence depends only on its own seed, so an image does not change when
the batch size (or the other prompts in the batch) does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["NoiseFn", "PerSampleNoise", "seeds_for"]

NoiseFn = Callable[[torch.Tensor], torch.Tensor]


def seeds_for(seed: int, n: int) -> list[int]:
    """Per-row seeds ``[seed, seed + 1, ..., seed + n - 1]``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [int(seed) + i for i in range(n)]


class PerSampleNoise:
    """A :data:`NoiseFn` with one CPU generator per batch row.

    Draws are made in float32 by CPU generators, then cast and moved to the
    requested device/dtype -- except on CUDA, where each row gets a CUDA
    generator so the step loop never copies from the host (same seed and
    device kind => same image).

    >>> noise = PerSampleNoise(seeds_for(0, 4))
    >>> x_T = noise.initial((3, 64, 64), device="cpu")   # (4, 3, 64, 64)
    >>> eps = noise(x_T)                                  # fresh, same shape
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str | None = None) -> None:
        if len(seeds) == 0:
            raise ValueError("PerSampleNoise needs at least one seed")
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device) if device is not None else None
        gen_device = self.device if self.device is not None and self.device.type == "cuda" else torch.device("cpu")
        self.generators = [torch.Generator(device=gen_device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def _draw(
        self,
        shape_per_row: Sequence[int],
        device: torch.device | str | None,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        rows = [
            torch.randn(tuple(shape_per_row), generator=g, dtype=torch.float32, device=g.device)
            for g in self.generators
        ]
        out = torch.stack(rows)  # (B, *shape_per_row)
        target = device if device is not None else self.device
        return out.to(device=target, dtype=dtype)

    def initial(
        self,
        shape_per_row: Sequence[int],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """x_T: (B, *shape_per_row) standard normal, B = number of seeds."""
        return self._draw(shape_per_row, device, dtype)

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        """Fresh noise shaped like ``like`` (B must equal the number of seeds)."""
        if like.shape[0] != len(self.seeds):
            raise ValueError(f"batch size {like.shape[0]} does not match the {len(self.seeds)} seeds")
        return self._draw(like.shape[1:], like.device, like.dtype)

    def select(self, rows: Sequence[int]) -> PerSampleNoise:
        """The noise of some rows: a PerSampleNoise over the same generators, which go on
        from where they are (so a stage run on a subset draws what it would have drawn
        in the whole batch)."""
        rows = list(rows)
        if not rows:
            raise ValueError("select needs at least one row")
        out = object.__new__(PerSampleNoise)
        out.seeds = [self.seeds[i] for i in rows]
        out.device = self.device
        out.generators = [self.generators[i] for i in rows]
        return out
