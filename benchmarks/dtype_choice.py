"""Which precision is faster on this CPU, by model size: one denoising step in fp32 and in bf16.

`--dtype auto` must pick the faster one. CPUs with AVX-512 BF16 and no AMX range from bf16
matrix products twice as fast as fp32's to half as fast, and a small model's step is mostly
normalisation, casts and memory traffic, where bf16 autocast only adds conversions. This
times one step of the released base architecture (random weights, the caption encoded once,
channels-last, inference mode, as the pipelines run it) at several widths, and of the bundled
Shapes base at the batch `glide sample` runs it (best of 4, two rows each for guidance).

    python benchmarks/dtype_choice.py                         # widths 64 128 192, 5 timed steps
    python benchmarks/dtype_choice.py --widths 64 128 --repeats 3 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform

import torch

from glide_diffusion.bundled import bundled_path
from glide_diffusion.checkpoints import atomic_write_text, build_model, read_state_dict
from glide_diffusion.precision import cpu_bf16_kind, resolve_dtype
from glide_diffusion.presets import get_preset
from glide_diffusion.speed import inputs, randomize_, timed


def bench(label, config, batch, repeats):
    torch.manual_seed(0)
    model = build_model(config, device="cpu")
    randomize_(model)
    model = model.eval().to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    x, t, tokens, mask, kw = inputs(config, batch, torch.device("cpu"))
    with torch.inference_mode():
        text = model.encode_text(tokens, mask)
        fp32_s, _ = timed(lambda: model(x, t, text=text, **kw), repeats, torch.device("cpu"))
        text_low = text.kv_to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16_s, _ = timed(lambda: model(x, t, text=text_low, **kw), repeats, torch.device("cpu"))
    row = {
        "model": label,
        "params_M": round(params / 1e6, 2),
        "batch": batch,
        "image_size": config.unet.image_size,
        "fp32_s": fp32_s,
        "bf16_s": bf16_s,
        "bf16_speedup": fp32_s / bf16_s,
        "auto": resolve_dtype("auto", "cpu", params),
    }
    print(
        f"{label:>24} {row['params_M']:8.1f}M  batch {batch}  fp32 {fp32_s * 1e3:8.1f} ms  "
        f"bf16 {bf16_s * 1e3:8.1f} ms  bf16 x{row['bf16_speedup']:.2f}  auto -> {row['auto']}",
        flush=True,
    )
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", nargs="+", type=int, default=[64, 128, 192], help="model_channels of the base")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per precision (the minimum is reported)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, bf16 support: {cpu_bf16_kind() or 'none'}"
    )
    if cpu_bf16_kind() is None:
        raise SystemExit("this CPU has no native bf16: bf16 is emulated and auto is always fp32")
    _, shapes = read_state_dict(bundled_path("shapes-base"))
    rows = [bench("shapes-base", shapes, 8, args.repeats)]
    _, shapes_up = read_state_dict(bundled_path("shapes-upsample"))
    rows.append(bench("shapes-upsample", shapes_up, 2, args.repeats))
    base = get_preset("base-64")
    for width in args.widths:
        config = dataclasses.replace(base, unet=dataclasses.replace(base.unet, model_channels=width))
        rows.append(bench(f"base-64, width {width}", config, 2, args.repeats))
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
