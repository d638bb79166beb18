"""What the training loop needs of one kind of training: the :class:`Task` interface.

The loop (``train/loop.py``) owns what every run shares: processes, optimizer, gradient
accumulation, clipping, EMA, checkpoints, resume, metrics. A task owns the rest: the model
it trains, how a data batch becomes inputs, the loss and its logged terms, and what it
writes at sampling steps. Three tasks exist, the diffusion models
(:class:`~glide_diffusion.train.diffusion_task.DiffusionTask`), the noised CLIP
(:class:`~glide_diffusion.train.clip_task.ClipTask`) and guided distillation
(:class:`~glide_diffusion.train.distill_task.DistillTask`); another implements :class:`Task`
and is chosen in :func:`make_task`, with no change to the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import IterableDataset

from ..clip.config import ClipConfig
from ..presets import ModelConfig
from .config import TrainConfig

__all__ = ["DatasetFactory", "RunContext", "Task", "TaskFactory", "make_task"]

# (config, rank, world_size, start, low_res) -> an index-stream IterableDataset
DatasetFactory = Callable[[TrainConfig, int, int, int, "int | None"], IterableDataset]


@dataclass(frozen=True)
class RunContext:
    """What a task may know of the run it serves."""

    config: TrainConfig
    device: torch.device
    is_main: bool  # rank 0: the process that writes sample grids
    dataset_factory: DatasetFactory  # the run's data (conditioned tasks take sample inputs from it)


class Task(Protocol):
    """One kind of training as the loop sees it; the loop has no other per-task code."""

    @property
    def terms(self) -> tuple[str, ...]:
        """The names of the logged terms :meth:`loss` returns, "loss" first."""
        ...

    @property
    def model_config(self) -> ModelConfig | ClipConfig:
        """What a checkpoint's weights are rebuilt from."""
        ...

    @property
    def low_res(self) -> int | None:
        """The side of the low-res images the data must carry (upsamplers), else None."""
        ...

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout of the trained model's weights."""
        ...

    def build_model(self, fresh: bool) -> nn.Module:
        """The model to train, on the CPU; ``fresh``: no checkpoint to resume, so ``init_from`` applies."""
        ...

    def make_inputs(self, batch: dict, generator: torch.Generator) -> Any:
        """One micro-batch's inputs, on the run's device; every random draw from ``generator``."""
        ...

    def loss(self, model: nn.Module, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to minimise, the detached logged terms of shape (len(terms),)); ``model`` may be wrapped."""
        ...

    def after_step(self, model: nn.Module) -> None:
        """Called after each optimizer step, before the EMA update (constraints on the weights)."""
        ...

    def write_samples(self, ema: nn.Module, step: int) -> Path | None:
        """Samples of the EMA model at a sampling step; called on every process (None where none written)."""
        ...


# A task for a run: make_task, or another (probes) passed to train(task=...)
TaskFactory = Callable[[RunContext], Task]


def make_task(context: RunContext) -> Task:
    """The task ``context.config`` names: a noised CLIP when ``clip`` is set, guided distillation
    when ``distill`` is, else a diffusion model."""
    if context.config.distill is not None:
        from .distill_task import DistillTask

        return DistillTask(context)
    if context.config.clip is not None:
        from .clip_task import ClipTask

        return ClipTask(context)
    from .diffusion_task import DiffusionTask

    return DiffusionTask(context)
