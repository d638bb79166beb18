"""Model precision: fp32 everywhere, bf16 on CPUs with native support, fp16 on CUDA;
"auto" (the default) picks the fastest of these the device runs well (``resolve_dtype``).

Mixed precision is applied by autocast around the model call only: the
sampler's arithmetic, the schedule and the normalisation statistics stay in
float32.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 matrix instructions (AVX-512 BF16 / AMX) that oneDNN uses."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_bf16_kind() -> str | None:
    """ "amx" (bf16 tile units), "avx512" (AVX-512 BF16 vector instructions only), or None."""
    if not native_bf16_cpu():
        return None
    try:
        return "amx" if torch.cpu._is_amx_tile_supported() else "avx512"
    except AttributeError:
        return "avx512"


# Below this size a step on an AVX-512 BF16 CPU without AMX is casts and memory traffic, which
# bf16 autocast makes slower (benchmarks/dtype_choice.py; docs/results.md, "Precision").
BF16_MIN_PARAMS_AVX512 = 20_000_000


@functools.cache
def cpu_bf16_matmul_faster(margin: float = 1.25) -> bool:
    """Whether this CPU's bf16 matrix products run ``margin`` times faster than fp32's.

    Measured once per process (about 0.1 s): AVX-512 BF16 CPUs without AMX range from twice
    as fast to half as fast in bf16, so their flags cannot tell.
    """
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)

    def best(x, y):
        x @ y  # warm-up
        times = []
        for _ in range(3):
            start = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - start)
        return min(times)

    return best(a, b) > margin * best(a.bfloat16(), b.bfloat16())


def resolve_dtype(dtype: str, device: torch.device | str, params: int | None = None) -> str:
    """``dtype`` itself, or for "auto" the faster precision on ``device``: fp16 on CUDA; on a
    CPU bf16 with AMX; with AVX-512 BF16 only, bf16 for models of ``params`` >= 20M (or of
    unknown size) where this CPU's bf16 matrix products are measured faster; else fp32.

    bf16 keeps Shapes quality within noise of fp32 (docs/results.md, "Precision: bf16 against fp32").
    """
    if dtype != "auto":
        return dtype
    device = torch.device(device)
    if device.type == "cuda":
        return "fp16"
    kind = cpu_bf16_kind() if device.type == "cpu" else None
    if kind == "amx":
        return "bf16"
    if kind == "avx512" and (params is None or params >= BF16_MIN_PARAMS_AVX512) and cpu_bf16_matmul_faster():
        return "bf16"
    return "fp32"


def check_dtype(dtype: str, device: torch.device | str) -> None:
    """Raise ValueError for a precision this device cannot run well."""
    device = torch.device(device)
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}")
    dtype = resolve_dtype(dtype, device)
    if dtype == "fp16" and device.type != "cuda":
        raise ValueError("fp16 needs a CUDA device; on a CPU use bf16 (where supported) or fp32")
    if dtype == "bf16" and device.type == "cpu" and cpu_bf16_kind() is None:
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
