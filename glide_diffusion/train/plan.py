"""``glide train CONFIG --plan``: per-GPU memory and expected speed before a run starts.

Memory per process, for DDP and FSDP, with and without activation checkpointing:

- weights, gradients, AdamW's two moments and the EMA: float32, so 4, 4, 8 and 4 bytes per
  parameter; DDP keeps all of them on every process, FSDP a 1/N shard of each, plus the
  units it has gathered at a time (the root's float32 weights for the whole step, and the
  largest block's weights in the compute dtype twice over: the one running and the one
  prefetched) and that block's unsharded float32 gradient before its reduce-scatter;
- activations: the bytes of the tensors autograd saves for the backward pass, counted by
  running the model's forward at the configured per-process batch on the "meta" device
  (shapes only, no memory) under ``torch.autograd.graph.saved_tensors_hooks``: each storage
  once, parameters excluded. With activation checkpointing per block only the blocks' inputs
  and what is outside blocks stay, plus one block's own activations while it is recomputed.
  Attention is counted as the device runs it: on a GPU a fused kernel (SDPA) that saves q, k,
  v, the output and its log-sum-exp; on a CPU the explicit softmax the trainer uses there,
  which saves the (B, heads, HW, L) weights.

Speed: the forward's floating-point operations (``torch.utils.flop_counter.FlopCounterMode``
on the same meta forward, matmuls and convolutions), times 3 for forward and backward (4 with
recomputation), per sample; steps/s = GPUs x peak rate x utilisation / FLOPs per step. The
rate and the utilisation are stated with the result; they are assumptions, not measurements.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["MemoryRow", "Plan", "format_plan", "make_plan", "parse_bytes"]

GIB = 1024**3
ADAM_BYTES = 8  # exp_avg and exp_avg_sq, float32


@dataclass(frozen=True)
class MemoryRow:
    strategy: str  # ddp | fsdp
    checkpointing: bool
    weights: float  # bytes per process
    grads: float
    optimizer: float
    ema: float
    gathered: float  # FSDP: units gathered at once (0 for DDP)
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.ema + self.gathered + self.activations


@dataclass(frozen=True)
class Plan:
    params: int
    text_params: int  # the caption transformer's blocks
    largest_unit: int  # parameters of the largest FSDP block
    root_params: int  # parameters no block holds (the FSDP root unit)
    world_size: int
    batch_size: int  # per process and micro-step
    global_batch: int
    flops_per_sample: float  # one forward
    rows: tuple[MemoryRow, ...]
    gpu_memory: float | None
    peak_flops: float  # per GPU, the stated rate
    utilisation: float
    teacher_forwards: int = 0  # guided distillation: the teacher's passes per sample (no backward)

    def steps_per_s(self, checkpointing: bool) -> float:
        per_step = self.flops_per_sample * ((4 if checkpointing else 3) + self.teacher_forwards) * self.global_batch
        return self.world_size * self.peak_flops * self.utilisation / per_step


def parse_bytes(text: str) -> float:
    """ "80GB", "80GiB", "80" (GB) -> bytes; GB is read as GiB, as GPU memory is quoted."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1024, "M": 1024**2, "G": GIB, "T": 1024**4}
    if t and t[-1] in scale:
        return float(t[:-1]) * scale[t[-1]]
    return float(t) * GIB


def _dummy_inputs(config, batch: int, device: str | torch.device, dtype=torch.float32) -> tuple[tuple, dict]:
    unet = config.model.unet
    size = unet.image_size
    x = torch.zeros(batch, unet.in_channels, size, size, device=device, dtype=dtype)
    t = torch.zeros(batch, dtype=torch.long, device=device)
    kw: dict = {
        "tokens": torch.zeros(batch, unet.text.context_length, dtype=torch.long, device=device),
        "mask": torch.ones(batch, unet.text.context_length, dtype=torch.bool, device=device),
    }
    if unet.super_res:
        low = config.low_res_size
        kw["low_res"] = torch.zeros(batch, unet.in_channels, low, low, device=device, dtype=dtype)
    if unet.inpaint:
        kw["inpaint_image"] = torch.zeros_like(x)
        kw["inpaint_mask"] = torch.zeros_like(x[:, :1])
    if unet.guidance_embed:
        kw["guidance"] = torch.ones(batch, device=device)
    return (x, t), kw


