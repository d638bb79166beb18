"""Helpers of the speed benchmarks (``benchmarks/step_time.py``, ``sampling_speed.py``,
``default_speed.py``, ``peak_memory.py``): the official computation of a step, random weights,
inputs, timers and the machine's matrix-product throughput.

- :func:`plain_path`: what glide-text2im computes at each step (fp32, eager, the caption
  re-encoded by the text transformer at every step, attention as explicit einsum/softmax),
  swapped into one model's attention layers;
- :func:`randomize_`, :func:`inputs`: non-degenerate random weights and a step's inputs;
- :func:`timed`, :func:`matmul_gflops`, :func:`step_gflop`: the minimum time of repeated calls,
  the measured dense matmul GFLOP/s, one step's GFLOP;
- :func:`write_released`: random-weight ``base.pt`` and ``upsample.pt`` where the cache keeps
  the released files (a step's time does not depend on the weights).
"""

from __future__ import annotations

import contextlib
import math
import time
import types
from pathlib import Path

import torch

from .checkpoints import atomic_write, build_model
from .hub.cache import released_path
from .precision import native_bf16_cpu
from .text import transformer as xf
from .unet import blocks


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


def write_released(cache: Path) -> None:
    """Random-weight base.pt and upsample.pt where the cache keeps the released files."""
    for name, preset in (("base", "base-64"), ("upsample", "upsample-256")):
        path = released_path(name, cache)
        if path.is_file():
            continue
        torch.manual_seed(0)
        model = build_model(preset)
        randomize_(model)
        atomic_write(path, lambda tmp, model=model: torch.save(model.state_dict(), tmp))
