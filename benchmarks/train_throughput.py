"""Training throughput (images/s) of a config on this machine, one process vs torchrun DDP.

Each measurement is a fresh ``glide train`` run in a subprocess (a new out_dir, no
checkpoints or samples until the end), timed by the trainer itself over the steps
after a warm-up, and read back from its metrics.jsonl.

    python benchmarks/train_throughput.py                        # base-shapes, 20 steps, 1 and 2 processes
    python benchmarks/train_throughput.py --config configs/tiny-test.toml --steps 10 --procs 1
    python benchmarks/train_throughput.py --set data.kind=synthetic   # without the Shapes data module
    python benchmarks/train_throughput.py --procs 1 --compile both --steps 40 --warmup 15   # torch.compile vs eager
    python benchmarks/train_throughput.py --procs 2 --attention both     # CPU attention: written out vs SDPA

With torch.compile the first steps include compiling: keep --warmup past them.

The per-process batch is the config's; with N processes each optimizer step
trains on N times as many images. On a 2-core CPU the 2-process run shares the
same two cores (one thread each), so expect scaling well below 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(
    config: str,
    steps: int,
    warmup: int,
    procs: int,
    overrides: list[str],
    threads: int | None,
    compiled: bool = False,
    attention: str = "written",
) -> dict:
    with tempfile.TemporaryDirectory() as out:
        args = [
            "-m",
            "glide_diffusion.cli.main",
            "train",
            config,
            "--out-dir",
            out,
            "--max-steps",
            str(steps),
            "--no-progress",
            "--set",
            f"ckpt.every={steps}",
            "--set",
            "sample.every=0",
            "--set",
            f"log.every={warmup}",
        ]
        for item in overrides + [f"compile={str(compiled).lower()}"]:
            args += ["--set", item]
        launcher = (
            [sys.executable]
            if procs == 1
            else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
        )
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        env["GLIDE_SDPA_BACKWARD"] = "1" if attention == "sdpa" else "0"
        proc = subprocess.run(launcher + args, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"run with {procs} process(es) failed:\n{proc.stderr[-3000:]}")
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    after = [r for r in records if r["step"] > warmup]  # the first interval includes start-up
    ips = sum(r["images_per_s"] for r in after) / len(after) if after else records[-1]["images_per_s"]
    return {
        "procs": procs,
        "compiled": compiled,
        "attention": attention,
        "images_per_s": ips,
        "loss": records[-1]["loss"],
        "global_batch": records[-1]["samples_seen"] // records[-1]["step"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "base-shapes.toml"))
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="steps excluded from the timing (default 5)")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of single-process runs")
    p.add_argument(
        "--compile",
        choices=("off", "on", "both"),
        default="off",
        help="train with torch.compile (on), without (off), or each run both ways",
    )
    p.add_argument(
        "--attention",
        choices=("written", "sdpa", "both"),
        default="written",
        help="CPU training attention: written out (the default), SDPA's flash kernel, or both",
    )
    p.add_argument("--repeats", type=int, default=1, help="run each setting this many times, alternating")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    if args.steps <= args.warmup:
        raise SystemExit("--steps must exceed --warmup")
    if args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    attentions = ("written", "sdpa") if args.attention == "both" else (args.attention,)
    # Repeats alternate the settings, so a machine whose speed drifts affects each alike.
    rows = [
        run(args.config, args.steps, args.warmup, n, args.overrides, args.threads if n == 1 else 1, c, a)
        for _ in range(args.repeats)
        for n in args.procs
        for c in modes
        for a in attentions
    ]
    base = rows[0]["images_per_s"]
    print(f"config: {args.config}  steps: {args.steps} (first {args.warmup} not timed)  cpus: {os.cpu_count()}")
    print(
        f"{'processes':>9} {'compiled':>8} {'attention':>9} {'global batch':>12} {'images/s':>9} {'speed-up':>8} "
        f"{'last loss':>9}"
    )
    for r in rows:
        print(
            f"{r['procs']:>9} {str(r['compiled']).lower():>8} {r['attention']:>9} {r['global_batch']:>12} "
            f"{r['images_per_s']:>9.2f} {r['images_per_s'] / base:>8.2f} {r['loss']:>9.4f}"
        )


if __name__ == "__main__":
    main()
