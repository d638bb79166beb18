"""Throughput of the evaluation pieces on this machine: feature extraction, Shapes scoring, metrics.

- extractors: images/s of each feature extractor at the Shapes base resolution (32 px) and at
  256 px (uint8 images in, features out, batch ``--batch``): ``inception`` (when its file is in
  the cache, else reported missing), ``clip`` (the released noised CLIP's architecture; random
  weights when the released files are not in the cache: the speed is the same), and
  ``shapes-clip-rerank`` (bundled);
- shapes: images/s of the analytic evaluator (``analyze``) and of ``analyze`` + fidelity;
- metrics: seconds for FID, KID (100 subsets of 1000) and precision/recall + density/coverage on
  ``--n`` real and fake 2048-d features.

Images are Shapes test renders (seed 0). Timings are medians of ``--repeats`` runs after one
warm-up.

    python benchmarks/eval_throughput.py
    python benchmarks/eval_throughput.py --n-images 64 --repeats 3 --json eval_throughput.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from glide_diffusion.checkpoints import atomic_write_text
from glide_diffusion.data.shapes_render import render_array
from glide_diffusion.data.shapes_scene import sample_scene
from glide_diffusion.eval.extractors import ClipImageExtractor, extract_features, get_extractor
from glide_diffusion.eval.shapes_eval import analyze
from glide_diffusion.eval.shapes_fidelity import fidelity


def renders(n: int, resolution: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([render_array(sample_scene(rng, "test"), resolution) for _ in range(n)])


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def extractors() -> dict[str, object]:
    out: dict[str, object] = {}
    try:
        out["inception"] = get_extractor("inception")
    except FileNotFoundError as e:
        out["inception"] = f"missing: {str(e).splitlines()[0]}"
    try:
        out["clip"] = get_extractor("clip")
    except FileNotFoundError:
        from glide_diffusion.clip import build_clip

        out["clip (random weights)"] = ClipImageExtractor(build_clip("released").eval(), "clip-released")
    out["shapes-clip-rerank"] = get_extractor("shapes-clip-rerank")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=64, help="images per timed extraction")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--resolutions", type=int, nargs="+", default=[32, 256])
    p.add_argument("--n-shapes", type=int, default=100, help="images per timed Shapes scoring run")
    p.add_argument("--n", type=int, default=2000, help="features per set for the metric timings")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "args": vars(args),
        "extract_images_per_s": {},
        "shapes_images_per_s": {},
        "metrics_s": {},
    }
    for name, ex in extractors().items():
        if isinstance(ex, str):
            result["extract_images_per_s"][name] = ex
            print(f"{name}: {ex}", flush=True)
            continue
        for R in args.resolutions:
            images = renders(args.n_images, R)
            s = timed(lambda ex=ex, images=images: extract_features(ex, images, batch_size=args.batch), args.repeats)
            result["extract_images_per_s"][f"{name} @ {R}px"] = args.n_images / s
            print(f"{name} @ {R}px: {args.n_images / s:.1f} images/s", flush=True)

    for R in args.resolutions:
        images = renders(args.n_shapes, R)
        for label, fn in (
            ("analyze", lambda images=images: [analyze(im) for im in images]),
            ("analyze + fidelity", lambda images=images: [fidelity(im) for im in images]),
        ):
            s = timed(fn, args.repeats)
            result["shapes_images_per_s"][f"{label} @ {R}px"] = args.n_shapes / s
            print(f"{label} @ {R}px: {args.n_shapes / s:.1f} images/s", flush=True)

    import warnings

    from glide_diffusion.eval.metrics import EvalWarning, density_coverage, fid, kid, precision_recall

    warnings.simplefilter("ignore", EvalWarning)  # N = 2000 < D = 2048 is expected here: only timing
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(args.n, 2048)), rng.normal(0.1, 1.0, size=(args.n, 2048))
    for label, fn in (
        ("fid", lambda: fid(real, fake)),
        ("kid 100x1000", lambda: kid(real, fake)),
        ("precision_recall", lambda: precision_recall(real, fake)),
        ("density_coverage", lambda: density_coverage(real, fake)),
    ):
        s = timed(fn, 1)
        result["metrics_s"][f"{label} ({args.n} vs {args.n}, 2048-d)"] = s
        print(f"{label} ({args.n} vs {args.n}, 2048-d): {s:.2f} s", flush=True)
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
