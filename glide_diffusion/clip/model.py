"""GLIDE's noised CLIP (glide_text2im/clip/encoders.py, model_creation.py).

Two pre-LayerNorm transformers mapping into one ``n_embd``-wide space:

- :class:`ImageEncoder`: a ViT whose first token is a learned embedding of the
  diffusion timestep ``w_t[t]`` (ORIGINAL t in 0..n_timesteps-1), so it can
  score noisy images x_t. Input is in 0..255 units (``(x + 1) * 127.5``),
  normalised per channel with CLIP's constants; output is
  ``LayerNorm(h[:, 0]) @ f.w.T``.
- :class:`TextEncoder`: ``w_voc[tokens] + w_pos``, causal attention; output is
  ``LayerNorm(h[b, len_b - 1]) @ f.w.T`` (the end token).

The module tree and parameter names mirror the official code, so the released
``clip_image_enc.pt`` / ``clip_text_enc.pt`` load without renaming
(``blocks.input.w_t``, ``blocks.block_0.f_attn.f_q.w``, ...). Affine weights
are ``[out, in]`` (``w``, bias ``b``), LayerNorms ``g``/``b`` with eps 1e-5.

Attention: q and k are each scaled by ``head_dim ** -0.25``. The official
code pads contexts to a multiple of 32 and masks padded keys with -1e10;
attending over the real positions only (causal for text, full for images)
is the same function.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import ClipConfig

__all__ = [
    "IMAGE_CHANNEL_MEANS",
    "IMAGE_CHANNEL_STDS",
    "Affine",
    "LayerNorm",
    "ImageEncoder",
    "TextEncoder",
    "NoisedClip",
    "normalize_embeddings",
]

# CLIP's per-channel image statistics in 0..255 units (glide_text2im/clip/encoders.py).
IMAGE_CHANNEL_MEANS = (122.77093945, 116.74601272, 104.09373519)
IMAGE_CHANNEL_STDS = (68.50053285, 66.63215831, 70.32316309)


def _normal(*shape: int, std: float) -> nn.Parameter:
    """N(0, std^2) parameter on the current default device (left empty on "meta", where
    drawing would only cost time: the first meta normal_ loads torch's Python decompositions)."""
    w = torch.empty(*shape)
    if not w.is_meta:
        w.normal_(std=std)
    return nn.Parameter(w)


class Affine(nn.Module):
    """``x @ w.T + b`` with ``w`` stored ``[out, in]`` (the official ``Affine``)."""

    def __init__(self, n_in: int, n_out: int, *, bias: bool = True, init_scale: float = 1.0) -> None:
        super().__init__()
        # The official code leaves w uninitialised (it is always loaded). Our choice for
        # fresh models: Glorot-style N(0, init_scale * 2 / (n_in + n_out)), output
        # projections (f_c, f_2) scaled down by the number of residual blocks.
        std = math.sqrt(2.0 / (n_in + n_out) * init_scale)
        self.w = _normal(n_out, n_in, std=std)
        self.b = nn.Parameter(torch.zeros(n_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.w, self.b)


class LayerNorm(nn.Module):
    """LayerNorm with parameters ``g``/``b``, eps 1e-5, computed in (at least) float32."""

    def __init__(self, n_state: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(n_state))
        self.b = nn.Parameter(torch.zeros(n_state))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(x.dtype, torch.float32)  # fp16/bf16 -> fp32; fp64 stays
        out = F.layer_norm(x.to(dtype), self.g.shape, self.g.to(dtype), self.b.to(dtype), self.eps)
        return out.to(x.dtype)


class AttentionResblock(nn.Module):
    """``m + f_c(attention(LN(m)))``; f_k has no bias."""

    def __init__(self, n_state: int, n_head: int, n_head_state: int, n_resblocks: int, causal: bool) -> None:
        super().__init__()
        if n_head * n_head_state != n_state:
            raise ValueError(f"{n_head} heads x {n_head_state} != width {n_state}")
        self.n_head, self.n_head_state, self.causal = n_head, n_head_state, causal
        self.ln = LayerNorm(n_state)
        self.f_q = Affine(n_state, n_state)
        self.f_k = Affine(n_state, n_state, bias=False)
        self.f_v = Affine(n_state, n_state)
        self.f_c = Affine(n_state, n_state, init_scale=1.0 / n_resblocks)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        B, L, _ = m.shape
        r = self.ln(m)
        scale = self.n_head_state**-0.25  # applied to q and k each, as the official code does

        def heads(x: torch.Tensor) -> torch.Tensor:  # (B, L, H*D) -> (B, H, L, D), head-major channels
            return x.view(B, L, self.n_head, self.n_head_state).transpose(1, 2)

        q, k, v = heads(self.f_q(r) * scale), heads(self.f_k(r) * scale), heads(self.f_v(r))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=1.0)  # (B, H, L, D)
        return m + self.f_c(a.transpose(1, 2).reshape(B, L, -1))


class MLPResblock(nn.Module):
    """``m + f_2(gelu(f_1(LN(m))))``, hidden width 4 x n_state, exact (erf) GELU."""

    def __init__(self, n_state: int, n_resblocks: int) -> None:
        super().__init__()
        self.ln = LayerNorm(n_state)
        self.f_1 = Affine(n_state, 4 * n_state)
        self.f_2 = Affine(4 * n_state, n_state, init_scale=1.0 / n_resblocks)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return m + self.f_2(F.gelu(self.f_1(self.ln(m))))


class TransformerBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, n_head_state: int, n_resblocks: int, causal: bool) -> None:
        super().__init__()
        self.f_attn = AttentionResblock(n_state, n_head, n_head_state, n_resblocks, causal)
        self.f_mlp = MLPResblock(n_state, n_resblocks)

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        return self.f_mlp(self.f_attn(m))


