"""How a stage samples (:class:`StageSettings`) and the named recipes that pick them.

A recipe is a (base, upsampler) pair of settings; ``glide sample --recipe`` and
``glide inpaint --recipe`` pick one by name, and a model may name its own default
(``MODEL_RECIPES``, ``INPAINT_MODEL_RECIPES``). Training imports the settings from here
without loading any pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..diffusion.schedule import space_timesteps
from ..sampling.samplers import SAMPLERS

__all__ = [
    "BASE_DEFAULTS",
    "FAST_BASE",
    "FAST_UPSAMPLE",
    "INPAINT_MODEL_RECIPES",
    "INPAINT_RECIPES",
    "INPAINT_UPSAMPLE_DEFAULTS",
    "MODEL_RECIPES",
    "OFFICIAL_BASE",
    "OFFICIAL_UPSAMPLE",
    "RECIPES",
    "RERANK_CLIPS",
    "SHAPES_BASE",
    "SHAPES_DISTILLED",
    "SHAPES_INPAINT",
    "SettingError",
    "StageSettings",
    "UPSAMPLE_DEFAULTS",
]


@dataclass(frozen=True)
class StageSettings:
    """How one stage samples."""

    sampler: str = "ddpm"  # a key of SAMPLERS
    steps: str = "100"  # a respacing string: "100", "fast27", "ddim50", "10,20,30"
    guidance_scale: float = 3.0  # classifier-free guidance; 1 = conditional only (one pass)
    temperature: float = 1.0  # scale of the initial noise (the notebook's upsampler: 0.997)
    eta: float = 0.0  # DDIM only
    clip_denoised: bool = True  # clamp x0 to [-1, 1] (samplers' clamp_x0); name kept: eval request.json holds it
    # Guide only the steps with t in [lo*T, hi*T] (fractions of the T diffusion steps;
    # Kynkäänniemi et al. 2024); the others run the conditional model alone. None: every step.
    guidance_interval: tuple[float, float] | None = None
    # Base stage of text-to-image and inpainting only: sample this many images for each one asked for and keep the
    # one a noised CLIP scores best (GLIDE §3.2's CLIP reranking as best-of-N); 1 = off.
    candidates: int = 1

    def guidance_bounds(self, diffusion_steps: int) -> tuple[float, float] | None:
        """The guidance interval in original timesteps of a ``diffusion_steps`` process, or None."""
        if self.guidance_interval is None:
            return None
        lo, hi = self.guidance_interval
        return lo * diffusion_steps, hi * diffusion_steps

    def validate(self, stage: str, num_steps: int) -> None:
        """Raise :class:`SettingError` (named ``"<stage>.<field>"``) for a setting that cannot run."""

        def bad(name: str, problem: str) -> SettingError:
            return SettingError(f"{stage}.{name}", problem)

        if self.sampler not in SAMPLERS:
            raise bad("sampler", f"must be one of {', '.join(SAMPLERS)}, got {self.sampler!r} (unknown sampler)")
        try:
            space_timesteps(num_steps, self.steps)
        except ValueError as e:
            raise bad("steps", f"is not a respacing (bad steps {self.steps!r}): {e}") from None
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise bad("guidance_scale", f"must be a finite number >= 0, got {self.guidance_scale}")
        if not 0 < self.temperature <= 10 or not math.isfinite(self.temperature):
            raise bad("temperature", f"must be in (0, 10], got {self.temperature}")
        if not 0 <= self.eta <= 1:
            raise bad("eta", f"must be in [0, 1], got {self.eta}")
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or not 1 <= self.candidates <= 64:
            raise bad("candidates", f"must be an integer in 1..64, got {self.candidates!r}")
        if self.guidance_interval is not None:
            lo, hi = self.guidance_interval
            if not 0 <= lo <= hi <= 1:
                raise bad(
                    "guidance_interval",
                    f"must satisfy 0 <= lo <= hi <= 1 (fractions of the diffusion steps), got {lo}, {hi}",
                )


class SettingError(ValueError):
    """A request setting that cannot run. ``name``: the parameter (``"num_images"``, or
    ``"base.guidance_scale"`` for a stage's), so a front end can name its own option for it."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name} {problem}")
        self.name, self.problem = name, problem


# The official recipe (GLIDE's notebooks): base DDPM 100 steps, upsampler DDIM "fast27".
OFFICIAL_BASE = StageSettings("ddpm", "100", 3.0, 1.0)
OFFICIAL_UPSAMPLE = StageSettings("ddim", "fast27", 1.0, 0.997)
# The fast path: DPM-Solver++(2M), 15 base steps guided at every step, 3 upsampler steps: the
# fewest steps within noise of the official recipe (docs/results.md, "The fast default's quality").
FAST_BASE = StageSettings("dpm++2m", "15", 3.0, 1.0)
FAST_UPSAMPLE = StageSettings("dpm++2m", "3", 1.0, 0.997)
# The bundled Shapes base: DPM-Solver++(2M) 25 steps guided at every step, at scale 5, best of 4
# by shapes-clip-rerank: what scored best on it (docs/results.md, "Sampling the Shapes base").
SHAPES_BASE = StageSettings("dpm++2m", "25", 5.0, 1.0, candidates=4)
# Its guided-distilled student (configs/distill-shapes-*.toml): 4 deterministic steps on the grid it
# was distilled on, one pass each, at the same scale and best of 4.
SHAPES_DISTILLED = StageSettings("ddim", "trailing4", 5.0, 1.0, candidates=4)
# Named (base, upsampler) settings: what ``glide sample --recipe`` picks from.
RECIPES = {
    "fast": (FAST_BASE, FAST_UPSAMPLE),
    "official": (OFFICIAL_BASE, OFFICIAL_UPSAMPLE),
    "shapes": (SHAPES_BASE, FAST_UPSAMPLE),
    "shapes-distilled": (SHAPES_DISTILLED, FAST_UPSAMPLE),
}
# The recipe ``glide sample`` uses for a base model unless --recipe says otherwise.
MODEL_RECIPES = {"shapes-base": "shapes", "shapes-base-distilled": "shapes-distilled"}
# The noised CLIP ``glide sample`` and ``glide inpaint`` choose a model's candidates with unless --clip
# says otherwise.
RERANK_CLIPS = {
    "shapes-base": "shapes-clip-rerank",
    "shapes-base-distilled": "shapes-clip-rerank",
    "shapes-inpaint": "shapes-clip-rerank",
}
# Text-to-image defaults: the fast path. Editing keeps the official recipe, and so does inpainting
# with the released models (pipelines/edit.py, pipelines/inpaint.py): fewer steps were not measured there.
BASE_DEFAULTS, UPSAMPLE_DEFAULTS = RECIPES["fast"]

# The inpainting notebook samples the upsampler with "fast27" ancestral steps.
INPAINT_UPSAMPLE_DEFAULTS = StageSettings("ddpm", "fast27", 1.0, 0.997)
# The bundled Shapes inpainting model as its bar was measured (docs/results.md, "Inpainting"):
# DPM-Solver++(2M) 25 steps at guidance 3, best of 4 by CLIP.
SHAPES_INPAINT = StageSettings("dpm++2m", "25", 3.0, 1.0, candidates=4)
# Named (base, upsampler) settings ``glide inpaint --recipe`` picks from; the first is the default.
INPAINT_RECIPES = {
    "official": (OFFICIAL_BASE, INPAINT_UPSAMPLE_DEFAULTS),
    "shapes": (SHAPES_INPAINT, INPAINT_UPSAMPLE_DEFAULTS),
}
# The recipe ``glide inpaint`` uses for an inpainting model unless --recipe says otherwise (its
# reranking CLIP: RERANK_CLIPS).
INPAINT_MODEL_RECIPES = {"shapes-inpaint": "shapes"}
