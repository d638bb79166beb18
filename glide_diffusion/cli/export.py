"""``glide export CKPT OUT.safetensors``: one training checkpoint's weights as one model file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="glide export",
        description="Consolidate a training checkpoint's EMA weights (sharded or not) into one .safetensors "
        "file that glide sample --base, load_model and every sampling command read. Runs in one process; "
        "the whole model must fit in host memory.",
    )
    p.add_argument("checkpoint", help="a checkpoint folder (runs/X/checkpoints/step_N) or a run folder (its newest)")
    p.add_argument("out", help="the .safetensors file to write")
    p.add_argument(
        "--weights",
        choices=("ema", "model"),
        default="ema",
        help="ema (default: the ones to sample with) or the raw training weights",
    )
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    from ..checkpoints import CheckpointError
    from ..train.config import ConfigError
    from ..train.dcp import export_weights

    if not args.out.endswith(".safetensors"):
        print(f"glide export: error: {args.out} must end in .safetensors", file=sys.stderr)
        return 2
    try:
        path = export_weights(args.checkpoint, args.out, args.weights)
    except (CheckpointError, ConfigError, FileNotFoundError) as e:
        print(f"glide export: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0