class TextEmbedding(nn.Module):
    """``w_voc[tokens] + w_pos``: (B, L) int64 -> (B, L, n_state)."""

    def __init__(self, n_vocab: int, n_context: int, n_state: int) -> None:
        super().__init__()
        self.w_voc = _normal(n_vocab, n_state, std=0.02)
        self.w_pos = _normal(n_context, n_state, std=0.01)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.w_voc) + self.w_pos[None, : tokens.shape[1]]


class ImageEmbedding(nn.Module):
    """Normalise, patchify (conv without bias), prepend ``w_t[t]``, add ``w_pos``, LayerNorm.

    (B, 3, H, W) in 0..255 units, t (B,) int -> (B, 1 + (H/p)^2, n_state).
    """

    def __init__(self, image_size: int, patch_size: int, n_state: int, n_timesteps: int) -> None:
        super().__init__()
        self.image_size, self.patch_size = image_size, patch_size
        n_patch = image_size // patch_size
        self.w_t = _normal(n_timesteps, n_state, std=n_state**-0.5)
        self.patch_proj = _normal(n_state, 3, patch_size, patch_size, std=math.sqrt(2 / (n_state * patch_size**2)))
        self.w_pos = _normal(1 + n_patch**2, n_state, std=n_state**-0.5)
        self.ln = LayerNorm(n_state)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(f"expected images (B, 3, {self.image_size}, {self.image_size}), got {tuple(x.shape)}")
        mean = torch.tensor(IMAGE_CHANNEL_MEANS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGE_CHANNEL_STDS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        x = F.conv2d(x, self.patch_proj, stride=self.patch_size)  # (B, C, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, (H/p)^2, C), row-major patches
        t_tok = F.embedding(_timesteps(t, x.shape[0], x.device), self.w_t)[:, None]  # (B, 1, C)
        return self.ln(torch.cat([t_tok.to(x.dtype), x], dim=1) + self.w_pos[None])


def _timesteps(t: torch.Tensor | int, batch: int, device: torch.device) -> torch.Tensor:
    """Integer timesteps (B,) from a tensor or int; refuses non-integral values."""
    t = torch.as_tensor(t, device=device)
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError("CLIP timesteps must be integers (ORIGINAL timesteps 0..n_timesteps-1)")
        t = t.long()
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"expected timesteps of shape ({batch},), got {tuple(t.shape)}")
    return t.long()


class FeatureExtractor(nn.Module):
    """``LayerNorm(h) @ f.w.T`` (no bias); ``return_probe_features`` gives ``h`` itself
    (the hidden state before the LayerNorm, as the official code)."""

    def __init__(self, n_state: int, n_embd: int) -> None:
        super().__init__()
        self.ln = LayerNorm(n_state)
        self.f = Affine(n_state, n_embd, bias=False)

    def forward(self, h: torch.Tensor, return_probe_features: bool = False) -> torch.Tensor:
        return h if return_probe_features else self.f(self.ln(h))


def _blocks(n_blocks: int, n_state: int, n_head: int, n_head_state: int, causal: bool) -> dict[str, nn.Module]:
    return {
        f"block_{i}": TransformerBlock(n_state, n_head, n_head_state, 2 * n_blocks, causal) for i in range(n_blocks)
    }


