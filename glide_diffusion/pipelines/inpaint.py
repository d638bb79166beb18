"""Text-driven inpainting (GLIDE §4.3): fill the masked region of an image from a caption.

The inpainting base model samples at low resolution (classifier-free guided),
then the upsampling-inpainting model at full resolution. At every step the
predicted x0 is projected onto the known pixels, and the final image is
composited so every unmasked pixel is exactly the input's.

Mask convention at this API: ``fill`` is 1 (or a white PNG pixel) where the
caption should paint and 0 where the input is kept. The models use the
opposite, ``known = 1 - fill`` (glide-text2im's ``inpaint_mask``).

Plain text-to-image models work too (``base`` / ``upsample`` kinds): they
only get the x0 replacement, the "no fine-tuning" baseline the paper compares against.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..presets import ModelConfig
from ..sampling.noise import PerSampleNoise, seeds_for
from .images import extend_canvas, known_at, mask_from_image, mask_from_rects, quantize, resized, split_alpha, to_uint8
from .prompts import Composition, clip_target, prompt_settings
from .recipes import INPAINT_UPSAMPLE_DEFAULTS, OFFICIAL_BASE, StageSettings
from .request import prepare_request, run_settings
from .stage import Stage, load_stages, sample_stage


@dataclass
class InpaintResult:
    images: list[Image.Image]  # composited final images
    low_res: list[Image.Image]  # the base stage's images
    prompts: list[str]
    seeds: list[int]
    settings: dict = field(default_factory=dict)


def region(
    image: Image.Image,
    mask: Image.Image | None = None,
    rects: Sequence[tuple[int, int, int, int]] = (),
    *,
    invert: bool = False,
    extend: tuple[int, int, int, int] | None = None,
) -> tuple[Image.Image, np.ndarray, bool]:
    """The RGB image and bool (H, W) fill mask (True = repaint) of an inpainting request, as
    ``glide inpaint`` and ``glide serve`` build them: a mask picture (white = fill, or black with
    ``invert``), else the image's transparent pixels; with ``rects`` (left, top, right, bottom)
    added, then the canvas extended by ``extend`` margins (outpainting). The third value says
    whether any region was given at all."""
    image, transparent = split_alpha(image)
    fill = np.zeros((image.size[1], image.size[0]), dtype=bool)
    if mask is not None:
        fill |= mask_from_image(mask, image.size, invert=invert)
    elif transparent is not None:
        fill |= transparent
    if rects:
        fill |= mask_from_rects(rects, image.size)
    if extend:
        image, fill = extend_canvas(image, fill, *extend)
    given = mask is not None or bool(rects) or bool(extend) or transparent is not None
    return image, fill, given


def check_fill(fill: np.ndarray) -> None:
    if not fill.any():
        raise ValueError("the mask selects no pixels to fill: nothing would change (white = fill; see --invert-mask)")
    if fill.all():
        warnings.warn("the mask covers the whole image: this is plain text-to-image generation", stacklevel=2)


def replace_known(source: torch.Tensor, known: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The x0 projection: known pixels taken from the source at every step."""

    def x0_fn(x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x0 * (1 - known) + source * known

    return x0_fn


class InpaintPipeline:
    """``pipeline(image, fill_mask, prompt) -> InpaintResult``."""

    def __init__(self, base: Stage, upsampler: Stage | None = None, rerank_clip=None, rerank_clip_tokenizer=None):
        """``rerank_clip``: a noised CLIP (and its tokenizer) for ``base.candidates`` > 1."""
        if base.config.kind not in ("inpaint", "base"):
            raise ValueError(f"the base stage needs an inpainting (or text-to-image) model, got {base.config.kind}")
        if upsampler is not None and upsampler.config.kind not in ("upsample-inpaint", "upsample"):
            raise ValueError(f"the upsampling stage needs an upsampler, got a {upsampler.config.kind} model")
        self.base, self.upsampler = base, upsampler
        self.rerank_clip, self.rerank_clip_tokenizer = rerank_clip, rerank_clip_tokenizer
        self.rerank_clip_name: str | None = None  # recorded in the settings

    @classmethod
    def from_pretrained(
        cls,
        base: str = "base-inpaint",
        upsampler: str | None = "upsample-inpaint",
        *,
        device: str | torch.device = "cpu",
        cache_dir: str | None = None,
        download: bool = True,
        rerank_clip: str | None = None,
        base_config: ModelConfig | str | None = None,
        upsampler_config: ModelConfig | str | None = None,
    ) -> InpaintPipeline:
        """Load the stages as :meth:`Text2ImPipeline.from_pretrained <.text2im.Text2ImPipeline.from_pretrained>`;
        ``rerank_clip``: the noised CLIP (``"released"``, a bundled name or a path) for settings with
        ``candidates`` > 1."""
        pipe = cls(
            *load_stages(
                base,
                upsampler,
                device=device,
                cache_dir=cache_dir,
                download=download,
                base_config=base_config,
                upsampler_config=upsampler_config,
            )
        )
        if rerank_clip is not None:
            from ..clip.loading import load_clip_and_tokenizer

            pipe.rerank_clip, pipe.rerank_clip_tokenizer = load_clip_and_tokenizer(
                rerank_clip, device=device, cache_dir=cache_dir, download=download
            )
            pipe.rerank_clip_name = rerank_clip
        return pipe

    @property
    def output_size(self) -> int:
        return (self.upsampler or self.base).image_size

    @torch.inference_mode()
    def __call__(
        self,
        image: Image.Image,
        fill: np.ndarray,
        prompt: str,
        *,
        num_images: int = 1,
        seed: int = 0,
        base: StageSettings = OFFICIAL_BASE,
        upsample: StageSettings = INPAINT_UPSAMPLE_DEFAULTS,
        dtype: str = "auto",
        progress: bool = False,
        negative: str | None = None,
        callback: Callable[[str, int, torch.Tensor], None] | None = None,
    ) -> InpaintResult:
        """Paint ``prompt`` into ``image`` where ``fill`` (bool (H, W)) is True.

        The image must be square; it is resized to the models' resolutions, and
        the output has the final stage's resolution (its unmasked pixels are the
        resized input's). ``base.candidates=c`` > 1: ``c * num_images`` images are painted at
        the base resolution (image k with seed ``seed + k``) in groups of c, composited, and of
        each group the one the reranking CLIP scores best against ``prompt`` goes on.
        A composed ``prompt`` (``"A AND NOT B"``, :mod:`.prompts`) and ``negative`` work as in
        :class:`~.text2im.Text2ImPipeline`: the base stage composes, the upsampler gets the
        positive terms joined, reranking scores the positive terms. ``callback(stage name, step, x0)``
        after each sampling step, as in :class:`~.text2im.Text2ImPipeline`.
        """
        image, _ = split_alpha(image)
        if image.size[0] != image.size[1]:
            raise ValueError(
                f"the image must be square, got {image.size[0]}x{image.size[1]}: crop it, or "
                "extend the canvas to a square (outpainting)"
            )
        if fill.shape != (image.size[1], image.size[0]):
            raise ValueError(
                f"the mask is {fill.shape[1]}x{fill.shape[0]} but the image is {image.size[0]}x{image.size[1]}"
            )
        check_fill(fill)
        (comp,), dtype = prepare_request(
            self.base, self.upsampler, [prompt], num_images, seed, base, upsample, dtype, negative, reranks=True
        )
        if base.candidates > 1 and self.rerank_clip is None:
            raise ValueError(
                f"base.candidates={base.candidates} keeps the best of each {base.candidates} by a "
                "noised CLIP: pass rerank_clip= (glide_diffusion.clip.load_clip(); for the Shapes "
                "models 'shapes-clip-rerank')"
            )
        per = num_images * base.candidates
        rows, seeds = [prompt] * per, seeds_for(seed, per)
        noise = PerSampleNoise(seeds, self.base.device)
        run: dict[str, Any] = dict(dtype=dtype, progress=progress, negative=negative or "", callback=callback)

        low = self._stage(self.base, image, fill, [comp] * per, noise, base, run)
        kept, scores = list(range(per)), None
        if base.candidates > 1:
            kept, scores = self._best(image, fill, low, comp, base.candidates)
            low, rows = low[kept], rows[:num_images]
        final = low
        if self.upsampler is not None:
            final = self._stage(
                self.upsampler,
                image,
                fill,
                [comp.caption] * len(rows),
                noise.select(kept),
                upsample,
                run,
                low_res=quantize(low),
            )
        size = self.output_size
        source = to_uint8(resized(image, size))[0]
        keep = known_at(fill, size)[0, 0].bool().numpy()[..., None]
        composited = [Image.fromarray(np.where(keep, source, out)) for out in to_uint8(final)]
        settings = {
            **run_settings(self.base, self.upsampler, base, upsample, dtype, seed, num_images),
            "task": "inpaint",
            **prompt_settings([prompt], [comp], negative),
        }
        if scores is not None:
            settings["clip_rerank"] = {
                "keep": num_images,
                "of": per,
                "best_of": base.candidates,
                "scores": scores,
                "clip_model": self.rerank_clip_name,
            }
        return InpaintResult(
            composited, [Image.fromarray(a) for a in to_uint8(low)], rows, [seeds[j] for j in kept], settings
        )

    def _best(self, image, fill, low: torch.Tensor, comp: Composition, group: int) -> tuple[list[int], list[float]]:
        """Of each run of ``group`` base-stage images, the index of the one the reranking CLIP
        scores best, composited onto the input and quantized as they are saved; and its score."""
        from ..guidance.rerank import clip_scores

        known = known_at(fill, low.shape[-1]).to(low.device)
        shown = quantize(low * (1 - known) + resized(image, low.shape[-1]).to(low.device) * known)
        target = clip_target(self.rerank_clip, [comp], self.rerank_clip_tokenizer)
        scores = clip_scores(self.rerank_clip, shown, target, tokenizer=self.rerank_clip_tokenizer).float().cpu()
        best, index = scores.view(-1, group).max(dim=1)  # the first of equal scores
        return (index + torch.arange(0, len(scores), group)).tolist(), best.tolist()

    @staticmethod
    def _stage(stage: Stage, image, fill, rows, noise, settings, run, **cond) -> torch.Tensor:
        size, n = stage.image_size, len(rows)
        source = resized(image, size).to(stage.device).expand(n, -1, -1, -1)
        known = known_at(fill, size).to(stage.device).expand(n, -1, -1, -1)
        if stage.config.unet.inpaint:
            cond.update(inpaint_image=source, inpaint_mask=known)
        return sample_stage(stage, rows, noise, settings, x0_fn=replace_known(source, known), **cond, **run)
