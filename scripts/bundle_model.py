"""Ship a trained model inside the package: float16 EMA weights plus a generated model card.

    python scripts/bundle_model.py runs/base-shapes shapes-base --eval runs/base-shapes/quality.json

Reads the run's newest complete checkpoint (or --checkpoint DIR), its
config.json and metrics.jsonl (steps, samples seen, wall time), writes
``glide_diffusion/bundled/<name>.safetensors`` (weights in float16: half the
size; they load back as float32) and ``<name>.md``, the model card. An
``--eval`` JSON (from ``benchmarks/shapes_quality.py --json``) adds its results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from glide_diffusion.bundled import NAMES, bundled_path
from glide_diffusion.bundled.card import card, committed_config, training_summary
from glide_diffusion.checkpoints import EMA_FILE, atomic_write_text, load_model, save_model
from glide_diffusion.train.state import list_checkpoints


def newest_checkpoint(run: Path) -> Path:
    steps = list_checkpoints(run)
    if not steps:
        raise SystemExit(f"no complete checkpoint under {run / 'checkpoints'}")
    return steps[-1][1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the training run's out_dir")
    p.add_argument("name", choices=NAMES)
    p.add_argument("--checkpoint", type=Path, help="a checkpoint directory (default: the newest)")
    p.add_argument(
        "--config",
        type=Path,
        help="the committed config that trains this model, for the card (default: configs/<run folder>.toml)",
    )
    p.add_argument("--eval", type=Path, help="benchmarks/shapes_quality.py --json output to quote")
    p.add_argument("--notes", help="free text for the card (e.g. how the machine was shared)")
    p.add_argument(
        "--card-only",
        action="store_true",
        help="rewrite the model card only (the weights file's header order is not deterministic, "
        "so rewriting the same weights would still change the file in the history)",
    )
    args = p.parse_args()

    reproduce = committed_config(args.run, args.config)
    ckpt = args.checkpoint or newest_checkpoint(args.run)
    config = json.loads((ckpt / "config.json").read_text())
    step = int(ckpt.name.split("_")[-1])
    summary = training_summary(args.run, step)
    out = bundled_path(args.name)
    meta = {"glide_bundled": args.name, "trained_steps": str(step), "stored_dtype": "float16"}
    if config.get("clip"):
        from glide_diffusion.clip.loading import load_clip, save_clip

        model = load_clip(ckpt / EMA_FILE)
        if not args.card_only:
            save_clip(out, model.half(), meta)
        kind = "noised CLIP"
    else:
        model, model_config = load_model(ckpt / EMA_FILE)
        if not args.card_only:
            save_model(out, model.half(), model_config, metadata=meta)
        kind = model_config.kind
    params = sum(p.numel() for p in model.parameters())
    evaluation = json.loads(args.eval.read_text()) if args.eval else None
    text = card(args.name, reproduce, ckpt, config, kind, summary, params, evaluation, args.notes)
    atomic_write_text(out.with_suffix(".md"), text)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
