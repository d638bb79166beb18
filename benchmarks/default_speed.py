"""What a user waits for: ``glide sample CAPTION --models glide`` at its defaults, end to end,
against the official recipe as the official code computes it, measured in one run.

- default: the command in a fresh process (Python start, loading both released-architecture
  models from their .pt files, sampling, writing the PNG), timed by the wall clock;
- official: GLIDE's notebook recipe (base DDPM 100 guided, batch 2; upsampler DDIM fast27) with
  the official computation (fp32, eager, caption re-encoded every step, einsum attention):
  steps x measured s/step, model loading not counted, so a lower bound of its time.

The weights are random (a step's time does not depend on them), written once into a
temporary cache laid out as ``glide download`` leaves it (3 GB). Each ``--also`` adds a row:
the same command with more options, e.g. ``--also "--dtype fp32"``.

    python benchmarks/default_speed.py
    python benchmarks/default_speed.py --also "--dtype fp32" --also "--compile" --json speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from glide_diffusion.checkpoints import atomic_write_text, build_model
from glide_diffusion.diffusion import make_schedule
from glide_diffusion.pipelines.recipes import OFFICIAL_BASE, OFFICIAL_UPSAMPLE
from glide_diffusion.precision import native_bf16_cpu
from glide_diffusion.presets import get_preset
from glide_diffusion.speed import inputs, matmul_gflops, plain_path, randomize_, timed, write_released

CAPTION = "an oil painting of a corgi wearing a party hat"


def official_seconds(repeats: int) -> dict:
    """s/step of the official computation for each stage, and steps x s/step."""
    rows = {}
    for preset, settings, batch in (("base-64", OFFICIAL_BASE, 2), ("upsample-256", OFFICIAL_UPSAMPLE, 1)):
        config = get_preset(preset)
        torch.manual_seed(0)
        model = build_model(config)
        randomize_(model)
        model.eval()
        x, t, tokens, mask, kw = inputs(config, batch, torch.device("cpu"))
        with plain_path(model), torch.no_grad():
            s_step, _ = timed(partial(model, x, t, tokens=tokens, mask=mask, **kw), repeats, torch.device("cpu"))
        steps = make_schedule(config.diffusion.noise_schedule, config.diffusion.steps, settings.steps).num_steps
        rows[preset] = {"s_step": s_step, "steps": steps, "total_s": s_step * steps}
        del model
    return rows


def run_command(cache: Path, out: Path, extra: list[str]) -> float:
    """Wall-clock seconds of one ``glide sample`` in a new process."""
    cmd = [
        sys.executable,
        "-m",
        "glide_diffusion.cli.main",
        "sample",
        CAPTION,
        "--models",
        "glide",
        "--cache-dir",
        str(cache),
        "--no-download",
        "--no-progress",
        "-o",
        str(out),
        *extra,
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{done.stderr}")
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="another row: glide sample with these options added (repeatable)",
    )
    p.add_argument("--cache-dir", default=None, help="keep the random-weight files here (default: a temporary one)")
    p.add_argument("--repeats", type=int, default=2, help="timed official steps per stage (the minimum is used)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    name = platform.processor() or platform.machine()
    bf16 = native_bf16_cpu()
    print(
        f"torch {torch.__version__}, cpu ({name}), {torch.get_num_threads()} threads, native bf16: {bf16}; "
        f"matmul fp32 {matmul_gflops(torch.device('cpu'), torch.float32):.0f} GFLOP/s"
        + (f", bf16 {matmul_gflops(torch.device('cpu'), torch.bfloat16):.0f} GFLOP/s" if bf16 else ""),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="glide-speed-") as tmp:
        cache = Path(args.cache_dir or tmp)
        write_released(cache)
        rows = {}
        for extra in ["", *args.also]:
            rows[extra or "(defaults)"] = run_command(cache, Path(tmp) / "out", shlex.split(extra))
            print(f"glide sample {extra or '(defaults)'}: {rows[extra or '(defaults)']:.1f} s end to end", flush=True)
    official = official_seconds(args.repeats)
    official_total = sum(r["total_s"] for r in official.values())
    for preset, r in official.items():
        print(f"official {preset}: {r['steps']} steps x {r['s_step']:.3f} s = {r['total_s']:.1f} s")
    print(f"official recipe, official computation (loading not counted): {official_total:.1f} s")
    for label, seconds in rows.items():
        print(f"  glide sample {label}: {seconds:.1f} s, {official_total / seconds:.1f}x faster")
    if args.json:
        atomic_write_text(
            args.json,
            json.dumps(
                {
                    "cpu": name,
                    "torch": torch.__version__,
                    "native_bf16": bf16,
                    "caption": CAPTION,
                    "glide_sample_s": rows,
                    "official": official,
                    "official_total_s": official_total,
                },
                indent=1,
            ),
        )


if __name__ == "__main__":
    main()
