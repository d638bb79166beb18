"""How much faster a guided-distilled base samples than its teacher, each at its own recipe.

Both pipelines make the same images as ``glide sample`` does (best of N by the recipe's
reranking CLIP, then the upsampler unless ``--upsampler none``), timed in one run after a
warm-up call each, alternating teacher and student so both see the same machine state.

    python benchmarks/distilled_speed.py --student runs/distill-shapes-3/checkpoints/step_00001000
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from glide_diffusion.pipelines.recipes import RECIPES
from glide_diffusion.pipelines.text2im import Text2ImPipeline

CAPTIONS = ["a red circle", "a small blue star in the top left corner", "a green square to the left of a yellow cross"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="shapes-base")
    p.add_argument("--student", default="shapes-base-distilled")
    p.add_argument("--teacher-recipe", default="shapes")
    p.add_argument("--student-recipe", default="shapes-distilled")
    p.add_argument("--upsampler", default="shapes-upsample", help="'none': the base stage alone")
    p.add_argument("--images", type=int, default=8, help="images per timed call")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    up = None if args.upsampler == "none" else args.upsampler
    runs = {}
    for label, model, recipe in (
        ("teacher", args.teacher, args.teacher_recipe),
        ("student", args.student, args.student_recipe),
    ):
        pipe = Text2ImPipeline.from_pretrained(model, up, rerank_clip="shapes-clip-rerank")
        base, upsample = RECIPES[recipe]
        captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(args.images)]

        def call(pipe=pipe, base=base, upsample=upsample, captions=captions) -> None:
            pipe(captions, seed=0, base=base, upsample=upsample)

        runs[label] = (call, f"{model} ({recipe}: {base.sampler} {base.steps}, best of {base.candidates})")
        call()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for label, (call, _) in runs.items():
            start = time.perf_counter()
            call()
            times[label].append(time.perf_counter() - start)
    for label, (_, what) in runs.items():
        t = statistics.median(times[label])
        print(f"{label}: {what}: {t / args.images:.3f} s/image (median of {args.repeats} calls of {args.images})")
    ratio = statistics.median(times["teacher"]) / statistics.median(times["student"])
    print(f"student speed-up: {ratio:.2f}x ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
