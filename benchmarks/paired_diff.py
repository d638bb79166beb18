"""Compare two Shapes quality runs on the same captions and seeds, caption by caption.

Two sampler settings scored on the same captions with the same seeds are paired: the
standard error of the difference of their exact-match rates comes from the captions
where they disagree (McNemar), and is smaller than that of two independent samples.

    python benchmarks/shapes_quality.py --base shapes-base --n 500 --n-two 0 --n-held-out 0 --scales 3 \\
        --sampler ddpm --steps 100 --json slow.json
    python benchmarks/shapes_quality.py ... --sampler dpm++2m --steps 12 --json fast.json
    python benchmarks/paired_diff.py slow.json fast.json          # guidance 3 in both
    python benchmarks/paired_diff.py sweep.json:1.0 sweep.json:3.0  # two rows of one run

Runs with the same --seed but different caption counts share their first one-object
captions and seeds (image k has seed + k, one-object captions come first, and the first
m of n test captions are the m test captions); those are compared, and the header says so.
A run with --rerank N (shapes_inpaint.py: --candidates N) draws N images per caption (seeds
seed + N*i + j), so against a run with another N the captions are paired but the noise is
not; the header says that too.
"""

from __future__ import annotations

import argparse
import json
import math

CAPTION_ARGS = ("n", "n_two", "n_held_out", "seed")


def load(spec: str) -> tuple[dict, dict]:
    """'FILE' or 'FILE:KEY' -> (the run's args, the report of that row)."""
    path, _, key = spec.partition(":") if ":" in spec and not spec.endswith(".json") else (spec, "", "")
    with open(path) as f:
        run = json.load(f)
    reports = run["reports"]
    if not key:
        if len(reports) != 1:
            raise SystemExit(f"{path} has rows {', '.join(reports)}: pick one as {path}:KEY")
        key = next(iter(reports))
    if key not in reports:
        raise SystemExit(f"{path} has no row {key!r} (rows: {', '.join(reports)})")
    if "scores" not in reports[key]:
        raise SystemExit(f"{path} has no per-caption scores: rerun it with this version of shapes_quality.py")
    return run["args"], reports[key]


def caption_args(args: dict) -> dict:
    """The arguments that name a run's captions; files written before shapes_quality.py stored
    the resolved counts have n_two and n_held_out null, meaning n // 2 each."""
    out = {k: args.get(k) for k in CAPTION_ARGS}
    for k in ("n_two", "n_held_out"):
        if out[k] is None and out["n"] is not None:
            out[k] = out["n"] // 2
    return out


def shared_captions(args_a: dict, args_b: dict, len_a: int, len_b: int) -> tuple[int, str]:
    """How many leading captions two runs share, and a phrase naming them; exits if none."""
    args_a, args_b = caption_args(args_a), caption_args(args_b)
    if args_a.get("seed") != args_b.get("seed"):
        raise SystemExit(f"not the same captions: seed is {args_a.get('seed')} in A and {args_b.get('seed')} in B")
    if all(args_a.get(k) == args_b.get(k) for k in CAPTION_ARGS):
        if len_a != len_b:
            raise SystemExit(f"{len_a} scores in A, {len_b} in B")
        return len_a, f"{len_a} captions"
    n = min(args_a.get("n") or 0, args_b.get("n") or 0)
    if n == 0:
        raise SystemExit("not the same captions, and no one-object captions in common")
    return n, f"the first {n} one-object captions (the runs' shared prefix; their caption counts differ)"


def noise_note(args_a: dict, args_b: dict) -> str | None:
    """A warning when the two runs drew different starting noise for the same caption (--rerank)."""
    n_a, n_b = (args.get("rerank") or args.get("candidates") or 1 for args in (args_a, args_b))
    if n_a == n_b:
        return None
    return (
        f"A draws {n_a} and B {n_b} image(s) per caption (--rerank, --candidates), so their seeds differ: "
        "paired by caption, not by noise"
    )


def paired(a: list[bool], b: list[bool]) -> dict:
    """Rates, their difference b - a, and its paired standard error."""
    n = len(a)
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    diff = (only_b - only_a) / n
    se = math.sqrt(max(only_a + only_b - n * diff**2, 0.0)) / n
    return {"n": n, "a": sum(a) / n, "b": sum(b) / n, "diff": diff, "se": se, "only_a": only_a, "only_b": only_b}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="a shapes_quality.py --json file, optionally FILE:ROW (the guidance scale key)")
    p.add_argument("b")
    p.add_argument("--attributes", nargs="+", default=["exact", "shape", "colour", "size", "position"])
    args = p.parse_args()
    (args_a, ra), (args_b, rb) = load(args.a), load(args.b)
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