@contextlib.contextmanager
def _attention_as(device_type: str) -> Iterator[None]:
    """Run AttentionBlock's attention as the trainer does on ``device_type`` ("cpu" or "cuda"), and
    the model's float32 regions without autocast (which has no "meta" device)."""
    from ..unet import blocks, model

    original = blocks.F.scaled_dot_product_attention

    def replacement(q, k, v, *args, **kwargs):
        if device_type == "cpu":
            return blocks._attention_for_backward(q, k, v)
        # the memory-efficient kernel: saves q, k, v, the output and its log-sum-exp
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[0]

    blocks.F.scaled_dot_product_attention = replacement  # type: ignore[assignment]
    full_precision = model.full_precision
    model.full_precision = lambda x: contextlib.nullcontext()
    try:
        yield
    finally:
        blocks.F.scaled_dot_product_attention = original
        model.full_precision = full_precision


def _storage_key(t: torch.Tensor):
    return t.untyped_storage()._cdata


def activation_bytes(
    model: nn.Module, config, batch: int, device_type: str, compute: torch.dtype = torch.float32
) -> tuple[float, float]:
    """(without, with per-block checkpointing): bytes autograd keeps for backward at ``batch``.

    ``model`` lives on "meta". Saved tensors are attributed to the outermost block running
    (``fsdp.BLOCK_TYPES``) or to none; the second figure is what stays outside blocks, plus
    every block's inputs, plus the largest block's own activations (recomputed one at a time).
    """
    from .fsdp import BLOCK_TYPES

    params = {_storage_key(p) for p in model.parameters()}
    seen: dict = {}  # storage -> (bytes, block or None)
    inputs: dict = {}  # storage -> bytes, of block inputs
    stack: list = []

    def pack(t: torch.Tensor):
        key = _storage_key(t)
        if key not in params and key not in seen:
            seen[key] = (t.untyped_storage().nbytes(), stack[0] if stack else None)
        return t

    def pre(module, args):
        if not stack:
            for a in args:
                if isinstance(a, torch.Tensor) and a.is_floating_point():
                    inputs[_storage_key(a)] = a.untyped_storage().nbytes()
        stack.append(module)

    def post(module, args, out):
        stack.pop()

    handles = [m.register_forward_pre_hook(pre) for m in model.modules() if isinstance(m, BLOCK_TYPES)]
    handles += [m.register_forward_hook(post) for m in model.modules() if isinstance(m, BLOCK_TYPES)]
    args, kw = _dummy_inputs(config, batch, "meta")
    try:
        with _attention_as(device_type), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(*args, **kw)
    finally:
        for h in handles:
            h.remove()
    scale = {torch.float32: 1.0}.get(compute, 0.5)  # under autocast most saved tensors are 16-bit
    outside = sum(b for b, blk in seen.values() if blk is None)
    per_block: dict = {}
    for b, blk in seen.values():
        if blk is not None:
            per_block[id(blk)] = per_block.get(id(blk), 0) + b
    full = sum(b for b, _ in seen.values()) * scale
    checkpointed = (outside + sum(inputs.values()) + max(per_block.values(), default=0)) * scale
    return full, checkpointed


def forward_flops(model: nn.Module, config) -> float:
    """FLOPs of one forward of one sample (matmuls and convolutions), counted on "meta"."""
    from torch.utils.flop_counter import FlopCounterMode

    args, kw = _dummy_inputs(config, 1, "meta")
    counter = FlopCounterMode(display=False)
    with _attention_as("cuda"), counter, torch.no_grad():
        model(*args, **kw)
    return float(counter.get_total_flops())


