"""Noise schedules, timestep respacing and the immutable :class:`Schedule`.

Everything here is float64 numpy, computed once (as in glide-text2im's
``GaussianDiffusion.__init__``); per-timestep values are gathered for a batch
by :func:`extract`, which rounds them to float32 exactly like the official
``_extract_into_tensor``.

Notation (Ho et al. 2020, "DDPM"): ``beta_t`` the per-step noise variance,
``alpha_t = 1 - beta_t``, ``alpha_bar_t = prod_{s<=t} alpha_s`` (eq. 4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "BETA_SCHEDULES",
    "Schedule",
    "extract",
    "get_named_beta_schedule",
    "make_schedule",
    "space_timesteps",
]

BETA_SCHEDULES = ("linear", "squaredcos_cap_v2", "cosine")


def _cosine_alpha_bar(t: float) -> float:
    """Nichol & Dhariwal 2021 eq. 17 with s = 0.008, t in [0, 1]."""
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def get_named_beta_schedule(name: str, num_steps: int) -> np.ndarray:
    """Betas (float64, shape (num_steps,)) of a named schedule.

    - ``"linear"``: Ho et al. 2020, ``linspace(1e-4, 0.02)`` scaled by 1000/T so
      that any T gives the same total noise.
    - ``"squaredcos_cap_v2"`` (alias ``"cosine"``): Nichol & Dhariwal 2021
      eq. 17, ``beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999)``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if name == "linear":
        scale = 1000 / num_steps
        return np.linspace(scale * 0.0001, scale * 0.02, num_steps, dtype=np.float64)
    if name in ("squaredcos_cap_v2", "cosine"):
        betas = [
            min(1 - _cosine_alpha_bar((i + 1) / num_steps) / _cosine_alpha_bar(i / num_steps), 0.999)
            for i in range(num_steps)
        ]
        return np.array(betas, dtype=np.float64)
    raise ValueError(f"unknown beta schedule {name!r}; valid names: {', '.join(BETA_SCHEDULES)}")


def _parse_section_counts(section_counts: str | Sequence[int]) -> list[int]:
    if isinstance(section_counts, str):
        try:
            counts = [int(c) for c in section_counts.split(",")]
        except ValueError:
            raise ValueError(
                f"bad timestep respacing {section_counts!r}: expected '', 'ddimN', 'fast27', "
                "an integer or a comma-separated list of integers"
            ) from None
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"bad timestep respacing {section_counts!r}: every section count must be >= 1")
    return counts


