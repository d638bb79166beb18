"""``glide serve``: the web app and HTTP API (glide_diffusion.serve; docs/serve.md)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..precision import DTYPE_CHOICES
from .common import FAMILIES, default_family


def build_parser() -> argparse.ArgumentParser:
    from ..serve.jobs import Limits

    lim = Limits()
    p = argparse.ArgumentParser(
        prog="glide serve",
        description="A web app (text -> image, inpainting with a brushed mask, image -> image) and an HTTP API "
        "for the same three operations, on models loaded once. Each request's settings default to "
        "what glide sample / inpaint / edit would use. docs/serve.md.",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for every interface)",
    )
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--share", action="store_true", help="also ask gradio for a public share link (off by default)")
    fam = default_family("text2im")
    p.add_argument(
        "--models",
        choices=sorted(FAMILIES["text2im"]),
        default=fam,
        help=f"model family, as in glide sample and glide inpaint (default: {fam})",
    )
    p.add_argument("--base", help="text-to-image base model: a name or checkpoint path (default: from --models)")
    p.add_argument("--upsampler", help="its upsampler, or 'none' (default: from --models)")
    p.add_argument("--inpaint-base", help="inpainting base model (default: from --models)")
    p.add_argument("--inpaint-upsampler", help="inpainting upsampler, or 'none' (default: from --models)")
    p.add_argument("--clip", help="the noised CLIP for CLIP guidance and reranking, as in glide sample --clip")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="model precision, as in glide sample")
    p.add_argument(
        "-o",
        "--output",
        default="samples",
        help="folder for the results and uploads; the server writes nowhere else (default: ./samples)",
    )
    p.add_argument("--cache-dir", default=None, help="where released files live, as in glide sample")
    p.add_argument("--no-download", action="store_true", help="never download missing released files")
    p.add_argument(
        "--queue-size",
        type=int,
        default=lim.queue_size,
        help=f"requests that may wait for the device; more get a 'busy' answer (default: {lim.queue_size})",
    )
    p.add_argument(
        "--max-images",
        type=int,
        default=lim.max_images,
        help=f"images sampled per request, best-of-N candidates included (default: {lim.max_images})",
    )
    p.add_argument(
        "--max-steps", type=int, default=lim.max_steps, help=f"sampling steps per stage (default: {lim.max_steps})"
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=lim.max_upload_mb,
        help=f"size of an uploaded file in MB (default: {lim.max_upload_mb:g})",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=lim.max_pixels,
        help=f"width x height of an uploaded image (default: {lim.max_pixels})",
    )
    p.add_argument(
        "--max-prompt-chars",
        type=int,
        default=lim.max_prompt_chars,
        help=f"characters of a caption or negative prompt (default: {lim.max_prompt_chars})",
    )
    p.add_argument("--quiet", action="store_true", help="print only the address")
    return p


def model_argv(args: argparse.Namespace, task: str) -> list[str]:
    """The glide sample (``task`` "text2im") or glide inpaint ("inpaint") model flags of the server's options."""
    base, up = (args.base, args.upsampler) if task == "text2im" else (args.inpaint_base, args.inpaint_upsampler)
    argv = ["--models", args.models]
    for flag, value in (
        ("--base", base),
        ("--upsampler", up),
        ("--clip", args.clip),
        ("--cache-dir", args.cache_dir),
        ("--device", None if args.device == "cpu" else args.device),
        ("--dtype", None if args.dtype == "auto" else args.dtype),
    ):
        if value:
            argv += [flag, value]
    return argv + (["--no-download"] if args.no_download else [])


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    for name in ("queue_size", "max_images", "max_steps", "max_pixels", "max_prompt_chars"):
        if getattr(args, name) < (0 if name == "queue_size" else 1):
            print(
                f"glide serve: error: --{name.replace('_', '-')} must be at least {0 if name == 'queue_size' else 1}",
                file=sys.stderr,
            )
            return 2
    output = Path(args.output).absolute()
    # gradio keeps uploads and its cache in GRADIO_TEMP_DIR: inside the output folder, so the server
    # writes nowhere else. No analytics (and no network) either. Both are read when gradio is imported.
    os.environ["GRADIO_TEMP_DIR"] = str(output / ".gradio")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        from ..serve.app import build_app, launch
    except ImportError as e:
        print(
            f"glide serve: error: the server needs {e.name or 'gradio'!r}, which is not installed; install the "
            "serve extras: pip install 'glide-diffusion[serve]'",
            file=sys.stderr,
        )
        return 2
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"glide serve: error: -o/--output: {e}", file=sys.stderr)
        return 2
    from ..serve.jobs import Limits, Server

    limits = Limits(
        max_images=args.max_images,
        max_steps=args.max_steps,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        max_prompt_chars=args.max_prompt_chars,
        queue_size=args.queue_size,
    )
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = limits.max_pixels  # PIL refuses larger (decompression bombs) before decoding
    from .common import run_command

    state: dict = {}

    def load() -> list[Path]:
        state["server"] = Server(model_argv(args, "text2im"), model_argv(args, "inpaint"), output, limits)
        return []

    rc = run_command("serve", load)  # a missing model or a bad flag: one line, exit 2
    if rc:
        return rc
    server = state["server"]
    demo = build_app(server)
    print(f"glide serve: {args.models} models loaded; results in {output}", file=sys.stderr, flush=True)
    launch(demo, server, host=args.host, port=args.port, share=args.share, allowed=[output], quiet=args.quiet)
    return 0
