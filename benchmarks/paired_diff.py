"""Compare two Shapes quality runs on the same captions and seeds, caption by caption.

Two sampler settings scored on the same captions with the same seeds are paired: the
standard error of the difference of their exact-match rates comes from the captions
where they disagree (McNemar), and is smaller than that of two independent samples.

    python benchmarks/shapes_quality.py --base shapes-base --n 500 --n-two 0 --n-held-out 0 --scales 3 \\
        --sampler ddpm --steps 100 --json slow.json
    python benchmarks/shapes_quality.py ... --sampler dpm++2m --steps 12 --json fast.json
    python benchmarks/paired_diff.py slow.json fast.json          # guidance 3 in both
    python benchmarks/paired_diff.py sweep.json:1.0 sweep.json:3.0  # two rows of one run
    python benchmarks/paired_diff.py teacher.json:one student.json:one  # shapes_targets.py rows

Runs with the same --seed but different caption counts share their first one-object
captions and seeds (image k has seed + k, one-object captions come first, and the first
m of n test captions are the m test captions); those are compared, and the header says so.
A run with --rerank N (shapes_inpaint.py: --candidates N) draws N images per caption (seeds
seed + N*i + j), so against a run with another N the captions are paired but the noise is
not; the header says that too.
"""

from __future__ import annotations

import argparse

from glide_diffusion.eval.shapes_benchmark import load_run, noise_note, paired, shared_captions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="a shapes_quality.py --json file, optionally FILE:ROW (the guidance scale key)")
    p.add_argument("b")
    p.add_argument("--attributes", nargs="+", default=["exact", "shape", "colour", "size", "position"])
    args = p.parse_args()
    (args_a, ra), (args_b, rb) = load_run(args.a), load_run(args.b)
    n, which = shared_captions(args_a, args_b, len(ra["scores"]), len(rb["scores"]))
    sa, sb = ra["scores"][:n], rb["scores"][:n]
    print(f"A = {args.a}, B = {args.b}; {which}")
    if note := noise_note(args_a, args_b):
        print(note)
    print(f"{'attribute':>10} {'n':>5} {'A':>7} {'B':>7} {'B - A':>7} {'SE':>6} {'z':>6} {'only A':>6} {'only B':>6}")
    for attr in args.attributes:
        both = [(x[attr], y[attr]) for x, y in zip(sa, sb) if attr in x and attr in y]
        if not both:
            continue
        r = paired([x for x, _ in both], [y for _, y in both])
        z = r["diff"] / r["se"] if r["se"] > 0 else 0.0
        print(
            f"{attr:>10} {r['n']:>5} {r['a']:>7.3f} {r['b']:>7.3f} {r['diff']:>+7.3f} {r['se']:>6.3f} {z:>+6.2f} "
            f"{r['only_a']:>6} {r['only_b']:>6}"
        )


if __name__ == "__main__":
    main()
