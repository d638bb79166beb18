"""Model precision: fp32 everywhere, bf16 on CPUs with native support, fp16 on CUDA;
"auto" (the default) picks the fastest of these the device runs well.

Mixed precision is applied by autocast around the model call only: the
sampler's arithmetic, the schedule and the normalisation statistics stay in
float32.
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX-512 BF16 / AMX) that oneDNN uses."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str, device: torch.device | str) -> str:
    """``dtype`` itself, or for "auto": fp16 on CUDA, bf16 on a CPU with native bf16, else fp32.

    bf16 keeps Shapes quality within noise of fp32 (docs/results.md, "Precision: bf16 against fp32").
    """
    if dtype != "auto":
        return dtype
    device = torch.device(device)
    if device.type == "cuda":
        return "fp16"
    return "bf16" if device.type == "cpu" and native_bf16_cpu() else "fp32"


def check_dtype(dtype: str, device: torch.device | str) -> None:
    """Raise ValueError for a precision this device cannot run well."""
    device = torch.device(device)
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    dtype = resolve_dtype(dtype, device)
    if dtype == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device; on a CPU use bf16 (where supported) or fp32")
    if dtype == "bf16" and device.type == "cpu" and not native_bf16_cpu():
        raise ValueError(
            "this CPU has no native bf16 support (AVX-512 BF16 or AMX), where bf16 runs "
            "far slower than fp32; use --dtype fp32"
        )


def autocast(device: torch.device | str, dtype: str) -> contextlib.AbstractContextManager:
    """A context that runs the model in ``dtype`` (a no-op for fp32)."""
    device = torch.device(device)
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])
