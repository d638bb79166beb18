"""Options and error handling shared by ``glide sample``, ``glide inpaint`` and ``glide edit``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from .. import bundled
from ..pipelines.recipes import SettingError, StageSettings
from ..precision import DTYPE_CHOICES
from ..presets import PRESETS

# Model families: the (base, upsampler) a command uses unless --base/--upsampler say otherwise.
# "shapes": the small models shipped inside the package (nothing to download);
# "glide": the released GLIDE (filtered) weights (downloaded into the cache on first use).
FAMILIES = {
    "text2im": {"shapes": ("shapes-base", "shapes-upsample"), "glide": ("base", "upsample")},
    "inpaint": {"shapes": ("shapes-inpaint", "shapes-upsample-inpaint"), "glide": ("base-inpaint", "upsample-inpaint")},
}


# Text to image from the Shapes family runs the guided-distilled base (one pass per step, 4 steps)
# where this installation ships it; editing and evaluation keep the base it was distilled from.
DISTILLED = {"shapes-base": "shapes-base-distilled"}


def default_family(task: str) -> str:
    """ "shapes" where this installation ships both of the task's Shapes models, else "glide"."""
    return "shapes" if set(FAMILIES[task]["shapes"]) <= set(bundled.available()) else "glide"


def add_model_args(p: argparse.ArgumentParser, task: str) -> None:
    choices = FAMILIES[task]
    listing = "; ".join(f"{k}: {b} + {u}" for k, (b, u) in choices.items())
    default = default_family(task)
    p.add_argument(
        "--models",
        choices=sorted(choices),
        default=default,
        help=f"model family ({listing}); default: {default} (shapes where both are bundled)",
    )
    p.add_argument(
        "--base",
        default=None,
        help="base model: a released or bundled name, or a checkpoint path (default: from --models)",
    )
    p.add_argument(
        "--upsampler",
        default=None,
        help="upsampler: a released or bundled name, a path, or 'none' (default: from --models)",
    )
    presets = sorted(PRESETS)
    p.add_argument(
        "--config",
        choices=presets,
        default=None,
        metavar="PRESET",
        help="the base model's preset, for a .pt state dict that does not record its configuration "
        f"({', '.join(presets)})",
    )
    p.add_argument(
        "--up-config", choices=presets, default=None, metavar="PRESET", help="the upsampler's preset, likewise"
    )
    p.set_defaults(model_task=task)


def resolve_models(args: argparse.Namespace, *, distilled: bool = False) -> None:
    """Fill --base and --upsampler from the --models family where not given; ``distilled``: the
    family's distilled base where one ships (``DISTILLED``)."""
    base, upsampler = FAMILIES[args.model_task][args.models]
    if distilled and DISTILLED.get(base) in bundled.available():
        base = DISTILLED[base]
    args.base = args.base or base
    args.upsampler = args.upsampler or upsampler


