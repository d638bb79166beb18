"""Model precision: fp32 everywhere, bf16 on CPUs with native support, fp16 on CUDA.

Mixed precision is applied by autocast around the model call only: the
sampler's arithmetic, the schedule and the normalisation statistics stay in
float32.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX-512 BF16 / AMX) that oneDNN uses."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def check_dtype(dtype: str, device: torch.device | str) -> None:
    """Raise ValueError for a precision this device cannot run well."""
    device = torch.device(device)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device; on a CPU use bf16 (where supported) or fp32")
    if dtype == "bf16" and device.type == "cpu" and not native_bf16_cpu():
        raise ValueError(
            "this CPU has no native bf16 support (AVX-512 BF16 or AMX), where bf16 runs "
            "far slower than fp32; use --dtype fp32"
        )


def autocast(device: torch.device | str, dtype: str):
    """A context that runs the model in ``dtype`` (a no-op for fp32)."""
    device = torch.device(device)
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])
