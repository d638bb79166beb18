"""Accuracy of the analytic Shapes evaluator on ground-truth test-split renders.

Renders N test-split scenes (held-out colour-shape pairs included, about a
third with two objects), scores each against a caption spec naming every
attribute of its scene, and prints per-attribute accuracy, overall and for
held-out pairs and two-object scenes. This is the evaluator's own error floor.

    python3 benchmarks/shapes_evaluator_accuracy.py                 # 2000 scenes at 64 px
    python3 benchmarks/shapes_evaluator_accuracy.py --n 2000 --resolutions 32 64 --noise 0 10

(from a checkout that is not pip-installed, prefix PYTHONPATH=.)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from glide_diffusion.data.shapes import (
    CaptionSpec,
    ObjectSpec,
    Scene,
    object_position,
    render_array,
    sample_with_caption,
)
from glide_diffusion.eval.shapes_eval import evaluate


def truth_spec(scene: Scene) -> CaptionSpec:
    """Every attribute of the scene as a caption spec (positions for one-object scenes)."""
    single = len(scene.objects) == 1
    return CaptionSpec(
        tuple(ObjectSpec(o.shape, o.colour, o.size, object_position(o) if single else None) for o in scene.objects),
        scene.relation,
        scene.background,
    )


def run(n: int, resolution: int, noise: float, seed: int) -> dict:
    """Evaluator report on n test-split scenes at one resolution, with optional Gaussian noise (0-255)."""
    rng = np.random.default_rng(seed)
    specs, images = [], []
    for i in range(n):
        scene, _, _ = sample_with_caption(seed, "test", i)
        img = render_array(scene, resolution).astype(np.float64)
        if noise:
            img = np.clip(np.rint(img + rng.normal(0.0, noise, img.shape)), 0, 255)
        specs.append(truth_spec(scene))
        images.append(img.astype(np.uint8))
    return evaluate(specs, images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--resolutions", type=int, nargs="+", default=[64])
    p.add_argument("--noise", type=float, nargs="+", default=[0.0], help="Gaussian sigma in 0-255 units")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print full reports as JSON")
    args = p.parse_args()
    for resolution in args.resolutions:
        for noise in args.noise:
            start = time.perf_counter()
            report = run(args.n, resolution, noise, args.seed)
            seconds = time.perf_counter() - start
            if args.json:
                print(json.dumps({"resolution": resolution, "noise": noise, **report}))
                continue
            print(f"R={resolution} noise_sigma={noise:g} n={args.n} ({seconds:.1f} s)")
            for group in ("all", "single", "two", "held_out"):
                accs = {k: v for k, v in report[group].items() if k != "n"}
                cells = " ".join(f"{k}={v:.4f}" for k, v in sorted(accs.items()))
                print(f"  {group:8s} n={report[group]['n']:5d} {cells}")
            print(f"  unknown_rate={report['unknown_rate']:.4f}")


if __name__ == "__main__":
    main()
