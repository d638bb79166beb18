"""``glide train CONFIG``: train or fine-tune a GLIDE model (also under torchrun)."""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..train.task import DatasetFactory, TaskFactory

# Imported only by training and its data loaders, installed by the [train] extra
# (pyproject.toml); sampling and editing never import them.
TRAIN_PACKAGES = ("fsspec", "webdataset", "braceexpand", "tomli")
TRAIN_INSTALL = "pip install 'glide-diffusion[train]'"


DESCRIPTIONS = {
    "train": "Train a GLIDE model from a TOML config; resumes from the newest checkpoint in out_dir. "
    "Several processes: torchrun --nproc_per_node N -m glide_diffusion.cli.main train CONFIG",
    "distill": "Distil a guided model (Meng et al. 2023) from a TOML config with a [distill] table "
    "(configs/distill-shapes-*.toml); resumes as glide train does. "
    "Several processes: torchrun --nproc_per_node N -m glide_diffusion.cli.main distill CONFIG",
}


def build_parser(command: str = "train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"glide {command}", description=DESCRIPTIONS[command])
    p.set_defaults(command=command)
    p.add_argument("config", help="TOML config file (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field by its dotted path, e.g. --set optim.lr=1e-4 (repeatable)",
    )
    p.add_argument("--out-dir", type=_non_empty, help="same as --set out_dir=DIR")
    p.add_argument("--max-steps", type=_positive_int, help="same as --set max_steps=N")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument(
        "--plan",
        action="store_true",
        help="print per-GPU memory (DDP and FSDP, with and without activation checkpointing) and the "
        "expected steps/s, then exit; nothing is allocated",
    )
    p.add_argument(
        "--world-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help="--plan: the number of GPUs (default: torchrun's WORLD_SIZE, else 1)",
    )
    p.add_argument("--gpu-memory", default=None, metavar="SIZE", help="--plan: memory of one GPU, e.g. 80GB")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=312.0,
        help="--plan: one GPU's dense rate in the compute dtype (default 312: an A100's bf16)",
    )
    p.add_argument(
        "--utilisation", type=float, default=0.4, help="--plan: the share of that rate a step reaches (default 0.4)"
    )
    return p


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of steps, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_empty(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _say(command: str, message: str) -> None:
    print(f"glide {command}: {message}", file=sys.stderr, flush=True)


def main(
    argv: Sequence[str],
    *,
    dataset_factory: DatasetFactory | None = None,
    task: TaskFactory | None = None,
    command: str = "train",
) -> int:
    """``glide train ARGV`` (or ``glide distill``); ``dataset_factory`` and ``task`` go to
    :func:`~glide_diffusion.train.train` (probes)."""
    args = build_parser(command).parse_args(argv)
    try:
        return _run(args, dataset_factory=dataset_factory, task=task)
    except ModuleNotFoundError as e:
        if (e.name or "").partition(".")[0] not in TRAIN_PACKAGES:
            raise
        print(
            f"glide {command}: error: training needs {e.name!r}, which is not installed; "
            f"install the training extras: {TRAIN_INSTALL}",
            file=sys.stderr,
        )
        return 2


def _run(args: argparse.Namespace, **hooks: Any) -> int:
    from ..checkpoints import CheckpointError
    from ..train.config import ConfigError, load_config, parse_override
    from ..train.loop import RunLockedError, TrainingDivergedError, train

    try:
        for item in args.overrides:  # syntax first, in the option's own terms
            parse_override(item, what="--set")
        extra = []  # the shorthand flags: overrides after the --set ones
        if args.out_dir is not None:
            extra.append(f"out_dir={_quote(args.out_dir)}")
        if args.max_steps is not None:
            extra.append(f"max_steps={args.max_steps}")
        if args.no_progress:
            extra.append("log.progress=false")
        config = load_config(args.config, [*args.overrides, *extra])
        if args.command == "distill" and config.distill is None:
            raise ConfigError(f"{args.config} has no [distill] table (teacher, steps): train it with glide train")
        if args.print_config:
            print(config.to_json())
            return 0
        if args.plan:
            return _plan(args, config)
        # The image loaders import their [train] packages: fail here, before the run writes anything.
        loader = {"folder": "folder", "manifest": "folder", "webdataset": "webdataset"}.get(config.data.kind)
        if loader is not None:
            importlib.import_module(f"glide_diffusion.data.{loader}")
        result = train(config, messages=functools.partial(_say, args.command), **hooks)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"glide {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (TrainingDivergedError, RunLockedError) as e:
        print(f"glide {args.command}: error: {e}", file=sys.stderr)
        return 1
    if result.checkpoint is not None and _is_main():
        print(f"step {result.step}, {result.samples_seen} samples; checkpoint: {result.checkpoint}")
    return 0


def _plan(args: argparse.Namespace, config) -> int:
    import os

    from ..train.plan import format_plan, make_plan, parse_bytes

    try:
        memory = parse_bytes(args.gpu_memory) if args.gpu_memory else None
    except ValueError:
        problem = f"--gpu-memory {args.gpu_memory!r} is not a size such as 80GB"
        print(f"glide {args.command}: error: {problem}", file=sys.stderr)
        return 2
    world = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
    try:
        plan = make_plan(config, world, memory, peak_tflops=args.peak_tflops, utilisation=args.utilisation)
    except ValueError as e:
        print(f"glide {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(format_plan(plan, config))
    return 0


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
