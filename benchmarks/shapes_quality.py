"""Score a Shapes text->image model with the analytic evaluator, over guidance scales.

For each guidance scale, samples one image per test caption (the same captions
and seeds at every scale), scores them against their captions, and prints
exact-match accuracy (single-object, two-object, held-out colour-shape pairs)
and the entropy of the attributes captions leave open -- the alignment /
diversity trade-off of classifier-free guidance (GLIDE §2.3, Fig. 6).

    python benchmarks/shapes_quality.py --base runs/base-shapes/checkpoints/step_00004000/ema.safetensors
    python benchmarks/shapes_quality.py --base B --upsampler U --scales 0 1 2 3 5 --n 500 --json out.json
    python benchmarks/shapes_quality.py --base shapes-base --clip shapes-clip --clip-scales 1 3 10 --scales 0 1 3

With --rerank N every row samples N images per caption and scores the one the --clip
model rates best (CLIP reranking). With --clip, each --clip-scales value adds a row
sampled with CLIP guidance of that scale on the plain text-conditional model
(classifier-free guidance scale --clip-cfg, 1 by default), beside the classifier-free
rows: GLIDE §3's comparison of the two guides.

Images are scored at the resolution they are generated (the evaluator is
resolution-free); with --upsampler the upsampled images are scored.
"""

from __future__ import annotations

import argparse
import json
import time

from glide_diffusion.checkpoints import atomic_write_text
from glide_diffusion.eval.shapes_benchmark import caption_counts, caption_set
from glide_diffusion.eval.shapes_eval import evaluate
from glide_diffusion.pipelines.recipes import StageSettings
from glide_diffusion.pipelines.text2im import Text2ImPipeline


def sample_and_score(pipe, captions, scale, args, clip_scale: float = 0.0) -> dict:
    n = args.rerank or 1
    base = StageSettings(
        args.sampler,
        args.steps,
        scale,
        guidance_interval=tuple(args.guidance_interval) if args.guidance_interval else None,
    )
    up = StageSettings(args.up_sampler, args.up_steps, args.up_guidance_scale, args.up_temperature)
    start = time.perf_counter()
    # With n > 1, CLIP reranking (GLIDE §3.2): the image of each caption's n the CLIP scores best,
    # chosen before the upsampler.
    result = pipe(
        [c for c, _ in captions],
        num_images=n,
        seed=args.seed,
        base=base,
        upsample=up,
        batch_size=args.batch_size,
        clip_guidance_scale=clip_scale,
        dtype=args.dtype,
        rerank=1 if n > 1 else None,
    )
    seconds = time.perf_counter() - start
    report = evaluate([spec for _, spec in captions], result.images)
    report["seconds"] = seconds
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="base model checkpoint (.safetensors)")
    p.add_argument("--upsampler", default=None, help="optional upsampler checkpoint")
    p.add_argument("--scales", type=float, nargs="+", default=[0, 1, 2, 3, 5])
    p.add_argument("--n", type=int, default=500, help="single-object captions (plus n/2 two-object, n/2 held-out)")
    p.add_argument("--n-two", type=int, default=None, help="two-object captions (default: n/2)")
    p.add_argument("--n-held-out", type=int, default=None, help="held-out colour-shape pair captions (default: n/2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", default="50")
    p.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="classifier-free guidance only for t in [LO*T, HI*T] (default: every step)",
    )
    p.add_argument("--up-sampler", default="ddim")
    p.add_argument("--up-steps", default="fast27")
    p.add_argument("--up-temperature", type=float, default=0.997)
    p.add_argument(
        "--up-guidance-scale",
        type=float,
        default=1.0,
        help="classifier-free guidance scale of the upsampler (default 1: conditional only)",
    )
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--clip", default=None, help="a noised CLIP (bundled name or file) for --clip-scales")
    p.add_argument("--clip-scales", type=float, nargs="*", default=[], help="CLIP guidance scales to add")
    p.add_argument("--clip-cfg", type=float, default=1.0, help="classifier-free scale of the CLIP-guided rows")
    p.add_argument(
        "--rerank",
        type=int,
        default=None,
        metavar="N",
        help="CLIP reranking: sample N images per caption, score the one --clip rates best",
    )
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="the models' compute dtype (bf16: CPUs with native bf16; fp16: CUDA)",
    )
    p.add_argument("--json", help="also write every report here")
    args = p.parse_args()
    if (args.clip_scales or args.rerank) and not args.clip:
        p.error("--clip-scales and --rerank need --clip")
    if args.rerank is not None and args.rerank < 1:
        p.error("--rerank must be at least 1")

    pipe = Text2ImPipeline.from_pretrained(args.base, args.upsampler, download=False, clip=args.clip)
    # Resolved here so the stored args name the captions (paired_diff.py compares them).
    args.n_two, args.n_held_out = caption_counts(args.n, args.n_two, args.n_held_out)
    captions = caption_set(args.n, args.seed, args.n_two, args.n_held_out)
    print(
        f"{len(captions)} captions ({args.n} single, {args.n_two} two-object, {args.n_held_out} held-out pairs); "
        f"base {args.sampler} {args.steps}"
        + (f", guidance interval {args.guidance_interval}" if args.guidance_interval else "")
        + (f", upsampler {args.up_sampler} {args.up_steps}" if args.upsampler else "")
    )
    print(
        f"{'guidance':>10} {'exact 1-obj':>11} {'exact 2-obj':>11} {'exact held-out':>14} "
        f"{'H(colour)':>9} {'H(size)':>7} {'H(position)':>11} {'H(bg)':>6} {'s':>6}"
    )
    reports = {}
    # Classifier-free rows keep their plain scale as the key; CLIP rows are "clip:SCALE".
    runs = [(str(s), f"cfg {s:g}", s, 0.0) for s in args.scales]
    runs += [(f"clip:{c}", f"clip {c:g}", args.clip_cfg, c) for c in args.clip_scales]
    for key, label, scale, clip_scale in runs:
        r = sample_and_score(pipe, captions, scale, args, clip_scale)
        reports[key] = r
        d = r["diversity"]

        def h(k: str, d: dict = d) -> str:
            return f"{d[k]['entropy_bits'] + 0.0:.2f}" if k in d else "-"  # + 0.0: no -0.00

        def ex(g: str, r: dict = r) -> str:
            return f"{r[g]['exact']:.3f}" if r[g].get("n") else "-"

        print(
            f"{label:>10} {ex('single'):>11} {ex('two'):>11} {ex('held_out'):>14} "
            f"{h('colour'):>9} {h('size'):>7} {h('position'):>11} {h('background'):>6} {r['seconds']:>6.0f}",
            flush=True,
        )
        one = r["single"]
        print(
            "      single-object per attribute: "
            + ", ".join(f"{k} {v:.3f}" for k, v in one.items() if k not in ("n", "exact") and isinstance(v, float)),
            flush=True,
        )
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args), "reports": reports}, indent=1))


if __name__ == "__main__":
    main()
