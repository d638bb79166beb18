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

Random draws of one micro-batch, in order, from the step's generator:
timesteps (B ints), then noise (B, 3, S, S).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..clip.model import NoisedClip
from ..clip.tokenizer import clip_tokenize_batch
from ..diffusion import q_sample, sample_timesteps
from ..diffusion.schedule import Schedule

__all__ = ["ClipInputs", "clip_loss", "init_logit_scale", "make_clip_inputs", "TERMS"]

TERMS = ("loss", "acc_i2t", "acc_t2i")  # the logged terms, in order
INITIAL_TEMPERATURE = 0.07  # CLIP's initial softmax temperature (logit scale 1/0.07)


@dataclass
class ClipInputs:
    x_t: torch.Tensor  # (B, 3, S, S)
    t: torch.Tensor  # (B,) original timesteps
    tokens: torch.Tensor  # (B, L)
    lens: torch.Tensor  # (B,)


def make_clip_inputs(batch: dict, config, schedule: Schedule, tokenizer, generator: torch.Generator,
                     device: torch.device) -> ClipInputs:
    """Noised images at uniform timesteps (below ``clip.max_timestep`` when set) and their
    tokenized captions (no caption dropout)."""
    x0 = batch["image"].float()
    tokens, lens = clip_tokenize_batch(tokenizer, list(batch["caption"]), config.clip.max_text_len)
    t = sample_timesteps(x0.shape[0], config.clip.max_timestep or schedule.num_steps, generator)
    noise = torch.randn(x0.shape, generator=generator)
    x_t = q_sample(schedule, x0, t, noise)
    return ClipInputs(x_t.to(device), t.to(device), tokens.to(device), lens.to(device))


def _gather(z: torch.Tensor) -> torch.Tensor:
    """All ranks' rows, this rank's with gradients (others' too, via the autograd all_gather)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(z))


def clip_loss(model, inputs: ClipInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric contrastive loss over the (global) batch; returns (loss, [loss, acc_i2t, acc_t2i]).

    ``model`` is the :class:`NoisedClip` or its DDP wrapper; accuracies count a row as right when
    its best column holds the same caption.
    """
    z_image, z_text = model(inputs.x_t, inputs.t, inputs.tokens, inputs.lens)
    z_image, z_text = _gather(z_image), _gather(z_text)
    tokens = _gather(inputs.tokens)
    clip = model.module if hasattr(model, "module") else model
    logits = torch.exp(clip.logit_scale) * z_image.float() @ z_text.float().T  # (N, N)
    same = (tokens[:, None, :] == tokens[None, :, :]).all(-1).float()  # same caption
    target = same / same.sum(dim=1, keepdim=True)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))
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
