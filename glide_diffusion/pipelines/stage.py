"""One sampling stage: a loaded model, how it samples, and the sampling call every pipeline shares.

``sample_stage`` encodes the captions once, wraps the model into a denoiser
(classifier-free guided when the scale is not 1, composed for a composed prompt), and runs the chosen sampler;
pipelines only decide the conditioning (low-res image, inpainting image and
mask), the starting point and the x0 projection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from ..diffusion.schedule import Schedule, make_schedule
from ..guidance.cfg import composed_guidance
from ..precision import DTYPES, autocast
from ..presets import ModelConfig
from ..sampling.noise import PerSampleNoise
from ..sampling.samplers import Denoiser, get_sampler
from ..text.tokenizer import tokenize_batch, tokenizer_for
from ..unet.model import GlideUNet, TextCondition
from .prompts import Composition
from .recipes import StageSettings

X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def compile_step(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """``model`` through ``torch.compile``, as a sampling step calls it. Where the backend cannot
    build its kernels (no C++ compiler, an unsupported platform) the call runs eagerly: slower,
    not stopped; that fallback is the call's, not the process's (dynamo logs the error once)."""
    compiled = torch.compile(model)

    def call(*args, **kwargs) -> torch.Tensor:
        with torch._dynamo.config.patch(suppress_errors=True):
            return compiled(*args, **kwargs)

    return call


class Stage:
    """A loaded model with its diffusion process and tokenizer."""

    def __init__(self, model: GlideUNet, config: ModelConfig, name: str, vocab_dir: str | None = None):
        # Channels-last convolutions are faster with oneDNN on CPU and tensor cores on CUDA.
        # torch's stubs lack Module.to(memory_format=...), which torch has.
        self.model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.config, self.name = config, name
        self.tokenizer = tokenizer_for(config.unet.text, vocab_dir)
        self._compiled: Callable[..., torch.Tensor] | None = None  # after compile()

    def compile(self) -> Stage:
        """Sample through ``torch.compile(model)`` from now on (:func:`compile_step`): fused
        kernels, built on the first step of each new input shape (a minute or two per stage on a
        2-core CPU), then each step faster (docs/results.md, "Sampling speed")."""
        self._compiled = compile_step(self.model)
        return self

    def step(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """One model call of a sampling step, compiled after ``compile()``."""
        return (self._compiled or self.model)(x, t, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        return self.config.unet.image_size

    @property
    def held_dtype(self) -> str:
        """The precision the weights are held in ("fp32" unless loaded with ``dtype="bf16"``/"fp16")."""
        held = self.model.token_embedding.weight.dtype  # always cast with the bulk of the weights
        return next(name for name, d in DTYPES.items() if d == held)

    def encode(self, prompts: Sequence[str]) -> TextCondition:
        """The captions' :class:`TextCondition`: in float32, or under autocast for bf16/fp16-held weights."""
        tokens, mask = tokenize_batch(self.tokenizer, prompts, self.config.unet.text.context_length)
        with autocast(self.device, self.held_dtype):
            return self.model.encode_text(tokens.to(self.device), mask.to(self.device))

    def schedule(self, steps: str) -> Schedule:
        d = self.config.diffusion
        return make_schedule(d.noise_schedule, d.steps, steps)


def load_stage(
    source: str,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
    download: bool = True,
    config: ModelConfig | str | None = None,
    dtype: str = "fp32",
) -> Stage:
    """A released name (fetched into the cache when missing, unless ``download`` is False) or a checkpoint path;
    ``config``: the preset or config of a ``.pt`` state dict that does not record its own;
    ``dtype``: the precision to hold the weights in (see :func:`~glide_diffusion.checkpoints.load_model`)."""
    from ..checkpoints import load_model

    vocab_dir = _ensure_released(source, cache_dir, download)
    model, config = load_model(source, config=config, device=device, cache_dir=cache_dir, dtype=dtype)
    return Stage(model, config, str(source), vocab_dir)


def load_stages(
    base: str,
    upsampler: str | None,
    *,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
    download: bool = True,
    base_config: ModelConfig | str | None = None,
    upsampler_config: ModelConfig | str | None = None,
    dtype: str = "fp32",
) -> tuple[Stage, Stage | None]:
    """The (base, upsampler) stages of a pipeline's ``from_pretrained``; no upsampler when it is None or empty."""
    kw: dict[str, Any] = dict(device=device, cache_dir=cache_dir, download=download, dtype=dtype)
    return (
        load_stage(base, config=base_config, **kw),
        load_stage(upsampler, config=upsampler_config, **kw) if upsampler else None,
    )


def _ensure_released(source: str, cache_dir, download: bool) -> str | None:
    """For a released name: fetch its weights when missing, and the GPT-2 vocab too where this
    installation lacks the package's copy; the vocab folder to use (None: the tokenizer's search)."""
    from ..hub.cache import released_path
    from ..hub.download import download_released
    from ..presets import RELEASED_PRESETS
    from ..text.tokenizer import shipped_vocab_dir

    if source not in RELEASED_PRESETS:
        return None
    vocab_names = [] if shipped_vocab_dir() is not None else ["gpt2-encoder", "gpt2-vocab"]
    missing = [n for n in [source, *vocab_names] if not released_path(n, cache_dir).exists()]
    if missing and download:
        download_released(missing, cache_dir)
    if not vocab_names:
        return None
    vocab = released_path("gpt2-vocab", cache_dir).parent
    return str(vocab) if all(released_path(n, cache_dir).exists() for n in vocab_names) else None


