"""The work behind ``glide serve``, without the web framework: models loaded once, every request
checked against the server's limits, one job at a time on the device, results saved as the CLI saves them.

A request's settings start from what ``glide sample``, ``glide inpaint`` and ``glide edit`` would
use with the server's model options (their parsers and :func:`~glide_diffusion.cli.common.stage_settings`
compute them), and each option the request gives replaces one CLI flag. :mod:`.app` turns the
three operations into a web page and an HTTP API.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..diffusion.schedule import space_timesteps
from ..pipelines.output import save_samples
from ..pipelines.recipes import SettingError, StageSettings

# A progress report: (what is running, fraction done in [0, 1]).
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (``glide serve --max-...`` flags)."""

    max_images: int = 16  # images sampled per request, best-of-N candidates included (4 images, best of 4)
    max_steps: int = 1000  # sampling steps of one stage (the kept steps of a respacing)
    max_upload_mb: float = 10.0  # size of an uploaded file
    max_pixels: int = 4096 * 4096  # width x height of an uploaded image (decoded)
    max_prompt_chars: int = 1000  # a caption or negative prompt
    queue_size: int = 8  # requests waiting for the device; more get a "busy" answer


class RequestError(ValueError):
    """A request the server will not run, with the message its sender sees."""


class BusyError(RuntimeError):
    """The queue is full: the sender should try again later."""


@dataclass(frozen=True)
class Options:
    """A request's sampling options; None keeps the CLI's default (the flag in the comment)."""

    negative: str = ""  # --negative
    num_images: int = 1  # -n
    seed: int = 0  # --seed
    guidance_scale: float | None = None  # -g
    base_sampler: str | None = None  # --base-sampler
    base_steps: str | None = None  # --base-steps
    up_sampler: str | None = None  # --up-sampler
    up_steps: str | None = None  # --up-steps
    candidates: int | None = None  # --candidates (text -> image and inpainting)
    rerank: int | None = None  # --rerank (text -> image)
    clip_guidance_scale: float = 0.0  # --clip-guidance-scale (text -> image)
    strength: float = 0.6  # --strength (image -> image)


# The request option each library setting (SettingError.name) comes from.
FIELDS = {
    "num_images": "num_images",
    "seed": "seed",
    "rerank": "rerank",
    "strength": "strength",
    "clip_guidance_scale": "clip_guidance_scale",
    "base.sampler": "base_sampler",
    "base.steps": "base_steps",
    "base.guidance_scale": "guidance_scale",
    "base.candidates": "candidates",
    "upsample.sampler": "up_sampler",
    "upsample.steps": "up_steps",
    "upsample.guidance_scale": "up_guidance_scale",
}


@dataclass
class JobResult:
    """What a finished request returns: the PNGs written (with the CLI's metadata) and how they were made."""

    paths: list[Path]
    prompts: list[str]
    seeds: list[int]
    settings: dict
    command: str  # the glide command that makes the same images
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """JSON for the API: per image its file name, prompt and seed; the settings and the command."""
        images = [{"file": p.name, "prompt": pr, "seed": s} for p, pr, s in zip(self.paths, self.prompts, self.seeds)]
        return {"images": images, "settings": self.settings, "command": self.command, "warnings": self.warnings}


class DeviceQueue:
    """One job at a time on the device, at most ``size`` more waiting; beyond that :class:`BusyError`."""

    def __init__(self, size: int):
        self.size = size
        self._device = threading.Lock()
        self._count = threading.Lock()
        self.held = 0  # running + waiting

    @contextmanager
    def job(self) -> Iterator[None]:
        with self._count:
            if self.held > self.size:
                raise BusyError(
                    f"busy: {self.held} requests are running or waiting for the device and the queue "
                    f"holds {self.size} (--queue-size); try again in a moment"
                )
            self.held += 1
        try:
            with self._device:
                yield
        finally:
            with self._count:
                self.held -= 1


