"""``glide sample PROMPT...``: text -> image with the base model and the upsampler."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..pipelines.recipes import MODEL_RECIPES, RECIPES
from .common import (
    add_model_args,
    add_sampling_args,
    check_output,
    compile_stages,
    device_arg,
    rerank_clip_choice,
    resolve_models,
    run_command,
    stage_settings,
    upsampler_arg,
    write_outputs,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glide sample", description="Generate images from text with GLIDE.")
    p.add_argument(
        "prompts",
        nargs="+",
        metavar="PROMPT",
        help="one or more captions; upper-case AND/NOT compose one: 'A :1.5 AND B AND NOT C' "
        "(weights optional, default 1)",
    )
    add_model_args(p, "text2im")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images sampled at once (default: all); results do not depend on it",
    )
    add_sampling_args(p, recipes=RECIPES, model_recipes=MODEL_RECIPES)
    p.add_argument(
        "--clip-guidance-scale",
        type=float,
        default=0.0,
        help="CLIP guidance of the base stage (GLIDE's notebook: 3 with -g 1); default 0 = off",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        metavar="C",
        help="best of C: sample C images for each one asked for and keep the one the reranking "
        "CLIP scores best; 1 = off (default: from --recipe)",
    )
    p.add_argument(
        "--rerank",
        type=int,
        default=None,
        metavar="K",
        help="CLIP reranking: keep the K of the -n images per prompt that the noised CLIP "
        "scores best (GLIDE §3.2), best first; chosen at the base resolution, so only "
        "they are upsampled",
    )
    p.add_argument(
        "--clip",
        default=None,
        help="the noised CLIP for --clip-guidance-scale, --rerank and --candidates: 'released', a "
        "bundled name (shapes-clip, shapes-clip-rerank) or a .safetensors path (default: for "
        "guidance shapes-clip with --models shapes, else released; for reranking the base "
        "model's own where one is bundled (shapes-clip-rerank for shapes-base), else the same)",
    )
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    resolve_models(args, distilled=True)
    base, up = stage_settings(args)
    upsampler = upsampler_arg(args)

    def body():
        from ..pipelines.text2im import Text2ImPipeline, validate_request

        device = device_arg(args)
        check_output(args)
        if args.batch_size is not None and args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
        validate_request(
            args.prompts,
            args.num_images,
            args.seed,
            base,
            up,
            args.dtype,
            device,
            upsample_steps=1000 if upsampler else None,
            reranks=True,
            negative=args.negative,
        )
        if args.clip_guidance_scale < 0:
            raise ValueError(f"--clip-guidance-scale must be >= 0, got {args.clip_guidance_scale}")
        if args.rerank is not None and not 1 <= args.rerank <= args.num_images:
            raise ValueError(f"--rerank must be in 1..{args.num_images} (the images per prompt, -n), got {args.rerank}")
        guide_clip, rerank_clip = _clip_choices(args, reranks=args.rerank is not None or base.candidates > 1)
        pipe = Text2ImPipeline.from_pretrained(
            args.base,
            upsampler,
            device=device,
            cache_dir=args.cache_dir,
            download=not args.no_download,
            clip=guide_clip,
            rerank_clip=rerank_clip,
            base_config=args.config,
            upsampler_config=args.up_config,
        )
        compile_stages(pipe, args)
        result = pipe(
            args.prompts,
            num_images=args.num_images,
            seed=args.seed,
            base=base,
            upsample=up,
            dtype=args.dtype,
            batch_size=args.batch_size,
            clip_guidance_scale=args.clip_guidance_scale,
            # reranked before the upsampler
            rerank=args.rerank,
            progress=not args.no_progress,
            negative=args.negative,
        )
        return write_outputs(result, args)

    return run_command("sample", body)


def _clip_choices(args, reranks: bool) -> tuple[str | None, str | None]:
    """The noised CLIPs to load: (for guidance, for reranking), None where not used."""
    guide = args.clip or ("shapes-clip" if args.models == "shapes" else "released")
    return (guide if args.clip_guidance_scale else None), (rerank_clip_choice(args, guide) if reranks else None)