def _ddim_steps(num_timesteps: int, count: int) -> list[int]:
    """``"ddimN"``: the smallest integer stride giving exactly N steps from 0."""
    for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == count:
            return list(range(0, num_timesteps, stride))
    raise ValueError(f"cannot create exactly {count} steps with an integer stride over {num_timesteps} steps")


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> list[int]:
    """Original timesteps kept by a respacing (sorted), GLIDE semantics.

    The ``num_timesteps`` steps are cut into ``len(section_counts)`` equal
    sections (the first ``num_timesteps % k`` get one extra step); inside a
    section of size ``size`` with ``c`` steps the index accumulates
    ``(size - 1) / (c - 1)`` in floating point and is rounded with Python's
    ``round()`` (half-to-even) -- this matters: "21" keeps 499, not 500.

    Strings: ``""`` keeps every step; ``"ddimN"`` uses the smallest integer
    stride with exactly N steps (ddim50 = 0, 20, ..., 980); ``"trailingN"`` keeps
    ``round(k T / N) - 1`` for k = 1 .. N (trailing4 = 249, 499, 749, 999; diffusers'
    "trailing" spacing): the last step is T - 1 and the grid of N is part of the grid of 2N,
    as guided distillation halves it (``train/distill_task.py``); ``"fast27"`` is
    ``"10,10,3,2,2"`` with the last step (T-1) replaced by T-3; otherwise an
    integer or comma list such as ``"10,20,30,40"``. A sequence of ints is a
    list of section counts. Unlike GLIDE (which silently drops a section of
    count 0), counts < 1 are rejected.
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec == "":
            return list(range(num_timesteps))
        if spec.startswith("ddim"):
            try:
                count = int(spec[len("ddim") :])
            except ValueError:
                raise ValueError(f"bad timestep respacing {section_counts!r}: expected 'ddimN'") from None
            if count < 1:
                raise ValueError(f"bad timestep respacing {section_counts!r}: N must be >= 1")
            return _ddim_steps(num_timesteps, count)
        if spec.startswith("trailing"):
            try:
                count = int(spec[len("trailing") :])
            except ValueError:
                raise ValueError(f"bad timestep respacing {section_counts!r}: expected 'trailingN'") from None
            if not 1 <= count <= num_timesteps:
                raise ValueError(f"bad timestep respacing {section_counts!r}: N must be in 1..{num_timesteps}")
            return [round(k * num_timesteps / count) - 1 for k in range(1, count + 1)]
        if spec.startswith("fast"):
            if spec != "fast27":
                raise ValueError(f"bad timestep respacing {section_counts!r}: only 'fast27' is defined")
            spaced = set(space_timesteps(num_timesteps, "10,10,3,2,2"))
            spaced.remove(num_timesteps - 1)
            spaced.add(num_timesteps - 3)
            return sorted(spaced)
    counts = _parse_section_counts(section_counts)
    size_per, extra = divmod(num_timesteps, len(counts))
    start = 0
    steps: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size} steps ({section_counts!r})")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += size
    return sorted(set(steps))


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Schedule:
    """Immutable float64 tables of a (possibly respaced) diffusion process.

    Index ``i`` (0..num_steps-1) is the sampler's index; ``timestep_map[i]`` is
    the ORIGINAL timestep the model was trained with (what denoisers receive).
    Build with :meth:`from_betas` or :func:`make_schedule`.
    """

    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    alphas_cumprod_next: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    log_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    log_betas: np.ndarray
    timestep_map: np.ndarray

    @classmethod
    def from_betas(
        cls,
        betas: np.ndarray | Sequence[float],
        timestep_map: np.ndarray | Sequence[int] | None = None,
    ) -> Schedule:
        """All tables from betas, with the same float64 operation order as the
        official ``GaussianDiffusion.__init__`` (DDPM eqs. 4, 6, 7)."""
        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or len(betas) == 0:
            raise ValueError("betas must be a non-empty 1-D array")
        if not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must lie in (0, 1]")
        n = len(betas)
        tmap = np.arange(n, dtype=np.int64) if timestep_map is None else np.array(timestep_map, dtype=np.int64)
        if tmap.shape != (n,):
            raise ValueError(f"timestep_map must have shape ({n},), got {tmap.shape}")
        alphas = 1.0 - betas
        acp = np.cumprod(alphas, axis=0)
        acp_prev = np.append(1.0, acp[:-1])
        acp_next = np.append(acp[1:], 0.0)
        post_var = betas * (1.0 - acp_prev) / (1.0 - acp)
        # posterior_variance[0] is 0, so its log is replaced by the value at
        # t = 1 (as the official code does). A one-step schedule (an SDEdit
        # prefix) has no t = 1: its upper bound log(beta_0) keeps the table finite.
        post_log_var = np.log(np.append(post_var[1], post_var[1:])) if n > 1 else np.log(betas)
        tables = dict(
            betas=betas,
            alphas_cumprod=acp,
            alphas_cumprod_prev=acp_prev,
            alphas_cumprod_next=acp_next,
            sqrt_alphas_cumprod=np.sqrt(acp),
            sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - acp),
            log_one_minus_alphas_cumprod=np.log(1.0 - acp),
            sqrt_recip_alphas_cumprod=np.sqrt(1.0 / acp),
            sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / acp - 1),
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_log_var,
            posterior_mean_coef1=betas * np.sqrt(acp_prev) / (1.0 - acp),
            posterior_mean_coef2=(1.0 - acp_prev) * np.sqrt(alphas) / (1.0 - acp),
            log_betas=np.log(betas),
            timestep_map=tmap,
        )
        return cls(**{k: _readonly(v) for k, v in tables.items()})

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    def respace(self, section_counts: str | Sequence[int]) -> Schedule:
        """Keep a subset of steps (see :func:`space_timesteps`).

        New betas are ``1 - abar_i / abar_prev_kept`` so that the kept
        ``alphas_cumprod`` are unchanged; ``timestep_map`` maps the new indices
        to the original timesteps. GLIDE computes this even when every step is
        kept, which changes betas by ~1e-13 relative.
        """
        kept = space_timesteps(self.num_steps, section_counts)
        new_betas, last = [], 1.0
        for i in kept:
            acp = self.alphas_cumprod[i]
            new_betas.append(1 - acp / last)
            last = acp
        return Schedule.from_betas(np.array(new_betas), self.timestep_map[kept])


def make_schedule(
    noise_schedule: str = "squaredcos_cap_v2",
    steps: int = 1000,
    respacing: str | Sequence[int] = "",
) -> Schedule:
    """The schedule glide-text2im's ``create_gaussian_diffusion`` builds.

    Always goes through :meth:`Schedule.respace` (``""`` keeps all steps), as
    the official code always returns a ``SpacedDiffusion``.
    """
    base = Schedule.from_betas(get_named_beta_schedule(noise_schedule, steps))
    if isinstance(respacing, str) and respacing.strip() == "":
        respacing = [steps]
    return base.respace(respacing)


def extract(arr: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``arr[t]`` for a batch and cast to float32.

    arr: (N,) float64 table; t: (B,) integer indices; returns (B, 1, ..., 1)
    with ``ndim`` dims on ``t.device`` (as the official ``_extract_into_tensor``,
    so every per-timestep coefficient is rounded to float32).
    """
    if t.ndim != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    res = torch.tensor(arr, dtype=torch.float64, device=t.device)[t].float()
    return res.view(-1, *([1] * (ndim - 1)))
