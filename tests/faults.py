"""Fault injection for the training tests: slow steps, slow commits, a NaN loss.

In the test process the faults are installed with pytest's ``monkeypatch``; a kill test
runs training in another process through this file, which installs them and then runs
``glide`` with the remaining arguments (under torchrun too)::

    python tests/faults.py [--step-sleep S] [--commit-sleep S] train CONFIG [glide train flags]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from glide_diffusion.train import dcp, loop
from glide_diffusion.train.diffusion_task import DiffusionTask

if TYPE_CHECKING:
    import pytest

FAULTS = Path(__file__).resolve()


def _sleep_before(cls: type, name: str, seconds: float, patch) -> None:
    real = getattr(cls, name)

    def slowed(self, *args, **kwargs):
        time.sleep(seconds)
        return real(self, *args, **kwargs)

    patch(cls, name, slowed)


def slow_steps(seconds: float, patch=setattr) -> None:
    """Sleep before every optimizer step: a kill lands anywhere in a run of many steps."""
    _sleep_before(loop.Trainer, "train_step", seconds, patch)


def slow_commits(seconds: float, patch=setattr) -> None:
    """dcp: sleep once the shards and state are written, before the step folder is renamed into place."""
    _sleep_before(dcp.PendingSave, "_publish", seconds, patch)


def nan_loss_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the diffusion loss NaN from optimizer step ``step`` (1-based, one micro-batch per step) on."""
    real, calls = DiffusionTask.loss, itertools.count(1)

    def loss(self, model, inputs):
        value, terms = real(self, model, inputs)
        if next(calls) >= step:
            return value * float("nan"), terms * float("nan")
        return value, terms

    monkeypatch.setattr(DiffusionTask, "loss", loss)


def main(argv: list[str]) -> int:
    from glide_diffusion.cli.main import main as glide_main

    p = argparse.ArgumentParser(allow_abbrev=False)
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds slept before each step")
    p.add_argument("--commit-sleep", type=float, default=0.0, help="dcp: seconds slept before each commit's rename")
    args, rest = p.parse_known_args(argv)
    if args.step_sleep:
        slow_steps(args.step_sleep)
    if args.commit_sleep:
        slow_commits(args.commit_sleep)
    return glide_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
