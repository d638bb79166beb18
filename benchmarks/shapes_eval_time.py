"""Wall-clock time of a whole Shapes evaluation through `glide eval`, as a user runs it.

Three commands, each timed as a separate process (model loading included):

1. `glide eval stats shapes:N` — the reference statistics of N test renders (once per
   resolution and extractor; reused by every later evaluation);
2. `glide eval sample shapes:N` — one image per caption from the bundled Shapes base at its
   recipe, no upsampler (the base resolution), in resumable shards;
3. `glide eval score` — FID, KID, precision/recall, density/coverage, CLIP score and the Shapes
   evaluator's exact match and fidelity.

Issue 35's goal is sampling plus scoring of 10,000 images in at most 30 minutes on a 2-core
machine. The output folder must not hold an earlier run (a rerun would skip finished shards).

    python benchmarks/shapes_eval_time.py --n 10000 -o runs/eval/shapes-10k
    python benchmarks/shapes_eval_time.py --n 200 -o /tmp/eval-200 --json t.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from glide_diffusion.checkpoints import atomic_write_text
from glide_diffusion.precision import cpu_bf16_kind


def run(label: str, argv: list[str]) -> float:
    print(f"[{label}] glide {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "glide_diffusion.cli.main", *argv], check=True)
    seconds = time.perf_counter() - start
    print(f"[{label}] {seconds:.0f} s", flush=True)
    return seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000, help="captions, one image each")
    p.add_argument("-o", "--out", required=True, help="a new folder: samples, reference, scores")
    p.add_argument("--extractor", default="shapes", help="feature extractor for FID and P/R")
    p.add_argument("--json", help="also write the timings here")
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists: a rerun would skip its finished shards; give a new folder")
    out.mkdir(parents=True)
    samples, ref = out / "samples", out / f"reference-shapes-{args.n}.npz"
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, bf16: {cpu_bf16_kind() or 'none'}",
        flush=True,
    )
    row = {"n": args.n, "extractor": args.extractor, "threads": torch.get_num_threads(), "bf16": cpu_bf16_kind()}
    stats = ["eval", "stats", f"shapes:{args.n}", "-o", str(ref), "--extractor", args.extractor]
    row["stats_s"] = run("stats", [*stats, "--resolution", "32"])  # the bundled base's resolution
    row["sample_s"] = run(
        "sample", ["eval", "sample", f"shapes:{args.n}", "-o", str(samples), "--upsampler", "none", "--candidates", "1"]
    )
    row["score_s"] = run(
        "score", ["eval", "score", str(samples), "--ref", str(ref), "--clip", "shapes-clip-rerank", "--shapes"]
    )
    row["sample_and_score_min"] = (row["sample_s"] + row["score_s"]) / 60
    score = json.loads((samples / "score.json").read_text())
    row["exact"] = score["shapes"]["all"]["exact"]
    row["fid"] = score.get("fid")
    print(
        f"{args.n} images: sampling {row['sample_s']:.0f} s + scoring {row['score_s']:.0f} s = "
        f"{row['sample_and_score_min']:.1f} min (reference statistics, once: {row['stats_s']:.0f} s)"
    )
    if args.json:
        atomic_write_text(args.json, json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