def sample_stage(
    stage: Stage,
    rows: Sequence[str | Composition],
    noise: PerSampleNoise,
    settings: StageSettings,
    *,
    negative: str = "",
    dtype: str = "fp32",
    progress: bool = False,
    callback: Callable[[str, int, torch.Tensor], None] | None = None,
    schedule: Schedule | None = None,
    x_T: torch.Tensor | None = None,
    x0_fn: X0Fn | None = None,
    cond_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    **cond: torch.Tensor,
) -> torch.Tensor:
    """Sample one image per row of ``rows`` with ``stage``'s model -> (B, C, H, W) in [-1, 1].

    A row is a caption (verbatim) or a :class:`~.prompts.Composition` of K terms; each image is
    guided by :func:`~glide_diffusion.guidance.cfg.composed_guidance` at the settings' scale,
    with ``negative`` (default: the empty caption) as its unconditional caption, over K + 1
    model rows per image in one forward pass (the terms' rows of every image, then the B
    negative rows). A caption at scale 1 runs the conditional model alone on B rows.
    ``cond`` holds the model's image conditions (``low_res``, ``inpaint_image``,
    ``inpaint_mask``), one row per image. ``schedule`` defaults to the
    settings' respacing; ``x_T`` to ``temperature`` times fresh noise.
    ``x0_fn`` projects the predicted x0 and ``cond_fn`` adds gradient guidance
    (the samplers' hooks).
    """
    cfg = stage.config.unet
    if stage.held_dtype != "fp32" and dtype != stage.held_dtype:
        raise ValueError(
            f"the {stage.name} model's weights are held in {stage.held_dtype}: sample with dtype="
            f"{stage.held_dtype!r}, or load it with dtype='fp32' to sample in {dtype}"
        )

    def amp() -> AbstractContextManager:
        return autocast(stage.device, dtype)

    comps = [r if isinstance(r, Composition) else Composition.plain(r) for r in rows]
    plain = not any(c.composed for c in comps)
    guided = settings.guidance_scale != 1.0 or not plain
    # A distilled model (guidance_embed) gives a plain caption's guided output in one pass; a
    # composition, a negative prompt or a guidance interval combines its conditional outputs (w = 1).
    scale = torch.tensor(1.0)
    if cfg.guidance_embed and plain and not negative and settings.guidance_interval is None:
        scale, guided = torch.tensor(float(settings.guidance_scale)), False
    extra = {"guidance": scale.to(stage.device)} if cfg.guidance_embed else {}
    # The caption is encoded once per run, so in float32 whatever the step's dtype; the
    # attention keys/values are then rounded once to the dtype attention runs in.
    text = stage.encode([term.text for c in comps for term in c.terms])  # image-major term rows
    if guided:  # rows [terms; negative], the negative (or empty) caption encoded once
        text = TextCondition.cat([text, stage.encode([negative]).repeat(len(rows))])
        owner = torch.tensor([b for b, c in enumerate(comps) for _ in c.terms], device=stage.device)
        cond = {k: torch.cat([v if plain else v[owner.to(v.device)], v]) for k, v in cond.items()}
    if dtype != "fp32":
        text = text.kv_to(DTYPES[dtype])

    def model_rows(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # every row: [terms; negative] when guided
        with amp():
            return stage.step(x, t, text=text, **cond, **extra).float()

    denoiser: Denoiser = model_rows
    if guided:
        weights = [c.weights for c in comps]
        interval = settings.guidance_bounds(stage.config.diffusion.steps)
        conditional: Denoiser | None = None
        if interval is not None and plain:  # the unguided steps: the B caption rows alone
            text_c, cond_c = text.head(len(rows)), {k: v[: len(rows)] for k, v in cond.items()}

            def caption_rows(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                with amp():
                    return stage.step(x, t, text=text_c, **cond_c, **extra).float()

            conditional = caption_rows
        elif interval is not None:  # the composition at scale 1, on all rows
            conditional = composed_guidance(model_rows, 1.0, weights)
        denoiser = composed_guidance(
            model_rows, settings.guidance_scale, weights, interval=interval, conditional=conditional
        )
    if x_T is None:
        x_T = noise.initial((cfg.in_channels, cfg.image_size, cfg.image_size)) * settings.temperature
    label = f"{stage.config.kind} {cfg.image_size}px {settings.sampler} {settings.steps}" if progress else False
    sampler = get_sampler(settings.sampler, eta=settings.eta)
    return sampler(
        denoiser,
        schedule if schedule is not None else stage.schedule(settings.steps),
        x_T,
        noise_fn=noise,
        clamp_x0=settings.clip_denoised,
        x0_fn=x0_fn,
        cond_fn=cond_fn,
        progress=label,
        callback=(lambda i, x, x0: callback(stage.name, i, x0)) if callback else None,
    )
