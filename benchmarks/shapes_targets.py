"""Issue 36's composition targets, measured as ``glide sample`` and ``glide inpaint`` make images by default.

Every image comes from the bundled Shapes pipelines at their defaults (the ``shapes`` recipes:
best of 4 by ``shapes-clip-rerank``, then the upsampler) and is scored by the analytic evaluator
against the caption it was asked for:

- one-object test captions (``--n-one``; the usual caption mix, held-out pairs included), and by
  the size they ask, small objects;
- held-out colour-shape pairs (``--n-held-out`` captions naming a pair never seen in training);
- two-object test captions (``--n-two``), plain ("a red circle to the left of a blue star") and as
  a composition of one-object terms ("a red circle on the left AND a blue star on the right",
  scored against the plain caption; ``shapes_compose.py``'s mapping);
- inpainting a second object beside a kept one: a two-object test scene rendered with one of its
  objects, the other's box (1.3x, minus the kept object's box) masked, the two-object caption;
- background error: the median over the one-object images of the mean absolute error (0-255)
  of the pixels at least 3 px from any object against a clean render of what the evaluator read.

Exact match counts an image right when every attribute its caption names is right (for two
objects: both objects and the relation). Each rate is printed with its standard error.

    python benchmarks/shapes_targets.py --json runs/eval/targets.json      # about 40 min on 2 cores
    python benchmarks/shapes_targets.py --base runs/base-shapes-2/checkpoints/step_00010000 --n-one 100

``--base`` / ``--inpaint`` score other checkpoints in the same pipelines (the rest bundled).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from glide_diffusion.checkpoints import atomic_write_text
from glide_diffusion.data.shapes import SPLITS, render, test_captions
from glide_diffusion.data.shapes_captions import sample_caption_with_mentions
from glide_diffusion.data.shapes_scene import Scene, sample_scene
from glide_diffusion.eval.shapes_benchmark import composition
from glide_diffusion.eval.shapes_eval import analyze, score
from glide_diffusion.eval.shapes_fidelity import fidelity
from glide_diffusion.pipelines.inpaint import InpaintPipeline
from glide_diffusion.pipelines.recipes import INPAINT_RECIPES
from glide_diffusion.pipelines.text2im import RECIPES, Text2ImPipeline

MASK_MARGIN = 1.3  # the inpainting mask's side, in units of the object's box side
CANVAS = 128  # the inpainting input's side (the bundled pipeline's output resolution)


def rate(values: list[bool]) -> tuple[float, float, int]:
    n = len(values)
    p = sum(values) / n if n else float("nan")
    return p, math.sqrt(p * (1 - p) / n) if n else float("nan"), n


def inpaint_cases(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, str, object]]:
    """(canvas with the kept object, fill mask, two-object caption, its spec) for n test scenes."""
    out = []
    ys = xs = (np.arange(CANVAS) + 0.5) / CANVAS
    for i in range(n):
        rng = np.random.default_rng([seed, SPLITS["test"], 2001, i])
        scene = sample_scene(rng, "test", n_objects=2)
        caption, spec = sample_caption_with_mentions(scene, rng)
        keep = i % 2  # alternately the first and the second object is kept
        kept, drawn = scene.objects[keep], scene.objects[1 - keep]
        canvas = np.asarray(render(Scene(scene.background, (kept,), None), CANVAS))

        def box(obj, scale):
            half = scale * obj.s / 2
            return (np.abs(ys[:, None] - obj.cy) <= half) & (np.abs(xs[None, :] - obj.cx) <= half)

        out.append((canvas, box(drawn, MASK_MARGIN) & ~box(kept, 1.0), caption, spec))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-one", type=int, default=500, help="one-object test captions")
    p.add_argument("--n-two", type=int, default=100, help="two-object test captions (plain and composed)")
    p.add_argument("--n-held-out", type=int, default=100, help="held-out colour-shape pair captions")
    p.add_argument("--n-inpaint", type=int, default=100, help="second-object inpainting cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--base", default="shapes-base", help="text-to-image base model")
    p.add_argument("--inpaint", default="shapes-inpaint", help="inpainting base model")
    p.add_argument("--recipe", default="shapes", choices=sorted(RECIPES), help="the text-to-image recipe")
    p.add_argument("--json", help="also write every score here")
    args = p.parse_args()
    scores: dict[str, list[dict]] = {}
    if args.n_inpaint:
        # glide inpaint's shapes recipe: best of 4 by the bundled reranking CLIP
        inpaint = InpaintPipeline.from_pretrained(
            args.inpaint, "shapes-upsample-inpaint", rerank_clip="shapes-clip-rerank"
        )
        ibase, iup = INPAINT_RECIPES["shapes"]
        start = time.perf_counter()
        scores["inpaint"] = []  # first: the slowest per image
        from PIL import Image

        for k, (canvas, fill, caption, spec) in enumerate(inpaint_cases(args.n_inpaint, args.seed)):
            result = inpaint(
                Image.fromarray(canvas), fill, caption, seed=args.seed + k * ibase.candidates, base=ibase, upsample=iup
            )
            scores["inpaint"].append(score(spec, result.images[0]))
        print(f"inpaint: {args.n_inpaint} images in {time.perf_counter() - start:.0f} s", flush=True)

    pipe = Text2ImPipeline.from_pretrained(args.base, "shapes-upsample", rerank_clip="shapes-clip-rerank")
    base, up = RECIPES[args.recipe]
    one = test_captions(args.n_one, args.seed, "single")
    two = test_captions(args.n_two, args.seed + 1, "two")
    held = test_captions(args.n_held_out, args.seed + 2, "held_out")
    sets = {
        "one": ([c for c, _ in one], [s for _, s in one]),
        "held_out": ([c for c, _ in held], [s for _, s in held]),
        "two": ([c for c, _ in two], [s for _, s in two]),
        "composed": ([composition(s) for _, s in two], [s for _, s in two]),
    }
    background: list[float] = []
    for name, (prompts, specs) in sets.items():
        start = time.perf_counter()
        images = []
        for i in range(0, len(prompts), args.batch_size):  # image k keeps seed + k * candidates
            images += pipe(
                prompts[i : i + args.batch_size], seed=args.seed + i * base.candidates, base=base, upsample=up
            ).images
        scenes = [analyze(im) for im in images]
        scores[name] = [score(s, im, scene=sc) for s, im, sc in zip(specs, images, scenes)]
        if name == "one":
            background = [fidelity(im, sc).background_mae for im, sc in zip(images, scenes)]
        print(f"{name}: {len(images)} images in {time.perf_counter() - start:.0f} s", flush=True)

    exact = {k: [s["exact"] for s in v] for k, v in scores.items()}
    small = [s["exact"] for s, (_, spec) in zip(scores["one"], one) if spec.objects[0].size == "small"]
    rows = [
        ("two-object captions, plain caption", exact["two"], "≥ 50%"),
        ("two-object scenes as a composition", exact["composed"], "≥ 80%"),
        ("inpainting a second object beside a kept one", exact.get("inpaint", []), "≥ 70%"),
        ("one-object captions", exact["one"], "≥ 95%"),
        ("held-out colour-shape pairs", exact["held_out"], "≥ 95%"),
        ("small objects (one-object captions asking small)", small, "≥ 90%"),
    ]
    lines = ["| what | exact | SE | n | goal |", "|---|---|---|---|---|"]
    for what, values, goal in rows:
        r, se, n = rate(values)
        lines.append(f"| {what} | {100 * r:.1f}% | {100 * se:.1f} | {n} | {goal} |")
    bg = np.array([b for b in background if not math.isnan(b)])
    lines.append(
        f"| background error far from objects (0-255), median | {np.median(bg):.1f} "
        f"(mean {bg.mean():.1f}) | | {len(bg)} | ≤ 3 |"
    )
    print("\n".join(lines))
    for name, values in scores.items():  # per-check rates, for the failures' kind
        keys = dict.fromkeys(k for s in values for k, v in s.items() if k != "exact" and isinstance(v, bool))
        print(
            f"{name} per check: "
            + ", ".join(
                f"{k} {100 * sum(s[k] for s in values if k in s) / sum(k in s for s in values):.0f}%" for k in keys
            )
        )
    if args.json:
        atomic_write_text(
            args.json,
            json.dumps(
                {"args": vars(args), "table": lines, "scores": scores, "background_mae": background},
                indent=1,
                default=str,
            ),
        )


if __name__ == "__main__":
    main()