def make_plan(
    config,
    world_size: int = 1,
    gpu_memory: float | None = None,
    *,
    device_type: str = "cuda",
    peak_tflops: float = 312.0,
    utilisation: float = 0.4,
) -> Plan:
    """The memory rows and speed of ``config`` (a TrainConfig) on ``world_size`` processes.

    ``peak_tflops``: the stated dense rate of one GPU in the compute dtype (312: an A100's bf16).
    """
    from ..checkpoints import new_unet
    from .fsdp import BLOCK_TYPES

    if config.clip is not None:
        raise ValueError("--plan covers diffusion models, not a noised CLIP")
    with torch.device("meta"):
        model = new_unet(config.model).train()
    n = sum(p.numel() for p in model.parameters())
    text = sum(p.numel() for p in model.transformer.parameters())
    units = [sum(p.numel() for p in m.parameters()) for m in model.modules() if isinstance(m, BLOCK_TYPES)]
    in_units = {id(p) for m in model.modules() if isinstance(m, BLOCK_TYPES) for p in m.parameters()}
    root = sum(p.numel() for p in model.parameters() if id(p) not in in_units)
    compute = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[config.precision]
    act_full, act_ckpt = activation_bytes(model, config, config.batch_size, device_type, compute)
    cbytes = torch.finfo(compute).bits // 8
    gathered = root * 4 + 2 * max(units, default=0) * cbytes + max(units, default=0) * 4
    # A distilling run also holds its teacher (float32, every process) and runs it twice per sample:
    # on the caption and the empty caption (stage one), or two DDIM steps (stage two).
    teacher = 4 * n if config.distill is not None else 0
    rows = []
    for strategy in ("ddp", "fsdp"):
        shard = world_size if strategy == "fsdp" else 1
        for ckpt, act in ((False, act_full), (True, act_ckpt)):
            rows.append(
                MemoryRow(
                    strategy,
                    ckpt,
                    4 * n / shard + teacher,
                    4 * n / shard,
                    ADAM_BYTES * n / shard,
                    4 * n / shard,
                    gathered if strategy == "fsdp" else 0.0,
                    act,
                )
            )
    return Plan(
        n,
        text,
        max(units, default=0),
        root,
        world_size,
        config.batch_size,
        config.batch_size * config.grad_accum * world_size,
        forward_flops(model, config),
        tuple(rows),
        gpu_memory,
        peak_tflops * 1e12,
        utilisation,
        2 if config.distill is not None else 0,
    )


def format_plan(plan: Plan, config) -> str:
    g, unit = (GIB, "GiB") if max(r.total for r in plan.rows) >= GIB else (1024**2, "MiB")
    lines = [
        f"model: {plan.params / 1e6:,.1f} M parameters ({plan.text_params / 1e6:,.1f} M in the text transformer); "
        f"largest block {plan.largest_unit / 1e6:,.1f} M, outside blocks {plan.root_params / 1e6:,.1f} M",
        f"batch: {plan.batch_size} per process and micro-step x {config.grad_accum} micro-steps x "
        f"{plan.world_size} processes = {plan.global_batch}; precision {config.precision}",
        "",
        f"per-GPU memory, {unit}      weights  grads  AdamW    EMA  gathered  activations   total"
        + (" (weights: student and teacher)" if plan.teacher_forwards else "")
        + ("  fits" if plan.gpu_memory else ""),
    ]
    for r in plan.rows:
        name = f"{r.strategy}{' + checkpointing' if r.checkpointing else ''}"
        fits = ("  yes" if r.total <= plan.gpu_memory * 0.9 else "  no") if plan.gpu_memory else ""
        lines.append(
            f"  {name:<22} {r.weights / g:8.2f} {r.grads / g:6.2f} {r.optimizer / g:6.2f} {r.ema / g:6.2f} "
            f"{r.gathered / g:9.2f} {r.activations / g:12.2f} {r.total / g:7.2f}{fits}"
        )
    if plan.gpu_memory:
        lines.append(
            f"  (fits: total within 90% of {plan.gpu_memory / GIB:.0f} GiB, leaving room for the "
            f"allocator's fragmentation and the CUDA context)"
        )
    lines += [
        "",
        f"compute: {plan.flops_per_sample / 1e9:,.1f} GFLOP per sample forward; x3 forward+backward, x4 with "
        f"checkpointing" + (f", + {plan.teacher_forwards} teacher passes" if plan.teacher_forwards else ""),
        f"speed at {plan.peak_flops / 1e12:.0f} TFLOP/s per GPU and {plan.utilisation:.0%} utilisation (assumed): "
        f"{plan.steps_per_s(False):.3f} steps/s ({plan.steps_per_s(False) * plan.global_batch:,.0f} samples/s), "
        f"with checkpointing {plan.steps_per_s(True):.3f} steps/s",
    ]
    return "\n".join(lines)
