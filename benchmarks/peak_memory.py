"""Peak resident memory of base + upsampler sampling on the released architectures (random weights).

Each case runs in a fresh Python process, which loads ``base`` and ``upsample`` from a
temporary cache laid out as ``glide download`` leaves it (random-weight ``.pt`` files, 3 GB,
written first) and samples one image with a few DDIM steps; the process's peak resident set
(``ru_maxrss``: file pages mapped and touched count too) is read after loading and at the end.

- ``pt-fp32``:  today's path: the ``.pt`` files read whole, fp32 weights, sampled in fp32;
- ``pt-bf16``:  the same weights sampled under bf16 autocast (today's ``--dtype bf16``);
- ``convert``:  the first load by name: each ``.pt`` converted into ``.safetensors`` beside it;
- ``st-fp32``:  later loads by name: the safetensors copies memory-mapped, fp32 weights;
- ``st-bf16``:  the same with the weights held in bf16, sampled in bf16.

    python benchmarks/peak_memory.py                     # every case, a few minutes
    python benchmarks/peak_memory.py --cases pt-bf16 st-bf16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CASES = {  # name: (load by, weights dtype, sampling dtype)
    "pt-fp32": ("pt", "fp32", "fp32"),
    "pt-bf16": ("pt", "fp32", "bf16"),
    "convert": ("name", "fp32", "fp32"),
    "st-fp32": ("name", "fp32", "fp32"),
    "st-bf16": ("name", "bf16", "bf16"),
}
CAPTION = "an oil painting of a corgi wearing a party hat"


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_case(case: str, cache: Path, base_steps: str, up_steps: str) -> dict:
    """Load both models and sample one image, in this process; the peaks and times."""
    from glide_diffusion.hub.cache import released_path
    from glide_diffusion.pipelines.recipes import StageSettings
    from glide_diffusion.pipelines.text2im import Text2ImPipeline

    how, held, dtype = CASES[case]
    names = ("base", "upsample")
    sources = [str(released_path(n, cache)) if how == "pt" else n for n in names]
    t0 = time.perf_counter()
    pipe = Text2ImPipeline.from_pretrained(*sources, cache_dir=str(cache), download=False, dtype=held)
    loaded = time.perf_counter()
    load_peak = peak_mib()
    pipe(
        CAPTION,
        base=StageSettings("ddim", base_steps, 3.0),
        upsample=StageSettings("ddim", up_steps, 1.0, 0.997),
        dtype=dtype,
    )
    return {
        "case": case,
        "load_peak_mib": round(load_peak),
        "peak_mib": round(peak_mib()),
        "load_s": round(loaded - t0, 1),
        "sample_s": round(time.perf_counter() - loaded, 1),
    }


def cpu_line() -> str:
    """The CPU's model name and its bf16 instructions, from /proc/cpuinfo (Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    bf16 = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model}; bf16 instructions: {', '.join(bf16) or 'none'}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--base-steps", default="2", help="DDIM respacing of the base stage (guided, 2 rows)")
    p.add_argument("--up-steps", default="1", help="DDIM respacing of the upsampler")
    p.add_argument("--cache-dir", default=None, help="keep the random-weight files here (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # the child process's one case
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.cache_dir), args.base_steps, args.up_steps)))
        return
    from glide_diffusion.speed import write_released

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache_dir or tmp)
        write_released(cache)
        cases = [c for c in CASES if c in args.cases]
        if any(c.startswith("st-") for c in cases) and "convert" not in cases:
            cases.insert(0, "convert")  # converted first, so no st- case measures the conversion
        for case in cases:
            if case == "convert":  # the conversion runs on the first load by name only
                for f in (cache / "checkpoints").glob("*.safetensors"):
                    f.unlink()
            cmd = [sys.executable, __file__, "--case", case, "--cache-dir", str(cache)]
            cmd += ["--base-steps", args.base_steps, "--up-steps", args.up_steps]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            print(row, flush=True)
            if case in args.cases:
                rows.append(row)
    print(f"\n{cpu_line()}; torch {torch.__version__}")
    print(f"{'case':<9} {'load peak MiB':>13} {'peak MiB':>9} {'load s':>7} {'sample s':>9}")
    for r in rows:
        print(f"{r['case']:<9} {r['load_peak_mib']:>13} {r['peak_mib']:>9} {r['load_s']:>7} {r['sample_s']:>9}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_line(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
