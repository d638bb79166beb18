"""How much of a Shapes image a base model keeps when it denoises it from a partly noised start.

A diagnostic of the denoiser itself, apart from how well it reads captions at high
noise: each single-object test scene is rendered, noised to ``strength`` of the
schedule (``glide edit``'s SDEdit start: strength 0.2 starts at t ~ 200 of 1000, where
the object's shape is still plain to see) and denoised toward its own caption; the
evaluator then scores the result against that caption. A perfect denoiser keeps
almost everything at low strengths; what is lost there is lost by the network, not
by the caption. Exact match falls toward the text-to-image level as strength -> 1.

``--prompt empty`` denoises toward the empty caption instead (guidance scale 1: nothing
to guide toward), and ``--prompt other-shape`` toward the caption with its shape word
replaced by the next shape (circle -> square -> triangle -> star -> cross -> circle);
"other" then counts the images that took the other shape. A model that reads the shape
word at that noise level keeps fewer of its own shapes and takes more of the other.
Scores are always against the scene's own caption.

    python benchmarks/shapes_reconstruct.py --base shapes-base --strengths 0.2 0.4 0.6 --n 60
    python benchmarks/shapes_reconstruct.py --base shapes-base --strengths 0.3 --prompt other-shape
    python benchmarks/shapes_reconstruct.py --base runs/base-shapes/checkpoints/step_00002000/ema.safetensors
"""

from __future__ import annotations

import argparse
import json
import time

from glide_diffusion.checkpoints import atomic_write_text
from glide_diffusion.data.shapes import sample_with_caption
from glide_diffusion.data.shapes_render import render
from glide_diffusion.eval.shapes_eval import analyze, evaluate
from glide_diffusion.pipelines.edit import EditPipeline
from glide_diffusion.pipelines.recipes import StageSettings


def single_object_scenes(n: int, seed: int) -> list:
    """The first ``n`` single-object scenes of the test split, with captions and specs."""
    items, k = [], 0
    while len(items) < n:
        scene, caption, spec = sample_with_caption(seed, "test", k)
        k += 1
        if len(scene.objects) == 1:
            items.append((scene, caption, spec))
    return items


SHAPE_CYCLE = ("circle", "square", "triangle", "star", "cross")


def other_shape(shape: str) -> str:
    return SHAPE_CYCLE[(SHAPE_CYCLE.index(shape) + 1) % len(SHAPE_CYCLE)]


def prompt_for(caption: str, shape: str, mode: str) -> str:
    """The prompt a scene is denoised toward: its caption, the empty caption, or another shape's."""
    if mode == "empty":
        return ""
    if mode == "other-shape":
        return caption.replace(shape, other_shape(shape))
    return caption


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="shapes-base", help="bundled name, released name or checkpoint file")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.4, 0.6])
    p.add_argument("--n", type=int, default=60, help="single-object test scenes (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="dpm++2m")
    p.add_argument("--steps", default="25", help="the full schedule; a strength s runs its last s fraction")
    p.add_argument("--scale", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument(
        "--prompt",
        choices=("caption", "empty", "other-shape"),
        default="caption",
        help="what to denoise toward (default: the scene's own caption)",
    )
    p.add_argument("--json", help="also write every report here")
    args = p.parse_args()
    if not all(0 < s <= 1 for s in args.strengths):
        p.error("--strengths must lie in (0, 1]")

    pipe = EditPipeline.from_pretrained(args.base, None)
    items = single_object_scenes(args.n, args.seed)
    size = pipe.base.image_size
    settings = StageSettings(args.sampler, args.steps, 1.0 if args.prompt == "empty" else args.scale)
    print(
        f"{args.n} single-object test scenes at {size} px; {args.sampler} {args.steps}, guidance "
        f"{settings.guidance_scale:g}, denoised toward: {args.prompt}"
    )
    print(
        f"{'strength':>8} {'exact':>6} {'shape':>6} {'colour':>6} {'size':>6} {'position':>8} {'count':>6} "
        f"{'other':>6} {'s':>5}"
    )
    reports = {}
    for strength in args.strengths:
        start = time.perf_counter()
        images = [
            pipe(
                render(scene, size).convert("RGB"),
                prompt_for(caption, scene.objects[0].shape, args.prompt),
                strength=strength,
                seed=args.seed + j,
                base=settings,
            ).low_res[0]
            for j, (scene, caption, _) in enumerate(items)
        ]
        scenes = [analyze(im) for im in images]
        r = evaluate([spec for _, _, spec in items], scenes)["single"]
        # Images whose (first) object has the next shape in the cycle: the other-shape prompt's.
        r["other"] = sum(
            bool(d.objects) and d.objects[0].shape == other_shape(scene.objects[0].shape)
            for d, (scene, _, _) in zip(scenes, items)
        ) / len(items)
        r["seconds"] = time.perf_counter() - start
        reports[str(strength)] = r

        def g(k: str, r: dict = r) -> float:
            return r.get(k, float("nan"))  # nan: an attribute no caption names

        print(
            f"{strength:>8g} {r['exact']:>6.3f} {g('shape'):>6.3f} {g('colour'):>6.3f} {g('size'):>6.3f} "
            f"{g('position'):>8.3f} {g('count'):>6.3f} {r['other']:>6.3f} {r['seconds']:>5.0f}",
            flush=True,
        )
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args), "reports": reports}, indent=1))


if __name__ == "__main__":
    main()