def add_sampling_args(
    p: argparse.ArgumentParser,
    base: StageSettings | None = None,
    up: StageSettings | None = None,
    recipes: dict[str, tuple[StageSettings, StageSettings]] | None = None,
    model_recipes: dict[str, str] | None = None,
    outputs: bool = True,
) -> None:
    """The sampling options, defaulting to the ``base`` and ``up`` settings; or, with ``recipes``
    (name -> (base, upsampler) settings, the first the default), a ``--recipe`` option that
    gives the settings the per-stage options leave unset; ``model_recipes`` (base model name ->
    recipe name) picks the default recipe for the base models measured with their own.
    ``outputs=False``: without -n, --seed, -o, --overwrite and --npz (commands that define their own)."""
    if outputs:
        p.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt (default: 1)")
        p.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed+k (default: 0)")
    if recipes:
        names = list(recipes)
        listing = "; ".join(f"{n}: {_describe(*recipes[n])}" for n in names)
        own = "".join(f"{r} for {m}, " for m, r in (model_recipes or {}).items())
        p.add_argument(
            "--recipe",
            choices=names,
            default=None,
            help=f"sampling settings the options below override ({listing}; default: {own}else {names[0]})",
        )
        p.set_defaults(recipes=recipes, model_recipes=model_recipes or {})

    def value(settings: StageSettings | None, field: str) -> tuple:
        """(argparse default, as the help shows it): unset under a recipe."""
        if recipes:
            return None, "from --recipe"
        v = getattr(settings, field)
        return v, "every step" if v is None else v

    g, g_help = value(base, "guidance_scale")
    gi, gi_help = value(base, "guidance_interval")
    bs, bs_help = value(base, "sampler")
    bn, bn_help = value(base, "steps")
    us, us_help = value(up, "sampler")
    un, un_help = value(up, "steps")
    ut, ut_help = value(up, "temperature")
    ug, ug_help = value(up, "guidance_scale")
    p.add_argument(
        "-g",
        "--guidance-scale",
        type=float,
        default=g,
        help=f"classifier-free guidance scale of the base stage (default: {g_help})",
    )
    p.add_argument(
        "--guidance-interval",
        type=_interval,
        default=gi,
        metavar="LO,HI",
        help="guide only the base steps with t in [LO*T, HI*T], fractions of the T diffusion "
        "steps (e.g. 0.2,0.8; 0,1 = every step); the others run the conditional model alone, "
        f"at half the cost (default: {gi_help})",
    )
    p.add_argument("--base-sampler", default=bs, help=f"ddpm, ddim or dpm++2m (default: {bs_help})")
    p.add_argument("--base-steps", default=bn, help=f"respacing, e.g. 100, 50, ddim25 (default: {bn_help})")
    p.add_argument("--up-sampler", default=us, help=f"ddpm, ddim or dpm++2m (default: {us_help})")
    p.add_argument("--up-steps", default=un, help=f"(default: {un_help})")
    p.add_argument(
        "--up-temperature", type=float, default=ut, help=f"scale of the upsampler's initial noise (default: {ut_help})"
    )
    p.add_argument(
        "--up-guidance-scale",
        type=float,
        default=ug,
        help=f"classifier-free guidance scale of the upsampler (1 = conditional only; default: {ug_help})",
    )
    p.add_argument(
        "--negative",
        default=None,
        metavar="TEXT",
        help="negative prompt: replaces the empty caption of classifier-free guidance, so the images "
        "move away from TEXT (every guided stage; default: the empty caption)",
    )
    if outputs:
        p.add_argument("-o", "--output", default="samples", help="output folder (default: ./samples)")
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace files of the same name in the output folder (default: never; a name in use gets a counter)",
        )
        p.add_argument("--npz", action="store_true", help="also write all images to samples.npz in the output folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default: cpu)")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_CHOICES,
        help="model precision; auto: bf16 on CPUs with native bf16, fp16 on CUDA, else fp32 (default: auto)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="sample through torch.compile: each step faster, after a minute or two of building "
        "kernels per stage; pays for many images, not one (docs/results.md)",
    )
    p.add_argument(
        "--cache-dir", default=None, help="where released files live (default: $GLIDE_CACHE_DIR or the user cache)"
    )
    p.add_argument("--no-download", action="store_true", help="never download missing released files")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _interval(text: str) -> tuple[float, float]:
    """'LO,HI' -> (lo, hi); the range itself is checked with the other stage settings."""
    parts = text.split(",")
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers in [0, 1]), got {text!r}") from None
    return lo, hi


def _describe(base: StageSettings, up: StageSettings) -> str:
    """One line for --help: 'base dpm++2m 12 at guidance 3 guided for t in [0.3, 1] T, upsampler dpm++2m 3'."""
    interval = base.guidance_interval
    guided = "" if interval is None else " guided for t in [{:g}, {:g}] T".format(*interval)
    best = f", best of {base.candidates} by CLIP" if base.candidates > 1 else ""
    return (
        f"base {base.sampler} {base.steps} at guidance {base.guidance_scale:g}{guided}{best}, "
        f"upsampler {up.sampler} {up.steps}"
    )


def stage_settings(args: argparse.Namespace) -> tuple[StageSettings, StageSettings]:
    """The (base, upsampler) settings of the parsed options; unset ones from ``--recipe``."""
    recipes = getattr(args, "recipes", None)
    if recipes:
        name = args.recipe or args.model_recipes.get(getattr(args, "base", None), next(iter(recipes)))
        base, up = recipes[name]

        def given(**kw: object) -> dict[str, object]:
            return {k: v for k, v in kw.items() if v is not None}

        return (
            dataclasses.replace(
                base,
                **given(
                    sampler=args.base_sampler,
                    steps=args.base_steps,
                    guidance_scale=args.guidance_scale,
                    guidance_interval=args.guidance_interval,
                    candidates=getattr(args, "candidates", None),
                ),
            ),
            dataclasses.replace(
                up,
                **given(
                    sampler=args.up_sampler,
                    steps=args.up_steps,
                    guidance_scale=args.up_guidance_scale,
                    temperature=args.up_temperature,
                ),
            ),
        )
    return (
        StageSettings(
            args.base_sampler,
            args.base_steps,
            args.guidance_scale,
            1.0,
            guidance_interval=args.guidance_interval,
            candidates=_given(args, "candidates", 1),
        ),
        StageSettings(args.up_sampler, args.up_steps, args.up_guidance_scale, args.up_temperature),
    )