def open_upload(path: str | os.PathLike, limits: Limits, what: str = "image") -> Image.Image:
    """An uploaded image, checked for size on disk and in pixels before it is decoded."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise RequestError(f"{what}: cannot read the upload ({e.strerror or e})") from None
    if size > limits.max_upload_mb * 2**20:
        raise RequestError(
            f"{what}: the file is {size / 2**20:.1f} MB; this server takes at most "
            f"{limits.max_upload_mb:g} MB (--max-upload-mb)"
        )
    try:
        image = Image.open(path)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        raise RequestError(f"{what}: not an image (PNG, JPEG, WebP, ... expected)") from None
    check_pixels(image, limits, what)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise RequestError(f"{what}: a damaged image ({e})") from None
    return image


def check_pixels(image: Image.Image, limits: Limits, what: str = "image") -> None:
    w, h = image.size
    if w * h > limits.max_pixels:
        raise RequestError(
            f"{what}: {w}x{h} is {w * h} pixels; this server takes at most {limits.max_pixels} (--max-pixels)"
        )


def parse_boxes(text: str, what: str = "rects") -> list[tuple[int, int, int, int]]:
    """'L,T,R,B; L,T,R,B' -> boxes in pixels (right, bottom exclusive); '' -> none."""
    boxes = []
    for part in filter(None, (p.strip() for p in text.replace("\n", ";").split(";"))):
        try:
            left, top, right, bottom = (int(v) for v in part.split(","))
        except ValueError:
            raise RequestError(
                f"{what}: expected LEFT,TOP,RIGHT,BOTTOM pixels (boxes separated by ';'), got {part!r}"
            ) from None
        boxes.append((left, top, right, bottom))
    return boxes


def parse_margins(text: str) -> tuple[int, int, int, int] | None:
    """'N' or 'L,T,R,B' outpainting margins in pixels; '' -> None."""
    if not text.strip():
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (1, 4) or min(values) < 0 or max(values) > 4096:
        raise RequestError(f"extend: expected N or LEFT,TOP,RIGHT,BOTTOM margins in 0..4096 pixels, got {text!r}")
    left, top, right, bottom = values * 4 if len(values) == 1 else values
    return left, top, right, bottom


def layers_fill(layers: Sequence[Image.Image | None], size: tuple[int, int]) -> np.ndarray | None:
    """The brushed region of an editor's layers (any pixel not fully transparent), bool (H, W);
    None when nothing is brushed."""
    fill = np.zeros((size[1], size[0]), dtype=bool)
    for layer in layers:
        if layer is None:
            continue
        if layer.size != size:
            raise RequestError(
                f"mask: the brushed layer is {layer.size[0]}x{layer.size[1]} but the image is {size[0]}x{size[1]}"
            )
        fill |= np.asarray(layer.convert("RGBA"))[..., 3] > 0
    return fill if fill.any() else None


def _finite(name: str, value: float | None) -> None:
    if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise RequestError(f"{name} must be a finite number, got {value!r}")


class Server:
    """The models of one family, loaded once and shared by every request, and the device queue.

    ``model_argv``: the model flags of ``glide sample`` (``--models``, ``--base``, ``--upsampler``,
    ``--clip``, ``--device``, ``--dtype``, ``--cache-dir``, ``--no-download``); ``inpaint_argv``
    those of ``glide inpaint``. Text -> image and image -> image share the base and upsampler."""

    def __init__(
        self,
        model_argv: Sequence[str],
        inpaint_argv: Sequence[str],
        output: str | os.PathLike,
        limits: Limits = Limits(),
    ):
        from ..cli.common import device_arg

        self.model_argv, self.inpaint_argv = list(model_argv), list(inpaint_argv)
        self.output, self.limits = Path(output), limits
        self.queue = DeviceQueue(limits.queue_size)
        self.text_args, self.inpaint_args = self._args("sample"), self._args("inpaint")
        self.device = device_arg(self.text_args)
        self._clips: dict[str, tuple] = {}  # noised CLIPs by name, loaded on first use
        self._load()

    def _args(self, command: str) -> argparse.Namespace:
        """The CLI's parsed options for ``command`` with the server's model flags (the prompt is a
        placeholder: a request's text never goes through argparse)."""
        prompt = "x"
        from ..cli import edit, sample
        from ..cli.common import resolve_models

        if command == "sample":
            args = sample.build_parser().parse_args([prompt, *self.model_argv])
        elif command == "edit":
            args = edit.edit_parser().parse_args(["input.png", prompt, *self.model_argv])
        else:
            args = edit.inpaint_parser().parse_args(["input.png", prompt, *self.inpaint_argv])
        resolve_models(args, distilled=command == "sample")  # as each command resolves them
        return args

    def _load(self) -> None:
        from ..cli.common import upsampler_arg
        from ..pipelines.edit import EditPipeline
        from ..pipelines.inpaint import InpaintPipeline
        from ..pipelines.stage import load_stage
        from ..pipelines.text2im import Text2ImPipeline

        a, i = self.text_args, self.inpaint_args
        kw: dict[str, Any] = dict(device=self.device, cache_dir=a.cache_dir, download=not a.no_download)
        self.text2im = Text2ImPipeline.from_pretrained(
            a.base, upsampler_arg(a), base_config=a.config, upsampler_config=a.up_config, **kw
        )
        e = self._args("edit")  # glide edit keeps the full base where glide sample runs a distilled one
        edit_base = self.text2im.base if e.base == a.base else load_stage(e.base, config=e.config, **kw)
        self.edit = EditPipeline(edit_base, self.text2im.upsampler)
        self.inpaint = InpaintPipeline.from_pretrained(
            i.base, upsampler_arg(i), base_config=i.config, upsampler_config=i.up_config, **kw
        )
        # The noised CLIP that picks best-of-N where a default recipe uses it, now rather than on the first click.
        from ..cli.common import rerank_clip_choice
        from ..cli.sample import _clip_choices

        judge = _clip_choices(a, reranks=True)[1]
        if self.defaults("sample")[0].candidates > 1 and judge:
            self._clip(a, judge)
        if self.defaults("inpaint")[0].candidates > 1:
            self._clip(i, rerank_clip_choice(i, "shapes-clip-rerank" if i.models == "shapes" else "released"))

    def defaults(self, command: str) -> tuple[StageSettings, StageSettings]:
        """The (base, upsampler) settings the CLI uses for ``command`` with these models."""
        from ..cli.common import stage_settings

        return stage_settings(self._args(command))

    def _clip(self, args: argparse.Namespace, choice: str) -> tuple:
        from ..cli.common import load_clip_option

        if choice not in self._clips:
            self._clips[choice] = load_clip_option(args, choice, self.device)
        return self._clips[choice]

    # --- checking a request ---------------------------------------------------------------

    def _settings(
        self, command: str, prompt: str, opts: Options
    ) -> tuple[argparse.Namespace, StageSettings, StageSettings]:
        """The CLI's options for the request (each given option as its flag) and its stage settings."""
        from ..cli.common import stage_settings

        lim = self.limits
        for name, text in (("prompt", prompt), ("negative", opts.negative)):
            if not isinstance(text, str):
                raise RequestError(f"{name} must be text")
            if len(text) > lim.max_prompt_chars:
                raise RequestError(
                    f"{name} is {len(text)} characters; this server takes at most "
                    f"{lim.max_prompt_chars} (--max-prompt-chars)"
                )
        if not prompt.strip():
            raise RequestError("prompt: give a caption")
        for name in ("guidance_scale", "clip_guidance_scale", "strength"):
            _finite(name, getattr(opts, name))
        for name in ("num_images", "seed", "candidates", "rerank"):
            value = getattr(opts, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise RequestError(f"{name} must be an integer, got {value!r}")
        args = self._args(command)
        given = {
            "guidance_scale": opts.guidance_scale,
            "base_sampler": opts.base_sampler,
            "base_steps": opts.base_steps,
            "up_sampler": opts.up_sampler,
            "up_steps": opts.up_steps,
        }
        if command != "edit":
            given["candidates"] = opts.candidates
        for key, value in given.items():
            if value is not None and value != "":
                setattr(args, key, value)
        args.num_images, args.seed, args.negative = opts.num_images, opts.seed, opts.negative or None
        base, up = stage_settings(args)
        if command == "edit" and opts.candidates not in (None, 1):
            raise RequestError(
                "candidates: image -> image keeps every image (best of N is for text -> image and inpainting)"
            )
        if not 1 <= opts.num_images:
            raise RequestError(f"num_images must be at least 1, got {opts.num_images}")
        sampled = opts.num_images * base.candidates
        if sampled > lim.max_images:
            raise RequestError(
                f"num_images {opts.num_images} x best of {base.candidates} = {sampled} images to "
                f"sample; this server samples at most {lim.max_images} per request (--max-images)"
            )
        pipe = {"sample": self.text2im, "edit": self.edit, "inpaint": self.inpaint}[command]
        for stage, settings, name in (("base", base, "base_steps"), ("upsampler", up, "up_steps")):
            try:
                n = _count(getattr(pipe, stage if stage == "base" else "upsampler"), settings.steps)
            except (ValueError, TypeError) as e:
                raise RequestError(f"{name}: not a respacing ({e})") from None
            if n > lim.max_steps:
                raise RequestError(
                    f"{name}: {settings.steps!r} is {n} {stage} steps; this server runs at most "
                    f"{lim.max_steps} (--max-steps)"
                )
        return args, base, up

    # --- the three operations -------------------------------------------------------------

    def run_text2im(self, prompt: str, opts: Options, progress: Progress | None = None) -> JobResult:
        from ..cli.sample import _clip_choices

        args, base, up = self._settings("sample", prompt, opts)
        args.clip_guidance_scale, args.rerank = opts.clip_guidance_scale, opts.rerank
        if opts.clip_guidance_scale < 0:
            raise RequestError(f"clip_guidance_scale must be >= 0, got {opts.clip_guidance_scale}")
        if opts.rerank is not None and not 1 <= opts.rerank <= opts.num_images:
            raise RequestError(f"rerank must be in 1..{opts.num_images} (num_images), got {opts.rerank}")
        pipe = self.text2im

        def work() -> Any:
            guide, judge = _clip_choices(args, reranks=opts.rerank is not None or base.candidates > 1)
            pipe.clip, pipe.clip_tokenizer, pipe.clip_name = self._clip(args, guide) if guide else (None,) * 3
            pipe.rerank_clip, pipe.rerank_clip_tokenizer, pipe.rerank_clip_name = (
                self._clip(args, judge) if judge and judge != guide else (None,) * 3
            )
            return pipe(
                prompt,
                num_images=opts.num_images,
                seed=opts.seed,
                base=base,
                upsample=up,
                dtype=args.dtype,
                clip_guidance_scale=opts.clip_guidance_scale,
                rerank=opts.rerank,
                negative=opts.negative or None,
                callback=self._reporter(pipe, base, up, progress),
            )

        extra = [("--rerank", opts.rerank), ("--clip-guidance-scale", opts.clip_guidance_scale or None)]
        return self._run("sample", [prompt], args, base, up, opts, work, progress, extra=extra)

    def run_edit(self, image: Image.Image, prompt: str, opts: Options, progress: Progress | None = None) -> JobResult:
        args, base, up = self._settings("edit", prompt, opts)
        if not 0 < opts.strength <= 1:
            raise RequestError(f"strength must be in (0, 1], got {opts.strength}")
        pipe = self.edit

        def work() -> Any:
            return pipe(
                image,
                prompt,
                strength=opts.strength,
                num_images=opts.num_images,
                seed=opts.seed,
                base=base,
                upsample=up,
                dtype=args.dtype,
                negative=opts.negative or None,
                callback=self._reporter(pipe, base, up, progress, strength=opts.strength),
            )

        return self._run(
            "edit",
            ["input.png", prompt],
            args,
            base,
            up,
            opts,
            work,
            progress,
            extra=[("--strength", opts.strength)],
            suffix="-edit",
        )

    def run_inpaint(
        self, image: Image.Image, fill: np.ndarray, prompt: str, opts: Options, progress: Progress | None = None
    ) -> JobResult:
        from ..cli.common import rerank_clip_choice
        from ..pipelines.inpaint import check_fill

        args, base, up = self._settings("inpaint", prompt, opts)
        try:
            check_fill(fill)
        except ValueError as e:
            raise RequestError(f"mask: {e}") from None
        pipe = self.inpaint

        def work() -> Any:
            if base.candidates > 1:
                choice = rerank_clip_choice(args, "shapes-clip-rerank" if args.models == "shapes" else "released")
                pipe.rerank_clip, pipe.rerank_clip_tokenizer, pipe.rerank_clip_name = self._clip(args, choice)
            return pipe(
                image,
                fill,
                prompt,
                num_images=opts.num_images,
                seed=opts.seed,
                base=base,
                upsample=up,
                dtype=args.dtype,
                negative=opts.negative or None,
                callback=self._reporter(pipe, base, up, progress),
            )

        return self._run(
            "inpaint",
            ["input.png", prompt, "--mask", "mask.png"],
            args,
            base,
            up,
            opts,
            work,
            progress,
            suffix="-inpaint",
        )

    def _run(
        self,
        command: str,
        positional: list[str],
        args: argparse.Namespace,
        base: StageSettings,
        up: StageSettings,
        opts: Options,
        work: Callable[[], Any],
        progress: Progress | None,
        *,
        extra: Sequence[tuple[str, object]] = (),
        suffix: str = "",
    ) -> JobResult:
        """Run ``work`` on the device when its turn comes; save its images as the CLI does."""
        from ..checkpoints import CheckpointError

        if progress:
            progress("waiting for the device", 0.0)
        with self.queue.job(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = work()
            except SettingError as e:
                raise RequestError(f"{FIELDS.get(e.name, e.name)} {e.problem}") from None
            except (ValueError, TypeError, CheckpointError) as e:
                raise RequestError(str(e)) from None
            paths = save_samples(
                result.images, result.prompts, result.seeds, result.settings, self.output, suffix=suffix
            )
        said = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
        return JobResult(
            paths,
            result.prompts,
            result.seeds,
            result.settings,
            reproduce(
                command,
                positional,
                self.model_argv if command != "inpaint" else self.inpaint_argv,
                base,
                up,
                opts,
                extra,
            ),
            said,
        )

    def _reporter(
        self, pipe, base: StageSettings, up: StageSettings, progress: Progress | None, strength: float | None = None
    ) -> Callable[[str, int, Any], None] | None:
        """A pipeline callback that reports the fraction of each stage's steps done."""
        if progress is None:
            return None
        total = {"base": _count(pipe.base, base.steps), "upsampler": _count(pipe.upsampler, up.steps)}
        if strength is not None:
            total["base"] = max(1, round(strength * total["base"]))
        names = {pipe.base.name: "base"}
        if pipe.upsampler is not None:
            names[pipe.upsampler.name] = "upsampler"
        step = {"base": 0, "upsampler": 0}

        def callback(stage: str, i: int, x0: Any) -> None:
            which = names.get(stage, "base")
            step[which] += 1
            size = (pipe.upsampler if which == "upsampler" else pipe.base).image_size
            steps = total[which]
            progress(f"{which} {size}px: step {min(step[which], steps)} of {steps}", min(step[which] / steps, 1.0))

        return callback


def _count(stage, steps: str) -> int:
    """The sampling steps of a respacing on ``stage``'s diffusion process (1 without a stage)."""
    return len(space_timesteps(stage.config.diffusion.steps, steps)) if stage is not None else 1


def reproduce(
    command: str,
    positional: Sequence[str],
    model_argv: Sequence[str],
    base: StageSettings,
    up: StageSettings,
    opts: Options,
    extra: Sequence[tuple[str, object]] = (),
) -> str:
    """The ``glide`` command line that makes the same images (every setting spelled out)."""
    flags: list[tuple[str, object]] = [
        ("-n", opts.num_images),
        ("--seed", opts.seed),
        ("--negative", opts.negative or None),
        ("-g", base.guidance_scale),
        ("--base-sampler", base.sampler),
        ("--base-steps", base.steps),
        ("--up-sampler", up.sampler),
        ("--up-steps", up.steps),
    ]
    if command != "edit":
        flags.append(("--candidates", base.candidates))
    options = list(model_argv)
    for flag, value in [*flags, *extra]:
        if value is not None:
            options += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if any(p.startswith("-") for p in positional):  # a caption that looks like an option: after "--"
        return " ".join(shlex.quote(w) for w in ["glide", command, *options, "--", *positional])
    return " ".join(shlex.quote(w) for w in ["glide", command, *positional, *options])
