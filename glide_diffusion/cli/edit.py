"""``glide inpaint`` and ``glide edit``: text-driven editing of an existing image."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..pipelines.prompts import parse_prompt
from ..pipelines.recipes import INPAINT_MODEL_RECIPES, INPAINT_RECIPES, OFFICIAL_BASE, OFFICIAL_UPSAMPLE
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


def _rect(text: str) -> tuple[int, int, int, int]:
    try:
        left, top, right, bottom = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LEFT,TOP,RIGHT,BOTTOM in pixels, got {text!r}") from None
    return left, top, right, bottom


def _margins(text: str) -> tuple[int, int, int, int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 4):
        raise argparse.ArgumentTypeError(f"expected N or LEFT,TOP,RIGHT,BOTTOM pixels, got {text!r}")
    return tuple(values * 4 if len(values) == 1 else values)  # type: ignore[return-value]


def inpaint_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glide inpaint",
        description="Repaint part of an image from a caption. Mask: a PNG the size of the image, WHITE where the "
        "caption paints and BLACK where the image is kept (--invert-mask for the opposite), and/or "
        "--rect boxes; a transparent image with no mask repaints its transparent pixels.",
    )
    p.add_argument("image", help="the image to edit (square; resized to the models' resolution)")
    p.add_argument(
        "prompt", help="what to paint into the masked region (upper-case AND/NOT compose it, as in glide sample)"
    )
    p.add_argument("--mask", help="mask PNG: white = fill, black = keep")
    p.add_argument(
        "--rect",
        type=_rect,
        action="append",
        default=[],
        metavar="L,T,R,B",
        help="a box to fill, in pixels (repeatable; combined with --mask)",
    )
    p.add_argument("--invert-mask", action="store_true", help="black = fill, white = keep")
    p.add_argument(
        "--extend",
        type=_margins,
        metavar="N|L,T,R,B",
        help="outpainting: grow the canvas by these margins (pixels) and fill them",
    )
    add_model_args(p, "inpaint")
    add_sampling_args(p, recipes=INPAINT_RECIPES, model_recipes=INPAINT_MODEL_RECIPES)
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        metavar="C",
        help="best of C: paint C images for each one asked for and keep the one the noised CLIP "
        "scores best against the prompt; 1 = off (default: from --recipe: 4 for shapes-inpaint)",
    )
    p.add_argument(
        "--clip",
        default=None,
        help="the noised CLIP for --candidates: 'released', a bundled name or a .safetensors path "
        "(default: shapes-clip-rerank with --models shapes, else released)",
    )
    return p


def edit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glide edit",
        description="Image-to-image (SDEdit): redraw an image toward a caption.",
    )
    p.add_argument("image", help="the image to edit (square; resized to the base model's resolution)")
    p.add_argument(
        "prompt", help="the caption to move the image toward (upper-case AND/NOT compose it, as in glide sample)"
    )
    p.add_argument(
        "--strength",
        type=float,
        default=0.6,
        help="in (0, 1]: how far the image is noised before denoising (1 = ignore it); default 0.6",
    )
    add_model_args(p, "text2im")
    add_sampling_args(p, OFFICIAL_BASE, OFFICIAL_UPSAMPLE)
    return p


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image.load()
        return image
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def inpaint_main(argv: Sequence[str]) -> int:
    args = inpaint_parser().parse_args(argv)
    resolve_models(args)
    base, up = stage_settings(args)

    def body():
        from ..pipelines.inpaint import InpaintPipeline, region

        device = device_arg(args)
        check_output(args)
        parse_prompt(args.prompt, warn=False)  # a malformed composition fails before the models load
        mask = _open_image(args.mask) if args.mask else None
        image, fill, given = region(
            _open_image(args.image), mask, args.rect, invert=args.invert_mask, extend=args.extend
        )
        if not given:
            raise ValueError("say what to repaint: --mask, --rect, --extend, or a transparent image")
        rerank_clip = (
            rerank_clip_choice(args, "shapes-clip-rerank" if args.models == "shapes" else "released")
            if base.candidates > 1
            else None
        )
        pipe = InpaintPipeline.from_pretrained(
            args.base,
            upsampler_arg(args),
            device=device,
            cache_dir=args.cache_dir,
            download=not args.no_download,
            rerank_clip=rerank_clip,
            base_config=args.config,
            upsampler_config=args.up_config,
        )
        compile_stages(pipe, args)
        result = pipe(
            image,
            fill,
            args.prompt,
            num_images=args.num_images,
            seed=args.seed,
            base=base,
            upsample=up,
            dtype=args.dtype,
            progress=not args.no_progress,
            negative=args.negative,
        )
        return write_outputs(result, args, suffix="-inpaint")

    return run_command("inpaint", body)


def edit_main(argv: Sequence[str]) -> int:
    args = edit_parser().parse_args(argv)
    resolve_models(args)
    base, up = stage_settings(args)

    def body():
        from ..pipelines.edit import EditPipeline

        device = device_arg(args)
        check_output(args)
        parse_prompt(args.prompt, warn=False)  # a malformed composition fails before the models load
        if not 0 < args.strength <= 1:
            raise ValueError(f"--strength must be in (0, 1], got {args.strength}")
        image = _open_image(args.image)
        pipe = EditPipeline.from_pretrained(
            args.base,
            upsampler_arg(args),
            device=device,
            cache_dir=args.cache_dir,
            download=not args.no_download,
            base_config=args.config,
            upsampler_config=args.up_config,
        )
        compile_stages(pipe, args)
        result = pipe(
            image,
            args.prompt,
            strength=args.strength,
            num_images=args.num_images,
            seed=args.seed,
            base=base,
            upsample=up,
            dtype=args.dtype,
            progress=not args.no_progress,
            negative=args.negative,
        )
        return write_outputs(result, args, suffix="-edit")

    return run_command("edit", body)
