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

import torch

import glide_diffusion.data.shapes_captions as shapes_captions
import glide_diffusion.data.shapes_scene as shapes_scene
import glide_diffusion.train.batch as train_batch
from glide_diffusion.cli.main import main as glide_main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument("--t-min", type=int, default=900, help="smallest training timestep (default 900)")
    p.add_argument("--t-max", type=int, default=None, help="one past the largest (default: the schedule's steps)")
    args, rest = p.parse_known_args()
    if not rest or rest[0] in ("-h", "--help"):
        print(__doc__)
        print("Any other arguments are `glide train`'s: CONFIG [--out-dir D] [--max-steps N] [--set K=V ...]")
        raise SystemExit(0)
    shapes_captions.OPTIONAL_PHRASE_PROB = 1.0
    shapes_captions.SIZE_PROB = 1.0
    shapes_scene.TWO_OBJECT_PROB = 0.0

    def probe_timesteps(batch: int, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        t_max = num_steps if args.t_max is None else args.t_max
        if not 0 <= args.t_min < t_max <= num_steps:
            raise SystemExit(f"need 0 <= --t-min < --t-max <= {num_steps}, got {args.t_min} and {t_max}")
        return torch.randint(args.t_min, t_max, (batch,), generator=generator)

    train_batch.sample_timesteps = probe_timesteps
    sys.exit(glide_main(["train", *rest]))


if __name__ == "__main__":
    main()
