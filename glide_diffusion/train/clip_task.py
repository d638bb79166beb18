"""Training the noised CLIP (GLIDE §2.4): a contrastive loss on images noised at random timesteps.

Each image is noised to x_t = q_sample(x0, t, noise) at a uniform timestep t of
the CLIP's own schedule (``ClipConfig.beta_schedule``: the schedule of the
diffusion model it will guide), the image tower sees (x_t, t), the text tower
the caption, and the loss is CLIP's symmetric cross-entropy over the batch's
image-text similarities. With several processes the embeddings of all ranks
are gathered (with gradients), so every image is contrasted with every caption
of the global batch.

Identical captions in a batch (frequent on Shapes: "a red circle") are not
negatives of each other: the target of each row is spread evenly over the
columns holding its caption.

With ``loss.clip_shape_negatives = N`` (Shapes captions), each image's row
also holds N hard negatives: its own caption with one shape word replaced by
another shape (a caption without a shape word gets none: those columns are
masked out). With ``loss.clip_binding_negatives = M``, each two-object caption's
row also holds up to M of its binding swaps (colours or shapes swapped between
the objects, the relation reversed; the unused columns masked out), after the
shape negatives. The caption columns' loss is unchanged.

Random draws of one micro-batch, in order, from the step's generator:
timesteps (B ints), then noise (B, 3, S, S), then (with shape negatives) per
caption with a shape word, the mention replaced (one int) and the first
replacement (one int); the N negatives use N different shapes; then (with
binding negatives) per caption with k > 0 binding swaps, their order (a
permutation of k).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..clip.model import NoisedClip
from ..clip.tokenizer import clip_tokenize_batch, clip_tokenizer_for
from ..data.shapes import SHAPES
from ..data.shapes_captions import binding_swaps
from ..diffusion import make_schedule, q_sample, sample_timesteps
from ..diffusion.schedule import Schedule
from ..precision import autocast as precision_autocast
from .config import ConfigError
from .task import RunContext

__all__ = [
    "ClipInputs",
    "ClipTask",
    "binding_negatives",
    "clip_loss",
    "hard_negatives",
    "init_logit_scale",
    "make_clip_inputs",
    "shape_negatives",
    "TERMS",
]

TERMS = ("loss", "acc_i2t", "acc_t2i")  # the logged terms, in order
INITIAL_TEMPERATURE = 0.07  # CLIP's initial softmax temperature (logit scale 1/0.07)


@dataclass
class ClipInputs:
    x_t: torch.Tensor  # (B, 3, S, S)
    t: torch.Tensor  # (B,) original timesteps
    tokens: torch.Tensor  # (B, L)
    lens: torch.Tensor  # (B,)
    neg_tokens: torch.Tensor | None = None  # (B * N, L): N hard negative captions per image, image-major
    neg_lens: torch.Tensor | None = None  # (B * N,)
    neg_valid: torch.Tensor | None = None  # (B, N) bool: False where a caption has no such negative


def shape_negatives(captions: list[str], n: int, generator: torch.Generator) -> tuple[list[str], torch.Tensor]:
    """N negatives per caption, image-major: the caption with one of its shape words (drawn
    uniformly among its mentions) replaced by another shape, a different one for each of the N;
    and a (len(captions), N) bool mask, False for captions without a shape word (their
    "negatives" are the caption itself and must not be used)."""
    if not 0 < n < len(SHAPES):
        raise ValueError(f"n must be in 1..{len(SHAPES) - 1}, got {n}")
    out, valid = [], torch.ones(len(captions), n, dtype=torch.bool)
    for i, caption in enumerate(captions):
        words = caption.split(" ")
        mentions = [j for j, w in enumerate(words) if w in SHAPES]
        if not mentions:
            out += [caption] * n
            valid[i] = False
            continue
        j = mentions[int(torch.randint(len(mentions), (1,), generator=generator))]
        others = [s for s in SHAPES if s != words[j]]
        first = int(torch.randint(len(others), (1,), generator=generator))
        for k in range(n):
            out.append(" ".join(words[:j] + [others[(first + k) % len(others)]] + words[j + 1 :]))
    return out, valid


def binding_negatives(captions: list[str], n: int, generator: torch.Generator) -> tuple[list[str], torch.Tensor]:
    """Up to N negatives per caption, image-major: its binding swaps in a random order; and a
    (len(captions), N) bool mask, False where a caption has fewer than N (the slot holds the
    caption itself and must not be used)."""
    out, valid = [], torch.zeros(len(captions), n, dtype=torch.bool)
    for i, caption in enumerate(captions):
        swaps = binding_swaps(caption)
        if swaps:
            swaps = [swaps[j] for j in torch.randperm(len(swaps), generator=generator).tolist()][:n]
        valid[i, : len(swaps)] = True
        out += swaps + [caption] * (n - len(swaps))
    return out, valid


def hard_negatives(captions: list[str], loss, generator: torch.Generator) -> tuple[list[str], torch.Tensor] | None:
    """The shape negatives then the binding negatives of each caption (image-major), with their
    validity mask (len(captions), N); None when the config asks for neither."""
    parts = []
    if loss.clip_shape_negatives:
        parts.append(shape_negatives(captions, loss.clip_shape_negatives, generator))
    if loss.clip_binding_negatives:
        parts.append(binding_negatives(captions, loss.clip_binding_negatives, generator))
    if not parts:
        return None
    sizes = [valid.shape[1] for _, valid in parts]
    out = [c for i in range(len(captions)) for (negs, _), k in zip(parts, sizes) for c in negs[i * k : (i + 1) * k]]
    return out, torch.cat([valid for _, valid in parts], dim=1)


def make_clip_inputs(
    batch: dict, config, schedule: Schedule, tokenizer, generator: torch.Generator, device: torch.device
) -> ClipInputs:
    """Noised images at uniform timesteps (below ``clip.max_timestep`` when set) and their
    tokenized captions (no caption dropout)."""
    x0 = batch["image"].float()
    tokens, lens = clip_tokenize_batch(tokenizer, list(batch["caption"]), config.clip.max_text_len)
    t = sample_timesteps(x0.shape[0], config.clip.max_timestep or schedule.num_steps, generator)
    noise = torch.randn(x0.shape, generator=generator)
    x_t = q_sample(schedule, x0, t, noise)
    inputs = ClipInputs(x_t.to(device), t.to(device), tokens.to(device), lens.to(device))
    hard = hard_negatives(list(batch["caption"]), config.loss, generator)
    if hard is not None:
        negatives, valid = hard
        neg_tokens, neg_lens = clip_tokenize_batch(tokenizer, negatives, config.clip.max_text_len)
        inputs.neg_tokens, inputs.neg_lens = neg_tokens.to(device), neg_lens.to(device)
        inputs.neg_valid = valid.to(device)
    return inputs


def _negatives(inputs: ClipInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The hard negatives' (tokens, lens, valid), or None where the batch has none."""
    if inputs.neg_tokens is None:
        return None
    if inputs.neg_lens is None or inputs.neg_valid is None:
        raise ValueError("shape negatives need their lengths and validity mask")
    return inputs.neg_tokens, inputs.neg_lens, inputs.neg_valid


