"""Time one denoising step of each released GLIDE architecture (random weights).

Three paths, measured in the same run on the same model and inputs:

- plain: what glide-text2im does: fp32, eager, the caption re-encoded by the
  text transformer at every step, attention as explicit einsum/softmax;
- fp32:  this project: caption encoded once per run (text keys/values of every
  attention layer precomputed), fused scaled-dot-product attention, channels-last
  convolutions, inference mode;
- bf16:  the same under bfloat16 autocast (CPU) / fp16 (CUDA); normalisation, the residual
  stream and the (once per run) text encoder in fp32.

The base models run batch 2 (classifier-free guidance: conditional and
unconditional rows), the upsamplers batch 1, as the official notebooks do.

    python benchmarks/step_time.py                      # all four, 3 timed steps each
    python benchmarks/step_time.py --models base upsample --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from glide_diffusion.checkpoints import atomic_write_text, build_model
from glide_diffusion.precision import native_bf16_cpu
from glide_diffusion.presets import RELEASED_PRESETS, get_preset
from glide_diffusion.speed import inputs, matmul_gflops, plain_path, randomize_, step_gflop, timed

BATCH = {"base": 2, "base-inpaint": 2, "upsample": 1, "upsample-inpaint": 1}


def bench(name, repeats, device, low_dtype):
    config = get_preset(RELEASED_PRESETS[name])
    torch.manual_seed(0)  # the default init draws from the global generator: the same model every run
    model = build_model(config, device="cpu")
    randomize_(model)
    model = model.to(device).eval()
    batch = BATCH[name]
    x, t, tokens, mask, kw = inputs(config, batch, device)
    row = {"model": name, "batch": batch, "image_size": config.unet.image_size}

    with plain_path(model), torch.no_grad():
        row["plain_s"], ref = timed(lambda: model(x, t, tokens=tokens, mask=mask, **kw), repeats, device)
    model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        text = model.encode_text(tokens, mask)  # once per sampling run, not timed per step
        row["fp32_s"], out32 = timed(lambda: model(x, t, text=text, **kw), repeats, device)
        row["low_s"] = row["low_eps_rel_err"] = float("nan")
        if low_dtype is not None:
            text_low = text.kv_to(low_dtype)  # as the pipelines: encoded in fp32, keys/values rounded once
            with torch.autocast(device.type, dtype=low_dtype):
                row["low_s"], out_low = timed(lambda: model(x, t, text=text_low, **kw).float(), repeats, device)
            eps = slice(0, 3)
            row["low_eps_rel_err"] = ((out_low[:, eps] - out32[:, eps]).norm() / out32[:, eps].norm()).item()
    row["fp32_vs_plain_max_abs"] = (out32 - ref).abs().max().item()
    row["gflop"] = step_gflop(model, x, t, text, kw)
    row["fp32_gflops"] = row["gflop"] / row["fp32_s"]
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(BATCH), choices=list(BATCH))
    p.add_argument("--repeats", type=int, default=3, help="timed steps per path (the minimum is reported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    device = torch.device(args.device)
    low_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    low = "fp16" if device.type == "cuda" else "bf16"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {device.type} ({name}), {torch.get_num_threads()} threads")
    peak = {"fp32": matmul_gflops(device, torch.float32), low: matmul_gflops(device, low_dtype)}
    print(f"measured matmul throughput: fp32 {peak['fp32']:.0f} GFLOP/s, {low} {peak[low]:.1f} GFLOP/s")
    if device.type == "cpu" and not native_bf16_cpu():
        print("this CPU has no native bf16 (AVX-512 BF16 / AMX): bf16 is emulated, the bf16 path is skipped")
        low_dtype = None
    header = (
        f"{'model':<17} {'batch':>5} {'GFLOP':>6} {'plain s/step':>12} {'fp32 s/step':>11} {low + ' s/step':>11} "
        f"{'plain/fp32':>10} {'plain/' + low:>10} {'fp32 % peak':>11} {low + ' eps rel err':>16}"
    )
    print(header)
    rows = []
    for m in args.models:
        r = bench(m, args.repeats, device, low_dtype)
        rows.append(r)
        print(
            f"{m:<17} {r['batch']:>5} {r['gflop']:>6.0f} {r['plain_s']:>12.3f} {r['fp32_s']:>11.3f} "
            f"{r['low_s']:>11.3f} {r['plain_s'] / r['fp32_s']:>9.2f}x {r['plain_s'] / r['low_s']:>9.2f}x "
            f"{100 * r['fp32_gflops'] / peak['fp32']:>10.0f}% {r['low_eps_rel_err']:>16.2e}",
            flush=True,
        )
    if args.json:
        report = {"device": name, "torch": torch.__version__, "matmul_gflops": peak, "rows": rows}
        atomic_write_text(args.json, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
