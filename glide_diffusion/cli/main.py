"""The ``glide`` command: one entry point, a subcommand per task."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import edit, sample


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "sample": ("Generate images from text (base model, then upsampler).", sample.main),
        "inpaint": ("Repaint a masked region of an image from a caption.", edit.inpaint_main),
        "edit": ("Redraw an image toward a caption (image-to-image).", edit.edit_main),
        "serve": ("A web app and HTTP API: text -> image, inpainting, image -> image (docs/serve.md).", _serve),
        "download": ("Fetch the released GLIDE (filtered) files into the cache.", _download),
        "train": ("Train or fine-tune a model from a TOML config (torchrun for several processes).", _train),
        "distill": ("Distil a guided model into a few-step one (Meng et al. 2023) from a TOML config.", _distill),
        "export": ("Write a training checkpoint's EMA weights (sharded or not) as one .safetensors file.", _export),
        "eval": ("Evaluate: sample for a caption file, reference statistics, scores (torchrun to shard).", _eval),
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        parser = argparse.ArgumentParser(prog="glide", description="GLIDE text-guided diffusion.")
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        for name, (help_text, _) in commands.items():
            sub.add_parser(name, help=help_text)
        if argv and argv[0] not in ("-h", "--help"):
            parser.error(f"unknown command {argv[0]!r}; choose from {', '.join(commands)}")
        parser.print_help()
        return 0 if argv else 2
    try:
        return commands[argv[0]][1](argv[1:])
    except KeyboardInterrupt:  # one line, not a traceback; nothing half-written is left (atomic writes)
        print(f"\nglide {argv[0]}: interrupted", file=sys.stderr)
        return 130


def _download(argv: Sequence[str]) -> int:
    from ..hub.download import cli_download

    return cli_download(list(argv))


def _serve(argv: Sequence[str]) -> int:
    from . import serve

    return serve.main(list(argv))


def _train(argv: Sequence[str]) -> int:
    from . import train

    return train.main(list(argv))


def _distill(argv: Sequence[str]) -> int:
    from . import train

    return train.main(list(argv), command="distill")


def _export(argv: Sequence[str]) -> int:
    from . import export

    return export.main(list(argv))


def _eval(argv: Sequence[str]) -> int:
    from . import eval as eval_cli

    return eval_cli.main(list(argv))


if __name__ == "__main__":
    sys.exit(main())