class _GatherRows(torch.autograd.Function):
    """All ranks' rows (every rank the same number), in rank order. Every rank computes the same
    loss of them, so the backward sums the ranks' gradients and keeps this rank's rows: the
    gradient of the global loss, as one process with the whole batch would have it."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z.contiguous())
        ctx.rows = slice(dist.get_rank() * z.shape[0], (dist.get_rank() + 1) * z.shape[0])
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rows]


def _gather(z: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, this rank's with gradients (others' too: see :class:`_GatherRows`)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    return _GatherRows.apply(z)


def clip_loss(model, inputs: ClipInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric contrastive loss over the (global) batch; returns (loss, [loss, acc_i2t, acc_t2i]).

    ``model`` is the :class:`NoisedClip` or its DDP wrapper; accuracies count a row as right when
    its best column holds the same caption.
    """
    B = inputs.tokens.shape[0]
    negatives = _negatives(inputs)
    if negatives is None:
        z_image, z_text = model(inputs.x_t, inputs.t, inputs.tokens, inputs.lens)
    else:  # one text-tower call for the captions and their negatives
        neg_tokens, neg_lens, neg_valid = negatives
        z_image, z_all = model(
            inputs.x_t, inputs.t, torch.cat([inputs.tokens, neg_tokens]), torch.cat([inputs.lens, neg_lens])
        )
        z_text, z_neg = z_all[:B], z_all[B:].reshape(B, -1, z_all.shape[-1])
    z_image, z_text = _gather(z_image), _gather(z_text)
    tokens = _gather(inputs.tokens)
    clip = model.module if hasattr(model, "module") else model
    scale = torch.exp(clip.logit_scale)
    logits = scale * z_image.float() @ z_text.float().T  # (N, N)
    same = (tokens[:, None, :] == tokens[None, :, :]).all(-1).float()  # same caption
    target = same / same.sum(dim=1, keepdim=True)
    rows_logits, rows_target = logits, target
    if negatives is not None:
        z_neg, valid = _gather(z_neg), _gather(neg_valid)
        hard = scale * torch.einsum("nd,nkd->nk", z_image.float(), z_neg.float())  # (N, negatives)
        hard = hard.masked_fill(~valid, -1e4)  # finite: a zero target times it stays 0
        rows_logits = torch.cat([logits, hard], dim=1)
        rows_target = torch.cat([target, torch.zeros_like(hard)], dim=1)
    loss = 0.5 * (F.cross_entropy(rows_logits, rows_target) + F.cross_entropy(logits.T, target.T))
    with torch.no_grad():
        rows = torch.arange(logits.shape[0], device=logits.device)
        acc_i2t = same[rows, logits.argmax(dim=1)].mean()
        acc_t2i = same[logits.argmax(dim=0), rows].mean()
    return loss, torch.stack([loss.detach(), acc_i2t, acc_t2i])


