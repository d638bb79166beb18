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
import platform
from pathlib import Path

import torch

from glide_diffusion.bundled import NAMES, bundled_path
from glide_diffusion.checkpoints import load_model, save_model


def newest_checkpoint(run: Path) -> Path:
    steps = sorted(p for p in (run / "checkpoints").glob("step_*") if (p / "ema.safetensors").is_file())
    if not steps:
        raise SystemExit(f"no complete checkpoint under {run / 'checkpoints'}")
    return steps[-1]


def training_summary(run: Path, step: int) -> dict:
    """Steps, samples, wall time and throughput from metrics.jsonl (lines up to ``step``)."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    lines = [m for m in lines if m.get("step", 0) <= step]
    last = lines[-1] if lines else {}
    rates = [m["images_per_s"] for m in lines if "images_per_s" in m]
    median_rate = sorted(rates)[len(rates) // 2] if rates else float("nan")
    return {"steps": step, "samples_seen": last.get("samples_seen"), "final_loss": last.get("loss"),
            "median_images_per_s": median_rate, "world_size": last.get("world_size", 1),
            "wall_hours_at_median_rate": (last.get("samples_seen") or 0) / median_rate / 3600 if rates else None}


def card(name: str, run: Path, ckpt: Path, config: dict, kind: str, summary: dict, params: int,
         evaluation: dict | None) -> str:
    unet = config["model"]["unet"]
    lines = [
        f"# {name}",
        "",
        f"A GLIDE-style {kind} model trained on the procedural Shapes dataset",
        "(`glide_diffusion.data.shapes`, training split: the five held-out colour-shape pairs never seen).",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {params:,} |",
        f"| resolution | {unet['image_size']} px |",
        f"| caption tokenizer | {unet['text']['tokenizer']} (context {unet['text']['context_length']}) |",
        f"| diffusion | {config['model']['diffusion']['noise_schedule']}, {config['model']['diffusion']['steps']} steps, learned-range variance |",
        f"| training | {summary['steps']} steps x {config['batch_size']} images x {config['grad_accum']} accumulation x {summary['world_size']} process(es) = {summary['samples_seen']:,} images |",
        f"| optimizer | AdamW lr {config['optim']['lr']}, warm-up {config['optim']['warmup_steps']}, {config['optim']['schedule']} schedule; EMA {config['ema_decay']} |",
        f"| caption dropout (classifier-free guidance) | {config['cond']['cfg_dropout']} |",
        f"| final training loss | {summary['final_loss']:.4f} |",
        f"| throughput | {summary['median_images_per_s']:.1f} images/s (median) |",
        f"| wall time | about {summary['wall_hours_at_median_rate']:.2f} h at that rate |",
        f"| hardware | {platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__} |",
        "",
        "Reproduce: `glide train configs/" + run.name + ".toml` then",
        f"`python scripts/bundle_model.py {run} {name}` (checkpoint `{ckpt.name}`).",
        "Weights are stored in float16 and loaded as float32.",
    ]
    if evaluation:
        lines += ["", "## Evaluation", "", "From `benchmarks/shapes_quality.py` "
                  f"(`{json.dumps(evaluation.get('args', {}))}`):", "",
                  "| guidance | exact (1 object) | exact (2 objects) | exact (held-out pairs) |",
                  "|---|---|---|---|"]
        for scale, r in evaluation.get("reports", {}).items():
            lines.append(f"| {scale} | {r['single']['exact']:.3f} | {r['two']['exact']:.3f} | {r['held_out']['exact']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="the training run's out_dir")
    p.add_argument("name", choices=NAMES)
    p.add_argument("--checkpoint", type=Path, help="a checkpoint directory (default: the newest)")
    p.add_argument("--eval", type=Path, help="benchmarks/shapes_quality.py --json output to quote")
    args = p.parse_args()

    ckpt = args.checkpoint or newest_checkpoint(args.run)
    model, model_config = load_model(ckpt / "ema.safetensors")
    config = json.loads((ckpt / "config.json").read_text())
    step = int(ckpt.name.split("_")[-1])
    summary = training_summary(args.run, step)
    out = bundled_path(args.name)
    save_model(out, model.half(), model_config,
               metadata={"glide_bundled": args.name, "trained_steps": str(step), "stored_dtype": "float16"})
    params = sum(p.numel() for p in model.parameters())
    evaluation = json.loads(args.eval.read_text()) if args.eval else None
    out.with_suffix(".md").write_text(card(args.name, args.run, ckpt, config, model_config.kind, summary, params, evaluation))
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