def _given(args: argparse.Namespace, name: str, default):
    """An option's value where the command has the option and it was given, else ``default``."""
    value = getattr(args, name, None)
    return default if value is None else value


def rerank_clip_choice(args: argparse.Namespace, fallback: str) -> str:
    """The noised CLIP that chooses among candidates: --clip, else the base model's own bundled
    reranking CLIP (``RERANK_CLIPS``), else ``fallback``."""
    from .. import bundled
    from ..pipelines.recipes import RERANK_CLIPS

    own = RERANK_CLIPS.get(args.base)
    return args.clip or (own if own in bundled.available() else fallback)


def load_clip_option(args: argparse.Namespace, choice: str, device):
    """The noised CLIP ``choice`` (:func:`~glide_diffusion.clip.loading.load_clip_and_tokenizer`), its
    tokenizer and name, with the command's cache and download options."""
    from ..clip.loading import load_clip_and_tokenizer

    clip, tokenizer = load_clip_and_tokenizer(
        choice, device=device, cache_dir=args.cache_dir, download=not args.no_download
    )
    return clip, tokenizer, choice


def upsampler_arg(args: argparse.Namespace) -> str | None:
    return None if args.upsampler.lower() == "none" else args.upsampler


def compile_stages(pipe, args: argparse.Namespace) -> None:
    """With --compile, sample the pipeline's stages through torch.compile."""
    if args.compile:
        for stage in (pipe.base, pipe.upsampler):
            if stage is not None:
                stage.compile()


def device_arg(args: argparse.Namespace):
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise ValueError(f"bad device {args.device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {args.device} asked for, but CUDA is not available")
    return device


# The option each library setting comes from (pipelines.stage.SettingError.name), for error messages.
OPTIONS = {
    "num_images": "-n/--num-images",
    "seed": "--seed",
    "batch_size": "--batch-size",
    "dtype": "--dtype",
    "rerank": "--rerank",
    "clip_guidance_scale": "--clip-guidance-scale",
    "strength": "--strength",
    "base.sampler": "--base-sampler",
    "base.steps": "--base-steps",
    "base.guidance_scale": "-g/--guidance-scale",
    "base.guidance_interval": "--guidance-interval",
    "base.candidates": "--candidates",
    "upsample.sampler": "--up-sampler",
    "upsample.steps": "--up-steps",
    "upsample.guidance_scale": "--up-guidance-scale",
    "upsample.temperature": "--up-temperature",
}


def run_command(name: str, body: Callable[[], list[Path]]) -> int:
    """Run ``body`` (which returns the files it wrote); expected errors become one line and exit 2,
    and each distinct warning prints once as one line."""
    from ..checkpoints import CheckpointError
    from ..hub.download import DownloadError

    seen: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        if text not in seen:
            seen.add(text)
            print(f"glide {name}: warning: {text}", file=sys.stderr, flush=True)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # ``show`` keeps one of each
            warnings.showwarning = show
            paths = body()
    except SettingError as e:
        print(f"glide {name}: error: {OPTIONS.get(e.name, e.name)} {e.problem}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError, CheckpointError, DownloadError) as e:
        print(f"glide {name}: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def check_output(args: argparse.Namespace) -> None:
    """Fail before any work unless -o/--output is, or can become, a folder this process can write in."""
    from ..pipelines.output import check_writable_dir

    try:
        check_writable_dir(Path(args.output))
    except OSError as e:
        raise ValueError(f"-o/--output: {e}") from None


def write_outputs(result, args: argparse.Namespace, suffix: str = "") -> list[Path]:
    """Save the result into -o/--output; where that fails after all, into a new temporary folder
    (said in a warning), so the sampling is not lost."""
    import tempfile

    from ..pipelines.output import save_npz, save_samples

    def save(folder: Path) -> list[Path]:
        paths = save_samples(
            result.images,
            result.prompts,
            result.seeds,
            result.settings,
            folder,
            suffix=suffix,
            overwrite=args.overwrite,
        )
        if args.npz:
            paths.append(
                save_npz(
                    folder / "samples.npz",
                    result.images,
                    result.prompts,
                    result.seeds,
                    result.settings,
                    overwrite=args.overwrite,
                )
            )
        return paths

    try:
        return save(Path(args.output))
    except OSError as e:
        fallback = Path(tempfile.mkdtemp(prefix="glide-samples-"))
        warnings.warn(f"could not write to {args.output} ({e.strerror or e}); saved in {fallback} instead")
        return save(fallback)
