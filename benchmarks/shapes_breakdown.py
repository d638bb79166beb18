"""Break a Shapes quality run down by what its captions asked for.

Reads a ``benchmarks/shapes_quality.py --json`` file (its per-caption scores) or a row of
a ``benchmarks/shapes_inpaint.py --json`` file, rebuilds the same test captions from its
arguments, and prints, for the one-object captions, the share of each attribute read
right grouped by each value the caption named (or "open" where it left the attribute to
the model): which shapes, colours, sizes or backgrounds the model gets wrong.

    python benchmarks/shapes_quality.py --base shapes-base --n 500 --scales 3 --json q.json
    python benchmarks/shapes_breakdown.py q.json                 # by shape, colour, size, background
    python benchmarks/shapes_breakdown.py q.json:3.0 --by shape --scores shape exact
    python benchmarks/shapes_breakdown.py inpaint.json:finetuned --by size   # a shapes_inpaint.py run
"""

from __future__ import annotations

import argparse
from collections import defaultdict

from glide_diffusion.eval.shapes_benchmark import load_run, rebuild_captions


def group_key(spec, attribute: str) -> str:
    value = spec.background if attribute == "background" else getattr(spec.objects[0], attribute)
    return "open" if value is None else value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a shapes_quality.py --json file, optionally FILE:ROW (the guidance scale key)")
    p.add_argument(
        "--by",
        nargs="+",
        default=["shape", "colour", "size", "background"],
        choices=["shape", "colour", "size", "position", "background"],
    )
    p.add_argument("--scores", nargs="+", default=["shape", "colour", "size", "exact"])
    args = p.parse_args()
    run_args, report = load_run(args.run)
    captions = rebuild_captions(run_args)
    scores = report["scores"]
    if len(captions) != len(scores):
        raise SystemExit(f"{len(scores)} scores for {len(captions)} rebuilt captions: not this version's caption set")
    single = [(spec, s) for (_, spec), s in zip(captions, scores) if len(spec.objects) == 1]
    print(f"{args.run}: {len(single)} one-object captions; share right, by what the caption asked")
    for attribute in args.by:
        groups: dict[str, list[dict]] = defaultdict(list)
        for spec, s in single:
            groups[group_key(spec, attribute)].append(s)
        print(f"\n{attribute:>12} {'n':>4} " + " ".join(f"{k:>7}" for k in args.scores))
        for value in sorted(groups, key=lambda v: (v == "open", v)):
            rows = groups[value]
            cells = []
            for k in args.scores:
                marks = [r[k] for r in rows if k in r]
                cells.append(f"{sum(marks) / len(marks):>7.2f}" if marks else f"{'-':>7}")
            print(f"{value:>12} {len(rows):>4} " + " ".join(cells))


if __name__ == "__main__":
    main()
