"""End-to-end time of one 256x256 GLIDE sample: the official recipe against the fast path.

On the released base and upsampler architectures (random weights; the time of a step
does not depend on the weights), measured in one run:

- plain: the official computation (fp32, eager, caption re-encoded every step, einsum
  attention) with the official recipe: base DDPM "100" with classifier-free guidance
  (batch 2), upsampler DDIM "fast27" (batch 1);
- fast:  this project's step (caption and text keys/values once per run, fused
  attention, channels-last; bf16/fp16 where the hardware has it) with the fast sampler
  settings (default: the pipelines' FAST_BASE / FAST_UPSAMPLE, what ``glide sample`` uses).

Every step of a sampler costs one model call, so by default each path's step is timed
(minimum of --repeats) and the total is steps x s/step (plus the caption encoding);
--full runs every step of both recipes through the real samplers instead (about 15
minutes on a 2-core CPU for the plain recipe). --compile runs the fast path through
torch.compile, as ``glide sample --compile``; its first call (building the kernels) is
reported apart. Also reported: each step's share of the machine's measured
matrix-product throughput, the relative error of the fast step's eps against an fp32
eager step on the same inputs, and the peak memory.

    python benchmarks/sampling_speed.py
    python benchmarks/sampling_speed.py --base-steps 25 --up-steps 10 --full
    python benchmarks/sampling_speed.py --compile
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from glide_diffusion.checkpoints import atomic_write_text, build_model
from glide_diffusion.diffusion import make_schedule
from glide_diffusion.guidance import classifier_free_guidance
from glide_diffusion.pipelines.recipes import FAST_BASE, FAST_UPSAMPLE, OFFICIAL_BASE, OFFICIAL_UPSAMPLE
from glide_diffusion.pipelines.stage import compile_step
from glide_diffusion.precision import autocast, native_bf16_cpu
from glide_diffusion.presets import get_preset
from glide_diffusion.sampling import get_sampler
from glide_diffusion.speed import inputs, matmul_gflops, plain_path, randomize_, step_gflop, timed


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def build(name: str, device: torch.device):
    config = get_preset(name)
    torch.manual_seed(0)  # the default init draws from the global generator: the same model every run
    model = build_model(config, device="cpu")
    randomize_(model)
    return model.to(device).eval(), config


def run_sampler(call, config, settings, x, guided: bool, conditional=None):
    """All steps of one stage through the real sampler; ``call(x_t, t)`` is one model call
    (``conditional``: on the caption rows alone, for steps outside a guidance interval).
    Returns seconds."""
    bounds = settings.guidance_bounds(config.diffusion.steps)
    fn = (
        classifier_free_guidance(call, settings.guidance_scale, interval=bounds, conditional=conditional)
        if guided
        else call
    )
    schedule = make_schedule(config.diffusion.noise_schedule, config.diffusion.steps, settings.steps)
    x_T = x[: x.shape[0] // 2] if guided else x
    start = time.perf_counter()
    get_sampler(settings.sampler, eta=settings.eta)(fn, schedule, x_T * settings.temperature)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def stage(name, settings, plain_settings, batch, args, device, low_dtype):
    """s/step and totals of one stage for the plain and the fast path."""
    model, config = build(name, device)
    x, t, tokens, mask, kw = inputs(config, batch, device)
    n_plain = make_schedule(config.diffusion.noise_schedule, 1000, plain_settings.steps).num_steps
    n_fast = make_schedule(config.diffusion.noise_schedule, 1000, settings.steps).num_steps
    guided = batch == 2
    row = {
        "stage": name,
        "batch": batch,
        "plain_steps": n_plain,
        "fast_steps": n_fast,
        "fast_sampler": f"{settings.sampler} {settings.steps}",
        "plain_sampler": f"{plain_settings.sampler} {plain_settings.steps}",
    }
    with plain_path(model), torch.no_grad():
        row["plain_s_step"], _ = timed(lambda: model(x, t, tokens=tokens, mask=mask, **kw), args.repeats, device)
        if args.full:  # the caption re-encoded at every call, as the official code

            def call(x_t, t_):
                return model(x_t, t_, tokens=tokens, mask=mask, **kw).float()

            row["plain_total_s"] = run_sampler(call, config, plain_settings, x, guided)
    model = model.to(memory_format=torch.channels_last)
    dtype = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(low_dtype, "fp32")
    with torch.inference_mode():  # the caption in fp32 (once per run), as the pipelines do
        start = time.perf_counter()
        text32 = model.encode_text(tokens, mask)
        text = text32.kv_to(low_dtype) if low_dtype is not None else text32
        row["encode_s"] = time.perf_counter() - start
        ref = model(x, t, text=text32, **kw).float()  # fp32, eager: what the fast step's error is against
    step_model = compile_step(model) if args.compile else model  # as Stage.compile
    with torch.inference_mode(), autocast(device, dtype):
        if args.compile:  # the first call builds the kernels: timed apart, not in the totals
            start = time.perf_counter()
            step_model(x, t, text=text, **kw).float()
            row["compile_s"] = time.perf_counter() - start
        row["fast_s_step"], out = timed(lambda: step_model(x, t, text=text, **kw).float(), args.repeats, device)
        eps = slice(0, 3)
        row["fast_eps_rel_err"] = ((out[:, eps] - ref[:, eps]).norm() / ref[:, eps].norm()).item()
        bounds = settings.guidance_bounds(config.diffusion.steps) if guided else None
        n_guided = n_fast
        if bounds is not None:  # steps outside the interval: one conditional pass over half the batch
            half, text1 = x.shape[0] // 2, text.head(x.shape[0] // 2)
            kw1 = {k: v[:half] for k, v in kw.items()}
            row["fast_s_step_unguided"], _ = timed(
                lambda: step_model(x[:half], t[:half], text=text1, **kw1).float(), args.repeats, device
            )
            steps = make_schedule(config.diffusion.noise_schedule, config.diffusion.steps, settings.steps).timestep_map
            n_guided = int(sum(bounds[0] <= ts <= bounds[1] for ts in steps))
            row["guided_steps"] = n_guided
            row["fast_sampler"] += f" cfg on t in [{bounds[0]:g}, {bounds[1]:g}]"
        if args.full:

            def call(x_t, t_):
                return step_model(x_t, t_, text=text, **kw).float()

            cond = None
            if bounds is not None:

                def cond(x_t, t_):
                    return step_model(x_t, t_, text=text1, **kw1).float()

            row["fast_total_s"] = row["encode_s"] + run_sampler(call, config, settings, x, guided, cond)
    row.setdefault("plain_total_s", n_plain * row["plain_s_step"])
    row.setdefault(
        "fast_total_s",
        row["encode_s"] + n_guided * row["fast_s_step"] + (n_fast - n_guided) * row.get("fast_s_step_unguided", 0.0),
    )
    row["gflop"] = step_gflop(model, x, t, text, kw)
    row["dtype"] = dtype
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-sampler", default=FAST_BASE.sampler)
    p.add_argument("--base-steps", default=FAST_BASE.steps)
    p.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=FAST_BASE.guidance_interval,
        metavar=("LO", "HI"),
        help=f"fast path: guide only t in [LO*T, HI*T]; 0 1 = every step "
        f"(default: {FAST_BASE.guidance_interval or 'every step'})",
    )
    p.add_argument("--up-sampler", default=FAST_UPSAMPLE.sampler)
    p.add_argument("--up-steps", default=FAST_UPSAMPLE.steps)
    p.add_argument("--repeats", type=int, default=2, help="timed steps per path (the minimum is used)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="fast path through torch.compile (as glide sample --compile); its build time apart",
    )
    p.add_argument("--full", action="store_true", help="run every step of both recipes instead of steps x s/step")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="the tiny test architectures instead (a smoke test)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        low_dtype = torch.float16
    else:
        low_dtype = torch.bfloat16 if native_bf16_cpu() else None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    peaks = {"fp32": matmul_gflops(device, torch.float32)}
    if low_dtype is not None:
        peaks["low"] = matmul_gflops(device, low_dtype)
    print(
        f"torch {torch.__version__}, {device.type} ({name}), {torch.get_num_threads()} threads; measured matmul "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items())
        + ("" if low_dtype is not None or device.type == "cuda" else "; no native bf16 here: the fast path runs fp32")
    )
    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    fast = [
        FAST_BASE.__class__(args.base_sampler, args.base_steps, FAST_BASE.guidance_scale, guidance_interval=interval),
        FAST_UPSAMPLE.__class__(args.up_sampler, args.up_steps, 1.0, FAST_UPSAMPLE.temperature),
    ]
    names = ("tiny", "tiny-upsample") if args.tiny else ("base-64", "upsample-256")
    rows = [
        stage(names[0], fast[0], OFFICIAL_BASE, 2, args, device, low_dtype),
        stage(names[1], fast[1], OFFICIAL_UPSAMPLE, 1, args, device, low_dtype),
    ]
    peak = peaks.get("low", peaks["fp32"])
    print(
        f"{'stage':<13} {'plain':>12} {'s/step':>7} {'fast':>14} {'s/step':>7} {'dtype':>5} {'% of peak':>9} "
        f"{'eps err':>8} {'plain s':>8} {'fast s':>7}"
    )
    for r in rows:
        print(
            f"{r['stage']:<13} {r['plain_sampler']:>12} {r['plain_s_step']:>7.3f} {r['fast_sampler']:>14} "
            f"{r['fast_s_step']:>7.3f} {r['dtype']:>5} {100 * r['gflop'] / r['fast_s_step'] / peak:>8.0f}% "
            f"{r['fast_eps_rel_err']:>8.1e} {r['plain_total_s']:>8.1f} {r['fast_total_s']:>7.1f}"
        )
    plain_total = sum(r["plain_total_s"] for r in rows)
    fast_total = sum(r["fast_total_s"] for r in rows)
    how = "every step run" if args.full else "steps x measured s/step"
    print(
        f"one image, base + upsampler ({how}): plain {plain_total:.1f} s, fast {fast_total:.1f} s, "
        f"{plain_total / fast_total:.1f}x faster; peak memory {peak_memory_mb(device):.0f} MB"
    )
    if args.compile:
        print(
            "torch.compile's first call, once per process and input shape, not in the totals: "
            + ", ".join(f"{r['stage']} {r['compile_s']:.0f} s" for r in rows)
        )
    if args.json:
        report = {
            "device": name,
            "torch": torch.__version__,
            "matmul_gflops": peaks,
            "rows": rows,
            "plain_total_s": plain_total,
            "fast_total_s": fast_total,
        }
        atomic_write_text(args.json, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