class ImageEncoder(nn.Module):
    """Noised-image CLIP tower: (B, 3, S, S) in 0..255 units, t (B,) -> (B, n_embd), un-normalised."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        c = config
        self.n_blocks = c.n_xf_blocks_image
        width = c.image_width
        blocks: dict[str, nn.Module] = {"input": ImageEmbedding(c.image_size, c.patch_size, width, c.n_timesteps)}
        blocks.update(_blocks(c.n_xf_blocks_image, width, c.n_head_image, c.n_head_state_image, causal=False))
        blocks["output"] = FeatureExtractor(width, c.n_embd)
        self.blocks = nn.ModuleDict(blocks)

    def forward(self, image: torch.Tensor, t: torch.Tensor, *, return_probe_features: bool = False) -> torch.Tensor:
        h = self.blocks["input"](image, t)
        for i in range(self.n_blocks):
            h = self.blocks[f"block_{i}"](h)
        return self.blocks["output"](h[:, 0], return_probe_features)  # the timestep token


class TextEncoder(nn.Module):
    """Causal text tower: tokens (B, L) int64, lens (B,) -> (B, n_embd), un-normalised.

    ``lens`` counts the start and end tokens; the output reads position ``len - 1``. With
    ``config.bag_of_words`` the sum of a learned vector per token (the first ``len``) is added
    to that feature before the output projection.
    """

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        c = config
        self.n_blocks = c.n_xf_blocks_text
        self.max_text_len = c.max_text_len
        width = c.text_width
        blocks: dict[str, nn.Module] = {"input": TextEmbedding(c.n_vocab, c.max_text_len, width)}
        blocks.update(_blocks(c.n_xf_blocks_text, width, c.n_head_text, c.n_head_state_text, causal=True))
        blocks["output"] = FeatureExtractor(width, c.n_embd)
        self.blocks = nn.ModuleDict(blocks)
        self.bag_of_words = nn.Embedding(c.n_vocab, width) if c.bag_of_words else None
        if self.bag_of_words is not None:
            nn.init.normal_(self.bag_of_words.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, lens: torch.Tensor, *, return_probe_features: bool = False) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] > self.max_text_len:
            raise ValueError(f"expected tokens (B, L <= {self.max_text_len}), got {tuple(tokens.shape)}")
        lens = torch.as_tensor(lens, device=tokens.device).long()
        if lens.shape != tokens.shape[:1] or bool((lens < 1).any()) or bool((lens > tokens.shape[1]).any()):
            raise ValueError(f"lens must be (B,) in 1..{tokens.shape[1]}, got {lens.tolist()}")
        h = self.blocks["input"](tokens)
        for i in range(self.n_blocks):
            h = self.blocks[f"block_{i}"](h)
        last = h[torch.arange(h.shape[0], device=h.device), lens - 1]  # (B, n_state): the end token
        if self.bag_of_words is not None:
            real = torch.arange(tokens.shape[1], device=tokens.device)[None] < lens[:, None]  # (B, L)
            last = last + (self.bag_of_words(tokens) * real[..., None].to(last.dtype)).sum(1)
        return self.blocks["output"](last, return_probe_features)


def normalize_embeddings(z: torch.Tensor) -> torch.Tensor:
    """``z / (||z|| + 1e-12)`` over the last dim, as the official code."""
    return z / (torch.linalg.norm(z, dim=-1, keepdim=True) + 1e-12)


class NoisedClip(nn.Module):
    """Both towers plus ``logit_scale`` (= log 100 in float32; exp gives 100.00000762939453).

    ``logit_scale`` is not in the released files; :func:`load_clip` sets it from the config.
    """

    def __init__(self, config: ClipConfig | None = None) -> None:
        super().__init__()
        self.config = config or ClipConfig()
        self.image_encoder = ImageEncoder(self.config)
        self.text_encoder = TextEncoder(self.config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(self.config.logit_scale), dtype=torch.float32))

    def image_embeddings(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (B, n_embd) of images x in [-1, 1] (B, 3, S, S) at ORIGINAL timesteps t (B,)."""
        return normalize_embeddings(self.image_encoder((x + 1) * 127.5, t))

    def text_embeddings(self, tokens: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Unit embeddings (B, n_embd) of padded CLIP tokens (B, L) with lengths (B,)."""
        return normalize_embeddings(self.text_encoder(tokens, lens))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, lens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit image and text embeddings ``(z_image, z_text)``, each (B, n_embd) (training)."""
        return self.image_embeddings(x, t), self.text_embeddings(tokens, lens)

    def logits(self, z_image: torch.Tensor, z_text: torch.Tensor) -> torch.Tensor:
        """``exp(logit_scale) * z_image @ z_text.T``: (N_image, N_text)."""
        return torch.exp(self.logit_scale) * z_image @ z_text.T