@torch.no_grad()
def init_logit_scale(clip: NoisedClip) -> None:
    """A CLIP trained from scratch starts at temperature 0.07, as CLIP (capped by the config)."""
    clip.logit_scale.fill_(min(math.log(1 / INITIAL_TEMPERATURE), math.log(clip.config.logit_scale)))


@torch.no_grad()
def clamp_logit_scale(clip: NoisedClip) -> None:
    """Keep ``exp(logit_scale)`` at most the config's ``logit_scale`` (100: CLIP's cap)."""
    clip.logit_scale.clamp_(max=math.log(clip.config.logit_scale))


class ClipTask:
    """The :class:`~glide_diffusion.train.task.Task` of ``config.clip``: no samples, the logit scale capped."""

    terms = TERMS
    low_res = None
    memory_format = torch.preserve_format

    def __init__(self, context: RunContext):
        c = self.config = context.config
        if c.clip is None:
            raise ValueError("a ClipTask needs config.clip")
        self.device = context.device
        self.model_config = c.clip
        self.schedule = make_schedule(c.clip.beta_schedule, c.clip.n_timesteps)
        self.tokenizer = clip_tokenizer_for(c.clip)

    def build_model(self, fresh: bool) -> nn.Module:
        from ..clip.loading import build_clip, load_clip

        c = self.config
        if c.init_from and fresh:
            try:
                return load_clip(c.init_from, config=c.clip)
            except (OSError, ValueError) as e:
                raise ConfigError(f"init_from: {e}") from None
        clip = build_clip(self.model_config)
        init_logit_scale(clip)
        return clip

    def make_inputs(self, batch: dict, generator: torch.Generator) -> ClipInputs:
        return make_clip_inputs(batch, self.config, self.schedule, self.tokenizer, generator, self.device)

    def loss(self, model: nn.Module, inputs: ClipInputs) -> tuple[torch.Tensor, torch.Tensor]:
        with precision_autocast(self.device, self.config.precision):
            return clip_loss(model, inputs)

    def after_step(self, model: nn.Module) -> None:
        clamp_logit_scale(cast(NoisedClip, model))

    def write_samples(self, ema: nn.Module, step: int) -> Path | None:
        return None  # a CLIP has no samples to show
