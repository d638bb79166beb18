"""The GLIDE text-conditional UNet: base, upsampler, inpainting and upsampling-inpainting.

The four variants differ only by configuration (extra input channels), never
by subclass. Parameter names match glide-text2im so released checkpoints load
as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..text.transformer import LayerNorm, Transformer
from .blocks import (
    AttentionBlock,
    Downsample,
    GroupNorm32,
    ResBlock,
    Upsample,
    full_precision,
    timestep_embedding,
)
from .config import UNetConfig


@dataclass(frozen=True)
class TextCondition:
    """The caption, encoded once per sampling run.

    xf_proj: (B, 4*model_channels), added to the timestep embedding.
    xf_out: (B, width, L), all token features.
    kv: per attention block (by ``kv_index``), (B, heads, L, 2*ch) text keys/values.
    """

    xf_proj: torch.Tensor
    xf_out: torch.Tensor
    kv: tuple[torch.Tensor, ...]

    def repeat(self, n: int) -> TextCondition:
        """Each row repeated n times consecutively (row i -> rows i*n .. i*n+n-1)."""

        def rep(t: torch.Tensor) -> torch.Tensor:
            return t.repeat_interleave(n, dim=0)

        return TextCondition(rep(self.xf_proj), rep(self.xf_out), tuple(rep(k) for k in self.kv))

    def kv_to(self, dtype: torch.dtype) -> TextCondition:
        """The attention keys/values cast to ``dtype`` once (the dtype attention runs in), the rest kept."""
        return TextCondition(self.xf_proj, self.xf_out, tuple(k.to(dtype) for k in self.kv))

    def head(self, n: int) -> TextCondition:
        """The first n rows."""
        return TextCondition(self.xf_proj[:n], self.xf_out[:n], tuple(k[:n] for k in self.kv))

    @staticmethod
    def cat(conds: list[TextCondition]) -> TextCondition:
        return TextCondition(
            torch.cat([c.xf_proj for c in conds]),
            torch.cat([c.xf_out for c in conds]),
            tuple(torch.cat(ks) for ks in zip(*(c.kv for c in conds))),
        )


class ConditionedSequential(nn.Sequential):
    """A UNet stage: ResBlocks, attention and resampling, dispatched on their inputs."""

    def forward(self, h: torch.Tensor, emb: torch.Tensor, text: TextCondition | None):  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, AttentionBlock):
                h = layer(h, text.kv[layer.kv_index] if text is not None else None)
            else:
                h = layer(h)
        return h


def coordinate_channels(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W): x then y pixel-centre coordinates, -1 at the left/top edge to 1 at the right/bottom."""
    b, _, h, w = x.shape
    ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w * 2 - 1
    grid = torch.stack([xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)])
    return grid.to(x.dtype).expand(b, 2, h, w)


# Weights the forward pass reads in full precision whatever the rest is held in: the time
# embedding and output layer (run with autocast off), the embeddings added to the caption's
# tokens, and every 1-D tensor (norm weights, whose dtype sets each residual sum's, and biases).
GUIDANCE_TIME = 100.0  # scales 0..10 embedded like timesteps 0..1000

FULL_PRECISION_PREFIXES = ("time_embed.", "guidance_embed.", "out.", "positional_embedding", "padding_embedding")


def keeps_full_precision(name: str, tensor: torch.Tensor) -> bool:
    """Whether the state-dict entry ``name`` stays float32 when the model is held in bf16/fp16."""
    return tensor.ndim < 2 or name.startswith(FULL_PRECISION_PREFIXES)


