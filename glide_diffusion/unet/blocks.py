"""Building blocks of the ADM UNet as GLIDE uses it.

Names of modules and parameters follow glide-text2im's ``unet.py`` so released
checkpoints load unchanged (``in_layers.0`` norm, ``in_layers.2`` conv,
``emb_layers.1``, ``out_layers.0`` norm, ``out_layers.3`` conv, attention
``qkv``/``encoder_kv``/``proj_out`` as 1x1 Conv1d).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim) as ``[cos(t f), sin(t f)]``.

    ``f_i = exp(-ln(max_period) * i / half)`` for i < half, computed in float32
    (ADM, after Vaswani et al. 2017); cos comes first.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def full_precision(x: torch.Tensor):
    """A region where autocast is off: the layers inside run in their parameters' dtype."""
    return torch.autocast(x.device.type, enabled=False)


_SDPA_BACKWARD = os.environ.get("GLIDE_SDPA_BACKWARD") == "1"


def _attention_for_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(ch)) v written out, softmax in float32 (or float64).

    On CPU, SDPA's flash kernel is fast forward but slow backward at the Shapes models'
    sizes (docs/results.md, "Training throughput"). The (B, heads, HW, L) weights it keeps
    for backward are small there. Sampling (no gradients) keeps SDPA, and so does training
    with ``GLIDE_SDPA_BACKWARD=1`` in the environment
    (``benchmarks/train_throughput.py --attention both`` compares the two).
    """
    scores = q @ k.transpose(-1, -2)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * q.shape[-1] ** -0.5
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v


class GroupNorm32(nn.GroupNorm):
    """GroupNorm (32 groups unless told otherwise), statistics in float32 whatever the input dtype."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__(groups, channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class Upsample(nn.Module):
    """Nearest-neighbour x2, with an optional 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Downsample(nn.Module):
    """Strided 3x3 conv (key ``op``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding by scale-shift GroupNorm.

    ``h = conv(silu(norm(x)))``; ``h = norm(h) * (1 + scale) + shift`` (or
    ``+ emb`` without scale-shift); ``h = conv(dropout(silu(h)))``; out = skip(x) + h.
    ``up``/``down`` resample both paths after the first norm+SiLU.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = True,
        up: bool = False,
        down: bool = False,
        norm_groups: int = 32,
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels, norm_groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.resample: nn.Module | None = None
        if up:
            self.resample = Upsample(channels, use_conv=False)
        elif down:
            self.resample = Downsample(channels, use_conv=False)
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels),
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels, norm_groups),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm_act, conv = self.in_layers[:-1], self.in_layers[-1]
        h = norm_act(x)
        if self.resample is not None:
            h, x = self.resample(h), self.resample(x)
        h = conv(h)
        # Under autocast the convolutions return bf16/fp16; the norm, its scale and shift and
        # the residual sum run in the parameters' dtype (float32) and are rounded once, at
        # the next convolution's input: with the caption encoded in float32, that keeps the bf16
        # error of eps under 1% (docs/results.md, "One denoising step"). The norm's weight gives
        # that dtype: it stays float32 when the convolutions are held in bf16 (load_model(dtype=)).
        dtype = self.out_layers[0].weight.dtype
        emb_out = self.emb_layers(emb).to(dtype)[..., None, None]  # (B, C', 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = self.out_layers[0](h.to(dtype)) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h.to(dtype) + emb_out)
        return self.skip_connection(x).to(dtype) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels, with the caption's tokens as extra keys/values.

    ``qkv`` output is laid out per head as [q | k | v] (head-major), ``encoder_kv``
    per head as [k | v]; text keys/values come before the image's (glide-text2im).
    ``kv_index`` locates this block's precomputed text keys/values in a
    :class:`TextCondition`.
    """

    def __init__(self, channels: int, heads: int, encoder_channels: int | None, kv_index: int, norm_groups: int = 32):
        super().__init__()
        self.heads = heads
        self.kv_index = kv_index
        self.norm = GroupNorm32(channels, norm_groups)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.encoder_kv = nn.Conv1d(encoder_channels, channels * 2, 1) if encoder_channels else None
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def project_text(self, xf_out: torch.Tensor) -> torch.Tensor:
        """(B, W, L) text features -> (B, heads, L, 2ch) keys and values for this block."""
        assert self.encoder_kv is not None
        kv = F.linear(xf_out.transpose(1, 2), self.encoder_kv.weight[..., 0], self.encoder_kv.bias)
        b, n, _ = kv.shape  # (B, L, 2C)
        return kv.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, text_kv: torch.Tensor | None) -> torch.Tensor:
        b, c, *spatial = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C); no copy when channels-last
        qkv = F.linear(h, self.qkv.weight[..., 0], self.qkv.bias)  # the 1x1 conv, token-major
        qkv = qkv.view(b, -1, self.heads, 3 * c // self.heads).transpose(1, 2)  # (B, heads, HW, 3ch)
        q, k, v = qkv.chunk(3, dim=-1)  # (B, heads, HW, ch), each contiguous in ch
        if text_kv is not None:
            ek, ev = text_kv.to(q.dtype).chunk(2, dim=-1)
            k = torch.cat([ek, k], dim=2)
            v = torch.cat([ev, v], dim=2)
        # Official: q and k each scaled by ch^(-1/4), softmax in float32; SDPA's
        # default 1/sqrt(ch) is the same product.
        if q.requires_grad and q.device.type == "cpu" and not _SDPA_BACKWARD:
            h = _attention_for_backward(q, k, v)
        else:
            h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, ch)
        h = h.transpose(1, 2).reshape(b, -1, c)  # (B, HW, C)
        h = F.linear(h, self.proj_out.weight[..., 0], self.proj_out.bias)
        return x + h.transpose(1, 2).reshape(b, c, *spatial)  # channels-last layout, no copy
