"""``glide sample PROMPT...``: text -> image with the base model and the upsampler."""

from __future__ import annotations

import argparse
from typing import Sequence

from ..pipelines.text2im import BASE_DEFAULTS, UPSAMPLE_DEFAULTS
from .common import add_model_args, add_sampling_args, device_arg, run_command, stage_settings, upsampler_arg, write_outputs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glide sample", description="Generate images from text with GLIDE.")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="one or more captions")
    add_model_args(p, "base", "upsample")
    p.add_argument("--batch-size", type=int, default=None, help="images sampled at once (default: all); results do not depend on it")
    add_sampling_args(p, BASE_DEFAULTS, UPSAMPLE_DEFAULTS)
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    base, up = stage_settings(args)
    upsampler = upsampler_arg(args)

    def body():
        from ..pipelines.text2im import Text2ImPipeline, validate_request

        device = device_arg(args)
        if args.batch_size is not None and args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        validate_request(args.prompts, args.num_images, args.seed, base, up, args.dtype, device,
                         upsample_steps=1000 if upsampler else None)
        pipe = Text2ImPipeline.from_pretrained(
            args.base, upsampler, device=device, cache_dir=args.cache_dir, download=not args.no_download
        )
        result = pipe(args.prompts, num_images=args.num_images, seed=args.seed, base=base, upsample=up,
                      dtype=args.dtype, batch_size=args.batch_size, progress=not args.no_progress)
        return write_outputs(result, args)

    return run_command("sample", body)
