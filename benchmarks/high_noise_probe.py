"""Probe: can a base config learn what the caption says at high noise alone?

Trains exactly like ``glide train`` (same config, overrides and launchers) with two
changes that make the question sharp, so this is a probe, not a recipe:

- every training scene has one object and every caption names all of its attributes
  (size, colour, shape, position, background), so the x0 the model should predict at
  high noise is known from the caption up to small position and size jitter;
- timesteps are drawn uniformly from [--t-min, --t-max) (default [900, steps)) instead
  of [0, steps); with --t-min 0 --t-max 400 it probes the other end, the denoising of
  a visible object (score that with benchmarks/shapes_reconstruct.py).

Score its checkpoints with ``benchmarks/caption_sensitivity.py --gain-timesteps 999 900``:
a model that reads a word changes its x0 estimate when that word changes.

    python benchmarks/high_noise_probe.py configs/base-shapes.toml --out-dir runs/probe --max-steps 500
    torchrun --standalone --nproc_per_node 2 benchmarks/high_noise_probe.py configs/base-shapes.toml \\
        --t-min 900 --out-dir runs/probe --set batch_size=8 --set model.unet.norm_groups=1
    python benchmarks/high_noise_probe.py configs/base-shapes.toml --t-min 0 --t-max 400 \\
        --out-dir runs/probe-low --max-steps 600 \\
        --set init_from=runs/base-shapes/checkpoints/step_00006000/ema.safetensors
"""

from __future__ import annotations

import argparse
import sys

from glide_diffusion.cli.train import main as train_main
from glide_diffusion.data.factory import build_dataset
from glide_diffusion.data.shapes import CaptionOdds
from glide_diffusion.train.config import ConfigError
from glide_diffusion.train.diffusion_task import DiffusionTask

EVERY_ATTRIBUTE = CaptionOdds(size=1.0, optional_phrase=1.0)  # captions name all a template allows


def probe_dataset(config, rank, world_size, start, low_res):
    """The config's Shapes stream, its captions naming every attribute (one-object scenes: --set below)."""
    if config.data.kind != "shapes":
        raise ConfigError(f"the probe trains on Shapes data, not data.kind = {config.data.kind!r}")
    return build_dataset(
        config.data,
        config.image_size,
        rank=rank,
        world_size=world_size,
        start=start,
        low_res=low_res,
        caption_odds=EVERY_ATTRIBUTE,
    )


def probe_task(t_min: int, t_max: int | None):
    """A diffusion task whose timesteps are uniform in [t_min, t_max)."""

    def task(context):
        steps = context.config.model.diffusion.steps
        hi = steps if t_max is None else t_max
        if not 0 <= t_min < hi <= steps:
            raise SystemExit(f"need 0 <= --t-min < --t-max <= {steps}, got {t_min} and {hi}")
        return DiffusionTask(context, t_range=(t_min, hi))

    return task


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--t-min", type=int, default=900, help="smallest training timestep (default 900)")
    p.add_argument("--t-max", type=int, default=None, help="one past the largest (default: the schedule's steps)")
    args, rest = p.parse_known_args()
    if not rest or rest[0] in ("-h", "--help"):
        print(__doc__)
        print("Any other arguments are `glide train`'s: CONFIG [--out-dir D] [--max-steps N] [--set K=V ...]")
        raise SystemExit(0)
    one_object = ["--set", "data.shapes_two_objects=0.0"]  # before the user's --set items, which win
    sys.exit(train_main([*one_object, *rest], dataset_factory=probe_dataset, task=probe_task(args.t_min, args.t_max)))


if __name__ == "__main__":
    main()
