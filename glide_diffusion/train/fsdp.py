"""Sharded training with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``).

``dist.strategy = "fsdp"`` shards the weights, gradients, optimizer state and the EMA over
all processes instead of keeping a full copy of each on every GPU (DDP):

- one FSDP unit per ResBlock, UNet attention block and text transformer block, and the root
  (the UNet's input and output convolutions, the timestep MLP, the text embeddings) last;
  a unit's weights are all-gathered just before its forward (and again before its backward)
  and freed after it;
- mixed precision (``precision = "bf16"`` or ``"fp16"``): the blocks all-gather and compute
  in that dtype, the master weights stay float32 shards, and gradients are reduce-scattered
  in float32 (:class:`~torch.distributed.fsdp.MixedPrecisionPolicy`). The root keeps float32
  weights, as the unsharded model's ``full_precision`` layers do, and autocast stays on as
  in DDP;
- activation checkpointing (``activation_checkpointing = true``) per block: each block's
  forward is recomputed in the backward, inside the unit's all-gather;
- the EMA is a second copy of the model sharded the same way: each process updates only
  its shards, and checkpoints store it sharded (``train/dcp.py``);
- gradient accumulation reduce-scatters every micro-batch's gradients into the float32
  gradient shards (sums, divided as DDP's are), and clipping uses the global norm over all
  shards (:func:`limit_grad_norm`).

Nothing here is home-made sharding: parameters become ``DTensor`` shards of FSDP2, which
``torch.distributed.checkpoint`` saves and reshards to any number of processes.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..precision import DTYPES
from ..text.transformer import ResidualAttentionBlock
from ..unet.blocks import AttentionBlock, ResBlock

__all__ = [
    "BLOCK_TYPES",
    "checkpoint_blocks",
    "full_state_dict",
    "limit_grad_norm",
    "local",
    "shard_for_training",
    "shard_model",
]

# The FSDP units (and the activation-checkpointed blocks), innermost first.
BLOCK_TYPES: tuple[type[nn.Module], ...] = (ResBlock, AttentionBlock, ResidualAttentionBlock)


def _fsdp():
    """The FSDP2 API, or a clear error where this PyTorch has none."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # public from PyTorch 2.6
        raise RuntimeError(
            f'dist.strategy = "fsdp" needs PyTorch 2.6 or newer (FSDP2\'s fully_shard); this is {torch.__version__}'
        ) from None
    return fully_shard, MixedPrecisionPolicy


def checkpoint_blocks(model: nn.Module) -> int:
    """Recompute each block of :data:`BLOCK_TYPES` in the backward pass instead of storing its
    activations; returns how many were wrapped.

    Wraps each block's ``forward`` on this instance only (the module tree and the state dict are
    unchanged). Under FSDP the unit's hooks run around it, so the recomputation sees the
    gathered weights. Non-reentrant checkpointing restores the RNG, so dropout repeats.
    """
    n = 0
    for block in model.modules():
        if isinstance(block, BLOCK_TYPES):
            forward = block.forward

            def wrapped(*args, _forward=forward):
                return checkpoint(_forward, *args, use_reentrant=False)

            block.forward = wrapped
            n += 1
    return n


def _project_text_through_module(self: AttentionBlock, xf_out: torch.Tensor) -> torch.Tensor:
    """:meth:`AttentionBlock.project_text` through ``encoder_kv``'s own call (a 1x1 Conv1d, as in
    glide-text2im), so that FSDP's hooks gather its weight: the caption is encoded by the root's
    forward, outside the attention block's."""
    assert self.encoder_kv is not None
    kv = self.encoder_kv(xf_out).transpose(1, 2)  # (B, L, 2C)
    b, n, _ = kv.shape
    return kv.reshape(b, n, self.heads, -1).transpose(1, 2)  # (B, heads, L, 2ch)


def shard_model(
    model: nn.Module, *, precision: str = "fp32", reshard_after_forward: bool = True, mesh=None
) -> nn.Module:
    """Apply ``fully_shard`` to ``model`` in place (per block, then the root); returns it.

    Needs the default process group (any size, gloo or NCCL) or a ``mesh``. ``precision``:
    the dtype the blocks compute and all-gather in ("fp32", "bf16", "fp16"); gradients are
    always reduced in float32. The model's parameters become ``DTensor`` shards: build the
    optimizer after this call.
    """
    fully_shard, MixedPrecisionPolicy = _fsdp()
    compute = DTYPES[precision]
    blocks_mp = MixedPrecisionPolicy(
        param_dtype=None if compute == torch.float32 else compute, reduce_dtype=torch.float32
    )
    root_mp = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    kw = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    for module in list(model.modules()):  # children before parents is not needed: units nest
        if isinstance(module, AttentionBlock) and module.encoder_kv is not None:
            fully_shard(module.encoder_kv, mp_policy=root_mp, **kw)
            module.project_text = types.MethodType(_project_text_through_module, module)  # type: ignore[method-assign]
    for module in list(model.modules()):
        if isinstance(module, BLOCK_TYPES):
            fully_shard(module, mp_policy=blocks_mp, **kw)
    # The root: whatever no block holds. Its weights stay gathered between the last forward
    # unit and the backward anyway (FSDP2 never reshards the root after forward).
    fully_shard(model, mp_policy=root_mp, **kw)
    return model


def local(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor's local shard (the tensor itself when it is not a DTensor): for elementwise
    updates (the EMA) that need no communication."""
    if not torch.distributed.is_available():  # no DTensors without torch.distributed
        return list(tensors)
    from torch.distributed.tensor import DTensor

    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def limit_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Scale the gradients down to global L2 norm ``max_norm`` over all shards (if above); returns the norm before.

    ``torch.nn.utils.get_total_norm`` of DTensor gradients is a DTensor whose
    ``full_tensor()`` sums the squares over every shard, so each process clips by the
    same factor as an unsharded model would.
    """
    from torch.distributed.tensor import DTensor

    params = [p for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], norm_type=2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    if math.isfinite(max_norm):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def full_state_dict(model: nn.Module) -> dict[str, Any]:
    """The whole model's state dict as plain CPU tensors on rank 0 (empty elsewhere).

    A collective: every process must call it. For sample grids under FSDP (the EMA gathered
    once, on the CPU) and tests; checkpoints never gather (``train/dcp.py``).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def shard_for_training(model: nn.Module, ema: nn.Module, config, device: torch.device) -> None:
    """Shard the training ``model`` and its ``ema`` copy per a TrainConfig (``dist``,
    ``precision``, ``activation_checkpointing``), in place; joins a one-process group first
    when torchrun started none (one process: FSDP then shards over one rank)."""
    import torch.distributed as dist

    _fsdp()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    if config.activation_checkpointing:
        checkpoint_blocks(model)
    kw = {"reshard_after_forward": config.dist.reshard_after_forward}
    shard_model(model, precision=config.precision, **kw)
    shard_model(ema, precision="fp32", **kw)
