"""Text -> image: the base model with classifier-free guidance, then the upsampler.

Composition only: models come from :mod:`glide_diffusion.checkpoints`, the
process from :mod:`glide_diffusion.diffusion`, samplers and guidance from
their packages, the settings and recipes from :mod:`.recipes` (default: the fast path,
``BASE_DEFAULTS`` and ``UPSAMPLE_DEFAULTS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..precision import check_dtype, resolve_dtype
from ..presets import ModelConfig
from ..sampling.noise import PerSampleNoise, seeds_for
from .images import from_pil, quantize, to_pil
from .prompts import Composition, clip_target, parse_prompts, prompt_settings
from .recipes import (
    BASE_DEFAULTS,
    FAST_BASE,
    FAST_UPSAMPLE,
    MODEL_RECIPES,
    OFFICIAL_BASE,
    OFFICIAL_UPSAMPLE,
    RECIPES,
    RERANK_CLIPS,
    SHAPES_BASE,
    UPSAMPLE_DEFAULTS,
    SettingError,
    StageSettings,
)
from .request import prepare_request, run_settings, validate_request
from .stage import Stage, load_stages, sample_stage

# The recipes and StageSettings live in .recipes; re-exported here, where the Python API has imported them.
__all__ = [
    "BASE_DEFAULTS",
    "UPSAMPLE_DEFAULTS",
    "FAST_BASE",
    "FAST_UPSAMPLE",
    "OFFICIAL_BASE",
    "OFFICIAL_UPSAMPLE",
    "MODEL_RECIPES",
    "RECIPES",
    "RERANK_CLIPS",
    "SHAPES_BASE",
    "Stage",
    "StageSettings",
    "Text2ImPipeline",
    "Text2ImResult",
    "validate_request",
]


@dataclass
class Text2ImResult:
    images: list[Image.Image]  # final images, one per (prompt, sample)
    low_res: list[Image.Image]  # the base model's images
    prompts: list[str]  # the prompt of each image
    seeds: list[int]  # the seed of each image
    settings: dict = field(default_factory=dict)  # everything needed to reproduce them


class Text2ImPipeline:
    """``pipeline(prompts) -> Text2ImResult``: GLIDE's text-to-image sampling."""

    def __init__(
        self,
        base: Stage,
        upsampler: Stage | None = None,
        clip=None,
        clip_tokenizer=None,
        rerank_clip=None,
        rerank_clip_tokenizer=None,
    ):
        """``clip``: an optional noised CLIP (``glide_diffusion.clip``) for CLIP guidance of the base
        stage and CLIP reranking, with its tokenizer (default: the one its config names, the CLIP
        BPE found in ``$GLIDE_VOCAB_DIR`` or the cache). ``rerank_clip``: another noised CLIP
        (and tokenizer) for reranking only, e.g. one trained on nearly clean images
        (``shapes-clip-rerank``) beside one trained for guidance (``shapes-clip``)."""
        if base.config.kind != "base":
            raise ValueError(f"the base stage needs a text-to-image model, got a {base.config.kind} model")
        if upsampler is not None and upsampler.config.kind != "upsample":
            raise ValueError(f"the upsampling stage needs an upsampler, got a {upsampler.config.kind} model")
        self.base, self.upsampler, self.clip, self.clip_tokenizer = base, upsampler, clip, clip_tokenizer
        self.rerank_clip, self.rerank_clip_tokenizer = rerank_clip, rerank_clip_tokenizer
        self.clip_name: str | None = None  # recorded in the settings when the CLIP is used
        self.rerank_clip_name: str | None = None

    @classmethod
    def from_pretrained(
        cls,
        base: str = "base",
        upsampler: str | None = "upsample",
        *,
        device: str | torch.device = "cpu",
        cache_dir: str | None = None,
        download: bool = True,
        clip: str | None = None,
        rerank_clip: str | None = None,
        base_config: ModelConfig | str | None = None,
        upsampler_config: ModelConfig | str | None = None,
        dtype: str = "fp32",
    ) -> Text2ImPipeline:
        """Load released names (``"base"``, ``"upsample"``), bundled names (``"shapes-base"``) or
        checkpoint paths. ``clip``: a noised CLIP for CLIP guidance (and reranking, unless
        ``rerank_clip`` names another): ``"released"`` (fetched when missing, unless ``download``
        is False), a bundled name (``"shapes-clip"``) or a ``.safetensors`` path. ``rerank_clip``:
        the same kinds of name, for reranking and settings with ``candidates`` > 1 (the ``shapes``
        recipe: ``rerank_clip="shapes-clip-rerank"``). ``base_config``, ``upsampler_config``:
        presets of ``.pt`` state dicts that record none. ``dtype``: the precision the models'
        weights are held in ("fp32"; "bf16" or "fp16" halve their memory, and the pipeline then
        samples in that dtype only; "auto" as in ``__call__``)."""
        check_dtype(dtype, device)
        pipe = cls(
            *load_stages(
                base,
                upsampler,
                device=device,
                cache_dir=cache_dir,
                download=download,
                base_config=base_config,
                upsampler_config=upsampler_config,
                dtype=resolve_dtype(dtype, device),
            )
        )
        from ..clip.loading import load_clip_and_tokenizer

        kw: dict[str, Any] = dict(device=device, cache_dir=cache_dir, download=download)
        if clip is not None:
            pipe.clip, pipe.clip_tokenizer = load_clip_and_tokenizer(clip, **kw)
            pipe.clip_name = clip
        if rerank_clip is not None and rerank_clip != clip:  # the same name: reranking uses ``clip``
            pipe.rerank_clip, pipe.rerank_clip_tokenizer = load_clip_and_tokenizer(rerank_clip, **kw)
            pipe.rerank_clip_name = rerank_clip
        return pipe

    @torch.inference_mode()
    def __call__(
        self,
        prompts: str | Sequence[str],
        *,
        num_images: int = 1,
        seed: int = 0,
        base: StageSettings = BASE_DEFAULTS,
        upsample: StageSettings = UPSAMPLE_DEFAULTS,
        dtype: str = "auto",
        batch_size: int | None = None,
        clip_guidance_scale: float = 0.0,
        rerank: int | None = None,
        progress: bool = False,
        callback: Callable[[str, int, torch.Tensor], None] | None = None,
        negative: str | None = None,
    ) -> Text2ImResult:
        """Sample ``num_images`` images for each prompt, ``batch_size`` at a time (default: all).

        A prompt with upper-case ``AND``/``NOT`` is composed (:mod:`.prompts`: ``"A :1.5 AND B AND
        NOT C"``): the base stage is guided by all its terms at once (K + 1 model rows per image);
        the upsampler is conditioned on its positive terms joined by " and ", and CLIP guidance and
        reranking score the weighted mean of its positive terms' CLIP logits. ``negative``: the
        caption that replaces the empty one in classifier-free guidance, in both stages.

        Image k (counting over prompts, then samples) uses seed ``seed + k``: its
        noise comes from its own generator, so it does not change with the batch.
        ``rerank=k``: CLIP reranking (see :meth:`rerank`) of the base stage's images, before
        the upsampler, which then runs only on the k kept per prompt: the same images as
        ``self.rerank(self(...), k)``, at k / num_images of the upsampler's cost.
        ``base.candidates=c`` > 1 (best of c): ``c * num_images`` images are sampled for each
        prompt (image k, counting over them, uses seed ``seed + k``) in groups of c, and of each
        group the one the reranking CLIP (``rerank_clip``, else ``clip``) scores best is kept;
        ``rerank`` then orders those.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        comps, dtype = prepare_request(
            self.base, self.upsampler, prompts, num_images, seed, base, upsample, dtype, negative, reranks=True
        )
        if clip_guidance_scale and self.clip is None:
            raise ValueError("CLIP guidance needs a noised CLIP: pass clip= (glide_diffusion.clip.load_clip())")
        if not math.isfinite(clip_guidance_scale) or clip_guidance_scale < 0:
            raise SettingError("clip_guidance_scale", f"must be a finite number >= 0, got {clip_guidance_scale}")
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise SettingError("batch_size", f"must be a positive integer, got {batch_size!r}")
        if rerank is not None:
            if isinstance(rerank, bool) or not isinstance(rerank, int) or not 1 <= rerank <= num_images:
                raise SettingError(
                    "rerank", f"must be an integer in 1..{num_images} (the images per prompt), got {rerank!r}"
                )
        if (rerank is not None or base.candidates > 1) and self._reranker()[0] is None:
            why = (
                f"base.candidates={base.candidates} keeps the best of each {base.candidates} by"
                if base.candidates > 1
                else "CLIP reranking needs"
            )
            raise ValueError(
                f"{why} a noised CLIP: pass rerank_clip= or clip= "
                "(glide_diffusion.clip.load_clip(); for the Shapes models 'shapes-clip-rerank')"
            )
        per = num_images * base.candidates  # images sampled for each prompt
        rows = [p for p in prompts for _ in range(per)]
        crows = [c for c in comps for _ in range(per)]
        seeds = seeds_for(seed, len(rows))
        noise = PerSampleNoise(seeds, self.base.device)  # one generator per row, through both stages
        step = batch_size or len(rows)
        run: dict[str, Any] = dict(dtype=dtype, progress=progress, callback=callback, negative=negative or "")
        lows = []
        for i in range(0, len(rows), step):
            chunk = crows[i : i + step]
            cond_fn = self._clip_cond_fn(chunk, clip_guidance_scale) if clip_guidance_scale else None
            lows.append(
                sample_stage(self.base, chunk, noise.select(range(i, i + len(chunk))), base, cond_fn=cond_fn, **run)
            )
        low = torch.cat(lows)
        low8 = quantize(low)  # as the images are saved: what reranking scores and the upsampler was trained on
        kept, scores = list(range(len(rows))), None
        if base.candidates > 1:  # the best of each group of c
            kept, scores = self._best(low8, crows, base.candidates, 1)
        if rerank is not None:
            order, scores = self._best(low8[kept], [crows[j] for j in kept], num_images, rerank)
            kept = [kept[j] for j in order]
        if scores is not None:
            low, low8 = low[kept], low8[kept]
        final = low
        if self.upsampler is not None:
            finals = []
            for i in range(0, len(kept), step):
                idx = kept[i : i + step]
                finals.append(
                    sample_stage(
                        self.upsampler,
                        [crows[j].caption for j in idx],
                        noise.select(idx),
                        upsample,
                        low_res=low8[i : i + step],
                        **run,
                    )
                )
            final = torch.cat(finals)
        settings = {
            **run_settings(self.base, self.upsampler, base, upsample, dtype, seed, num_images),
            "batch_size": step,
            "clip_guidance_scale": clip_guidance_scale,
            "clip_model": self.clip_name if clip_guidance_scale else None,
            **prompt_settings(prompts, comps, negative),
        }
        if scores is not None:
            settings["clip_rerank"] = {
                "keep": rerank or num_images,
                "of": per,
                "best_of": base.candidates,
                "scores": scores,
                "clip_model": self._reranker()[2],
            }
        return Text2ImResult(to_pil(final), to_pil(low), [rows[j] for j in kept], [seeds[j] for j in kept], settings)

    @torch.inference_mode()
    def rerank(self, result: Text2ImResult, keep: int) -> Text2ImResult:
        """The ``keep`` images of each prompt that the noised CLIP scores best, best first.

        GLIDE §3.2's CLIP reranking: sample N per prompt, keep the best k. Scores are
        ``exp(logit_scale) * z_image . z_text`` of the base model's images at t = 0
        (the resolution the CLIP was trained at), recorded in ``settings["clip_rerank"]``.
        """
        if self._reranker()[0] is None:
            raise ValueError(
                "CLIP reranking needs a noised CLIP: pass rerank_clip= or clip= (glide_diffusion.clip.load_clip())"
            )
        # One group per requested prompt (rows come as prompt-major runs of num_images, or of
        # the kept count once reranked), so a prompt given twice is reranked twice, not pooled.
        settings = result.settings
        per = settings["clip_rerank"]["keep"] if "clip_rerank" in settings else settings.get("num_images")
        if not per:  # a result built by hand: runs of the same prompt
            per = next((i for i, p in enumerate(result.prompts) if p != result.prompts[0]), len(result.prompts))
        groups = [list(range(i, i + per)) for i in range(0, len(result.prompts), per)]
        if (
            not result.prompts
            or len(result.prompts) % per
            or any(len({result.prompts[i] for i in g}) != 1 for g in groups)
        ):
            raise ValueError(f"a result of {len(result.prompts)} images is not whole runs of {per} per prompt")
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= per:
            raise ValueError(f"keep must be an integer in 1..{per} (the images per prompt), got {keep!r}")
        images = torch.cat([from_pil(im) for im in result.low_res])
        chosen, scores = self._best(images, parse_prompts(result.prompts, warn=False), per, keep)
        best_of = (result.settings.get("base") or {}).get("candidates", 1)
        settings = dict(
            result.settings,
            clip_rerank={
                "keep": keep,
                "of": per * best_of,
                "best_of": best_of,
                "scores": scores,
                "clip_model": self._reranker()[2],
            },
        )

        def pick(xs: list[Any]) -> list[Any]:
            return [xs[i] for i in chosen]

        return Text2ImResult(
            pick(result.images), pick(result.low_res), pick(result.prompts), pick(result.seeds), settings
        )

    def _best(
        self, images: torch.Tensor, prompts: Sequence[Composition], per: int, keep: int
    ) -> tuple[list[int], list[float]]:
        """Indices of the ``keep`` best-scored images of each run of ``per`` (one prompt), best
        first, and their scores. ``images``: (N, 3, H, W) in [-1, 1]."""
        from ..guidance.rerank import clip_best

        clip, tokenizer, _ = self._reranker()
        chosen, scores = [], []
        for start in range(0, len(prompts), per):
            target = clip_target(clip, [prompts[start]], tokenizer)
            order, s = clip_best(clip, images[start : start + per], target, keep, tokenizer=tokenizer)
            chosen += [start + j for j in order.tolist()]
            scores += s.tolist()
        return chosen, scores

    def _reranker(self):
        """(CLIP, tokenizer, name) that reranks: ``rerank_clip`` where set, else ``clip``."""
        if self.rerank_clip is not None:
            return self.rerank_clip, self.rerank_clip_tokenizer, self.rerank_clip_name
        return self.clip, self.clip_tokenizer, self.clip_name

    def _clip_cond_fn(self, rows: Sequence[Composition], scale: float):
        """GLIDE's CLIP guidance for these prompts: the mean moves along the similarity gradient."""
        from ..guidance.clip import clip_cond_fn

        return clip_cond_fn(
            self.clip, clip_target(self.clip, rows, self.clip_tokenizer), scale, tokenizer=self.clip_tokenizer
        )
