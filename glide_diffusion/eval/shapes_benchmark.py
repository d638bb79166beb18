"""What the Shapes benchmarks (``benchmarks/shapes_*.py``) share: the captions and inpainting
cases they score, rebuilt from a run's arguments, prompts written as compositions, and the
paired comparison of two scored runs.

- :func:`caption_set`: the test captions of ``shapes_quality.py`` (and ``shapes_rerank.py``);
- :func:`inpaint_cases`: the masked empty areas ``shapes_inpaint.py`` paints into;
- :func:`rebuild_captions`: the (caption, spec) of each case a ``--json`` run scored;
- :func:`composition`: a two-object caption as one-object terms ("A on the left AND B on the right");
- :func:`load_run`, :func:`shared_captions`, :func:`noise_note`, :func:`paired`: ``paired_diff.py``'s
  reading of two runs and the McNemar standard error of their difference.
"""

from __future__ import annotations

import json
import math
from typing import cast

import numpy as np
from PIL import Image

from ..data.shapes import BACKGROUNDS, CaptionSpec, ObjectSpec, Scene, object_position, render, test_captions
from ..data.shapes_captions import article
from ..data.shapes_scene import ALL_PAIRS, sample_single_object

# --- the captions and cases a run scores ---------------------------------------------------------


def caption_counts(n: int, n_two: int | None, n_held_out: int | None) -> tuple[int, int]:
    """The two-object and held-out-pair caption counts, n // 2 each where not given."""
    return (n // 2 if n_two is None else n_two), (n // 2 if n_held_out is None else n_held_out)


def caption_set(
    n: int, seed: int, n_two: int | None = None, n_held_out: int | None = None
) -> list[tuple[str, CaptionSpec]]:
    """n single-object test captions, then n_two two-object and n_held_out held-out-pair captions
    (n//2 each by default)."""
    n_two, n_held_out = caption_counts(n, n_two, n_held_out)
    return (
        test_captions(n, seed, kind="single")
        + test_captions(n_two, seed + 1, kind="two")
        + test_captions(n_held_out, seed + 2, kind="held_out")
    )


MASK_MARGIN = 1.3  # an inpainting case's mask side, in units of the object's box side


def inpaint_cases(n: int, seed: int, resolution: int) -> list[tuple[Image.Image, np.ndarray, str, CaptionSpec]]:
    """(blank canvas, fill mask (bool H x W), caption, spec) for n cases of ``shapes_inpaint.py``:
    a blank test-split canvas, a square mask around where a test-split object would stand, and
    the caption "a SIZE COLOUR SHAPE POSITION on a BG background"."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, 7, i])
        pair = ALL_PAIRS[rng.integers(len(ALL_PAIRS))]
        obj = sample_single_object(rng, pair)
        background = tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        canvas = render(Scene(background, (), None), resolution)
        half = MASK_MARGIN * obj.s / 2
        ys, xs = (np.arange(resolution) + 0.5) / resolution, (np.arange(resolution) + 0.5) / resolution
        fill = (np.abs(ys[:, None] - obj.cy) <= half) & (np.abs(xs[None, :] - obj.cx) <= half)
        position = object_position(obj)
        phrase = f"{obj.size} {obj.colour} {obj.shape}"
        caption = f"{article(phrase)} {phrase} {position} on {article(background)} {background} background"
        spec = CaptionSpec((ObjectSpec(obj.shape, obj.colour, obj.size, position),), None, background)
        out.append((canvas, fill, caption, spec))
    return out


def rebuild_captions(run_args: dict) -> list[tuple[str, CaptionSpec]]:
    """(caption, spec) of each scored case of a ``shapes_quality.py`` or ``shapes_inpaint.py`` run
    (its stored ``args``), in the run's order."""
    if "inpaint" in run_args:  # a shapes_inpaint.py run: its cases' specs do not depend on the resolution
        return [(caption, spec) for _, _, caption, spec in inpaint_cases(run_args["n"], run_args["seed"], 32)]
    return caption_set(run_args["n"], run_args["seed"], run_args["n_two"], run_args["n_held_out"])


# --- composed prompts ----------------------------------------------------------------------------

# Where each object of "A <relation> B" goes when the scene is written as two one-object terms.
PLACES = {
    "to the left of": ("on the left", "on the right"),
    "to the right of": ("on the right", "on the left"),
    "above": ("at the top", "at the bottom"),
    "below": ("at the bottom", "at the top"),
}


def term(obj: ObjectSpec, place: str, background: str | None) -> str:
    words = " ".join(w for w in (obj.size, obj.colour, obj.shape) if w)
    tail = f" on a {background} background" if background else ""
    return f"{article(words)} {words} {place}{tail}"


def composition(spec: CaptionSpec) -> str:
    """ "A on the left AND B on the right" for the two-object ``spec``."""
    (a, b), (pa, pb) = spec.objects, PLACES[cast(str, spec.relation)]
    return f"{term(a, pa, spec.background)} AND {term(b, pb, spec.background)}"


# --- two runs, paired ----------------------------------------------------------------------------

CAPTION_ARGS = ("n", "n_two", "n_held_out", "seed")


def load_run(spec: str) -> tuple[dict, dict]:
    """'FILE' or 'FILE:KEY' -> (the run's args, the report of that row)."""
    path, _, key = spec.partition(":") if ":" in spec and not spec.endswith(".json") else (spec, "", "")
    with open(path) as f:
        run = json.load(f)
    if "reports" not in run and "scores" in run:  # a shapes_targets.py file: a row per caption set
        return _targets_row(path, run, key)
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


TARGET_COUNTS = {"one": "n_one", "held_out": "n_held_out", "two": "n_two", "composed": "n_two"}


def _targets_row(path: str, run: dict, key: str) -> tuple[dict, dict]:
    """A shapes_targets.py row (one, held_out, two, composed) as the caption args and report of a
    one-row run: the same row of two files with the same seed shares its leading captions."""
    if key not in TARGET_COUNTS or key not in run["scores"]:
        raise SystemExit(f"{path}: pick a row as {path}:ROW, one of {', '.join(run['scores'])}")
    args = {"n": run["args"][TARGET_COUNTS[key]], "n_two": 0, "n_held_out": 0, "seed": run["args"]["seed"]}
    return args, {"scores": run["scores"][key]}


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
