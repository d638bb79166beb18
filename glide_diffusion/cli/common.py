"""Options and error handling shared by ``glide sample``, ``glide inpaint`` and ``glide edit``."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable

from .. import bundled
from ..pipelines.stage import StageSettings
from ..precision import DTYPES


# Model families: the (base, upsampler) a command uses unless --base/--upsampler say otherwise.
# "shapes": the small models shipped inside the package (nothing to download);
# "glide": the released GLIDE (filtered) weights (downloaded into the cache on first use).
FAMILIES = {
    "text2im": {"shapes": ("shapes-base", "shapes-upsample"), "glide": ("base", "upsample")},
    "inpaint": {"shapes": ("shapes-inpaint", "shapes-upsample-inpaint"),
                "glide": ("base-inpaint", "upsample-inpaint")},
}


def default_family(task: str) -> str:
    """"shapes" where this installation ships both of the task's Shapes models, else "glide"."""
    return "shapes" if set(FAMILIES[task]["shapes"]) <= set(bundled.available()) else "glide"


def add_model_args(p: argparse.ArgumentParser, task: str) -> None:
    choices = FAMILIES[task]
    listing = "; ".join(f"{k}: {b} + {u}" for k, (b, u) in choices.items())
    default = default_family(task)
    p.add_argument("--models", choices=sorted(choices), default=default,
                   help=f"model family ({listing}); default: {default} (shapes where both are bundled)")
    p.add_argument("--base", default=None,
                   help="base model: a released or bundled name, or a checkpoint path (default: from --models)")
    p.add_argument("--upsampler", default=None,
                   help="upsampler: a released or bundled name, a path, or 'none' (default: from --models)")
    p.set_defaults(model_task=task)


def resolve_models(args: argparse.Namespace) -> None:
    """Fill --base and --upsampler from the --models family where not given."""
    base, upsampler = FAMILIES[args.model_task][args.models]
    args.base = args.base or base
    args.upsampler = args.upsampler or upsampler


def add_sampling_args(p: argparse.ArgumentParser, base: StageSettings, up: StageSettings) -> None:
    p.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed+k (default: 0)")
    p.add_argument("-g", "--guidance-scale", type=float, default=base.guidance_scale,
                   help=f"classifier-free guidance scale of the base stage (default: {base.guidance_scale})")
    p.add_argument("--guidance-interval", type=_interval, default=base.guidance_interval, metavar="LO,HI",
                   help="guide only the base steps with t in [LO*T, HI*T], fractions of the T diffusion "
                        "steps (e.g. 0.2,0.8); the others run the conditional model alone, at half the cost "
                        "(default: every step)")
    p.add_argument("--base-sampler", default=base.sampler, help=f"ddpm, ddim or dpm++2m (default: {base.sampler})")
    p.add_argument("--base-steps", default=base.steps, help=f"respacing, e.g. 100, 50, ddim25 (default: {base.steps})")
    p.add_argument("--up-sampler", default=up.sampler, help=f"ddpm, ddim or dpm++2m (default: {up.sampler})")
    p.add_argument("--up-steps", default=up.steps, help=f"(default: {up.steps})")
    p.add_argument("--up-temperature", type=float, default=up.temperature,
                   help=f"scale of the upsampler's initial noise (default: {up.temperature})")
    p.add_argument("-o", "--output", default="samples", help="output folder (default: ./samples)")
    p.add_argument("--npz", action="store_true", help="also write all images to samples.npz in the output folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="model precision (bf16 on recent CPUs, fp16 on CUDA)")
    p.add_argument("--cache-dir", default=None, help="where released files live (default: $GLIDE_CACHE_DIR or the user cache)")
    p.add_argument("--no-download", action="store_true", help="never download missing released files")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _interval(text: str) -> tuple[float, float]:
    """'LO,HI' -> (lo, hi); the range itself is checked with the other stage settings."""
    parts = text.split(",")
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers in [0, 1]), got {text!r}") from None
    return lo, hi


def stage_settings(args: argparse.Namespace) -> tuple[StageSettings, StageSettings]:
    return (StageSettings(args.base_sampler, args.base_steps, args.guidance_scale, 1.0,
                          guidance_interval=args.guidance_interval),
            StageSettings(args.up_sampler, args.up_steps, 1.0, args.up_temperature))


def upsampler_arg(args: argparse.Namespace) -> str | None:
    return None if args.upsampler.lower() == "none" else args.upsampler


def device_arg(args: argparse.Namespace):
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ValueError(f"bad device {args.device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {args.device} asked for, but CUDA is not available")
    return device


def run_command(name: str, body: Callable[[], list[Path]]) -> int:
    """Run ``body`` (which returns the files it wrote); expected errors become one line and exit 2."""
    from ..checkpoints import CheckpointError
    from ..hub.download import DownloadError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            paths = body()
    except (ValueError, TypeError, FileNotFoundError, CheckpointError, DownloadError) as e:
        print(f"glide {name}: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def write_outputs(result, args: argparse.Namespace, suffix: str = "") -> list[Path]:
    from ..pipelines.output import save_npz, save_samples

    paths = save_samples(result.images, result.prompts, result.seeds, result.settings, args.output, suffix=suffix)
    if args.npz:
        paths.append(save_npz(Path(args.output) / "samples.npz", result.images, result.prompts, result.seeds,
                              result.settings))
    return paths