class GlideUNet(nn.Module):
    """ADM UNet whose class embedding is replaced by a caption transformer (GLIDE §4.1).

    ``forward(x, t, *, text=..., low_res=..., inpaint_image=..., inpaint_mask=...)``
    returns (B, 2C, H, W): eps and the learned-range variance interpolation ``var_interp``.

    A ``prediction="v"`` network predicts v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 and
    returns eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v, so its x0 estimate at high noise is
    the network's own (bounded) output rather than a tiny difference divided by
    sqrt(abar_t). ``alphas_cumprod`` (the training schedule's, indexed by original
    timestep) is then required; it is a non-persistent buffer, not part of the weights.
    """

    v_alphas_cumprod: torch.Tensor  # buffer (prediction="v" only)
    clause_tokens: torch.Tensor  # buffer

    def __init__(self, config: UNetConfig, alphas_cumprod=None):
        super().__init__()
        self.config = config
        if config.prediction == "v":
            if alphas_cumprod is None:
                raise ValueError("a prediction='v' model needs the noise schedule's alphas_cumprod")
            self.register_buffer(
                "v_alphas_cumprod", torch.as_tensor(alphas_cumprod, dtype=torch.float64).float(), persistent=False
            )
        tc = config.text
        ch = config.model_channels
        self._n_attention = 0

        self.time_embed = nn.Sequential(
            nn.Linear(ch, config.time_embed_dim), nn.SiLU(), nn.Linear(config.time_embed_dim, config.time_embed_dim)
        )
        # The guidance scale's embedding (a distilled student; zero output at init, so a student
        # starts as its teacher's conditional model). Scales are embedded as GUIDANCE_TIME * s.
        self.guidance_embed = (
            nn.Sequential(
                nn.Linear(ch, config.time_embed_dim), nn.SiLU(), nn.Linear(config.time_embed_dim, config.time_embed_dim)
            )
            if config.guidance_embed
            else None
        )
        self.input_blocks, skip_channels, ch = self._build_input_blocks()
        self.middle_block = ConditionedSequential(self._res(ch, ch), self._attention(ch), self._res(ch, ch))
        self.output_blocks, ch = self._build_output_blocks(ch, skip_channels)
        self.out = nn.Sequential(
            GroupNorm32(ch, config.norm_groups),
            nn.SiLU(),
            nn.Conv2d(ch, config.out_channels * config.patch_size**2, 3, padding=1),
        )

        self.transformer = Transformer(tc.width, tc.layers, tc.heads)
        self.final_ln = LayerNorm(tc.width) if tc.final_ln else None
        self.token_embedding = nn.Embedding(tc.n_vocab, tc.width)
        self.positional_embedding = nn.Parameter(torch.empty(tc.context_length, tc.width))
        self.padding_embedding = nn.Parameter(torch.empty(tc.context_length, tc.width)) if tc.padding else None
        self.transformer_proj = nn.Linear(tc.width, config.time_embed_dim)
        self.bag_of_words = nn.Embedding(tc.n_vocab, config.time_embed_dim) if tc.bag_of_words else None
        # The second clause's own bag (zero init: a model grown from a plain bag starts unchanged).
        self.clause_bag_of_words = nn.Embedding(tc.n_vocab, config.time_embed_dim) if tc.clause_words else None
        self.register_buffer("clause_tokens", _clause_tokens(tc), persistent=False)
        # A plain list (not registered twice): attention blocks in kv_index order.
        self._attention_blocks = sorted(
            (m for m in self.modules() if isinstance(m, AttentionBlock)), key=lambda m: m.kv_index
        )
        self.reset_parameters()

    # -- construction -------------------------------------------------------

    def _res(self, cin: int, cout: int, **kw) -> ResBlock:
        c = self.config
        return ResBlock(cin, c.time_embed_dim, c.dropout, cout, c.use_scale_shift_norm, norm_groups=c.norm_groups, **kw)

    def _attention(self, ch: int, upsample: bool = False) -> AttentionBlock:
        block = AttentionBlock(
            ch,
            self.config.heads_for(ch, upsample),
            self.config.text.width,
            self._n_attention,
            norm_groups=self.config.norm_groups,
        )
        self._n_attention += 1
        return block

    def _resample(self, ch: int, down: bool) -> nn.Module:
        if self.config.resblock_updown:
            return self._res(ch, ch, down=down, up=not down)
        return Downsample(ch, use_conv=True) if down else Upsample(ch, use_conv=True)

    def _build_input_blocks(self) -> tuple[nn.ModuleList, list[int], int]:
        c = self.config
        ch = c.channel_mult[0] * c.model_channels
        first_conv = nn.Conv2d(c.first_conv_channels * c.patch_size**2, ch, 3, padding=1)
        blocks = nn.ModuleList([ConditionedSequential(first_conv)])
        skip_channels, ds = [ch], c.patch_size
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [self._res(ch, mult * c.model_channels)]
                ch = mult * c.model_channels
                if ds in c.attention_resolutions:
                    layers.append(self._attention(ch))
                blocks.append(ConditionedSequential(*layers))
                skip_channels.append(ch)
            if level != len(c.channel_mult) - 1:
                blocks.append(ConditionedSequential(self._resample(ch, down=True)))
                skip_channels.append(ch)
                ds *= 2
        self._bottom_ds = ds
        return blocks, skip_channels, ch

    def _build_output_blocks(self, ch: int, skip_channels: list[int]) -> tuple[nn.ModuleList, int]:
        c = self.config
        blocks, ds = nn.ModuleList(), self._bottom_ds
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers: list[nn.Module] = [self._res(ch + skip_channels.pop(), mult * c.model_channels)]
                ch = mult * c.model_channels
                if ds in c.attention_resolutions:
                    layers.append(self._attention(ch, upsample=True))
                if level and i == c.num_res_blocks:
                    layers.append(self._resample(ch, down=False))
                    ds //= 2
                blocks.append(ConditionedSequential(*layers))
        return blocks, ch

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GLIDE's initialisation: zeroed output convs and attention projections.

        The official constructor leaves the text embeddings uninitialised
        (``torch.empty``); we draw them N(0, 0.01²) as GPT-2 style embeddings.
        """
        for m in self.modules():
            if isinstance(m, ResBlock):
                _zero_parameters(m.out_layers[-1])
            elif isinstance(m, AttentionBlock):
                _zero_parameters(m.proj_out)
        _zero_parameters(self.out[-1])
        if self.guidance_embed is not None:
            _zero_parameters(self.guidance_embed[-1])
        nn.init.normal_(self.positional_embedding, std=0.01)
        if self.clause_bag_of_words is not None:
            nn.init.zeros_(self.clause_bag_of_words.weight)
        if self.padding_embedding is not None:
            nn.init.normal_(self.padding_embedding, std=0.01)

    # -- text -----------------------------------------------------------------

    def encode_text(self, tokens: torch.Tensor, mask: torch.Tensor) -> TextCondition:
        """(B, L) token ids and boolean mask -> the caption's :class:`TextCondition`.

        Padded slots get ``padding_embedding`` only (no positional term); the
        transformer has no attention mask; the pooled feature is the LAST
        position (a padding slot for short captions), as in glide-text2im, or with
        ``text.pool = "mean"`` the mean over the caption's tokens. With
        ``text.bag_of_words`` a learned vector per caption token is added to it, and with
        ``text.clause_words`` a second one per token from the first clause word on.
        """
        tc = self.config.text
        if tokens.shape[-1] != tc.context_length:
            raise ValueError(f"tokens have length {tokens.shape[-1]}, the model's context is {tc.context_length}")
        xf_in = self.token_embedding(tokens.long()) + self.positional_embedding[None]
        if self.padding_embedding is not None:
            xf_in = torch.where(mask[..., None].bool(), xf_in, self.padding_embedding[None].to(xf_in.dtype))
        xf_out = self.transformer(xf_in)
        if self.final_ln is not None:
            xf_out = self.final_ln(xf_out)
        if tc.pool == "mean":
            weights = mask.to(xf_out.dtype, copy=True)
            weights[weights.sum(1) == 0, -1] = 1  # the empty caption: the last slot
            pooled = (weights[..., None] * xf_out).sum(1) / weights.sum(1, keepdim=True)
        else:
            pooled = xf_out[:, -1]
        xf_proj = self.transformer_proj(pooled)
        if self.bag_of_words is not None:  # padding ids are masked out: the empty caption adds 0
            xf_proj = xf_proj + (self.bag_of_words(tokens.long()) * mask[..., None].to(xf_proj.dtype)).sum(1)
        if self.clause_bag_of_words is not None:
            second = torch.isin(tokens, self.clause_tokens).cumsum(1).gt(0) & mask.bool()
            xf_proj = xf_proj + (self.clause_bag_of_words(tokens.long()) * second[..., None].to(xf_proj.dtype)).sum(1)
        xf_out = xf_out.transpose(1, 2)  # (B, W, L)
        kv = tuple(block.project_text(xf_out) for block in self._attention_blocks)
        return TextCondition(xf_proj, xf_out, kv)

    # -- forward --------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        text: TextCondition | None = None,
        tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        low_res: torch.Tensor | None = None,
        inpaint_image: torch.Tensor | None = None,
        inpaint_mask: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, C, H, W), t (B,) original timesteps -> (B, 2C, H, W) [eps, var_interp].

        The caption is given either encoded (``text``, from :meth:`encode_text`)
        or as ``tokens`` and ``mask``. Upsamplers need ``low_res`` (B, C, h, w),
        bilinearly resized to H x W. Inpainting models take ``inpaint_image``
        and ``inpaint_mask`` (1 = known pixel); missing, they default to zeros.
        A ``guidance_embed`` model needs ``guidance`` (B,), the classifier-free
        guidance scale whose output it returns (1: the conditional model).
        """
        if text is None:
            if tokens is None or mask is None:
                raise ValueError("give the caption as text=model.encode_text(...) or tokens= and mask=")
            text = self.encode_text(tokens, mask)
        x_in = self._model_input(x, low_res, inpaint_image, inpaint_mask)
        dtype = cast(nn.Conv2d, self.out[-1]).weight.dtype
        with full_precision(x):  # tiny layers whose rounding every block (emb) or eps (out) would carry
            emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(dtype))
            if self.guidance_embed is not None or guidance is not None:
                emb = emb + self._guidance_embedding(guidance, x.shape[0], dtype)
        emb = emb + text.xf_proj.to(emb.dtype)
        if self.config.patch_size > 1:  # channel c * p**2 + i * p + j <- pixel (p*y + i, p*x + j) of channel c
            x_in = F.pixel_unshuffle(x_in, self.config.patch_size)
        hs, h = [], x_in
        for stage in self.input_blocks:
            h = stage(h, emb, text)
            hs.append(h)
        h = self.middle_block(h, emb, text)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, hs.pop()], dim=1), emb, text)
        with full_precision(x):
            out = self.out(h.to(dtype))
        if self.config.patch_size > 1:
            out = F.pixel_shuffle(out, self.config.patch_size)
        if self.config.prediction == "v":
            out = self._eps_from_v(out, x, t)
        return out

    def _guidance_embedding(self, guidance: torch.Tensor | None, n: int, dtype: torch.dtype) -> torch.Tensor:
        if self.guidance_embed is None:
            raise ValueError("guidance= is for guidance_embed (distilled) models; guide this one with two passes")
        if guidance is None:
            raise ValueError("a guidance_embed (distilled) model needs guidance=, the (B,) guidance scales")
        w = torch.as_tensor(guidance, dtype=torch.float32, device=self.positional_embedding.device).expand(n)
        return self.guidance_embed(timestep_embedding(GUIDANCE_TIME * w, self.config.model_channels).to(dtype))

    def _eps_from_v(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """[v, var] -> [eps, var], in float32: eps = sqrt(1 - abar) x_t + sqrt(abar) v."""
        c = self.config.in_channels
        abar = self.v_alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        eps = (1 - abar).sqrt() * x.float() + abar.sqrt() * out[:, :c].float()
        return torch.cat([eps.to(out.dtype), out[:, c:]], dim=1)

    def _model_input(self, x, low_res, inpaint_image, inpaint_mask) -> torch.Tensor:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"x must be (B, {c.in_channels}, H, W), got {tuple(x.shape)}")
        parts = [x]
        if c.inpaint:
            if inpaint_image is None:
                inpaint_image = torch.zeros_like(x)
            if inpaint_mask is None:
                inpaint_mask = torch.zeros_like(x[:, :1])
            parts += [inpaint_image * inpaint_mask, inpaint_mask]
        if c.super_res:
            if low_res is None:
                raise ValueError("the upsampler needs low_res, the (B, C, h, w) image to upsample")
            parts.append(F.interpolate(low_res.to(x.dtype), x.shape[-2:], mode="bilinear", align_corners=False))
        if c.coord_channels:
            parts.append(coordinate_channels(x))
        return torch.cat(parts, dim=1) if len(parts) > 1 else x


def _clause_tokens(tc) -> torch.Tensor:
    """The token ids of ``tc.clause_words`` (each must be a single token of ``tc.tokenizer``)."""
    if not tc.clause_words:
        return torch.zeros(0, dtype=torch.long, device="cpu")
    from ..text.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(tc.tokenizer)
    ids = []
    for word in tc.clause_words:
        encoded = tokenizer.encode(word)
        if len(encoded) != 1:
            raise ValueError(f"text clause word {word!r} is {len(encoded)} tokens of {tc.tokenizer!r}; it must be one")
        ids.append(encoded[0])
    return torch.tensor(ids, dtype=torch.long, device="cpu")  # not "meta": load_model builds there


def _zero_parameters(layer: nn.Module) -> None:
    """Zero a layer's weight and bias (GLIDE's zero-initialised output layers)."""
    for p in layer.parameters():
        nn.init.zeros_(p)
