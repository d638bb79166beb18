"""``glide sample PROMPT...``: text -> image with the base model and the upsampler."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

from ..pipelines.text2im import BASE_DEFAULTS, UPSAMPLE_DEFAULTS, StageSettings
from ..precision import DTYPES


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glide sample", description="Generate images from text with GLIDE.")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="one or more captions")
    p.add_argument("--base", default="base", help="base model: a released name or a checkpoint path (default: base)")
    p.add_argument("--upsampler", default="upsample", help="upsampler: a released name, a path, or 'none' (default: upsample)")
    p.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt (default: 1)")
    p.add_argument("--batch-size", type=int, default=None, help="images sampled at once (default: all); results do not depend on it")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed+k (default: 0)")
    p.add_argument("-g", "--guidance-scale", type=float, default=BASE_DEFAULTS.guidance_scale,
                   help=f"classifier-free guidance scale of the base stage (default: {BASE_DEFAULTS.guidance_scale})")
    p.add_argument("--base-sampler", default=BASE_DEFAULTS.sampler, help=f"ddpm, ddim or dpm++2m (default: {BASE_DEFAULTS.sampler})")
    p.add_argument("--base-steps", default=BASE_DEFAULTS.steps, help=f"respacing, e.g. 100, 50, ddim25 (default: {BASE_DEFAULTS.steps})")
    p.add_argument("--up-sampler", default=UPSAMPLE_DEFAULTS.sampler, help=f"ddpm, ddim or dpm++2m (default: {UPSAMPLE_DEFAULTS.sampler})")
    p.add_argument("--up-steps", default=UPSAMPLE_DEFAULTS.steps, help=f"(default: {UPSAMPLE_DEFAULTS.steps})")
    p.add_argument("--up-temperature", type=float, default=UPSAMPLE_DEFAULTS.temperature,
                   help=f"scale of the upsampler's initial noise (default: {UPSAMPLE_DEFAULTS.temperature})")
    p.add_argument("-o", "--output", default="samples", help="output folder (default: ./samples)")
    p.add_argument("--npz", action="store_true", help="also write all images to samples.npz in the output folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="model precision (bf16 on recent CPUs, fp16 on CUDA)")
    p.add_argument("--cache-dir", default=None, help="where released files live (default: $GLIDE_CACHE_DIR or the user cache)")
    p.add_argument("--no-download", action="store_true", help="never download missing released files")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    base = StageSettings(args.base_sampler, args.base_steps, args.guidance_scale, 1.0)
    up = StageSettings(args.up_sampler, args.up_steps, 1.0, args.up_temperature)
    upsampler = None if args.upsampler.lower() == "none" else args.upsampler
    try:
        import torch

        from ..checkpoints import CheckpointError
        from ..hub.download import DownloadError
        from ..pipelines.output import save_npz, save_samples
        from ..pipelines.text2im import Text2ImPipeline, validate_request

        try:
            device = torch.device(args.device)
        except RuntimeError as e:
            raise ValueError(f"bad device {args.device!r}: {e}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {args.device} asked for, but CUDA is not available")
        if args.batch_size is not None and args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        validate_request(args.prompts, args.num_images, args.seed, base, up, args.dtype, device,
                         upsample_steps=1000 if upsampler else None)
        pipe = Text2ImPipeline.from_pretrained(
            args.base, upsampler, device=device, cache_dir=args.cache_dir, download=not args.no_download
        )
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            result = pipe(
                args.prompts, num_images=args.num_images, seed=args.seed, base=base, upsample=up,
                dtype=args.dtype, batch_size=args.batch_size, progress=not args.no_progress,
            )
        paths = save_samples(result.images, result.prompts, result.seeds, result.settings, args.output)
        if args.npz:
            paths.append(save_npz(Path(args.output) / "samples.npz", result.images, result.prompts, result.seeds, result.settings))
    except (ValueError, TypeError, FileNotFoundError, CheckpointError, DownloadError) as e:
        print(f"glide sample: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0
