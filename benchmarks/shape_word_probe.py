"""Probe: how fast does a base config learn to draw the shape its caption names?

Trains exactly like ``glide train`` (same config, overrides and launchers) on a
reduced Shapes stream where the shape is the only object attribute that varies:
one large red object on a white background, its shape drawn uniformly from the
five, captions from the usual templates (so the shape word is always there). With
``--position center`` the object sits in the centre cell (the spec's jitter kept);
with ``--position random`` in any of the nine cells, as in Shapes itself. The
first asks whether the network can map the word to a shape at all; the second
whether it can draw that shape wherever the object lands, which is what every
Shapes caption needs.

Score checkpoints with ``--score``: each of the five shape words, ``--n`` seeds
each, sampled with classifier-free guidance 3 (DPM-Solver++(2M), 25 steps) from
"a large red SHAPE POSITION on a white background" and read by the analytic
evaluator; prints the share drawn with the named shape and the confusion counts.

    torchrun --standalone --nproc_per_node 2 benchmarks/shape_word_probe.py --position random \\
        configs/base-shapes.toml --out-dir runs/shape-probe --max-steps 1500 --set ckpt.every=300
    python benchmarks/shape_word_probe.py --score runs/shape-probe/checkpoints/step_00001500/ema.safetensors
"""

from __future__ import annotations

import argparse
import collections
import sys

import numpy as np

import glide_diffusion.data.shapes as shapes
from glide_diffusion.data.shapes import ShapesDataset, sample_caption_with_mentions, sample_rng
from glide_diffusion.data.shapes_scene import (
    POSITIONS,
    SHAPES,
    SIZE_JITTER,
    SIZE_SIDE,
    Scene,
    ShapeObject,
    place_in_cell,
)

COLOUR, BACKGROUND, SIZE = "red", "white", "large"


def one_factor_scene(rng: np.random.Generator, position: str) -> Scene:
    """One large red object on white, shape uniform; in the centre cell or any of the nine."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    s = SIZE_SIDE[SIZE] * rng.uniform(*SIZE_JITTER)
    cx, cy = place_in_cell(rng, 4 if position == "center" else int(rng.integers(9)), s)
    return Scene(BACKGROUND, (ShapeObject(shape, COLOUR, SIZE, float(s), cx, cy),), None)


class OneFactorShapes(ShapesDataset):
    """The Shapes stream with :func:`one_factor_scene` scenes, captions from the usual templates."""

    def __init__(self, position: str, **kwargs):
        super().__init__(**kwargs)
        self.position = position

    def scene_and_caption(self, n: int) -> tuple[Scene, str]:
        rng = sample_rng(self.seed, self.split, n)
        scene = one_factor_scene(rng, self.position)
        return scene, sample_caption_with_mentions(scene, rng)[0]


def probe_dataset(position: str):
    """A ``glide train`` dataset factory of :class:`OneFactorShapes`."""

    def make(config, rank, world_size, start, low_res):
        d = config.data
        return OneFactorShapes(
            position,
            split=d.split,
            resolution=config.image_size,
            seed=d.seed,
            size=d.size,
            rank=rank,
            world_size=world_size,
            start=start,
            low_res=low_res,
        )

    return make


def score(
    checkpoint: str,
    n: int,
    position_phrase: str,
    seed: int,
    size: str = SIZE,
    colour: str = COLOUR,
    background: str = BACKGROUND,
) -> dict:
    from glide_diffusion.checkpoints import load_model
    from glide_diffusion.eval.shapes_eval import analyze
    from glide_diffusion.pipelines.recipes import StageSettings
    from glide_diffusion.pipelines.text2im import Stage, Text2ImPipeline

    model, config = load_model(checkpoint)
    pipe = Text2ImPipeline(Stage(model, config, checkpoint))
    words = [w for w in SHAPES for _ in range(n)]
    captions = [
        f"{shapes.article(size)} {size} {colour} {w} {position_phrase} on a {background} background" for w in words
    ]
    result = pipe(captions, num_images=1, seed=seed, base=StageSettings("dpm++2m", "25", 3.0), batch_size=100)
    confusion: collections.Counter = collections.Counter()
    for word, image in zip(words, result.images):
        scene = analyze(image)
        confusion[(word, scene.objects[0].shape if scene.objects else "none")] += 1
    right = sum(v for (w, got), v in confusion.items() if w == got)
    return {"shape_accuracy": right / len(words), "confusion": confusion}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=False)
    p.add_argument(
        "--position",
        choices=("center", "random"),
        default="random",
        help="training: object in the centre cell or any of the nine (default random)",
    )
    p.add_argument("--score", nargs="+", metavar="CKPT", help="score these checkpoints instead of training")
    p.add_argument("--n", type=int, default=10, help="--score: seeds per shape word (default 10)")
    p.add_argument(
        "--at",
        default="in the top left corner",
        choices=POSITIONS,
        help="--score: the position phrase of the captions (default: in the top left corner)",
    )
    p.add_argument("--size", default=SIZE, choices=shapes.SIZES, help="--score: size word (default large)")
    p.add_argument("--colour", default=COLOUR, choices=tuple(shapes.COLOURS), help="--score: colour word (default red)")
    p.add_argument(
        "--background",
        default=BACKGROUND,
        choices=tuple(shapes.BACKGROUNDS),
        help="--score: background word (default white); other values test whether the skill"
        " carries beyond the one-factor training stream",
    )
    p.add_argument("--seed", type=int, default=0)
    args, rest = p.parse_known_args()
    if args.score:
        for ckpt in args.score:
            r = score(ckpt, args.n, args.at, args.seed, args.size, args.colour, args.background)
            table = ", ".join(f"{w}->{g} {v}" for (w, g), v in sorted(r["confusion"].items()))
            print(f"{ckpt}: shape accuracy {r['shape_accuracy']:.2f} ({table})", flush=True)
        return
    if not rest or rest[0] in ("-h", "--help"):
        print(__doc__)
        print("Any other arguments are `glide train`'s: CONFIG [--out-dir D] [--max-steps N] [--set K=V ...]")
        raise SystemExit(0)
    from glide_diffusion.cli.train import main as train_main

    sys.exit(train_main(rest, dataset_factory=probe_dataset(args.position)))


if __name__ == "__main__":
    main()
