"""Guided distillation (Meng et al. 2023, "On Distillation of Guided Diffusion Models").

Stage one (``distill.steps = 0``): the student, a copy of the teacher with an embedding of the
guidance scale w (``model.unet.guidance_embed``), learns the teacher's classifier-free guided
output ``eps_u + w (eps_c - eps_u)`` at every timestep in one pass, w ~ U[guidance_min,
guidance_max]. Stage two (``distill.steps = N``; progressive distillation, Salimans & Ho 2022):
the student's one deterministic DDIM step between neighbours of the "trailingN" grid lands
where two of the teacher's (the previous round's student) land on "trailing2N".

The loss is the x0 error weighted by max(SNR, 1) (Salimans & Ho's "truncated SNR" weighting),
computed as the eps error weighted by max(1, 1/SNR), capped at EPS_WEIGHT_CAP (at the last
steps of a cosine schedule an eps-predicting model's x0 is eps / sqrt(abar), ~1e5 times its
error). The variance channels are not trained (the distilled samplers are deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import load_model
from ..diffusion import make_schedule, q_sample
from ..precision import autocast as precision_autocast
from ..sampling.samplers import ddim_step
from ..text.tokenizer import tokenize_batch
from ..unet.model import GlideUNet, TextCondition
from .batch import make_inputs
from .config import ConfigError, DistillConfig
from .diffusion_task import DiffusionTask
from .task import RunContext

__all__ = ["DistillInputs", "DistillTask", "GuidedTeacher"]

EPS_WEIGHT_CAP = 1e4


@dataclass
class DistillInputs:
    x_t: torch.Tensor  # (B, C, H, W)
    t: torch.Tensor  # (B,) original timesteps
    tokens: torch.Tensor
    mask: torch.Tensor
    guidance: torch.Tensor  # (B,) guidance scales
    target_eps: torch.Tensor  # what the student's eps should be


class GuidedTeacher:
    """A teacher's guided output at scale w: two passes (caption, empty caption), or one for a
    distilled teacher (``guidance_embed``)."""

    def __init__(self, model: GlideUNet, empty_tokens: torch.Tensor, empty_mask: torch.Tensor):
        self.model = model.eval().requires_grad_(False)
        self.distilled = model.config.guidance_embed
        self.empty = (empty_tokens, empty_mask)  # (1, L)

    def encode(self, tokens: torch.Tensor, mask: torch.Tensor) -> TextCondition:
        text = self.model.encode_text(tokens, mask)
        if self.distilled:
            return text
        empty = self.model.encode_text(*self.empty).repeat(tokens.shape[0])
        return TextCondition.cat([text, empty])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, text: TextCondition, w: torch.Tensor) -> torch.Tensor:
        """(B, 2C, H, W): the guided eps and the conditional variance channels."""
        if self.distilled:
            return self.model(x, t, text=text, guidance=w).float()
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), text=text).float()
        cond, uncond = out.chunk(2)
        c = x.shape[1]
        eps = uncond[:, :c] + w.view(-1, 1, 1, 1) * (cond[:, :c] - uncond[:, :c])
        return torch.cat([eps, cond[:, c:]], dim=1)


class DistillTask:
    """The :class:`~glide_diffusion.train.task.Task` of ``config.distill`` (see the module): the
    student is built, initialised and sampled as the diffusion task does it."""

    terms = ("loss",)

    def __init__(self, context: RunContext):
        self.student = DiffusionTask(context)
        self.config, self.device = context.config, context.device
        self.schedule, self.tokenizer = self.student.schedule, self.student.tokenizer
        self.model_config, self.low_res = self.student.model_config, self.student.low_res
        self.memory_format = self.student.memory_format
        c = self.config
        self.distill: DistillConfig = c.distill  # type: ignore[assignment]
        teacher, teacher_config = load_model(self.distill.teacher, device=self.device)
        if teacher_config.diffusion != c.model.diffusion or teacher_config.unet.text != c.model.unet.text:
            raise ConfigError(
                f"distill.teacher {self.distill.teacher!r} has another diffusion process or caption encoder than model"
            )
        tokens, mask = tokenize_batch(self.tokenizer, [""], c.model.unet.text.context_length)
        self.teacher = GuidedTeacher(teacher, tokens.to(self.device), mask.to(self.device))
        d = c.model.diffusion
        n = self.distill.steps
        if n:  # the student's grid and the teacher's, twice as fine
            self.student_grid = make_schedule(d.noise_schedule, d.steps, f"trailing{n}")
            self.teacher_grid = make_schedule(d.noise_schedule, d.steps, f"trailing{2 * n}")
        self.abar = torch.tensor(self.schedule.alphas_cumprod).float().to(self.device)  # by original timestep

    def make_inputs(self, batch: dict, generator: torch.Generator) -> DistillInputs:
        base = make_inputs(batch, self.config, self.schedule, self.tokenizer, generator, self.device)
        n_rows, dc = base.x0.shape[0], self.distill
        w = dc.guidance_min + (dc.guidance_max - dc.guidance_min) * torch.rand(n_rows, generator=generator)
        w = w.to(self.device)
        with torch.no_grad(), precision_autocast(self.device, self.config.precision):
            text = self.teacher.encode(base.tokens, base.mask)
            if not dc.steps:
                t, x_t = base.t_model, base.x_t
                target = self.teacher(x_t, t, text, w)[:, : x_t.shape[1]]
            else:
                k = torch.randint(0, dc.steps, (n_rows,), generator=generator).to(self.device)
                t = torch.tensor(self.student_grid.timestep_map, device=self.device)[k]
                x_t = q_sample(self.schedule, base.x0, t, base.noise)
                x0 = self._two_teacher_steps(x_t, k, text, w)
                abar = self.abar[t].view(-1, 1, 1, 1)
                target = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        return DistillInputs(x_t, t, base.tokens, base.mask, w, target.float())

    def _two_teacher_steps(
        self, z: torch.Tensor, k: torch.Tensor, text: TextCondition, w: torch.Tensor
    ) -> torch.Tensor:
        """The x0 whose one DDIM step from z (student index k) lands where the teacher's two do."""
        grid, steps = self.teacher_grid, torch.tensor(self.teacher_grid.timestep_map, device=self.device)
        x, zeros = z, torch.zeros_like(z)
        for i in (2 * k + 1, 2 * k):
            x = ddim_step(grid, self.teacher(x, steps[i], text, w), x, i, zeros).sample
        s = self.student_grid
        abar = torch.tensor(s.alphas_cumprod, device=self.device)[k].float().view(-1, 1, 1, 1)
        abar_prev = torch.tensor(s.alphas_cumprod_prev, device=self.device)[k].float().view(-1, 1, 1, 1)
        ratio = ((1 - abar_prev) / (1 - abar)).sqrt()  # 0 on the last step: the target is x itself
        return (x - ratio * z) / (abar_prev.sqrt() - ratio * abar.sqrt())

    def loss(self, model: nn.Module, inputs: DistillInputs) -> tuple[torch.Tensor, torch.Tensor]:
        with precision_autocast(self.device, self.config.precision):
            out = model(inputs.x_t, inputs.t, tokens=inputs.tokens, mask=inputs.mask, guidance=inputs.guidance)
        eps = out[:, : inputs.x_t.shape[1]].float()
        abar = self.abar[inputs.t]
        weight = ((1 - abar) / abar).clamp(min=1.0, max=EPS_WEIGHT_CAP)  # max(SNR, 1) on the x0 error
        loss = (weight * (eps - inputs.target_eps).pow(2).mean(dim=(1, 2, 3))).mean()
        return loss, loss.detach().view(1)

    def build_model(self, fresh: bool) -> nn.Module:
        return self.student.build_model(fresh)

    def after_step(self, model: nn.Module) -> None:
        pass

    def write_samples(self, ema: nn.Module, step: int) -> Path | None:
        return self.student.write_samples(ema, step)
