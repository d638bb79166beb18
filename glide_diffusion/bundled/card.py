"""The model card of a bundled model (``<name>.md`` beside its weights): what it is, how it was
trained (from the run's config and metrics.jsonl), the one command that reproduces it, and the
``benchmarks/shapes_quality.py`` results when given. ``scripts/bundle_model.py`` writes it.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (tomli: the [train] extra)
    import tomli as tomllib


def training_summary(run: Path, step: int) -> dict:
    """Steps, samples, wall time and throughput from metrics.jsonl (lines up to ``step``).

    The wall time is the sum of the logged intervals (images in each / images per second
    over it): the time spent training, checkpoint writing and sample grids included."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    lines = [m for m in lines if m.get("step", 0) <= step]
    last = lines[-1] if lines else {}
    rates = [m["images_per_s"] for m in lines if "images_per_s" in m]
    median_rate = sorted(rates)[len(rates) // 2] if rates else float("nan")
    seconds, seen = 0.0, 0
    for m in lines:
        if m.get("images_per_s"):
            seconds += (m["samples_seen"] - seen) / m["images_per_s"]
        seen = m["samples_seen"]
    return {
        "steps": step,
        "samples_seen": last.get("samples_seen"),
        "final_loss": last.get("loss"),
        "median_images_per_s": median_rate,
        "world_size": last.get("world_size", 1),
        "wall_hours": seconds / 3600,
    }


ATTRIBUTES = ("background", "colour", "size", "shape", "position", "count")


def committed_config(run: Path, given: Path | None) -> tuple[Path, Path]:
    """The committed config that trains ``run`` (``given``, else configs/<run folder>.toml) and the
    out_dir it names, where its one-command reproduction writes."""
    path = given or Path("configs") / f"{run.name}.toml"
    if not path.is_file():
        raise SystemExit(f"{path} not found: name the committed config that trained {run} with --config")
    return path, Path(tomllib.loads(path.read_text())["out_dir"])


def train_command(config: Path, world_size: int, command: str = "train") -> str:
    if world_size > 1:
        return f"torchrun --standalone --nproc_per_node {world_size} -m glide_diffusion.cli.main {command} {config}"
    return f"glide {command} {config}"


def card(
    name: str,
    reproduce: tuple[Path, Path],
    ckpt: Path,
    config: dict,
    kind: str,
    summary: dict,
    params: int,
    evaluation: dict | None,
    notes: str | None,
) -> str:
    rows = [("parameters", f"{params:,}")]
    if config.get("clip"):
        c = config["clip"]
        rows += [
            ("resolution", f"{c['image_size']} px, patches of {c['patch_size']} px"),
            (
                "towers",
                f"image {c['n_xf_blocks_image']} blocks x "
                f"{c['n_head_image'] * c['n_head_state_image']} wide, "
                f"text {c['n_xf_blocks_text']} blocks x {c['n_head_text'] * c['n_head_state_text']} wide, "
                f"embedding {c['n_embd']}",
            ),
            ("caption tokenizer", f"{c['tokenizer']} (context {c['max_text_len']})"),
            (
                "noise",
                f"{c['beta_schedule']}, {c['n_timesteps']} steps (images noised at uniform timesteps"
                + (f" below {c['max_timestep']})" if c.get("max_timestep") else ")"),
            ),
        ]
    else:
        unet, diff = config["model"]["unet"], config["model"]["diffusion"]
        rows += [
            ("resolution", f"{unet['image_size']} px"),
            (
                "UNet",
                f"{unet['model_channels']} channels x {unet['channel_mult']}, {unet['num_res_blocks']} "
                f"ResBlock{'s' * (unet['num_res_blocks'] != 1)} per level, "
                f"attention at downsampling {unet['attention_resolutions']}"
                + (
                    f", on {unet['patch_size']}x{unet['patch_size']} pixel patches"
                    if unet.get("patch_size", 1) > 1
                    else ""
                ),
            ),
            ("caption tokenizer", f"{unet['text']['tokenizer']} (context {unet['text']['context_length']})"),
            ("diffusion", f"{diff['noise_schedule']}, {diff['steps']} steps, learned-range variance"),
            ("caption dropout (classifier-free guidance)", str(config["cond"]["cfg_dropout"])),
        ]
        v = unet.get("prediction", "eps") == "v"
        rows.append(
            (
                "output",
                "v-prediction (the network predicts v; the model returns [eps, variance])"
                if v
                else "[eps, variance] (GLIDE's)",
            )
        )
        if config.get("distill"):
            d = config["distill"]
            what = (
                "its teacher's classifier-free guided output, in one pass"
                if not d["steps"]
                else f"two of its teacher's DDIM steps in one (trailing{d['steps']} grid)"
            )
            rows.append(
                (
                    "distillation",
                    f"guided distillation of {d['teacher']} (Meng et al. 2023): {what}, guidance scales "
                    f"{d['guidance_min']:g} to {d['guidance_max']:g}; x0-MSE weighted max(SNR, 1)",
                )
            )
        elif config.get("loss", {}).get("min_snr_gamma"):
            rows.append(("loss", f"eps-MSE (Min-SNR weighted, gamma {config['loss']['min_snr_gamma']}) + VB"))
        else:
            cap = config.get("loss", {}).get("v_weight_max") if v else None
            rows.append(
                (
                    "loss",
                    ("v-MSE" if v else "eps-MSE")
                    + (f" (weight 1/abar capped at {cap:g} on the eps-MSE)" if cap else "")
                    + " + VB (learned-range variance)",
                )
            )
    rows += [
        (
            "training",
            f"{summary['steps']} steps x {config['batch_size']} images x {config['grad_accum']} accumulation "
            f"x {summary['world_size']} process(es) = {summary['samples_seen']:,} images",
        ),
        (
            "optimizer",
            f"AdamW lr {config['optim']['lr']}, warm-up {config['optim']['warmup_steps']}, "
            f"{config['optim']['schedule']} schedule; EMA {config['ema_decay']}",
        ),
        ("final training loss", f"{summary['final_loss']:.4f}"),
        ("throughput", f"{summary['median_images_per_s']:.1f} images/s (median of the logged intervals)"),
        ("wall time", f"{summary['wall_hours']:.2f} h (sum of the logged intervals)"),
        ("hardware", f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"),
    ]
    command = "distill" if config.get("distill") else "train"
    lines = [
        f"# {name}",
        "",
        f"A GLIDE-style {kind} model trained on the procedural Shapes dataset",
        "(`glide_diffusion.data.shapes`, training split: the five held-out colour-shape pairs never seen).",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        f"Reproduce: `{train_command(reproduce[0], summary['world_size'], command)}` then",
        f"`python scripts/bundle_model.py {reproduce[1]} {name}` (checkpoint `{ckpt.name}`).",
        "Weights are stored in float16 and loaded as float32.",
    ]
    if notes:
        lines += ["", "## Notes", "", notes]
    if evaluation:
        lines += [
            "",
            "## Evaluation",
            "",
            f"From `benchmarks/shapes_quality.py` (`{json.dumps(evaluation.get('args', {}))}`):",
            "",
            "| guidance | exact (1 object) | "
            + " | ".join(ATTRIBUTES)
            + " | exact (2 objects) | exact (held-out pairs) |",
            "|---" * (len(ATTRIBUTES) + 4) + "|",
        ]
        for scale, r in evaluation.get("reports", {}).items():
            single = r["single"]
            cells = [
                single["exact"],
                *(single.get(a, float("nan")) for a in ATTRIBUTES),
                r["two"]["exact"],
                r["held_out"]["exact"],
            ]
            lines.append(f"| {scale} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
        lines += [
            "",
            "(one-object columns: the share of captions whose attribute the evaluator read right; "
            "nan where the set was empty)",
        ]
    return "\n".join(lines) + "\n"
