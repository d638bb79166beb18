"""Inpainting on Shapes: draw an object into a masked empty area, scored by the evaluator.

Each case is a blank test-split canvas (one of the three backgrounds) with a square
mask around where a test-split object (any of the 30 colour-shape pairs, small or
large, in one of the 9 cells) would stand, and the caption
"a SIZE COLOUR SHAPE POSITION on a BG background". The inpainting pipeline fills
the mask; the analytic evaluator scores the result against the caption (exact
match: shape, colour, size, position and background all right), and every unmasked
pixel is checked to be exactly the input's.

Two methods, the same cases and seeds (GLIDE §4.3's comparison):

- finetuned: the inpainting models (extra input channels, trained with masks);
- replace:   the plain text-to-image base and upsampler, known pixels only projected
  into the predicted x0 at every step (no fine-tuning).

With ``--candidates N`` each case paints N images at the base resolution and keeps the one
the ``--rerank-clip`` noised CLIP scores best against the caption (best of N).

    python benchmarks/shapes_inpaint.py                                # bundled Shapes models, 200 cases
    python benchmarks/shapes_inpaint.py --n 50 --base-steps 25 --base-sampler dpm++2m
    python benchmarks/shapes_inpaint.py --inpaint runs/inpaint-shapes/checkpoints/step_00001500/ema.safetensors \\
        --upsample-inpaint none --base runs/base-shapes/checkpoints/step_00002800/ema.safetensors --upsampler none
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from PIL import Image

from glide_diffusion.checkpoints import atomic_write_text
from glide_diffusion.eval.shapes_benchmark import inpaint_cases
from glide_diffusion.eval.shapes_eval import evaluate
from glide_diffusion.pipelines.inpaint import InpaintPipeline
from glide_diffusion.pipelines.recipes import INPAINT_UPSAMPLE_DEFAULTS, OFFICIAL_BASE, StageSettings

EXAMPLES = 8  # cases shown in --figure


def run(pipe: InpaintPipeline, items, args) -> dict:
    base = StageSettings(args.base_sampler, args.base_steps, args.guidance_scale, candidates=args.candidates)
    up = StageSettings(args.up_sampler, args.up_steps, 1.0, INPAINT_UPSAMPLE_DEFAULTS.temperature)
    images, kept = [], 0
    start = time.perf_counter()
    for k, (canvas, fill, caption, _) in enumerate(items):
        # Case k draws its candidates from seeds seed + k*N .. seed + k*N + N-1: no two cases share one.
        result = pipe(canvas, fill, caption, seed=args.seed + k * args.candidates, base=base, upsample=up)
        out = result.images[0]
        size = out.size[0]
        source = np.asarray(canvas.resize((size, size), Image.BICUBIC) if canvas.size[0] != size else canvas)
        known = (
            np.asarray(Image.fromarray(~fill).resize((size, size), Image.NEAREST)) if fill.shape[0] != size else ~fill
        )
        kept += bool((np.asarray(out)[known] == source[known]).all())
        images.append(out)
    report = evaluate([spec for *_, spec in items], images)
    report["unmasked_identical"] = kept
    report["seconds"] = time.perf_counter() - start
    report["images"] = images[:EXAMPLES]
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inpaint", default="shapes-inpaint", help="inpainting base model")
    p.add_argument(
        "--upsample-inpaint", default="shapes-upsample-inpaint", help="upsampling-inpainting model or 'none'"
    )
    p.add_argument("--base", default="shapes-base", help="plain base model for the replacement baseline")
    p.add_argument("--upsampler", default="shapes-upsample", help="plain upsampler for the baseline, or 'none'")
    p.add_argument("--methods", nargs="+", default=["finetuned", "replace"], choices=["finetuned", "replace"])
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance-scale", type=float, default=OFFICIAL_BASE.guidance_scale)
    p.add_argument("--base-sampler", default=OFFICIAL_BASE.sampler)
    p.add_argument("--base-steps", default=OFFICIAL_BASE.steps)
    p.add_argument("--up-sampler", default=INPAINT_UPSAMPLE_DEFAULTS.sampler)
    p.add_argument("--up-steps", default=INPAINT_UPSAMPLE_DEFAULTS.steps)
    p.add_argument("--candidates", type=int, default=1, help="best of N by --rerank-clip (1: off)")
    p.add_argument("--rerank-clip", default="shapes-clip-rerank", help="noised CLIP for --candidates")
    p.add_argument("--json", help="also write the reports here")
    p.add_argument(
        "--figure",
        help="also write a PNG: exact match with its standard error by object size for each method, "
        f"and the first {EXAMPLES} cases (masked input, then each method's painting)",
    )
    args = p.parse_args()

    def none(s):
        return None if s.lower() == "none" else s

    pipes = {"finetuned": (args.inpaint, none(args.upsample_inpaint)), "replace": (args.base, none(args.upsampler))}
    reports = {}
    best = f", best of {args.candidates} by {args.rerank_clip}" if args.candidates > 1 else ""
    print(
        f"{args.n} cases; base {args.base_sampler} {args.base_steps} (guidance {args.guidance_scale}{best}), "
        f"upsampler {args.up_sampler} {args.up_steps}"
    )
    print(
        f"{'method':<10} {'exact':>6} {'shape':>6} {'colour':>6} {'size':>6} {'position':>8} {'bg':>6} "
        f"{'unmasked identical':>18} {'s':>6}"
    )
    for method in args.methods:
        pipe = InpaintPipeline.from_pretrained(
            *pipes[method], download=False, rerank_clip=args.rerank_clip if args.candidates > 1 else None
        )
        size = pipe.output_size
        cases = inpaint_cases(args.n, args.seed, size)
        r = run(pipe, cases, args)
        reports[method] = r
        a = r["all"]
        print(
            f"{method:<10} {a['exact']:>6.3f} {a['shape']:>6.3f} {a['colour']:>6.3f} {a['size']:>6.3f} "
            f"{a['position']:>8.3f} {a['background']:>6.3f} {r['unmasked_identical']:>14}/{args.n} "
            f"{r['seconds']:>6.0f}",
            flush=True,
        )
    images = {method: r.pop("images") for method, r in reports.items()}
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args), "reports": reports}, indent=1))
    if args.figure:
        write_figure(args.figure, reports, images, cases, args)


def write_figure(path: str, reports: dict, images: dict, cases: list, args) -> None:
    """Bars of exact match (± one standard error) by object size, and example paintings below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ("all", "small", "large")
    methods = list(reports)
    examples = cases[:EXAMPLES]
    rows = [("masked input", [masked(canvas, fill) for canvas, fill, *_ in examples])]
    rows += [(LABELS.get(m, m), images[m]) for m in methods]
    fig = plt.figure(figsize=(9, 3.2 + 1.1 * len(rows)))
    grid = fig.add_gridspec(1 + len(rows), len(examples), height_ratios=[3.2] + [1] * len(rows), hspace=0.35)
    ax = fig.add_subplot(grid[0, :])
    width = 0.8 / len(methods)
    for m, method in enumerate(methods):
        marks: dict[str, list[bool]] = {g: [] for g in groups}
        for (*_, spec), score in zip(cases, reports[method]["scores"]):
            marks["all"].append(score["exact"])
            marks[spec.objects[0].size].append(score["exact"])
        means = [100 * np.mean(marks[g]) for g in groups]
        ses = [100 * np.std(marks[g], ddof=1) / np.sqrt(len(marks[g])) for g in groups]
        xs = np.arange(len(groups)) + (m - (len(methods) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=ses, capsize=3, label=LABELS.get(method, method))
        for x, v in zip(xs, means):
            ax.text(x, 4, f"{v:.1f}", ha="center", fontsize=8, color="white")
    ax.set_xticks(np.arange(len(groups)), [f"{g} (n {len(marks[g])})" for g in groups])
    ax.set_ylabel("exact match, %")
    ax.set_ylim(0, 125)
    ax.legend(loc="upper center", ncol=len(methods), fontsize=8)
    ax.set_title(f"Painting one captioned object into a masked area: {args.n} Shapes cases, ± 1 SE", fontsize=10)
    for r, (label, row) in enumerate(rows):
        for c, image in enumerate(row):
            cell = fig.add_subplot(grid[1 + r, c])
            cell.imshow(np.asarray(image.resize((64, 64), Image.NEAREST)))
            cell.set_xticks([])
            cell.set_yticks([])
            if c == 0:
                cell.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"figure: {path}")


LABELS = {"finetuned": "fine-tuned inpainting model", "replace": "plain base, replacement only"}


def masked(canvas: Image.Image, fill: np.ndarray) -> Image.Image:
    """The canvas with the area to paint shown as a black-and-white checkerboard."""
    a = np.asarray(canvas).copy()
    if fill.shape[0] != a.shape[0]:
        fill = np.asarray(Image.fromarray(fill).resize(a.shape[:2][::-1], Image.NEAREST))
    ys, xs = np.indices(fill.shape)
    checker = ((ys // 2 + xs // 2) % 2 * 255).astype(np.uint8)
    a[fill] = checker[fill][:, None]
    return Image.fromarray(a)


if __name__ == "__main__":
    main()
