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
import contextlib
import json
import math
import platform
import time
import types

import torch

from glide_diffusion.checkpoints import atomic_write_text, build_model
from glide_diffusion.precision import native_bf16_cpu
from glide_diffusion.presets import RELEASED_PRESETS, get_preset
from glide_diffusion.text import transformer as xf
from glide_diffusion.unet import blocks

BATCH = {"base": 2, "base-inpaint": 2, "upsample": 1, "upsample-inpaint": 1}


def official_unet_attention(self, x, text_kv_unused, *, xf_out):
    """glide-text2im's AttentionBlock: text projected here, einsum attention, fp32 softmax."""
    b, c, *spatial = x.shape
    qkv = self.qkv(self.norm(x).view(b, c, -1))
    length = qkv.shape[-1]
    ch = c // self.heads
    q, k, v = qkv.reshape(b * self.heads, ch * 3, length).split(ch, dim=1)
    ek, ev = self.encoder_kv(xf_out).reshape(b * self.heads, ch * 2, -1).split(ch, dim=1)
    k, v = torch.cat([ek, k], dim=-1), torch.cat([ev, v], dim=-1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    h = torch.einsum("bts,bcs->bct", weight, v).reshape(b, -1, length)
    return x + self.proj_out(h).reshape(b, c, *spatial)


def official_text_attention(self, x):
    bs, n_ctx, _ = x.shape
    qkv = self.c_qkv(x).view(bs, n_ctx, self.heads, -1)
    ch = qkv.shape[-1] // 3
    q, k, v = torch.split(qkv, ch, dim=-1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.einsum("bthc,bshc->bhts", q * scale, k * scale)
    weight = torch.softmax(weight.float(), dim=-1).type(weight.dtype)
    return self.c_proj(torch.einsum("bhts,bshc->bthc", weight, v).reshape(bs, n_ctx, -1))


@contextlib.contextmanager
def plain_path(model):
    """Swap in the official computation for every attention layer of this model (its own
    instances only: the library's classes are untouched), restored afterwards."""
    state = {}

    def unet_attention(self, x, text_kv):
        return official_unet_attention(self, x, text_kv, xf_out=state["xf_out"])

    def encode_text(tokens, mask, _orig=model.encode_text):
        text = _orig(tokens, mask)
        state["xf_out"] = text.xf_out
        return text

    # The official layers project the text inside every attention call: no precomputed keys.

    def skip_projection(self, xf_out):
        return None

    patched = []  # (module, attribute) set on an instance, shadowing its class's method
    for m in model.modules():
        if isinstance(m, blocks.AttentionBlock):
            replace = {"forward": unet_attention, "project_text": skip_projection}
        elif isinstance(m, xf.MultiheadAttention):
            replace = {"forward": official_text_attention}
        else:
            continue
        for name, fn in replace.items():
            setattr(m, name, types.MethodType(fn, m))
            patched.append((m, name))
    model.encode_text = encode_text
    try:
        yield
    finally:
        for m, name in patched:
            delattr(m, name)
        del model.encode_text


@torch.no_grad()
def randomize_(model, seed=0):
    """Non-degenerate random weights (the zero-initialised output layers would give eps = 0)."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        std = 0.02 if p.ndim >= 2 else 0.1
        p.add_(torch.randn(p.shape, generator=g) * std)


def inputs(config, batch, device):
    g = torch.Generator().manual_seed(1)
    s, ctx = config.unet.image_size, config.unet.text.context_length
    kw = {}
    if config.unet.super_res:
        kw["low_res"] = torch.rand(batch, 3, s // 4, s // 4, generator=g) * 2 - 1
    if config.unet.inpaint:
        kw["inpaint_image"] = torch.rand(batch, 3, s, s, generator=g) * 2 - 1
        kw["inpaint_mask"] = (torch.rand(batch, 1, s, s, generator=g) > 0.5).float()
    x = torch.randn(batch, 3, s, s, generator=g)
    tokens = torch.randint(0, config.unet.text.n_vocab, (batch, ctx), generator=g)
    mask = torch.arange(ctx)[None] < torch.tensor([12] + [0] * (batch - 1))[:, None]

    def to(t):
        return t.to(device)

    return to(x), to(torch.full((batch,), 500)), to(tokens), to(mask), {k: to(v) for k, v in kw.items()}


def timed(fn, repeats, device):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), out


def matmul_gflops(device, dtype, n=2048, repeats=3):
    """Measured dense matrix-product throughput: the ceiling a step can approach."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    if device.type == "cpu" and dtype == torch.bfloat16 and not native_bf16_cpu():
        n, a, b = 256, a[:256, :256], b[:256, :256]  # emulated: keep it short
    seconds, _ = timed(lambda: a @ b, repeats, device)
    return 2 * n**3 / seconds / 1e9


def step_gflop(model, x, t, text, kw):
    """Floating-point operations of one step, counted by PyTorch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x, t, text=text, **kw)
    return counter.get_total_flops() / 1e9


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
